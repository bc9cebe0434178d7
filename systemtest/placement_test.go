package systemtest

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// behindLink starts a forwarder that devices reach through a link
// emulator on loopback, and announces the link's address as its media
// address: the address a device measures its RTT to is the one the
// forwarder is known by, as a public address in front of it would be.
// The port is picked free and released just before the forwarder binds it.
func (e *env) behindLink(t *testing.T, id string, p linkem.Profile) (*forwarder.Forwarder, *linkem.Link) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	port := netip.MustParseAddrPort(pc.LocalAddr().String())
	require.NoError(t, pc.Close())
	l, err := linkem.New(port, p, p, 20)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })

	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	nc := e.natsConn(t)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = port.String(), v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, 2*time.Second
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key = id, "127.0.0.1:0", e.key
	cfg.Cluster.MediaAdvertise = l.Addr()
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout = 100*time.Millisecond, 500*time.Millisecond
	cfg.Cluster.ReconcileEvery, cfg.Cluster.OrphanAfter = 500*time.Millisecond, 2*time.Second
	cfg.Cluster.Partitions = partitions
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	return f, l
}

// TestConductorMovesMemberWhoseRTTJumps: A and B talk on fwd-a; A reaches
// fwd-a through a link with no delay and fwd-b through one with 25 ms each
// way, so it joins fwd-a and reports both RTTs. When A's path to fwd-a
// takes 100 ms each way, its keepalives report it, and the conductor moves
// A to fwd-b (A there, B on fwd-a, one trunk: ~50 ms against ~200 ms),
// make-before-break; the media gap each way is measured over the move.
func TestConductorMovesMemberWhoseRTTJumps(t *testing.T) {
	e := newEnv(t)
	fa, la := e.behindLink(t, "fwd-a", linkem.Profile{})
	_, lb := e.behindLink(t, "fwd-b", linkem.Profile{Delay: 25 * time.Millisecond})
	// Re-placement mid-call: the jump comes within 2 s of A's join, when
	// the first placement (TestConductorPlacesNewCallAtOnce) would move A
	// at once, so it is off here.
	cd := e.conductor(t, "cond-1", func(c *conductor.Config) { c.Placement.Every, c.Placement.First = 200*time.Millisecond, 0 })

	call := protocol.NewID()
	join := func(ssrc uint32, fwds ...netip.AddrPort) *calltest.Member {
		p := protocol.NewID()
		tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p,
			Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
		require.NoError(t, err)
		// A failover would move A by itself: keep it well above the RTTs.
		m := calltest.JoinConfig(t, client.Config{Forwarders: fwds, Token: tok, FailoverAfter: 5 * time.Second, JoinTimeout: 5 * time.Second}, ssrc)
		m.ID = p
		return m
	}
	b := join(0xB, fa.Addr())
	a := join(0xA, la.Addr(), lb.Addr())
	require.Equal(t, la.Addr(), a.S.Forwarder(), "A joins fwd-a, the nearer")
	stop := make(chan struct{})
	defer close(stop)
	calltest.Talk(t, []*calltest.Member{a, b}, stop)
	calltest.AllHearAll(t, []*calltest.Member{a, b}, time.Now(), 10*time.Second)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if r := a.S.CandidateRTTs(); len(r) < 2 {
			return fmt.Errorf("A has RTTs to %d forwarders, want 2", len(r))
		}
		return nil
	})
	require.Zero(t, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", ""), "nobody moves while the paths are as they were")

	jump := linkem.Profile{Delay: 100 * time.Millisecond}
	la.SetUp(jump)
	la.SetDown(jump)
	jumped := time.Now()
	grows(t, b, 0xA, 15) // delayed packets arrive: the jump's own gap is not the move's
	a.ResetGaps()
	b.ResetGaps()
	testenv.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		if got := a.S.Forwarder(); got != lb.Addr() {
			return fmt.Errorf("A on %s, want fwd-b at %s", got, lb.Addr())
		}
		return nil
	})
	moved := time.Since(jumped)
	grows(t, b, 0xA, 25)
	grows(t, a, 0xB, 25)
	gapAB, gapBA := b.MaxGap(0xA), a.MaxGap(0xB)
	t.Logf("A re-placed %s after its path to fwd-a went from 0 to 200 ms RTT; longest silence over the move: A->B %s, B->A %s",
		moved.Round(time.Millisecond), gapAB.Round(time.Millisecond), gapBA.Round(time.Millisecond))
	require.Equal(t, 1.0, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "rtt"))
	require.Less(t, gapAB, 300*time.Millisecond, "make-before-break: A's audio keeps reaching B")
	require.Less(t, gapBA, 300*time.Millisecond, "make-before-break: B's audio keeps reaching A")
	require.Equal(t, fa.Addr(), b.S.Forwarder(), "B stays where it is near")

	// A is placed where it is best: later reports move nobody.
	grows(t, b, 0xA, 50)
	require.Equal(t, 1.0, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "rtt"))
	require.Equal(t, lb.Addr(), a.S.Forwarder())
}
