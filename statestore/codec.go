package statestore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Call record wire format, version 2. All integers are big-endian.
//
//	0       format = 2
//	1..9    version (uint64, at least 1)
//	9..25   call id
//	25      class (1 one-to-one, 2 group)
//	26..28  max size (uint16, at least 1)
//	28..30  member count (uint16, 1..max size)
//	30..    members, sorted by participant id, strictly ascending:
//	        16  participant id
//	        1+n forwarder id: length byte, then n bytes
//	        3+a forwarder trunk address (address, below)
//	        3+a participant address (address, below)
//	        8   joined at, Unix nanoseconds (int64; 0 means unset)
//	        1+4n SSRCs: count byte, then n uint32
//	        1+16n subscriptions: count byte, then n participant ids
//
// An address is a family byte (0 none, 4 IPv4, 6 IPv6, no zone), then a = 0,
// 4 or 16 address bytes, then the port (uint16).
//
// Version 1 is the same without the trunk address. It is still decoded (with
// a zero Trunk) so records written before an upgrade stay readable; it is
// never written.
//
// Nothing may follow the last member. The encoding is canonical: decoding
// then encoding a valid record in its own format gives back the same bytes.
const (
	recordFormat     = 2 // written
	recordFormatV1   = 1 // read only: no trunk address
	recordHeaderSize = 30
	maxListLen       = 255 // forwarder id bytes, SSRCs, subscriptions
	maxMembers       = 1<<16 - 1
)

// encodeCall appends c's record to dst. It fails only for values the format
// cannot carry; validate members before storing them.
func encodeCall(dst []byte, c Call) ([]byte, error) {
	return appendRecord(dst, c, recordFormat)
}

// appendRecord appends c's record in the given format; format 1 cannot carry
// a trunk address.
func appendRecord(dst []byte, c Call, format byte) ([]byte, error) {
	if len(c.Members) > maxMembers {
		return nil, fmt.Errorf("%w: %d members", ErrInvalid, len(c.Members))
	}
	dst = append(dst, format)
	dst = binary.BigEndian.AppendUint64(dst, c.Version)
	dst = append(dst, c.ID[:]...)
	dst = append(dst, byte(c.Class))
	dst = binary.BigEndian.AppendUint16(dst, uint16(c.MaxSize))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(c.Members)))
	ids := make([]protocol.ID, 0, len(c.Members))
	for id := range c.Members {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b protocol.ID) int { return bytes.Compare(a[:], b[:]) })
	for _, id := range ids {
		m := c.Members[id]
		if err := validateMember(m); err != nil {
			return nil, err
		}
		if format == recordFormatV1 && m.Trunk != (netip.AddrPort{}) {
			return nil, fmt.Errorf("%w: format 1 has no trunk address", ErrInvalid)
		}
		dst = append(dst, id[:]...)
		dst = appendMember(dst, m, format)
	}
	return dst, nil
}

func appendMember(dst []byte, m Member, format byte) []byte {
	dst = append(dst, byte(len(m.Forwarder)))
	dst = append(dst, m.Forwarder...)
	if format != recordFormatV1 {
		dst = appendAddrPort(dst, m.Trunk)
	}
	dst = appendAddrPort(dst, m.Addr)
	var joined int64
	if !m.JoinedAt.IsZero() {
		joined = m.JoinedAt.UnixNano()
	}
	dst = binary.BigEndian.AppendUint64(dst, uint64(joined))
	dst = append(dst, byte(len(m.SSRCs)))
	for _, s := range m.SSRCs {
		dst = binary.BigEndian.AppendUint32(dst, s)
	}
	dst = append(dst, byte(len(m.Subscriptions)))
	for _, s := range m.Subscriptions {
		dst = append(dst, s[:]...)
	}
	return dst
}

func appendAddrPort(dst []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	switch {
	case a.Is4():
		dst = append(dst, 4)
		dst = append(dst, a.AsSlice()...)
	case a.Is6():
		dst = append(dst, 6)
		dst = append(dst, a.AsSlice()...)
	default:
		dst = append(dst, 0)
	}
	return binary.BigEndian.AppendUint16(dst, ap.Port())
}

