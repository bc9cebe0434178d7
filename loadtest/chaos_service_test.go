//go:build linux

package loadtest

import (
	"context"
	"crypto/ed25519"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// quietRedis drops go-redis's own log lines (a pool failing to dial the
// Redis the chaos took down, many a second).
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietRedis{}) }

// startClusterForwarders runs n forwarders of one cluster on loopback, on
// the Redis at redisURL and the NATS at natsURL, trusting the returned
// signing key; they stop with the test.
func startClusterForwarders(t *testing.T, redisURL, natsURL string, n int) ([]netip.AddrPort, ed25519.PrivateKey) {
	t.Helper()
	fs, priv := startCluster(t, redisURL, natsURL, n, nil)
	addrs := make([]netip.AddrPort, len(fs))
	for i, f := range fs {
		addrs[i] = f.Addr()
	}
	return addrs, priv
}

// startCluster is startClusterForwarders with each forwarder's config
// changed by with (if not nil) before it starts; it returns the
// forwarders.
func startCluster(t *testing.T, redisURL, natsURL string, n int, with func(*forwarder.Config)) ([]*forwarder.Forwarder, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	var fs []*forwarder.Forwarder
	for i := range n {
		v, err := protocol.NewTokenVerifier(pub)
		require.NoError(t, err)
		store, err := statestore.OpenRedis(redisURL, statestore.Config{})
		require.NoError(t, err)
		nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		require.NoError(t, err)
		cfg := forwarder.Default()
		cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 1, zap.NewNop()
		cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, time.Second
		cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key = "fwd-"+string(rune('a'+i)), "127.0.0.1:0", key
		cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
		cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout = 100*time.Millisecond, 500*time.Millisecond
		if with != nil {
			with(&cfg)
		}
		f, err := forwarder.New(cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = f.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
		fs = append(fs, f)
	}
	return fs, priv
}

// watchReachable dials addr (TCP) every few milliseconds until stop is
// closed, and returns whether it answered, once per stretch (true, false,
// true, ...).
func watchReachable(addr string, stop <-chan struct{}) <-chan []bool {
	out := make(chan []bool, 1)
	go func() {
		var seen []bool
		deadline := time.Now().Add(time.Minute) // a net: the run ends long before
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				out <- seen
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
			if err == nil {
				_ = c.Close()
			}
			if up := err == nil; len(seen) == 0 || seen[len(seen)-1] != up {
				seen = append(seen, up)
			}
			time.Sleep(5 * time.Millisecond) // a polling interval, not a wait for an event
		}
		out <- seen
	}()
	return out
}

func hostPort(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	return u.Host
}

