package systemtest

import (
	"context"
	"crypto/ed25519"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// go-redis keeps redialling a killed Redis Cluster node from a background
// goroutine that sleeps a second between tries and ends on its own after
// the client is closed; it is go-redis's, not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// partitions is small so tests put several calls in one partition.
const partitions = 4

type env struct {
	redis    *testenv.RedisServer // nil when storeURL names another deployment
	storeURL string               // what every component opens
	nats     *testenv.NATSServer
	key      protocol.ClusterKey
	priv     ed25519.PrivateKey
	store    *statestore.Redis
}

func newEnv(t *testing.T) *env {
	t.Helper()
	r := testenv.Redis(t)
	e := newEnvOn(t, r.URL())
	e.redis = r
	return e
}

// newEnvOn is newEnv with the state store at storeURL (a Redis Cluster,
// say) instead of a redis-server of its own.
func newEnvOn(t *testing.T, storeURL string) *env {
	t.Helper()
	e := &env{storeURL: storeURL, nats: testenv.NATS(t)}
	var err error
	e.key, err = protocol.NewClusterKey()
	require.NoError(t, err)
	_, e.priv, err = protocol.GenerateSigningKey()
	require.NoError(t, err)
	e.store, err = statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.store.Close() })
	return e
}

func (e *env) natsConn(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(e.nats.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	return nc
}

// forwarder starts a forwarder of the cluster; it stops with the test.
func (e *env) forwarder(t *testing.T, id string) *forwarder.Forwarder {
	t.Helper()
	return e.forwarderWith(t, id, e.natsConn(t))
}

// forwarderWith is forwarder with the given NATS client (closed with it).
func (e *env) forwarderWith(t *testing.T, id string, nc *nats.Conn) *forwarder.Forwarder {
	t.Helper()
	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, time.Second
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key = id, "127.0.0.1:0", e.key
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
	return f
}

// cond is a conductor running in the test.
type cond struct {
	c    *conductor.Conductor
	reg  *prometheus.Registry
	stop func() // graceful: releases the leases
}

func (e *env) conductor(t *testing.T, id string, mod func(*conductor.Config)) *cond {
	t.Helper()
	return e.conductorWith(t, id, e.natsConn(t), mod)
}

// conductorWith is conductor with the given NATS client (closed with it).
func (e *env) conductorWith(t *testing.T, id string, nc *nats.Conn, mod func(*conductor.Config)) *cond {
	t.Helper()
	store, err := statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	cfg := conductor.Default()
	cfg.ID, cfg.NATS, cfg.Key, cfg.Store, cfg.Leases = id, nc, e.key, store, store
	cfg.Partitions, cfg.LeaseTTL, cfg.AcquireEvery = partitions, time.Second, 100*time.Millisecond
	cfg.Logger = zaptest.NewLogger(t).Named(id)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if mod != nil {
		mod(&cfg)
	}
	c, err := conductor.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; nc.Close(); _ = store.Close() }) }
	t.Cleanup(stop)
	return &cond{c: c, reg: reg, stop: stop}
}

// join adds a member with a fresh participant id to call through fwd.
func (e *env) join(t *testing.T, call protocol.ID, ssrc uint32, fwd netip.AddrPort) *calltest.Member {
	t.Helper()
	p := protocol.NewID()
	tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p,
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	m := calltest.Join(t, tok, ssrc, fwd)
	m.ID = p
	return m
}

// decisions records every decision published on the cluster's call
// subjects.
type decisions struct {
	mu  sync.Mutex
	all []protocol.CallDecision
	at  []time.Time
}

func (e *env) watchDecisions(t *testing.T) *decisions {
	t.Helper()
	return watchDecisionsWith(t, e.natsConn(t), e.key)
}

// watchDecisionsWith records the decisions nc hears, authenticated with
// key; it closes nc when the test ends.
func watchDecisionsWith(t *testing.T, nc *nats.Conn, key protocol.ClusterKey) *decisions {
	t.Helper()
	t.Cleanup(nc.Close)
	d := &decisions{}
	_, err := nc.Subscribe("callrelay.call.*", func(m *nats.Msg) {
		if typ, err := protocol.PeekClusterMsgType(m.Data); err != nil || typ != protocol.ClusterMsgDecision {
			return
		}
		var dec protocol.CallDecision
		if dec.Unmarshal(m.Data, key) != nil {
			return
		}
		dec.Forward = append([]protocol.ID(nil), dec.Forward...)
		dec.Senders = append([]protocol.SenderTarget(nil), dec.Senders...)
		dec.Layers = append([]protocol.LayerAssign(nil), dec.Layers...)
		d.mu.Lock()
		d.all = append(d.all, dec)
		d.at = append(d.at, time.Now())
		d.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return d
}

func (d *decisions) snapshot() ([]protocol.CallDecision, []time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]protocol.CallDecision(nil), d.all...), append([]time.Time(nil), d.at...)
}

// metric reads a counter or gauge from a registry (0 when absent); label
// selects one series of a vector by its one label's value.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabelValue(m, label) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func hasLabelValue(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}
