package forwarder

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzHandle feeds arbitrary datagrams to the per-packet path, from a member
// and from a stranger. It must never panic, never forward a stranger's
// datagram, and forward a member's datagram to all 4 others or to nobody.
func FuzzHandle(f *testing.F) {
	f.Add(audioPacket, true)
	f.Add(audioPacket[:12], false)
	f.Add([]byte{0x80, 0xc9, 0x00, 0x01, 0, 0, 0, 1}, true) // RTCP receiver report, no blocks
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, true)
	f.Add([]byte{0x17, 0xfe, 0xfd}, true) // DTLS: not ours
	f.Fuzz(func(t *testing.T, b []byte, member bool) {
		r, rt, src, mc := hotPathFixture(t)
		if !member {
			src = netip.MustParseAddrPort("127.0.0.9:9")
		}
		r.handle(rt, b, src, 1)
		queued := mc.queued
		r.flush()
		switch {
		case !member && queued != 0:
			t.Fatalf("a stranger's datagram was forwarded")
		case queued != 0 && queued != 4:
			t.Fatalf("fan-out to %d, want 4", queued)
		}
	})
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, s := range []string{"127.0.0.1:5004", "[::1]:443", "[2001:db8::7]:65535", "10.1.2.3:1"} {
		ap := netip.MustParseAddrPort(s)
		for _, v6 := range []bool{false, true} {
			if ap.Addr().Is6() && !v6 {
				continue // an IPv4 socket cannot reach IPv6 peers
			}
			sa := encodeSockaddr(ap, v6)
			got, ok := decodeSockaddr(sa.raw[:sa.len])
			require.True(t, ok)
			require.Equal(t, ap, got, "v6 socket %v", v6)
		}
	}
	_, ok := decodeSockaddr([]byte{1, 2, 3})
	require.False(t, ok)
}
