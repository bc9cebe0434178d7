package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// These tests run several forwarders in this process against a real
// redis-server and a real (embedded) NATS server, with real UDP sockets
// between devices and forwarders and over the trunk. The SIGKILL and
// rolling-restart tests with separate processes are in cmd/callrelay.

type clusterEnv struct {
	redis *testenv.RedisServer
	nats  *testenv.NATSServer
	key   protocol.ClusterKey
	priv  ed25519.PrivateKey
	store *statestore.Redis
}

func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	e := &clusterEnv{redis: testenv.Redis(t), nats: testenv.NATS(t)}
	var err error
	e.key, err = protocol.NewClusterKey()
	require.NoError(t, err)
	_, e.priv, err = protocol.GenerateSigningKey()
	require.NoError(t, err)
	e.store, err = statestore.OpenRedis(e.redis.URL(), statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.store.Close() })
	return e
}

type clusterNode struct {
	id   string
	f    *forwarder.Forwarder
	stop func() // stops Run and waits for it
}

func (e *clusterEnv) start(t *testing.T, id string) *clusterNode { return e.startWith(t, id, nil) }

// startWith is start with mod applied to the config.
func (e *clusterEnv) startWith(t *testing.T, id string, mod func(*forwarder.Config)) *clusterNode {
	t.Helper()
	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.redis.URL(), statestore.Config{})
	require.NoError(t, err)
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, time.Second
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key = id, "127.0.0.1:0", e.key
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout = 100*time.Millisecond, 500*time.Millisecond
	cfg.Cluster.ReconcileEvery, cfg.Cluster.OrphanAfter = 500*time.Millisecond, 2*time.Second
	if mod != nil {
		mod(&cfg)
	}
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	var once sync.Once
	n := &clusterNode{id: id, f: f, stop: func() {
		once.Do(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	}}
	t.Cleanup(n.stop)
	return n
}

func (e *clusterEnv) token(t *testing.T, call protocol.ID, size int) ([]byte, protocol.ID) {
	t.Helper()
	p := protocol.NewID()
	b, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p,
		Class: protocol.ClassGroup, MaxSize: uint16(size), Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	return b, p
}

func (e *clusterEnv) join(t *testing.T, call protocol.ID, size int, ssrc uint32, fwds ...netip.AddrPort) *member {
	t.Helper()
	tok, _ := e.token(t, call, size)
	return calltest.Join(t, tok, ssrc, fwds...)
}

type member = calltest.Member

func talk(t *testing.T, ms []*member, stop <-chan struct{}) { calltest.Talk(t, ms, stop) }

var allHearAll = calltest.AllHearAll

// callAcross starts a call with one talking member on a and one on b, and
// waits until they hear each other. Closing stop silences them.
func (e *clusterEnv) callAcross(t *testing.T, a, b *clusterNode) (protocol.ID, *member, *member, chan struct{}) {
	t.Helper()
	call := protocol.NewID()
	m1 := e.join(t, call, 6, 1, a.f.Addr())
	m2 := e.join(t, call, 6, 2, b.f.Addr())
	stop := make(chan struct{})
	talk(t, []*member{m1, m2}, stop)
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
	return call, m1, m2, stop
}

func TestClusterCrossForwarderCall(t *testing.T) {
	e := newClusterEnv(t)
	a, b, c := e.start(t, "fwd-a"), e.start(t, "fwd-b"), e.start(t, "fwd-c")
	call, m1, m2, stop := e.callAcross(t, a, b)
	defer close(stop)

	// A new member on C is heard on A and B at once, through notices.
	m3 := e.join(t, call, 6, 3, c.f.Addr())
	joined := time.Now()
	talk(t, []*member{m3}, stop)
	allHearAll(t, []*member{m1, m2, m3}, joined, 5*time.Second)
	t.Logf("3 forwarders: everyone heard everyone %v after the third joined", time.Since(joined))

	rec, err := e.store.Get(context.Background(), call)
	require.NoError(t, err)
	require.Len(t, rec.Members, 3)
	byFwd := map[string]int{}
	for _, m := range rec.Members {
		byFwd[m.Forwarder]++
		require.True(t, m.Trunk.IsValid())
	}
	require.Equal(t, map[string]int{"fwd-a": 1, "fwd-b": 1, "fwd-c": 1}, byFwd)
	for _, n := range []*clusterNode{a, b, c} {
		s := n.f.Stats()
		require.NotZero(t, s.TrunkOut, "each forwarder sends over the trunk")
		require.NotZero(t, s.TrunkIn)
		require.Zero(t, s.Drops[forwarder.DropTrunkAuth])
	}
	// SSRCs the data path saw reach the store.
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		rec, err := e.store.Get(context.Background(), call)
		if err != nil {
			return err
		}
		for _, m := range rec.Members {
			if len(m.SSRCs) != 1 {
				return fmt.Errorf("member on %s has SSRCs %v", m.Forwarder, m.SSRCs)
			}
		}
		return nil
	})

	// Everyone leaves: the call's state is deleted.
	for _, m := range []*member{m1, m2, m3} {
		require.NoError(t, m.S.Close())
	}
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		_, err := e.store.Get(context.Background(), call)
		if errors.Is(err, statestore.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("call state still there: %v", err)
	})
}