// validateMember reports whether the record format can carry m.
func validateMember(m Member) error {
	switch {
	case len(m.Forwarder) > maxListLen:
		return fmt.Errorf("%w: forwarder id has %d bytes, at most %d", ErrInvalid, len(m.Forwarder), maxListLen)
	case len(m.SSRCs) > maxListLen:
		return fmt.Errorf("%w: %d SSRCs, at most %d", ErrInvalid, len(m.SSRCs), maxListLen)
	case len(m.Subscriptions) > maxListLen:
		return fmt.Errorf("%w: %d subscriptions, at most %d", ErrInvalid, len(m.Subscriptions), maxListLen)
	case m.Addr.Addr().Zone() != "":
		return fmt.Errorf("%w: address %s has a zone", ErrInvalid, m.Addr)
	case m.Trunk.Addr().Zone() != "":
		return fmt.Errorf("%w: trunk address %s has a zone", ErrInvalid, m.Trunk)
	}
	return nil
}

// reader walks a record; the first short read sets err and later reads
// return zeros, so decoding code checks err once per step.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return make([]byte, n)
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: record truncated", ErrCorrupt)
		return make([]byte, n)
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() int     { return int(r.take(1)[0]) }
func (r *reader) u16() uint16 { return binary.BigEndian.Uint16(r.take(2)) }
func (r *reader) u32() uint32 { return binary.BigEndian.Uint32(r.take(4)) }
func (r *reader) u64() uint64 { return binary.BigEndian.Uint64(r.take(8)) }
func (r *reader) id() (id protocol.ID) {
	copy(id[:], r.take(len(id)))
	return id
}

// decodeCall parses a record. Every failure wraps ErrCorrupt.
func decodeCall(b []byte) (Call, error) {
	var c Call
	if len(b) < recordHeaderSize {
		return c, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrCorrupt, len(b), recordHeaderSize)
	}
	format := b[0]
	if format != recordFormat && format != recordFormatV1 {
		return c, fmt.Errorf("%w: format %d, want %d or %d", ErrCorrupt, format, recordFormatV1, recordFormat)
	}
	r := &reader{b: b[1:]}
	c.Version = r.u64()
	c.ID = r.id()
	c.Class = protocol.CallClass(r.u8())
	c.MaxSize = int(r.u16())
	n := int(r.u16())
	switch {
	case c.Version == 0:
		return Call{}, fmt.Errorf("%w: version 0", ErrCorrupt)
	case c.Class != protocol.ClassOneToOne && c.Class != protocol.ClassGroup:
		return Call{}, fmt.Errorf("%w: unknown %v", ErrCorrupt, c.Class)
	case c.MaxSize == 0 || n == 0 || n > c.MaxSize:
		return Call{}, fmt.Errorf("%w: %d members, max size %d", ErrCorrupt, n, c.MaxSize)
	}
	c.Members = make(map[protocol.ID]Member, n)
	var prev protocol.ID
	for i := range n {
		id := r.id()
		m := r.member(format)
		if r.err != nil {
			return Call{}, fmt.Errorf("member %d: %w", i, r.err)
		}
		if i > 0 && bytes.Compare(prev[:], id[:]) >= 0 {
			return Call{}, fmt.Errorf("%w: member %d out of order or repeated", ErrCorrupt, i)
		}
		prev = id
		c.Members[id] = m
	}
	if len(r.b) != 0 {
		return Call{}, fmt.Errorf("%w: %d bytes after the last member", ErrCorrupt, len(r.b))
	}
	return c, nil
}

func (r *reader) member(format byte) Member {
	var m Member
	m.Forwarder = string(r.take(r.u8()))
	if format != recordFormatV1 {
		m.Trunk = r.addrPort()
	}
	m.Addr = r.addrPort()
	if ns := int64(r.u64()); ns != 0 {
		m.JoinedAt = time.Unix(0, ns).UTC()
	}
	if k := r.u8(); k > 0 {
		m.SSRCs = make([]uint32, k)
		for i := range m.SSRCs {
			m.SSRCs[i] = r.u32()
		}
	}
	if k := r.u8(); k > 0 {
		m.Subscriptions = make([]protocol.ID, k)
		for i := range m.Subscriptions {
			m.Subscriptions[i] = r.id()
		}
	}
	return m
}

func (r *reader) addrPort() netip.AddrPort {
	var addr netip.Addr
	switch fam := r.u8(); fam {
	case 0:
	case 4:
		addr = netip.AddrFrom4([4]byte(r.take(4)))
	case 6:
		addr = netip.AddrFrom16([16]byte(r.take(16)))
	default:
		if r.err == nil {
			r.err = fmt.Errorf("%w: address family %d", ErrCorrupt, fam)
		}
	}
	return netip.AddrPortFrom(addr, r.u16())
}
