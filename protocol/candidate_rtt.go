package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// AttrCandidateRTTs (CANDIDATE-RTTS, comprehension-optional) carries, in a
// keepalive, the device's round-trip times to its candidate forwarders
// (README section 3.2). Forwarders copy it into their metadata (7.3) for
// the call's conductor, which places members by it.
const AttrCandidateRTTs stun.AttrType = 0xC009

// Candidate RTT limits.
const (
	// MaxCandidateRTTs is the most entries one report carries.
	MaxCandidateRTTs = 8
	// MaxCandidateRTT is the largest RTT a report may carry.
	MaxCandidateRTT = 10 * time.Second

	candRTTVia   = 0x01 // the entry is the forwarder the request travels to
	candRTTFixed = 8    // flags, family, port, RTT before the address
	candRTTSeq   = 0x80 // in the count byte: a sequence follows it
	candRTTSeqN  = 8    // the sequence's length
)

// ErrCandidateRTTs: a CANDIDATE-RTTS value (or a metadata RTT section) is
// malformed or says something it may not.
var ErrCandidateRTTs = errors.New("protocol: malformed candidate RTTs")

// CandidateRTT is the device's round-trip time to one candidate forwarder,
// measured on its authenticated STUN exchanges with it.
type CandidateRTT struct {
	Addr netip.AddrPort // the address the device sends to (unmapped)
	RTT  time.Duration  // microsecond resolution on the wire
	// Via: this is the forwarder the report travels to (whatever the
	// address it is known by elsewhere).
	Via bool
}

// CandidateRTTs is one report: N entries of Entries in use. A value type,
// so a decoded report costs no allocation.
type CandidateRTTs struct {
	// Seq orders the device's reports (README 3.2): it grows with every
	// report the device sends, to any forwarder, and a forwarder keeps a
	// report only if its Seq is above that of the last one it kept for the
	// session. 0: an unsequenced report (the format without it).
	Seq     uint64
	N       uint8
	Entries [MaxCandidateRTTs]CandidateRTT
}

// Newer says whether c may replace last, the session's latest report
// kept (zero before any): c's sequence must be above last's; an
// unsequenced report is never newer than a sequenced one (a device that
// sequences its reports does so from its first), and is taken while the
// session has had no sequenced one, as before sequences.
func (c *CandidateRTTs) Newer(last *CandidateRTTs) bool {
	if c.Seq == 0 {
		return last.Seq == 0
	}
	return c.Seq > last.Seq
}

// Size is the report's length on the wire.
func (c *CandidateRTTs) Size() int {
	n := 1
	if c.Seq != 0 {
		n += candRTTSeqN
	}
	for _, e := range c.Entries[:min(int(c.N), MaxCandidateRTTs)] {
		n += candRTTFixed + len(e.Addr.Addr().Unmap().AsSlice())
	}
	return n
}

// Check says what is wrong with the report, if anything.
func (c *CandidateRTTs) Check() error {
	if c.N == 0 || c.N > MaxCandidateRTTs {
		return fmt.Errorf("%w: %d entries, want 1..%d", ErrCandidateRTTs, c.N, MaxCandidateRTTs)
	}
	via := false
	for i, e := range c.Entries[:c.N] {
		a := e.Addr.Addr()
		switch {
		case !e.Addr.IsValid() || e.Addr.Port() == 0 || a.IsUnspecified() || a.Is4In6():
			return fmt.Errorf("%w: entry %d: address %s (want an unmapped address with a port)", ErrCandidateRTTs, i, e.Addr)
		case e.RTT < 0 || e.RTT > MaxCandidateRTT:
			return fmt.Errorf("%w: entry %d: RTT %s, want 0..%s", ErrCandidateRTTs, i, e.RTT, MaxCandidateRTT)
		case e.Via && via:
			return fmt.Errorf("%w: more than one entry marked via", ErrCandidateRTTs)
		}
		via = via || e.Via
		for _, o := range c.Entries[:i] {
			if o.Addr == e.Addr {
				return fmt.Errorf("%w: %s twice", ErrCandidateRTTs, e.Addr)
			}
		}
	}
	for _, e := range c.Entries[c.N:] {
		if e != (CandidateRTT{}) {
			return fmt.Errorf("%w: entries set beyond the count", ErrCandidateRTTs)
		}
	}
	return nil
}

