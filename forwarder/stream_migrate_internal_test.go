package forwarder

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// TestStreamListenersAnnounced: what a forwarder's heartbeat says about
// its listeners (protocol/README.md 7.2, flag S). One bound to an address
// is announced at it; one bound to a wildcard (Go listens on both families
// there) at the media address with its own port, and at the IPv6 media
// address too when there is one.
func TestStreamListenersAnnounced(t *testing.T) {
	r, _ := startStreamRelay(t, func(c *Config) { c.Stream.TCPListen = "0.0.0.0:0" })
	tcp, tls := r.f.StreamAddrs()
	require.True(t, tcp.Addr().IsUnspecified(), "bound to %v", tcp)
	media := r.f.mediaAdvertise.Addr()
	require.True(t, media.Is4(), "the test relay's media address is %v", media)
	require.Equal(t, protocol.StreamListeners{{netip.AddrPortFrom(media, tcp.Port())}, {tls}}, r.f.streamListeners())

	// With an IPv6 media address beside it (a dual-stack forwarder), the
	// wildcard listener is announced on both families.
	m6 := netip.MustParseAddr("2001:db8::10")
	r.f.mediaAdv6 = netip.AddrPortFrom(m6, 3478)
	l := r.f.streamListeners()
	require.Equal(t, protocol.StreamListeners{
		{netip.AddrPortFrom(media, tcp.Port()), netip.AddrPortFrom(m6, tcp.Port())},
		{tls},
	}, l)
	require.Equal(t, netip.AddrPortFrom(m6, tcp.Port()), l.For(protocol.TransportTCP, true))
	require.Equal(t, tls, l.For(protocol.TransportTLS, true), "no IPv6 TLS listener: the IPv4 one")

	// No listeners, or --stream-announce=false: nothing announced (and no
	// flag S on the wire).
	r2 := startRelay(t, nil)
	require.Equal(t, protocol.StreamListeners{}, r2.f.streamListeners())
	r.f.cfg.Stream.Announce = false
	require.Equal(t, protocol.StreamListeners{}, r.f.streamListeners())
}

// TestStreamListenersAdvertised: --tcp-advertise / --tls-advertise(6)
// replace what the heartbeat derives from the bound address (a forwarder
// behind a load balancer or NAT), each in its own transport and family;
// one for a listener that does not exist, or in the wrong family, is
// refused at start.
func TestStreamListenersAdvertised(t *testing.T) {
	r, _ := startStreamRelay(t, func(c *Config) { c.Stream.TCPListen = "0.0.0.0:0" })
	tcp, tls := r.f.StreamAddrs()
	lb := netip.MustParseAddrPort("198.51.100.7:443")
	lb6 := netip.MustParseAddrPort("[2001:db8::7]:443")
	r.f.cfg.Stream.Advertise = protocol.StreamListeners{{}, {lb, lb6}}
	media := r.f.mediaAdvertise.Addr()
	require.Equal(t, protocol.StreamListeners{{netip.AddrPortFrom(media, tcp.Port())}, {lb, lb6}}, r.f.streamListeners(),
		"TLS announced at the advertised addresses, TCP still derived")
	require.NotEqual(t, lb, tls)

	bad := []StreamConfig{
		{Advertise: protocol.StreamListeners{{lb}}},                          // no TCP listener
		{TCPListen: "0.0.0.0:0", Advertise: protocol.StreamListeners{{lb6}}}, // IPv6 in the IPv4 slot
		{TCPListen: "0.0.0.0:0", Advertise: protocol.StreamListeners{{{}, lb}}},
		{TCPListen: "0.0.0.0:0", Advertise: protocol.StreamListeners{{netip.MustParseAddrPort("0.0.0.0:443")}}},
	}
	for i, c := range bad {
		base := DefaultStream()
		base.TCPListen, base.Advertise = c.TCPListen, c.Advertise
		require.Error(t, base.validate(), "case %d", i)
	}
	ok := DefaultStream()
	ok.TCPListen, ok.Advertise = "0.0.0.0:0", protocol.StreamListeners{{lb, lb6}}
	require.NoError(t, ok.validate())
}
