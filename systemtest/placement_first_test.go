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

// regionFwd is a forwarder of a region on loopback: devices that use its
// announced media address reach it through media (a linkem link; one
// device only), and other forwarders reach its trunk through trunk, which
// delays what they send it, so that two forwarders' trunk links make the
// inter-region RTT they measure.
type regionFwd struct {
	f     *forwarder.Forwarder
	media *linkem.Link
	trunk *linkem.Link
}

// freePort picks a free loopback UDP port, released for the caller to bind.
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	port := netip.MustParseAddrPort(pc.LocalAddr().String())
	require.NoError(t, pc.Close())
	return port
}

func (e *env) regionForwarder(t *testing.T, id, region string, access linkem.Profile, trunkDelay, keepalive time.Duration) regionFwd {
	t.Helper()
	port, trunkPort := freePort(t), freePort(t)
	media, err := linkem.New(port, access, access, 21)
	require.NoError(t, err)
	t.Cleanup(func() { _ = media.Close() })
	trunk, err := linkem.New(trunkPort, linkem.Profile{Delay: trunkDelay}, linkem.Profile{}, 22)
	require.NoError(t, err)
	t.Cleanup(func() { _ = trunk.Close() })

	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	nc := e.natsConn(t)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = port.String(), v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = keepalive, max(2*time.Second, 3*keepalive)
	cfg.Cluster.ID, cfg.Cluster.Region, cfg.Cluster.Key = id, region, e.key
	cfg.Cluster.TrunkListen, cfg.Cluster.TrunkAdvertise = trunkPort.String(), trunk.Addr()
	cfg.Cluster.MediaAdvertise = media.Addr()
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
	return regionFwd{f: f, media: media, trunk: trunk}
}

// TestConductorPlacesNewCallAtOnce: a call's first placement through real
// sockets, NATS and Redis. Forwarders in London (uk) and Frankfurt (eu),
// 30 ms apart over their trunk (linkem, 15 ms each way). B and C join
// fwd-fra directly; A, in London, reaches fwd-lon in 2 ms and fwd-fra in
// 10 ms each way, so its race puts it on fwd-lon: one trunk from the
// others, a worst path of ~34 ms, against ~20 ms with all on fwd-fra. The
// gain, ~14 ms, is under the 15 ms a mid-call move must gain: only the
// first placement moves A, on the conductor's first decision after A's
// report of both RTTs, which comes with A's second keepalive. Measured
// from A's join to A on fwd-fra, with the forwarders' keepalive interval
// at 100 ms and at its default, 1 s; the audio's longest silence over the
// move is measured each way.
func TestConductorPlacesNewCallAtOnce(t *testing.T) {
	for _, ka := range []time.Duration{100 * time.Millisecond, time.Second} {
		t.Run("keepalive "+ka.String(), func(t *testing.T) { firstPlacementRun(t, ka) })
	}
}

func firstPlacementRun(t *testing.T, keepalive time.Duration) {
	e := newEnv(t)
	lon := e.regionForwarder(t, "fwd-lon", "uk", linkem.Profile{Delay: 2 * time.Millisecond}, 15*time.Millisecond, keepalive)
	fra := e.regionForwarder(t, "fwd-fra", "eu", linkem.Profile{Delay: 10 * time.Millisecond}, 15*time.Millisecond, keepalive)
	cd := e.conductor(t, "cond-1", nil)

	// The conductor holds every partition and the forwarders' trunk RTT
	// is known (a fleet view as the conductor's: the same messages).
	fleet := conductor.NewFleet(e.key, 2*time.Second, nil)
	fnc := e.natsConn(t)
	t.Cleanup(fnc.Close)
	require.NoError(t, fleet.Subscribe(fnc, "callrelay"))
	t.Cleanup(fleet.Close)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := len(cd.c.Owned()); n != partitions {
			return fmt.Errorf("the conductor holds %d partitions of %d", n, partitions)
		}
		if r, ok := fleet.View(time.Now()).RegionRTT[[2]string{"uk", "eu"}]; !ok || r < 25*time.Millisecond {
			return fmt.Errorf("trunk RTT uk-eu %v (known %v), want ~30 ms", r, ok)
		}
		return nil
	})

	call := protocol.NewID()
	join := func(ssrc uint32, fwds ...netip.AddrPort) *calltest.Member {
		p := protocol.NewID()
		tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p,
			Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
		require.NoError(t, err)
		m := calltest.JoinConfig(t, client.Config{Forwarders: fwds, Token: tok, FailoverAfter: 5 * time.Second, JoinTimeout: 5 * time.Second}, ssrc)
		m.ID = p
		return m
	}
	b := join(0xB, fra.f.Addr())
	c := join(0xC, fra.f.Addr())
	stop := make(chan struct{})
	defer close(stop)
	calltest.Talk(t, []*calltest.Member{b, c}, stop)
	a := join(0xA, lon.media.Addr(), fra.media.Addr())
	joined := time.Now()
	require.Equal(t, lon.media.Addr(), a.S.Forwarder(), "A's race puts it on fwd-lon, its nearest")
	calltest.Talk(t, []*calltest.Member{a}, stop)
	testenv.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
		if got := a.S.Forwarder(); got != fra.media.Addr() {
			return fmt.Errorf("A on %s, want fwd-fra at %s", got, fra.media.Addr())
		}
		return nil
	})
	placed := time.Since(joined)
	grows(t, b, 0xA, 25)
	grows(t, a, 0xB, 25)
	gapAB, gapBA := b.MaxGap(0xA), a.MaxGap(0xB)
	t.Logf("keepalive %s: A placed on fwd-fra %s after its join on fwd-lon; longest silence since A joined: A->B %s, B->A %s",
		keepalive, placed.Round(time.Millisecond), gapAB.Round(time.Millisecond), gapBA.Round(time.Millisecond))
	// The move comes on the first decision after A's second keepalive:
	// one keepalive interval, a metadata tick and a decision tick (100 ms
	// each), and A's join on fwd-fra. If a member's join answer came to a
	// retransmission (no RTT sample: Karn), its reports start a keepalive
	// later, and the conductor waits for them at most half the 2 s window.
	require.Less(t, placed, max(keepalive, time.Second)+700*time.Millisecond, "placed on the first decision after the reports")
	require.Equal(t, 1.0, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "first"))
	require.Zero(t, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "rtt"), "the hysteresis would not have moved A")
	require.Less(t, gapAB, 300*time.Millisecond, "make-before-break: A's audio keeps reaching B")
	require.Less(t, gapBA, 300*time.Millisecond, "make-before-break: B's audio keeps reaching A")
	require.Equal(t, fra.f.Addr(), b.S.Forwarder())

	// Placed for good: later reports move nobody.
	grows(t, b, 0xA, 100)
	require.Equal(t, 1.0, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "first"))
	require.Zero(t, metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "rtt"))
	require.Equal(t, fra.media.Addr(), a.S.Forwarder())
}
