package regions

import (
	"context"
	"crypto/ed25519"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Env is what the forwarders (and conductors) of a region test share: a
// Redis, a NATS, the cluster key and the token signing key. Made by NewEnv
// they run on the host's loopback, where only media takes the emulated
// paths; made by NewEnvIn they run as processes in a region's namespace
// and every client of them dials from its own site, so control traffic
// crosses the emulated links too.
type Env struct {
	Key  protocol.ClusterKey
	Priv ed25519.PrivateKey
	// RedisURL and NATSURL are where the servers listen.
	RedisURL, NATSURL string
	// Home is the site whose namespace holds them ("" for the host).
	Home string
	tp   *Topology
}

func newEnv(t testing.TB) *Env {
	e := &Env{}
	var err error
	e.Key, err = protocol.NewClusterKey()
	require.NoError(t, err)
	_, e.Priv, err = protocol.GenerateSigningKey()
	require.NoError(t, err)
	return e
}

// NewEnv starts Redis and NATS on the host's loopback (testenv).
func NewEnv(t testing.TB) *Env {
	t.Helper()
	e := newEnv(t)
	e.RedisURL, e.NATSURL = testenv.Redis(t).URL(), testenv.NATS(t).ClientURL()
	return e
}

// NewEnvIn starts redis-server and nats-server in site's namespace.
func NewEnvIn(t testing.TB, tp *Topology, site string) *Env {
	t.Helper()
	e := newEnv(t)
	e.tp, e.Home = tp, site
	e.RedisURL, e.NATSURL = RedisURL(StartRedis(t, tp, site)), NATSURL(StartNATS(t, tp, site))
	return e
}

// Token is a group-call token for a new participant of call.
func (e *Env) Token(t testing.TB, call protocol.ID, size int) ([]byte, protocol.ID) {
	t.Helper()
	p := protocol.NewID()
	b, err := protocol.SignToken(e.Priv, protocol.Token{CallID: call, ParticipantID: p,
		Class: protocol.ClassGroup, MaxSize: uint16(size), Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	return b, p
}

// NATS connects to the env's NATS from site (the host for an env of
// NewEnv), reconnecting for ever; the caller closes it.
func (e *Env) NATS(t testing.TB, site string) *nats.Conn {
	t.Helper()
	opts := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}
	if e.tp != nil {
		opts = append(opts, e.tp.NATSDialer(site))
	}
	nc, err := nats.Connect(e.NATSURL, opts...)
	require.NoError(t, err)
	return nc
}

// Store opens the env's Redis from site (the host for an env of NewEnv),
// with statestore's default timeouts; close is for the caller.
func (e *Env) Store(t testing.TB, site string) (s *statestore.Redis, close func()) {
	t.Helper()
	if e.tp == nil {
		s, err := statestore.OpenRedis(e.RedisURL, statestore.Config{})
		require.NoError(t, err)
		return s, func() { _ = s.Close() }
	}
	opt, err := redis.ParseURL(e.RedisURL)
	require.NoError(t, err)
	opt.Dialer = e.tp.RedisDialer(site)
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = statestore.DefaultDialTimeout, statestore.DefaultOpTimeout, statestore.DefaultOpTimeout
	c := redis.NewClient(opt)
	return statestore.NewRedis(c, statestore.Config{}), func() { _ = c.Close() }
}

// Node is one forwarder of a region test.
type Node struct {
	ID, Region string
	F          *forwarder.Forwarder
	Stop       func() // stops Run and waits for it; also at the test's end
}

// StartForwarder starts a forwarder of region whose media and trunk
// sockets are bound in the region's namespace (and, with NewEnvIn, its
// NATS and Redis clients too), with test timings: keepalives every
// 100 ms, heartbeats every 100 ms, a peer lost after 1 s. mod may change
// the config before it starts.
func (e *Env) StartForwarder(t testing.TB, tp *Topology, region, id string, mod func(*forwarder.Config)) *Node {
	t.Helper()
	v, err := protocol.NewTokenVerifier(e.Priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, closeStore := e.Store(t, region)
	nc := e.NATS(t, region)
	cfg := forwarder.Default()
	addr := netip.AddrPortFrom(tp.Addr(region), 0).String()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = addr, v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, 2*time.Second
	cfg.Cluster.ID, cfg.Cluster.Region, cfg.Cluster.TrunkListen, cfg.Cluster.Key = id, region, addr, e.Key
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout = 100*time.Millisecond, time.Second
	cfg.Cluster.ReconcileEvery, cfg.Cluster.OrphanAfter = 500*time.Millisecond, 3*time.Second
	if mod != nil {
		mod(&cfg)
	}
	var f *forwarder.Forwarder
	require.NoError(t, tp.Do(region, func() error {
		var err error
		f, err = forwarder.New(cfg)
		return err
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	var once sync.Once
	n := &Node{ID: id, Region: region, F: f, Stop: func() {
		once.Do(func() { cancel(); <-done; nc.Close(); closeStore() })
	}}
	t.Cleanup(n.Stop)
	return n
}

// RegionRTT is f's published trunk RTT to region (0: none yet).
func RegionRTT(f *forwarder.Forwarder, region string) time.Duration {
	for _, r := range f.Regions().RTTs {
		if r.Region == region {
			return r.RTT
		}
	}
	return 0
}