// Calls across two forwarders of a cluster while the chaos takes its
// real redis-server down for 3 s, then its NATS server for 1.5 s, through
// Plan.Services (as a caller that started them itself does): each down and
// up is executed when planned (a watcher sees each server refuse
// connections, then take them again) and recorded in order, and the calls
// carried media through it.
func TestChaosRedisAndNATSDown(t *testing.T) {
	rs, ns := testenv.Redis(t), testenv.NATS(t)
	fwds, priv := startClusterForwarders(t, rs.URL(), ns.ClientURL(), 2)
	plan := Plan{
		Forwarders:   fwds,
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 0.5, GroupMin: 3, GroupMax: 3},
		CallDuration: CallDuration{Mean: Duration(7 * time.Second), Min: Duration(7 * time.Second), Max: Duration(7 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 2, Duration: Duration(9 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(20 * time.Second), MaxConcurrentCalls: 10, MaxCalls: 4},
		Seed:         5,
		Services: map[string]Service{
			"redis": {Down: func(context.Context) error { rs.Stop(); return nil }, Up: func(context.Context) error { return rs.Restart() }},
			"nats":  {Down: func(context.Context) error { ns.Shutdown(); return nil }, Up: func(context.Context) error { return ns.Restart() }},
		},
		Chaos: []ChaosAction{
			{At: Duration(1500 * time.Millisecond), Kind: ChaosDown, Target: "redis", For: Duration(3 * time.Second)},
			{At: Duration(5 * time.Second), Kind: ChaosDown, Target: "nats", For: Duration(1500 * time.Millisecond)},
		},
	}
	stop := make(chan struct{})
	redisSeen, natsSeen := watchReachable(hostPort(t, rs.URL()), stop), watchReachable(hostPort(t, ns.ClientURL()), stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, plan, nil)
	close(stop)
	require.NoError(t, err)
	require.Equal(t, []bool{true, false, true}, <-redisSeen, "redis refused connections while down, and took them again")
	require.Equal(t, []bool{true, false, true}, <-natsSeen, "so did NATS")

	want := []struct {
		kind, target string
		atMs         float64
	}{{ChaosDown, "redis", 1500}, {ChaosUp, "redis", 4500}, {ChaosDown, "nats", 5000}, {ChaosUp, "nats", 6500}}
	require.Len(t, res.Events, len(want))
	for i, w := range want {
		e := res.Events[i]
		require.Equal(t, w.kind, e.Kind, i)
		require.Equal(t, w.target, e.Target, i)
		require.Empty(t, e.Err, i)
		require.Zero(t, e.PID, i)
		require.GreaterOrEqual(t, e.AtMs, w.atMs, i, "never early")
		require.Positive(t, e.TookMs, i)
	}
	all := res.Totals.All
	require.Positive(t, all.Setups.Admitted)
	require.Positive(t, all.PacketsReceived)
	for _, e := range res.Events {
		require.Positive(t, e.MaxGapAfterMs, "media flowed after %s %s", e.Kind, e.Target)
	}
	t.Logf("calls %d, dropped %d, sessions lost %d, loss %.2f%%, re-joins %d; events %+v",
		all.CallsStarted, all.CallsDropped, all.SessionsLost, all.LossPct, all.RejoinSilenceMs.Count, res.Events)
}

// Command hooks (CommandService, what --chaos-down and --chaos-up give):
// each runs when planned with the target and action in its environment;
// one that fails is recorded with its exit and the end of its output;
// an up still pending when the run ends is run then.
func TestChaosCommandHooks(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "hooks.log")
	record := `echo "$CALLRELAY_CHAOS_ACTION $CALLRELAY_CHAOS_TARGET" >> ` + log
	plan := idlePlan(t, 2)
	plan.Services = map[string]Service{
		"redis": CommandService("redis", record, record),
		"nats":  CommandService("nats", "echo cannot reach the broker >&2; exit 3", record),
	}
	plan.Chaos = []ChaosAction{
		{At: Duration(200 * time.Millisecond), Kind: ChaosDown, Target: "redis", For: Duration(400 * time.Millisecond)},
		{At: Duration(300 * time.Millisecond), Kind: ChaosDown, Target: "nats", For: Duration(time.Hour)},
	}
	res, err := Run(context.Background(), plan, nil)
	require.NoError(t, err)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Equal(t, []string{"down redis", "up redis", "up nats"}, lines)

	var kinds []string
	for _, e := range res.Events {
		kinds = append(kinds, e.Kind+" "+e.Target)
	}
	require.Equal(t, []string{"down redis", "down nats", "up redis", "up nats"}, kinds)
	failed := res.Events[1]
	require.Contains(t, failed.Err, "exit status 3")
	require.Contains(t, failed.Err, "cannot reach the broker")
	require.Empty(t, res.Events[3].Err)
	require.LessOrEqual(t, res.Events[3].AtMs, res.DurationMs, "brought up by the run's end, not the down's")
}

// A down names a service, with both its commands; a kill a process.
func TestChaosDownValidation(t *testing.T) {
	plan := idlePlan(t, 1)
	plan.Processes = map[string]int{"fwd-a": 4242}
	plan.Services = map[string]Service{"half": {Down: func(context.Context) error { return nil }}}
	for _, tc := range []struct {
		a    ChaosAction
		says string
	}{
		{ChaosAction{Kind: ChaosDown, Target: "redis", For: Duration(time.Second)}, "not a known service"},
		{ChaosAction{Kind: ChaosDown, Target: "fwd-a", For: Duration(time.Second)}, "not a known service"},
		{ChaosAction{Kind: ChaosDown, Target: "half", For: Duration(time.Second)}, "not a known service"},
		{ChaosAction{Kind: ChaosDown, Target: "half"}, "a down needs for > 0"},
		{ChaosAction{Kind: ChaosKill, Target: "half"}, "not a known process"},
		{ChaosAction{Kind: "restart", Target: "fwd-a"}, "want kill, term, stop or down"},
	} {
		plan.Chaos = []ChaosAction{tc.a}
		_, err := Run(context.Background(), plan, nil)
		require.ErrorIs(t, err, ErrPlan, tc.says)
		require.Contains(t, err.Error(), tc.says)
	}
}
