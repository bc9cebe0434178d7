//go:build linux

package loadtest

import (
	"context"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/afpacket"
	"github.com/callrelay/callrelay/internal/reflector"
	"github.com/callrelay/callrelay/protocol"
)

// packetLab makes the test's own network namespaces and veth pair
// (afpacket.Lab, removed at cleanup) and returns the plan's packet I/O
// for them.
func packetLab(t *testing.T) (*afpacket.Lab, PacketIO) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: packet I/O needs network namespaces, a veth pair and AF_PACKET (CAP_NET_ADMIN, CAP_NET_RAW)")
	}
	const devices = "198.18.0.0/15"
	l, err := afpacket.NewLab(netip.MustParsePrefix(devices))
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l, PacketIO{NetNS: l.GenNS, Iface: l.GenIface, Gateway: l.RelayMAC.String(), Devices: devices}
}

// TestFastPacketIOThroughReflector runs the fast engine's small plan with
// packet I/O against a real reflector in the relay's namespace: every
// join answered, every probe frame decrypted and byte-exact after its
// trip out as a raw frame, through the reflector's UDP socket and back
// through the ring; baseline pairs bounced by the relay side's kernel;
// arrival times from the ring.
func TestFastPacketIOThroughReflector(t *testing.T) {
	l, pio := packetLab(t)
	var ref *reflector.Reflector
	require.NoError(t, afpacket.InNetNS(l.RelayNS, func() (err error) {
		ref, err = reflector.Listen(netip.AddrPortFrom(l.RelayAddr, 0))
		return err
	}))
	ctx := serveReflector(t, ref)
	p := fastPlan(ref.Addr(), nil)
	_, p.SigningKey = mustKey(t)
	p.Fast.Target = TargetReflector
	p.Fast.IO, p.Fast.Packet = FastIOPacket, pio
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	checkFastTotals(t, res)
	require.Equal(t, FastIOPacket, res.Generator.FastIO)
	st := ref.Stats()
	require.GreaterOrEqual(t, st.Registered, uint64(res.Totals.All.Setups.Admitted))
	require.Zero(t, st.Dropped, "every frame parsed by the relay's kernel and from a registered device")
	require.Greater(t, st.Out, res.Totals.All.PacketsReceived/2)
}

// TestFastPacketIOThroughForwarder: the same against a real forwarder
// (STUN joins with tokens, address check) in the relay's namespace.
func TestFastPacketIOThroughForwarder(t *testing.T) {
	l, pio := packetLab(t)
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen = netip.AddrPortFrom(l.RelayAddr, 0).String()
	cfg.Verifier, cfg.Readers, cfg.Logger = v, 2, zap.NewNop()
	var f *forwarder.Forwarder
	require.NoError(t, afpacket.InNetNS(l.RelayNS, func() (err error) {
		f, err = forwarder.New(cfg)
		return err
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	p := fastPlan(f.Addr(), priv)
	p.Fast.IO, p.Fast.Packet = FastIOPacket, pio
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "profile_done", res.Stopped)
	checkFastTotals(t, res)
}
