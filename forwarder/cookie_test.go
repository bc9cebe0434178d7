package forwarder

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCookieJar(t *testing.T) {
	j := newCookieJar()
	a := netip.MustParseAddrPort("192.0.2.1:4000")
	now := time.Unix(1_800_000_000, 0)
	c := j.issue(a, now)
	require.Len(t, c, cookieSize)
	require.True(t, j.valid(c, a, now))
	require.True(t, j.valid(c, a, now.Add(cookieBucket)), "still valid in the next bucket")
	require.False(t, j.valid(c, a, now.Add(2*cookieBucket+time.Second)), "expired")
	require.False(t, j.valid(c, netip.MustParseAddrPort("192.0.2.1:4001"), now), "other port")
	require.False(t, j.valid(c, netip.MustParseAddrPort("192.0.2.2:4000"), now), "other address")
	require.False(t, newCookieJar().valid(c, a, now), "other forwarder's secret")
	require.False(t, j.valid(c[:8], a, now))
}
