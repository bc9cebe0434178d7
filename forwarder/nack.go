package forwarder

import (
	"sync/atomic"
	"unsafe"
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
// No lock. A cache has exactly one writer for its whole life: the reader
// (media or trunk) serving the sender's flow, named when the cache is made
// (mediaInfo.keep, control.ensureCache; a flow that moves to another
// reader gets a new cache). NACKs are answered by other readers, seqlock
// style: an answerer reads the entry (one atomic word), copies the bytes
// without a lock, then checks that the writer has not reserved the bytes
// it copied for newer packets meanwhile, and that the entry and the stream
// are unchanged; if anything moved, the NACK is a miss. The writer pays one
// atomic store per packet (the entry) and one more per reservation chunk
// (a sixteenth of the arena); it never waits for an answerer, and an
// answerer never waits for it.
type nackCache struct {
	writer *cacheWriter // the only goroutine that stores packets here
	arena  []byte
	mask   uint64 // entries per stream - 1
	full   bool   // the full size (Adapt.NackCacheBytes), not an audio sender's

	// The writer's own: plain fields.
	end  uint64 // absolute arena position after the last packet written
	last [nackStreams]int64
	res  uint64 // the writer's copy of reserved

	// Shared with the NACK answerers.
	reserved atomic.Uint64 // the writer writes only below this absolute position
	fence    atomic.Uint64 // answerers' barrier between their copy and its check
	streams  [nackStreams]nackStream
}

// cacheWriter names the goroutine allowed to write a cache: each media and
// trunk reader has one.
type cacheWriter struct{ _ byte }

const (
	nackStreams    = 4    // SSRCs per sender (audio, up to 3 video layers)
	nackIndex      = 1024 // packets indexed per stream (a power of two)
	nackMaxResends = 3    // resends of one packet to one receiver

	// An audio sender's cache, until it sends video: 64 KiB hold ~450
	// packets of a 32 kbit/s voice (~9 s; 1 s at 510 kbit/s), indexed 512
	// per stream. 80 KiB in all against 544 KiB.
	nackAudioBytes = 64 << 10
	nackAudioIndex = 512

	nackAlign   = 16        // packets start at multiples of this in the arena
	nackPosBits = 37        // an entry's position, in nackAlign units, modulo 2^37 (2 TiB)
	nackMaxLen  = 1<<11 - 1 // an entry's length field: 11 bits
	nackPosMask = 1<<nackPosBits - 1
)

// nackStream is one SSRC's index. id is 1<<32 | ssrc, 0 when free. An entry
// is pos/nackAlign (37 bits) << 27 | length (11 bits) << 16 | seq; 0 is
// empty.
type nackStream struct {
	id      atomic.Uint64
	entries []atomic.Uint64 // a power of two: mask+1
}

// newNackCache makes a full cache with an arena of size bytes, written by w
// alone.
func newNackCache(size int, w *cacheWriter) *nackCache {
	c := newNackCacheSized(size, nackIndex, w)
	c.full = true
	return c
}

// newAudioNackCache makes the smaller cache of a sender that has sent no
// video yet (control.ensureCache), at most size bytes.
func newAudioNackCache(size int, w *cacheWriter) *nackCache {
	return newNackCacheSized(min(size, nackAudioBytes), nackAudioIndex, w)
}

// newNackCacheSized makes a cache with an arena of size bytes and index
// entries per stream (a power of two).
func newNackCacheSized(size, index int, w *cacheWriter) *nackCache {
	size &^= nackAlign - 1
	c := &nackCache{writer: w, arena: make([]byte, size), mask: uint64(index - 1)}
	all := make([]atomic.Uint64, nackStreams*index)
	for i := range c.streams {
		c.streams[i].entries = all[i*index : (i+1)*index : (i+1)*index]
	}
	return c
}

// stream finds the index of ssrc, or takes a free (or the stalest) slot for
// it. Writer only.
func (c *nackCache) stream(ssrc uint32) int {
	id := 1<<32 | uint64(ssrc)
	pick := -1
	for i := range c.streams {
		sid := c.streams[i].id.Load()
		switch {
		case sid == id:
			return i
		case pick < 0, sid == 0 && c.streams[pick].id.Load() != 0,
			sid != 0 && c.streams[pick].id.Load() != 0 && c.last[i] < c.last[pick]:
			pick = i // a free slot, else the one whose stream went quiet first
		}
	}
	s := &c.streams[pick]
	s.id.Store(0) // answerers reading the old stream now miss
	for i := range s.entries {
		s.entries[i].Store(0)
	}
	s.id.Store(id)
	return pick
}

// put stores one RTP packet (already parsed: ssrc, seq). Only the cache's
// writer may call it.
func (c *nackCache) put(b []byte, ssrc uint32, seq uint16, nowNS int64) {
	size := uint64(len(c.arena))
	n := uint64(len(b))
	if n == 0 || n > size/4 || n > nackMaxLen {
		return
	}
	i := c.stream(ssrc)
	c.last[i] = nowNS
	pos := (c.end + nackAlign - 1) &^ (nackAlign - 1)
	if off := pos % size; off+n > size {
		pos += size - off // never split a packet over the arena's end
	}
	if pos+n > c.res {
		// Reserve ahead, before writing: answerers then know these bytes
		// may be changing. Amortised over a sixteenth of the arena.
		c.res = c.reserved.Add(pos + n + size/16 - c.res)
	}
	copy(c.arena[pos%size:], b)
	c.end = pos + n
	c.streams[i].entries[uint64(seq)&c.mask].Store((pos/nackAlign&nackPosMask)<<27 | n<<16 | uint64(seq))
}

// resend copies the cached packet (ssrc, seq) into dst if it is still held
// and the receiver's leg (nil: no bound) may take it now (downlink.rtxTake,
// with shareQ10 its share of what it was sent, in 1024ths). It returns the
// packet's length, or 0 and why not. Any goroutine may call it, while the
// writer stores.
func (c *nackCache) resend(dst []byte, ssrc uint32, seq uint16, nowNS int64, leg *downlink, shareQ10 int64) (int, nackOutcome) {
	id := 1<<32 | uint64(ssrc)
	var s *nackStream
	for i := range c.streams {
		if c.streams[i].id.Load() == id {
			s = &c.streams[i]
			break
		}
	}
	if s == nil {
		return 0, nackMiss
	}
	e := s.entries[uint64(seq)&c.mask].Load()
	n := int(e >> 16 & nackMaxLen)
	if e == 0 || uint16(e) != seq || n > len(dst) {
		return 0, nackMiss
	}
	size := uint64(len(c.arena))
	pos, ok := c.entryPos(e, size)
	if !ok {
		return 0, nackMiss
	}
	copyRacy(dst[:n], c.arena[pos%size:pos%size+uint64(n)])
	c.fence.Add(1) // the copy above is done before the checks below
	if s.entries[uint64(seq)&c.mask].Load() != e || s.id.Load() != id {
		return 0, nackMiss // the stream was recycled, or the entry rewritten
	}
	if _, ok := c.entryPos(e, size); !ok {
		return 0, nackMiss // the writer reserved these bytes during the copy
	}
	if leg != nil {
		if out := leg.rtxTake(n, nowNS, shareQ10); out != nackSent {
			return 0, out
		}
	}
	return n, nackSent
}

// entryPos is the absolute arena position of entry e, and whether its
// bytes are still untouched: the writer has reserved nothing at or beyond
// a whole arena after them.
func (c *nackCache) entryPos(e, size uint64) (uint64, bool) {
	r := c.reserved.Load()
	ru := r / nackAlign
	pos := (ru - (ru-e>>27)&nackPosMask) * nackAlign
	return pos, pos+size >= r
}

// copyRacy copies src into dst (same length) while the writer may be
// writing src: the seqlock's read, checked by the caller afterwards (a torn
// copy is never used). It is left out of the race detector's view on
// purpose, and copies in words rather than with copy(), which the race
// runtime instruments whatever the function says.
//
//go:norace
func copyRacy(dst, src []byte) {
	n := len(dst)
	i := 0
	for ; i+8 <= n; i += 8 {
		*(*uint64)(unsafe.Pointer(&dst[i])) = *(*uint64)(unsafe.Pointer(&src[i]))
	}
	for ; i < n; i++ {
		dst[i] = src[i]
	}
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
