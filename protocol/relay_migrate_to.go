package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"time"
)

// MigrateTo (subtype 6, relay -> device) asks the device to move to another
// forwarder, make-before-break: the device joins the new forwarder (a STUN
// Binding with its join token), moves its media there once joined, and only
// then stops using the old one. The old forwarder keeps serving the device
// until the deadline, counted from when the device receives the message.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|    family     |  reserved (0) |             port              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     deadline, milliseconds                    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	:           address (4 bytes if family 1, 16 if family 2)       :
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Family uses STUN's values (RFC 8489 14.1): 0x01 IPv4, 0x02 IPv6, so the
// body is 12 or 24 bytes. The address is neither unspecified nor zoned, and
// the port is not 0.
type MigrateTo struct {
	Addr     netip.AddrPort // the forwarder to move to
	Deadline time.Duration  // sent in whole milliseconds, 0..2^32-1 ms
}

const (
	migrateFamilyIPv4 = 0x01
	migrateFamilyIPv6 = 0x02
	migrateFixedLen   = 8
)

// SubType returns SubTypeMigrateTo.
func (*MigrateTo) SubType() uint8 { return SubTypeMigrateTo }

func migrateCheckAddr(ap netip.AddrPort) error {
	a := ap.Addr()
	if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || ap.Port() == 0 {
		return fmt.Errorf("%w: migrate address %v", ErrRelayAppInvalid, ap)
	}
	return nil
}

// MarshalData appends the body; Deadline is truncated to milliseconds. An
// IPv4-mapped IPv6 address is sent as IPv6, as given.
func (m *MigrateTo) MarshalData(dst []byte) ([]byte, error) {
	if err := migrateCheckAddr(m.Addr); err != nil {
		return dst, err
	}
	ms := m.Deadline.Milliseconds()
	if ms < 0 || ms > math.MaxUint32 {
		return dst, fmt.Errorf("%w: migrate deadline %v", ErrRelayAppInvalid, m.Deadline)
	}
	family := byte(migrateFamilyIPv6)
	if m.Addr.Addr().Is4() {
		family = migrateFamilyIPv4
	}
	dst = append(dst, family, 0)
	dst = binary.BigEndian.AppendUint16(dst, m.Addr.Port())
	dst = binary.BigEndian.AppendUint32(dst, uint32(ms))
	return m.Addr.Addr().AppendBinary(dst)
}

// UnmarshalData decodes the 12- or 24-byte body.
func (m *MigrateTo) UnmarshalData(b []byte) error {
	*m = MigrateTo{}
	if len(b) < migrateFixedLen {
		return relayCheckLen("migrate", b, migrateFixedLen)
	}
	var addrLen int
	switch b[0] {
	case migrateFamilyIPv4:
		addrLen = 4
	case migrateFamilyIPv6:
		addrLen = 16
	default:
		return fmt.Errorf("%w: migrate address family %#x", ErrRelayAppInvalid, b[0])
	}
	if err := relayCheckLen("migrate", b, migrateFixedLen+addrLen); err != nil {
		return err
	}
	a, _ := netip.AddrFromSlice(b[migrateFixedLen:]) // the length is checked
	ap := netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[2:4]))
	if err := migrateCheckAddr(ap); err != nil {
		return err
	}
	m.Addr = ap
	m.Deadline = time.Duration(binary.BigEndian.Uint32(b[4:8])) * time.Millisecond
	return nil
}