// Append checks the report and appends its wire form to b:
//
//	0       count n (1..8), with 0x80 set when a sequence follows
//	1..9    with 0x80: the sequence (uint64, not 0)
//	then    n entries: flags (1: 0x01 via, others 0), family (1: 1 IPv4,
//	        2 IPv6), port (2), RTT in microseconds (4), address (4 or 16)
func (c *CandidateRTTs) Append(b []byte) ([]byte, error) {
	if err := c.Check(); err != nil {
		return b, err
	}
	if c.Seq == 0 {
		b = append(b, c.N)
	} else {
		b = append(b, c.N|candRTTSeq)
		b = binary.BigEndian.AppendUint64(b, c.Seq)
	}
	for _, e := range c.Entries[:c.N] {
		var flags, family byte = 0, 1
		if e.Via {
			flags = candRTTVia
		}
		if e.Addr.Addr().Is6() {
			family = 2
		}
		b = append(b, flags, family)
		b = binary.BigEndian.AppendUint16(b, e.Addr.Port())
		b = binary.BigEndian.AppendUint32(b, uint32(e.RTT/time.Microsecond))
		b = append(b, e.Addr.Addr().AsSlice()...)
	}
	return b, nil
}

// Decode reads and checks a report at the front of b and returns its
// length on the wire; on error c is zero. It does not allocate.
func (c *CandidateRTTs) Decode(b []byte) (int, error) {
	n, err := c.decode(b)
	if err != nil {
		*c = CandidateRTTs{}
	}
	return n, err
}

func (c *CandidateRTTs) decode(b []byte) (int, error) {
	*c = CandidateRTTs{}
	if len(b) < 1 {
		return 0, fmt.Errorf("%w: empty", ErrCandidateRTTs)
	}
	n, off := int(b[0]&^candRTTSeq), 1
	if n == 0 || n > MaxCandidateRTTs {
		return 0, fmt.Errorf("%w: %d entries, want 1..%d", ErrCandidateRTTs, n, MaxCandidateRTTs)
	}
	if b[0]&candRTTSeq != 0 {
		if len(b) < off+candRTTSeqN {
			return 0, fmt.Errorf("%w: sequence truncated", ErrCandidateRTTs)
		}
		c.Seq = binary.BigEndian.Uint64(b[off:])
		off += candRTTSeqN
		if c.Seq == 0 {
			return 0, fmt.Errorf("%w: sequence 0 (send none instead)", ErrCandidateRTTs)
		}
	}
	for i := range n {
		if len(b) < off+candRTTFixed {
			return 0, fmt.Errorf("%w: entry %d truncated", ErrCandidateRTTs, i)
		}
		flags, family := b[off], b[off+1]
		port := binary.BigEndian.Uint16(b[off+2 : off+4])
		us := binary.BigEndian.Uint32(b[off+4 : off+8])
		off += candRTTFixed
		alen := 4
		switch family {
		case 1:
		case 2:
			alen = 16
		default:
			return 0, fmt.Errorf("%w: entry %d: family %d", ErrCandidateRTTs, i, family)
		}
		if flags&^candRTTVia != 0 {
			return 0, fmt.Errorf("%w: entry %d: unknown flags %#02x", ErrCandidateRTTs, i, flags&^candRTTVia)
		}
		if len(b) < off+alen {
			return 0, fmt.Errorf("%w: entry %d: address truncated", ErrCandidateRTTs, i)
		}
		addr, _ := netip.AddrFromSlice(b[off : off+alen])
		off += alen
		if us > uint32(MaxCandidateRTT/time.Microsecond) {
			return 0, fmt.Errorf("%w: entry %d: RTT %d µs", ErrCandidateRTTs, i, us)
		}
		c.Entries[i] = CandidateRTT{Addr: netip.AddrPortFrom(addr, port), RTT: time.Duration(us) * time.Microsecond, Via: flags&candRTTVia != 0}
	}
	c.N = uint8(n)
	return off, c.Check()
}

// ParseCandidateRTTs decodes a CANDIDATE-RTTS value, which must be exactly
// one report.
func ParseCandidateRTTs(v []byte, c *CandidateRTTs) error {
	n, err := c.Decode(v)
	if err != nil {
		return err
	}
	if n != len(v) {
		*c = CandidateRTTs{}
		return fmt.Errorf("%w: %d trailing bytes", ErrCandidateRTTs, len(v)-n)
	}
	return nil
}
