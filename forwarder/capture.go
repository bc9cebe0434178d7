package forwarder

import (
	"cmp"
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// A capture records one call's legs for a few seconds, headers only, for
// an operator debugging that call (the admin API's capture, admin.go). It
// keeps RTP headers (with their extensions: audio level, video frame,
// rollover), RTCP (in clear, it carries no media) up to captureRTCPMax
// bytes, and STUN with the values of its secrets (join token, resumption
// ticket, cookie, USERNAME) zeroed. An RTP payload is never copied: the
// relay holds no media key, and a capture must not hold ciphertext either.
//
// Off, it costs the data path one atomic load per datagram
// (Forwarder.capture is nil). On, each reader appends to its own buffer
// (its own mutex, taken by nobody else until the capture ends), so readers
// never contend; the buffers are bounded (captureMaxBytes in all), and
// records beyond that are counted, not kept.
type capture struct {
	call  protocol.ID
	until time.Time
	self  netip.AddrPort // the forwarder's media address (the other end of every leg)
	bufs  []captureBuf   // one per reader, and the last for the control goroutine
}

type captureBuf struct {
	mu      sync.Mutex
	b       []byte
	max     int
	dropped uint64
	closed  bool     // the capture ended: nothing more is recorded
	_       [40]byte // keeps readers' buffers off each other's cache lines
}

const (
	captureMaxBytes = 512 << 10 // records of one capture, all readers together
	captureRTCPMax  = 256       // RTCP kept per datagram
	captureRecFixed = 8 + 1 + 16 + 2 + 2 + 2
)

func newCapture(call protocol.ID, until time.Time, self netip.AddrPort, readers int) *capture {
	c := &capture{call: call, until: until, self: self, bufs: make([]captureBuf, readers+1)}
	for i := range c.bufs {
		c.bufs[i].max = captureMaxBytes / len(c.bufs)
	}
	return c
}

// record appends one datagram's headers: out is true for one the forwarder
// sent to peer, false for one it received from peer.
func (b *captureBuf) record(nowNS int64, out bool, peer netip.AddrPort, pkt []byte) {
	keep := captureLen(pkt)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if len(b.b)+captureRecFixed+keep > b.max {
		b.dropped++
		return
	}
	b.b = binary.BigEndian.AppendUint64(b.b, uint64(nowNS))
	dir := byte(0)
	if out {
		dir = 1
	}
	b.b = append(b.b, dir)
	a := peer.Addr().As16()
	b.b = append(b.b, a[:]...)
	b.b = binary.BigEndian.AppendUint16(b.b, peer.Port())
	b.b = binary.BigEndian.AppendUint16(b.b, uint16(len(pkt)))
	b.b = binary.BigEndian.AppendUint16(b.b, uint16(keep))
	start := len(b.b)
	b.b = append(b.b, pkt[:keep]...)
	if protocol.Classify(pkt) == protocol.KindSTUN {
		redactSTUN(b.b[start:])
	}
}

// captureLen is how many bytes of pkt a capture keeps: an RTP packet's
// header and extensions, at most captureRTCPMax of RTCP, a whole STUN
// message (redacted), nothing of anything else.
func captureLen(pkt []byte) int {
	switch protocol.Classify(pkt) {
	case protocol.KindRTP:
		var h protocol.RTPHeader
		if h.Parse(pkt) != nil {
			return min(len(pkt), 12)
		}
		return h.HeaderLen
	case protocol.KindRTCP:
		return min(len(pkt), captureRTCPMax)
	case protocol.KindSTUN:
		return min(len(pkt), maxDatagram)
	}
	return 0
}

// redactSTUN zeroes, in place, the values of the attributes of a STUN
// message that are secrets or credentials (the join token, the resumption
// ticket, the address-check cookie, USERNAME). It walks the attributes as
// far as they are well-formed and leaves the rest as it is.
func redactSTUN(m []byte) {
	const stunHeader = 20
	p := stunHeader
	for p+4 <= len(m) {
		t := binary.BigEndian.Uint16(m[p:])
		n := int(binary.BigEndian.Uint16(m[p+2:]))
		v := p + 4
		end := min(v+n, len(m))
		switch t {
		case uint16(protocol.AttrJoinToken), uint16(protocol.AttrResumeTicket), uint16(protocol.AttrCookie), 0x0006:
			clear(m[v:end])
		case 0x8028: // FINGERPRINT, made right again over the redacted message
			if n == 4 && end == v+4 {
				binary.BigEndian.PutUint32(m[v:], crc32.ChecksumIEEE(m[:p])^0x5354554e)
			}
		}
		p = v + (n+3)&^3 // values are padded to 4 bytes
	}
}

// captureOn records pkt for a running capture if it belongs to the
// captured call: the data path calls it only when Forwarder.capture is set.
func (r *reader) captureOn(cp *capture, rt *routes, b []byte, src netip.AddrPort) {
	rte := rt.bySrc[src]
	if rte == nil || rte.call != cp.call || len(b) == 0 || b[0] < 128 {
		return // not the call's, or STUN (recorded by the control goroutine)
	}
	cp.bufs[r.idx].record(r.f.cfg.Now().UnixNano(), false, src, b)
}

// pcapng writes the capture as a pcapng file (one section, one raw-IP
// interface, an Enhanced Packet Block per datagram, each a synthesized
// IPv4 or IPv6 and UDP header in front of the kept bytes, its original
// length the datagram's whole size), records in time order per buffer.
func (cp *capture) pcapng() []byte {
	out := pcapngHeader(nil)
	type rec struct {
		at int64
		b  []byte
	}
	var recs []rec
	for i := range cp.bufs {
		b := cp.bufs[i].b
		for len(b) >= captureRecFixed {
			keep := int(binary.BigEndian.Uint16(b[29:31]))
			if len(b) < captureRecFixed+keep {
				break
			}
			recs = append(recs, rec{int64(binary.BigEndian.Uint64(b)), b[:captureRecFixed+keep]})
			b = b[captureRecFixed+keep:]
		}
	}
	slices.SortStableFunc(recs, func(a, b rec) int { return cmp.Compare(a.at, b.at) })
	for _, r := range recs {
		out = cp.appendEPB(out, r.b)
	}
	return out
}

// dropped is how many records did not fit.
func (cp *capture) dropped() uint64 {
	var n uint64
	for i := range cp.bufs {
		n += cp.bufs[i].dropped
	}
	return n
}
