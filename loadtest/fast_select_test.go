package loadtest

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/reflector"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// The end-to-end runs of make capacity's group4c/group8c and video cases,
// at a tiny rate through real sockets: what arrives, never how fast.

// selectivePlan is a short fast run of groups of size, with forwarded and
// layers as Fast.Forwarded and Fast.VideoLayers.
func selectivePlan(target netip.AddrPort, key []byte, size, forwarded, layers int) Plan {
	p := fastPlan(target, key)
	p.Mix = Mix{OneToOne: 0, GroupMin: size, GroupMax: size}
	p.Fast.Forwarded, p.Fast.VideoLayers = forwarded, layers
	p.CallDuration = CallDuration{Mean: Duration(time.Minute), Min: Duration(time.Minute), Max: Duration(time.Minute)} // until the profile ends
	p.Profile = Profile{Kind: ProfileSteady, Steady: Steady{Rate: 1.5, Duration: Duration(4 * time.Second)}}
	p.Bounds = Bounds{MaxDuration: Duration(20 * time.Second), MaxConcurrentCalls: 10, MaxCalls: 6}
	return p
}

// checkSelective holds a selective run to what it must show anywhere:
// every join admitted, loss per stream bounded (see checkFastTotals), probe
// frames byte-exact, and the forwarding summary there.
func checkSelective(t *testing.T, res *Result) *Forwarding {
	t.Helper()
	all := res.Totals.All
	f := res.Forwarding
	require.NotNil(t, f)
	t.Logf("forwarding %+v; received %d, expected %d, lost %d; setups %+v", *f, all.PacketsReceived, all.PacketsExpected, all.PacketsLost, all.Setups)
	require.GreaterOrEqual(t, all.CallsStarted, 3)
	require.Zero(t, all.CallsFailed)
	require.Equal(t, all.Setups.Attempted, all.Setups.Admitted, "refused: %+v", all.Setups.Refused)
	require.Greater(t, all.PacketsExpected, uint64(500))
	require.LessOrEqual(t, all.LossPct, 5.0, "lost %d of %d", all.PacketsLost, all.PacketsExpected)
	require.Zero(t, all.DecryptFailures)
	require.Greater(t, all.ProbeDelayMs.Count, uint64(0))
	require.Greater(t, f.Sent[0], uint64(500))
	require.Greater(t, f.Received[0], uint64(0))
	return f
}

// startReflector runs a bare reflector for the test.
func startReflector(t *testing.T) *reflector.Reflector {
	t.Helper()
	ref, err := reflector.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = ref.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ref
}

// startVideoForwarder runs a forwarder that never sheds group video: its
// load signals count the whole test process (the generator under the race
// detector included), and shedding is the forwarder's overload policy, not
// what this test checks.
func startVideoForwarder(t *testing.T) (netip.AddrPort, []byte) {
	t.Helper()
	pub, priv := mustKey(t)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zap.NewNop()
	cfg.ShedVideoAt = forwarder.ThrottleSecondParty + 1 // never
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f.Addr(), priv
}

// startConductedForwarder runs a cluster forwarder and a conductor over a
// real redis-server and an embedded nats-server, and waits until the
// conductor holds partitions.
func startConductedForwarder(t *testing.T) (netip.AddrPort, []byte) {
	t.Helper()
	pub, priv := mustKey(t)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	rd, ns := testenv.Redis(t), testenv.NATS(t)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	open := func() (*statestore.Redis, *nats.Conn) {
		store, err := statestore.OpenRedis(rd.URL(), statestore.Config{})
		require.NoError(t, err)
		nc, err := nats.Connect(ns.ClientURL())
		require.NoError(t, err)
		return store, nc
	}
	store, nc := open()
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zap.NewNop()
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key = "capacity-fwd", "127.0.0.1:0", key
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })

	cstore, cnc := open()
	ccfg := conductor.Default()
	ccfg.ID, ccfg.NATS, ccfg.Key, ccfg.Store, ccfg.Leases = "capacity-conductor", cnc, key, cstore, cstore
	ccfg.AcquireEvery, ccfg.Logger, ccfg.Registerer = 100*time.Millisecond, zap.NewNop(), prometheus.NewRegistry()
	c, err := conductor.New(ccfg)
	require.NoError(t, err)
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan struct{})
	go func() { defer close(cdone); _ = c.Run(cctx) }()
	t.Cleanup(func() { ccancel(); <-cdone; cnc.Close(); _ = cstore.Close() })
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := len(c.Owned()); n < ccfg.Partitions {
			return fmt.Errorf("the conductor holds %d of %d partitions", n, ccfg.Partitions)
		}
		return nil
	})
	return f.Addr(), priv
}