// Many devices join one call at once on three forwarders: the store loses
// no one, and everyone hears everyone.
func TestClusterConcurrentJoins(t *testing.T) {
	e := newClusterEnv(t)
	nodes := []*clusterNode{e.start(t, "fwd-a"), e.start(t, "fwd-b"), e.start(t, "fwd-c")}
	call := protocol.NewID()
	const n = 12
	ms := make([]*member, n)
	var wg sync.WaitGroup
	for i := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i] = e.join(t, call, n, uint32(100+i), nodes[i%3].f.Addr())
		}()
	}
	wg.Wait()
	rec, err := e.store.Get(context.Background(), call)
	require.NoError(t, err)
	require.Len(t, rec.Members, n)
	stop := make(chan struct{})
	defer close(stop)
	talk(t, ms, stop)
	allHearAll(t, ms, time.Now(), 10*time.Second)
}

// A forwarder stops dead (its sockets close, as on SIGKILL; the process-level
// test is in cmd/callrelay): its devices fail over to the others, which
// restore their place from the store, and the call goes on.
func TestClusterFailover(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	call := protocol.NewID()
	m1 := e.join(t, call, 6, 1, a.f.Addr(), b.f.Addr())
	if m1.S.Forwarder() == b.f.Addr() { // multi-connect: whichever answered first
		a, b = b, a
	}
	m2 := e.join(t, call, 6, 2, b.f.Addr())
	stop := make(chan struct{})
	defer close(stop)
	talk(t, []*member{m1, m2}, stop)
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)

	a.stop()
	calltest.WaitForwarder(t, m1, b.f.Addr(), 10*time.Second)
	allHearAll(t, []*member{m1, m2}, time.Now(), 10*time.Second)
	require.EqualValues(t, 1, m1.S.Stats().Failovers)
	rec, err := e.store.Get(context.Background(), call)
	require.NoError(t, err)
	require.Len(t, rec.Members, 2)
	for _, m := range rec.Members {
		require.Equal(t, b.id, m.Forwarder)
	}
}

// A forged trunk frame, garbage on the trunk, a malformed notice and a
// foreign record in Redis are counted and dropped; the call goes on.
func TestClusterBadInput(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	call, m1, m2, stop := e.callAcross(t, a, b)
	defer close(stop)

	// A frame sealed with another key, and plain garbage, to A's trunk.
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	forged := protocol.NewTrunkCodec(other).Seal(nil, &protocol.TrunkHeader{Call: call, Sender: protocol.NewID(), Origin: 7}, calltest.RTP(66, 1))
	sock, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	require.NoError(t, err)
	defer sock.Close()
	for _, pkt := range [][]byte{forged, []byte("garbage"), make([]byte, 1400)} {
		_, err := sock.WriteToUDPAddrPort(pkt, a.f.TrunkAddr())
		require.NoError(t, err)
	}
	// Malformed and forged notices on the call's subject.
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	forgedNotice, err := (&protocol.MemberNotice{Op: protocol.MemberLeft, Call: call, Participant: protocol.NewID(),
		Forwarder: "fwd-b", At: time.Now()}).Marshal(nil, other)
	require.NoError(t, err)
	require.NoError(t, nc.Publish("callrelay.call."+call.String(), []byte{0xff, 1, 2}))
	require.NoError(t, nc.Publish("callrelay.call."+call.String(), forgedNotice))
	require.NoError(t, nc.Publish("callrelay.forwarders", []byte("not a heartbeat")))
	require.NoError(t, nc.Flush())

	// A foreign record where the call's state is: the next reconcile
	// reports it, the call goes on.
	opt, err := redis.ParseURL(e.redis.URL())
	require.NoError(t, err)
	rc := redis.NewClient(opt)
	defer rc.Close()
	require.NoError(t, rc.Set(context.Background(), "{call:"+call.String()+"}:state", "not a call record", time.Minute).Err())

	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		s := a.f.Stats()
		if s.Drops[forwarder.DropTrunkAuth] < 3 || s.ClusterBad < 3 || s.StateErrors == 0 {
			return fmt.Errorf("trunk auth drops %d, bad cluster messages %d, state errors %d",
				s.Drops[forwarder.DropTrunkAuth], s.ClusterBad, s.StateErrors)
		}
		return nil
	})
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
}

// With Redis down, the call keeps flowing, a new member on another
// forwarder is heard through notices, its change waits in the queue, and it
// is written when Redis is back.
func TestClusterRedisOutage(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	call, m1, m2, stop := e.callAcross(t, a, b)
	defer close(stop)

	e.redis.Stop()
	down := time.Now()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !a.f.Stats().StateDegraded {
			return errors.New("forwarder A has not noticed the store is down")
		}
		return nil
	})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(a.f.Collector())
	n, err := testutil.GatherAndCount(reg, "callrelay_statestore_degraded")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP callrelay_statestore_degraded 1 while the call state store is unreachable and changes are queued.
