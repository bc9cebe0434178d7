package mmsg

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

// An address encoded for either socket family decodes to itself; IPv4
// through a v6 socket travels v4-mapped and comes back plain.
func TestSockaddrRoundTrip(t *testing.T) {
	for _, s := range []string{"127.0.0.1:5004", "[::1]:443", "[2001:db8::7]:65535", "10.1.2.3:1"} {
		ap := netip.MustParseAddrPort(s)
		for _, v6 := range []bool{false, true} {
			if ap.Addr().Is6() && !v6 {
				continue // an IPv4 socket cannot reach IPv6 peers
			}
			sa := EncodeSockaddr(ap, v6)
			require.Len(t, sa.Bytes(), map[bool]int{false: 16, true: 28}[v6])
			got, ok := DecodeSockaddr(sa.Bytes())
			require.True(t, ok)
			require.Equal(t, ap, got, "v6 socket %v", v6)
		}
	}
	for _, b := range [][]byte{{1, 2, 3}, make([]byte, 16), append([]byte{10, 0}, make([]byte, 20)...)} {
		_, ok := DecodeSockaddr(b)
		require.False(t, ok, "%x", b)
	}
}
