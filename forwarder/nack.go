package forwarder

import (
	"sync"
)

// The NACK cache: the last few seconds of one sender's RTP, so a receiver's
// NACK (RFC 4585 generic NACK) is answered by the forwarder that serves the
// receiver, on that receiver's leg only, without asking the sender.
//
// One cache per sender (a local session, or a remote member whose packets
// arrive over the trunk). Packets are copied byte-exact into a fixed byte
// ring (the arena) and indexed per stream (SSRC) by sequence number in a
// fixed table; nothing is allocated after the cache is made. An entry is
// valid while the arena has not wrapped over its bytes. What a receiver's
// NACKs may take from it is that receiver's own business (rtx.go): how
// often one packet is resent to it, and how many bytes, are counted per
// receiver, so one receiver's NACKs never cost another's recovery.
//
// The cache has its own mutex: the sender's reader writes, the readers of
// the receivers that NACK read. No lock is shared by all packets.
type nackCache struct {
	mu      sync.Mutex
	arena   []byte
	end     uint64 // absolute arena position after the last packet written
	streams [nackStreams]nackStream
}

const (
	nackStreams    = 4    // SSRCs per sender (audio, up to 3 video layers)
	nackIndex      = 1024 // packets indexed per stream (a power of two)
	nackMaxResends = 3    // resends of one packet to one receiver
)

type nackStream struct {
	ssrc    uint32
	used    bool
	last    int64 // unix ns of its last packet, to recycle the slot of a stream that stopped
	entries [nackIndex]nackEntry
}

type nackEntry struct {
	pos uint64 // absolute arena position of the packet's first byte
	n   uint16 // 0: empty
	seq uint16
}

// newNackCache makes a cache with an arena of size bytes.
func newNackCache(size int) *nackCache {
	return &nackCache{arena: make([]byte, size)}
}

// stream finds the index of ssrc, or takes a free (or the stalest) slot for
// it. Called with mu held.
func (c *nackCache) stream(ssrc uint32, nowNS int64) *nackStream {
	var pick *nackStream
	for i := range c.streams {
		s := &c.streams[i]
		switch {
		case s.used && s.ssrc == ssrc:
			return s
		case pick == nil, !s.used && pick.used, s.used && pick.used && s.last < pick.last:
			pick = s // a free slot, else the one whose stream went quiet first
		}
	}
	stalest := pick
	clear(stalest.entries[:])
	stalest.ssrc, stalest.used = ssrc, true
	return stalest
}

// put stores one RTP packet (already parsed: ssrc, seq).
func (c *nackCache) put(b []byte, ssrc uint32, seq uint16, nowNS int64) {
	size := uint64(len(c.arena))
	n := uint64(len(b))
	if n == 0 || n > size/4 {
		return
	}
	c.mu.Lock()
	s := c.stream(ssrc, nowNS)
	s.last = nowNS
	pos := c.end
	if off := pos % size; off+n > size {
		pos += size - off // never split a packet over the arena's end
	}
	copy(c.arena[pos%size:], b)
	c.end = pos + n
	s.entries[seq&(nackIndex-1)] = nackEntry{pos: pos, n: uint16(n), seq: seq}
	c.mu.Unlock()
}

// resend copies the cached packet (ssrc, seq) into dst if it is still held
// and the receiver's leg (nil: no bound) may take it now (downlink.rtxTake,
// with shareQ10 its share of what it was sent, in 1024ths). It returns the
// packet's length, or 0 and why not.
func (c *nackCache) resend(dst []byte, ssrc uint32, seq uint16, nowNS int64, leg *downlink, shareQ10 int64) (int, nackOutcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s *nackStream
	for i := range c.streams {
		if c.streams[i].used && c.streams[i].ssrc == ssrc {
			s = &c.streams[i]
			break
		}
	}
	if s == nil {
		return 0, nackMiss
	}
	e := &s.entries[seq&(nackIndex-1)]
	if e.n == 0 || e.seq != seq || c.end > e.pos+uint64(len(c.arena)) || int(e.n) > len(dst) {
		return 0, nackMiss
	}
	if leg != nil {
		if out := leg.rtxTake(int(e.n), nowNS, shareQ10); out != nackSent {
			return 0, out
		}
	}
	size := uint64(len(c.arena))
	return copy(dst, c.arena[e.pos%size:e.pos%size+uint64(e.n)]), nackSent
}

type nackOutcome uint8

const (
	nackSent    nackOutcome = iota
	nackMiss                // not in the cache (too old, never seen, overwritten)
	nackBounded             // resent to this receiver too often or too recently
	nackBudget              // the leg's estimate leaves no room
	nackShare               // the receiver's NACKs already cost their share of what it was sent
	numNackOutcomes
)
