package protocol

import (
	"net/netip"
	"testing"
	"time"
)

func TestMigrateTo(t *testing.T) {
	relayRunBodyTests(t, func() RelayMessage { return new(MigrateTo) },
		[]relayBodyCase{
			{
				name: "ipv4",
				msg:  &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.10:3478"), Deadline: 5 * time.Second},
				data: []byte{
					0x01, 0x00, 0x0d, 0x96, // family IPv4, port 3478
					0x00, 0x00, 0x13, 0x88, // deadline 5000 ms
					0xc0, 0x00, 0x02, 0x0a, // 192.0.2.10
				},
			},
			{
				name: "ipv6",
				msg:  &MigrateTo{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Deadline: 250 * time.Millisecond},
				data: []byte{
					0x02, 0x00, 0x01, 0xbb, // family IPv6, port 443
					0x00, 0x00, 0x00, 0xfa, // deadline 250 ms
					0x20, 0x01, 0x0d, 0xb8, // 2001:db8::1
					0x00, 0x00, 0x00, 0x00,
					0x00, 0x00, 0x00, 0x00,
					0x00, 0x00, 0x00, 0x01,
				},
			},
			{
				name: "ipv4-mapped ipv6 stays ipv6, no deadline",
				msg:  &MigrateTo{Addr: netip.MustParseAddrPort("[::ffff:10.0.0.1]:9")},
				data: []byte{
					0x02, 0x00, 0x00, 0x09, // family IPv6, port 9
					0x00, 0x00, 0x00, 0x00, // deadline 0 ms: now
					0x00, 0x00, 0x00, 0x00, // ::ffff:10.0.0.1
					0x00, 0x00, 0x00, 0x00,
					0x00, 0x00, 0xff, 0xff,
					0x0a, 0x00, 0x00, 0x01,
				},
			},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"no address", []byte{0x01, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, ErrRelayAppTruncated},
			{
				"ipv6 cut",
				append([]byte{0x02, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, make([]byte, 12)...),
				ErrRelayAppTruncated,
			},
			{
				"ipv4 with an ipv6 address",
				append([]byte{0x01, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, make([]byte, 16)...),
				ErrRelayAppOversized,
			},
			{
				"family 3",
				[]byte{0x03, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88, 0xc0, 0x00, 0x02, 0x0a},
				ErrRelayAppInvalid,
			},
			{
				"port 0",
				[]byte{0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x13, 0x88, 0xc0, 0x00, 0x02, 0x0a},
				ErrRelayAppInvalid,
			},
			{
				"unspecified address",
				[]byte{0x01, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88, 0x00, 0x00, 0x00, 0x00},
				ErrRelayAppInvalid,
			},
		},
		[]relayBadMsg{
			{"zero value", &MigrateTo{}},
			{"port 0", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:0")}},
			{"zone", &MigrateTo{Addr: netip.MustParseAddrPort("[fe80::1%eth0]:3478")}},
			{"unspecified", &MigrateTo{Addr: netip.MustParseAddrPort("[::]:3478")}},
			{"negative deadline", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Deadline: -time.Millisecond}},
			{"deadline too long", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Deadline: 50 * 24 * time.Hour}},
		},
	)
}
