package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
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
//	|    family     |   transport   |             port              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     deadline, milliseconds                    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+             echo: the transaction ID of the device's          +
//	|             latest request the forwarder accepted (12)        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	:           address (4 bytes if family 1, 16 if family 2)       :
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+                          MAC (16 bytes)                       +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Family uses STUN's values (RFC 8489 14.1): 0x01 IPv4, 0x02 IPv6, so the
// body is 40 or 52 bytes. Transport says how to join the address: 0 UDP
// (the media address), 1 TCP or 2 TLS (a stream listener, README.md
// section 9; sent only to a device on a connection); other values are
// invalid. The address is neither unspecified nor zoned, and
// the port is not 0. The MAC authenticates the whole packet under the
// integrity key of the request whose transaction ID is the echo
// (SignMigrateTo, VerifyMigrateTo; protocol/README.md 5.7): a device follows
// only a MigrateTo it can verify, echoing one of its recent requests.
// UnmarshalData only decodes; it does not verify.
type MigrateTo struct {
	Addr      netip.AddrPort // the forwarder to move to
	Transport Transport      // how to join Addr: UDP, TCP or TLS
	Deadline  time.Duration  // sent in whole milliseconds, 0..2^32-1 ms
	Echo      [MigrateEchoLen]byte
	MAC       [MigrateMACLen]byte
}

// Sizes of a MigrateTo's echo and MAC.
const (
	MigrateEchoLen = 12 // a STUN transaction ID
	MigrateMACLen  = 16 // HMAC-SHA256, truncated
)

// migrateMACLabel starts the HMAC input, so the key's other use (STUN
// MESSAGE-INTEGRITY, HMAC-SHA1) and this one never share an input.
const migrateMACLabel = "callrelay migrate-to v1"

// migrateMAC computes the MAC of pkt, a whole MigrateTo packet up to (not
// including) its MAC field.
func migrateMAC(key, pkt []byte) [MigrateMACLen]byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(migrateMACLabel))
	h.Write([]byte{0})
	h.Write(pkt)
	var out [MigrateMACLen]byte
	copy(out[:], h.Sum(nil))
	return out
}

// SignMigrateTo encodes m as a stand-alone CRLY APP packet whose MAC is
// computed with key (IntegrityKey of the token the echoed request carried),
// and sets m.MAC to it.
func SignMigrateTo(ssrc uint32, m *MigrateTo, key []byte) ([]byte, error) {
	m.MAC = [MigrateMACLen]byte{}
	pkt, err := MarshalRelayApp(ssrc, m)
	if err != nil {
		return nil, err
	}
	m.MAC = migrateMAC(key, pkt[:len(pkt)-MigrateMACLen])
	copy(pkt[len(pkt)-MigrateMACLen:], m.MAC[:])
	return pkt, nil
}

// VerifyMigrateTo reports whether pkt, one whole CRLY APP packet carrying a
// MigrateTo exactly as received (not a compound datagram), bears the MAC
// of key. It checks nothing else; decode pkt for the fields.
func VerifyMigrateTo(pkt, key []byte) bool {
	if len(pkt) < relayAppHeaderLen+migrateFixedLen+MigrateEchoLen+4+MigrateMACLen {
		return false
	}
	want := migrateMAC(key, pkt[:len(pkt)-MigrateMACLen])
	return hmac.Equal(want[:], pkt[len(pkt)-MigrateMACLen:])
}

const (
	migrateFamilyIPv4 = 0x01
	migrateFamilyIPv6 = 0x02
	migrateFixedLen   = 8 // family, reserved, port, deadline
	migrateAddrOff    = migrateFixedLen + MigrateEchoLen
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

// MarshalData appends the body with MAC as it is (SignMigrateTo computes
// it); Deadline is truncated to milliseconds. An IPv4-mapped IPv6 address
// is sent as IPv6, as given.
func (m *MigrateTo) MarshalData(dst []byte) ([]byte, error) {
	if err := migrateCheckAddr(m.Addr); err != nil {
		return dst, err
	}
	if m.Transport > TransportTLS {
		return dst, fmt.Errorf("%w: migrate transport %d", ErrRelayAppInvalid, m.Transport)
	}
	ms := m.Deadline.Milliseconds()
	if ms < 0 || ms > math.MaxUint32 {
		return dst, fmt.Errorf("%w: migrate deadline %v", ErrRelayAppInvalid, m.Deadline)
	}
	family := byte(migrateFamilyIPv6)
	if m.Addr.Addr().Is4() {
		family = migrateFamilyIPv4
	}
	dst = append(dst, family, byte(m.Transport))
	dst = binary.BigEndian.AppendUint16(dst, m.Addr.Port())
	dst = binary.BigEndian.AppendUint32(dst, uint32(ms))
	dst = append(dst, m.Echo[:]...)
	dst, err := m.Addr.Addr().AppendBinary(dst)
	if err != nil {
		return dst, err
	}
	return append(dst, m.MAC[:]...), nil
}

// UnmarshalData decodes the 40- or 52-byte body. It does not verify the
// MAC (VerifyMigrateTo does, given the key).
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
	if err := relayCheckLen("migrate", b, migrateAddrOff+addrLen+MigrateMACLen); err != nil {
		return err
	}
	a, _ := netip.AddrFromSlice(b[migrateAddrOff : migrateAddrOff+addrLen]) // the length is checked
	ap := netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[2:4]))
	if err := migrateCheckAddr(ap); err != nil {
		return err
	}
	if t := Transport(b[1]); t > TransportTLS {
		return fmt.Errorf("%w: migrate transport %d", ErrRelayAppInvalid, t)
	}
	m.Addr, m.Transport = ap, Transport(b[1])
	m.Deadline = time.Duration(binary.BigEndian.Uint32(b[4:8])) * time.Millisecond
	copy(m.Echo[:], b[migrateFixedLen:migrateAddrOff])
	copy(m.MAC[:], b[migrateAddrOff+addrLen:])
	return nil
}
