package loadtest

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPacketDeviceRange(t *testing.T) {
	r, err := packetRange("198.18.0.0/15")
	require.NoError(t, err)
	require.Equal(t, 511*254, r.devices())
	require.Equal(t, netip.MustParseAddr("198.18.0.1"), r.mute())
	for i, want := range map[int]string{0: "198.18.1.1", 253: "198.18.1.254", 254: "198.18.2.1", r.devices() - 1: "198.19.255.254"} {
		a, err := r.addr(i)
		require.NoError(t, err)
		require.Equal(t, want, a.String())
		j, ok := r.dev(a)
		require.True(t, ok)
		require.Equal(t, i, j)
	}
	_, err = r.addr(r.devices())
	require.Error(t, err)
	for _, s := range []string{"198.18.0.1", "198.18.1.0", "198.18.1.255", "198.20.0.1", "198.17.255.1", "127.16.0.1"} {
		_, ok := r.dev(netip.MustParseAddr(s))
		require.False(t, ok, s)
	}
	_, ok := r.dev(r.mute())
	require.False(t, ok)
	// The loopback range is the one it always was.
	require.Equal(t, muteAddr, loopbackRange.mute())
	require.Equal(t, maxDevices, loopbackRange.devices())
	for _, bad := range []string{"198.18.0.0/24", "10.0.0.0/7", "fd00::/64", "nonsense"} {
		_, err := packetRange(bad)
		require.Error(t, err, bad)
	}
}

func TestValidatePacketIO(t *testing.T) {
	f := Fast{IO: FastIOPacket, Sockets: 2}.withDefaults()
	require.ErrorContains(t, validateIO(f), "fast.packet.iface")
	f.Packet.Iface = "veth-gen"
	require.NoError(t, validateIO(f))
	f.Packet.Gateway = "02:00:00:00:00:zz"
	require.ErrorContains(t, validateIO(f), "fast.packet.gateway")
	f.Packet.Gateway = "02:00:00:00:00:01"
	f.Target = TargetTURN
	require.ErrorContains(t, validateIO(f), "target turn")
	f.Target, f.IO = TargetForwarder, "xdp"
	require.ErrorContains(t, validateIO(f), `fast.io "xdp"`)
	require.Equal(t, FastIOSocket, Fast{}.withDefaults().IO)
	m, err := gatewayMAC("02:00:00:00:00:01", nil)
	require.NoError(t, err)
	require.Equal(t, "02:00:00:00:00:01", m.String())
	_, err = gatewayMAC("", []netip.AddrPort{netip.MustParseAddrPort("192.0.2.254:1")})
	require.ErrorContains(t, err, "--fast-gateway")
}