# TYPE callrelay_statestore_degraded gauge
callrelay_statestore_degraded 1
`), "callrelay_statestore_degraded"), "the outage is exported as a metric")
	m3 := e.join(t, call, 6, 3, a.f.Addr())
	talk(t, []*member{m3}, stop)
	allHearAll(t, []*member{m1, m2, m3}, time.Now(), 5*time.Second)
	require.NotZero(t, a.f.Stats().StateQueued)
	require.NoError(t, m2.S.Close()) // a leave while Redis is down
	allHearAll(t, []*member{m1, m3}, time.Now(), 5*time.Second)

	require.NoError(t, e.redis.Restart()) // it comes back empty: nothing is kept on disk
	t.Logf("redis was down %v", time.Since(down))
	testenv.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		rec, err := e.store.Get(context.Background(), call)
		if err != nil {
			return err
		}
		var got []string
		for _, m := range rec.Members {
			got = append(got, m.Forwarder)
		}
		sort.Strings(got)
		if len(got) != 2 || got[0] != "fwd-a" || got[1] != "fwd-a" {
			return fmt.Errorf("members placed on %v, want m1 and m3 on fwd-a", got)
		}
		return nil
	})
	require.False(t, a.f.Stats().StateDegraded)
}

// udpBalancer is a user-space UDP load balancer for the test: devices send
// to its one address; it relays each device's flow to the current backend
// from a socket of its own per flow, and answers come back the same way.
// Move sends every flow to another backend (new upstream sockets, as when a
// real balancer rehashes), which sees them as unknown addresses.
type udpBalancer struct {
	t       *testing.T
	front   *net.UDPConn
	mu      sync.Mutex
	backend netip.AddrPort
	flows   map[netip.AddrPort]*net.UDPConn
	wg      sync.WaitGroup
}

func newUDPBalancer(t *testing.T, backend netip.AddrPort) *udpBalancer {
	front, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	lb := &udpBalancer{t: t, front: front, backend: backend, flows: map[netip.AddrPort]*net.UDPConn{}}
	lb.wg.Add(1)
	go lb.run()
	t.Cleanup(func() {
		_ = front.Close()
		lb.mu.Lock()
		for _, c := range lb.flows {
			_ = c.Close()
		}
		lb.mu.Unlock()
		lb.wg.Wait()
	})
	return lb
}

func (lb *udpBalancer) addr() netip.AddrPort { return lb.front.LocalAddr().(*net.UDPAddr).AddrPort() }

func (lb *udpBalancer) run() {
	defer lb.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, dev, err := lb.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		lb.mu.Lock()
		up := lb.flows[dev]
		if up == nil {
			up, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(lb.backend))
			if err != nil {
				lb.mu.Unlock()
				continue
			}
			lb.flows[dev] = up
			lb.wg.Add(1)
			go lb.back(up, dev)
		}
		lb.mu.Unlock()
		_, _ = up.Write(buf[:n])
	}
}

// back relays a backend's answers to the device, from the front address.
func (lb *udpBalancer) back(up *net.UDPConn, dev netip.AddrPort) {
	defer lb.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, err := up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = lb.front.WriteToUDPAddrPort(buf[:n], dev)
	}
}

// move sends every flow, existing and new, to backend.
func (lb *udpBalancer) move(backend netip.AddrPort) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.backend = backend
	for dev, c := range lb.flows {
		_ = c.Close()
		delete(lb.flows, dev)
	}
}

// Behind a load balancer that moves a device's flow to another forwarder,
// the new forwarder answers the device's media with a Rejoin nudge; the
// device re-authenticates through the same address at once and is heard
// again, long before any timeout.
func TestClusterLoadBalancerMovesFlow(t *testing.T) {
	e := newClusterEnv(t)
	a, b, c := e.start(t, "fwd-a"), e.start(t, "fwd-b"), e.start(t, "fwd-c")
	lb := newUDPBalancer(t, a.f.Addr())
	call := protocol.NewID()
	tok, _ := e.token(t, call, 6)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{lb.addr()}, Token: tok,
		LocalAddr: calltest.Loopback, FailoverAfter: time.Minute, JoinTimeout: 3 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	behind := calltest.Watch(t, s, 1)
	listener := e.join(t, call, 6, 2, c.f.Addr())
	stop := make(chan struct{})
	defer close(stop)
	talk(t, []*member{behind, listener}, stop)
	allHearAll(t, []*member{behind, listener}, time.Now(), 5*time.Second)
	listener.ResetGaps()

	moved := time.Now()
	lb.move(b.f.Addr())
	allHearAll(t, []*member{behind, listener}, moved, 5*time.Second)
	// Heard again: the gap ended with a packet, so it is measured whole.
	t.Logf("flow moved by the balancer: longest silence at the listener %v", listener.MaxGap(behind.SSRC))
	require.NotZero(t, b.f.Stats().RejoinNudges, "the new forwarder nudged")
	require.NotZero(t, s.Stats().RejoinNudges)
	require.Zero(t, s.Stats().Failovers, "no timeout-driven failover was needed")
}