// group8c through a forwarder and a conductor: the conductor's decisions
// gate the audio, so far fewer copies arrive than a relay forwarding
// everything would write (at most 3 of each receiver's 7 voices once a
// call is decided), and the streams that are forwarded lose nothing
// beyond the bound.
func TestFastConductedGroupThroughForwarder(t *testing.T) {
	skipOffLinux(t)
	addr, priv := startConductedForwarder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Run(ctx, selectivePlan(addr, priv, 8, 3, 0), io.Discard)
	require.NoError(t, err)
	f := checkSelective(t, res)
	// Everything forwarded would be 100 %; 3 of 7 voices ~43 %, plus the
	// calls' first moments before a decision and loud onsets.
	require.Less(t, f.AudioForwardedPct, 70.0, "the conductor's gating never took hold")
	require.Less(t, f.OverForwardedPct, 50.0, "most receiver windows hear at most 3 voices")
	require.Zero(t, f.Sent[1], "no video")
}

// group8c against the reflector: members 0-2 of each call are fanned out,
// the others' audio is read and dropped (sent from the mute address), so
// no receiver ever hears more than 3 voices and exactly 3 of every 8
// senders' copies arrive.
func TestFastConductedGroupThroughReflector(t *testing.T) {
	skipOffLinux(t)
	ref := startReflector(t)
	_, priv := mustKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := selectivePlan(ref.Addr(), priv, 8, 3, 0)
	p.Fast.Target = TargetReflector
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	f := checkSelective(t, res)
	require.LessOrEqual(t, f.MaxAudioSenders, 3)
	require.Zero(t, f.OverForwardedPct)
	require.InDelta(t, 100*3.0/8, f.AudioForwardedPct, 10, "3 of 8 senders fanned out")
	require.Greater(t, ref.Stats().Dropped, f.Sent[0]/4, "the 5 muted members' frames reach the reflector and are dropped")
}

// video through the forwarder: every member sends 3 simulcast layers; with
// no conductor each receiver gets the lowest layer of every sender and
// never another, and the layer-0 streams lose nothing beyond the bound.
func TestFastVideoThroughForwarder(t *testing.T) {
	skipOffLinux(t)
	addr, priv := startVideoForwarder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Run(ctx, selectivePlan(addr, priv, 4, 0, 3), io.Discard)
	require.NoError(t, err)
	f := checkVideo(t, res)
	require.Greater(t, f.AudioForwardedPct, 90.0, "no conductor: every member's audio goes to every other")
}

func TestFastVideoThroughReflector(t *testing.T) {
	skipOffLinux(t)
	ref := startReflector(t)
	_, priv := mustKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := selectivePlan(ref.Addr(), priv, 4, 0, 3)
	p.Fast.Target = TargetReflector
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	f := checkVideo(t, res)
	require.Greater(t, ref.Stats().Dropped, f.Sent[2], "layers 1 and 2 reach the reflector and are dropped")
}

func checkVideo(t *testing.T, res *Result) *Forwarding {
	t.Helper()
	f := checkSelective(t, res)
	for l := 1; l <= 3; l++ {
		require.InDelta(t, float64(f.Sent[0]), float64(f.Sent[l]), float64(f.Sent[0])/10, "one packet per layer per audio frame (layer %d)", l-1)
	}
	require.Greater(t, f.Received[1], f.Offered[1]/2, "layer 0 reaches the receivers")
	require.Zero(t, f.Received[2], "layer 1 is never forwarded")
	require.Zero(t, f.Received[3], "layer 2 is never forwarded")
	return f
}
