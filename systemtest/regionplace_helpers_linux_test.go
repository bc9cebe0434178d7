package systemtest

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/regions"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Helpers of the placement proofs in network namespaces
// (regionplace_netns_linux_test.go): they need the forwarder and the
// conductor's placement engine in one test, which only systemtest may
// import. The same shapes stand in forwarder/region_helpers_linux_test.go
// for the forwarder's own region tests (test packages cannot share code
// but through internal/testkit; moving cityDevice there is left to do).

// regionEnv is the Redis, NATS, cluster key and signing key the region
// forwarders share.
type regionEnv struct {
	redis *testenv.RedisServer
	nats  *testenv.NATSServer
	key   protocol.ClusterKey
	priv  ed25519.PrivateKey
}

// regionNode is one forwarder of a region test.
type regionNode struct {
	id   string
	f    *forwarder.Forwarder
	stop func() // stops Run and waits for it
}

func newRegionEnv(t *testing.T) *regionEnv {
	t.Helper()
	e := &regionEnv{redis: testenv.Redis(t), nats: testenv.NATS(t)}
	var err error
	e.key, err = protocol.NewClusterKey()
	require.NoError(t, err)
	_, e.priv, err = protocol.GenerateSigningKey()
	require.NoError(t, err)
	return e
}

// token is a group-call token for a new participant of call.
func (e *regionEnv) token(t *testing.T, call protocol.ID, size int) ([]byte, protocol.ID) {
	t.Helper()
	p := protocol.NewID()
	b, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p,
		Class: protocol.ClassGroup, MaxSize: uint16(size), Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	return b, p
}

// startInRegion starts a forwarder whose media and
// trunk sockets are bound in region's namespace, with that region.
func (e *regionEnv) startInRegion(t *testing.T, tp *regions.Topology, region, id string, mod func(*forwarder.Config)) *regionNode {
	t.Helper()
	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.redis.URL(), statestore.Config{})
	require.NoError(t, err)
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	cfg := forwarder.Default()
	addr := netip.AddrPortFrom(tp.Addr(region), 0).String()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = addr, v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, 2*time.Second
	cfg.Cluster.ID, cfg.Cluster.Region, cfg.Cluster.TrunkListen, cfg.Cluster.Key = id, region, addr, e.key
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
	n := &regionNode{id: id, f: f, stop: func() {
		once.Do(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	}}
	t.Cleanup(n.stop)
	return n
}

// regionRTT is f's published trunk RTT to region (0: none yet).
func regionRTT(f *forwarder.Forwarder, region string) time.Duration {
	for _, r := range f.Regions().RTTs {
		if r.Region == region {
			return r.RTT
		}
	}
	return 0
}

// cityDevice is a device in a city's namespace, speaking the wire
// protocol by hand: joins (following cookies and Try Alternate),
// keepalives every 100 ms, and, once started, an audio packet every 20 ms
// whose payload is derived from its SSRC and sequence so that every packet
// received can be checked byte for byte.
type cityDevice struct {
	t       *testing.T
	conn    *net.UDPConn
	token   []byte
	ssrc    uint32
	fwd     netip.AddrPort
	cookie  []byte
	answers chan []byte
	sent    atomic.Int64

	mu      sync.Mutex
	got     map[uint32]int // packets received intact, by sender
	corrupt int
	stop    chan struct{}
	wg      sync.WaitGroup
}

func (d *cityDevice) close() {
	select {
	case <-d.stop:
		return
	default:
	}
	close(d.stop)
	_ = d.conn.Close()
	d.wg.Wait()
}

// payloadOf is the payload byte i of packet seq of ssrc.
func payloadOf(ssrc uint32, seq uint16, i int) byte { return byte(int(ssrc)*31 + int(seq)*7 + i) }

// request sends one join (keepalive) to fwd and returns its answer.
func (d *cityDevice) request(fwd netip.AddrPort) (protocol.JoinResponse, error) {
	m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Cookie: d.cookie})
	if err != nil {
		return protocol.JoinResponse{}, err
	}
	if _, err := d.conn.WriteToUDPAddrPort(m.Raw, fwd); err != nil {
		return protocol.JoinResponse{}, err
	}
	deadline := time.After(3 * time.Second)
	for {
		select {
		case raw := <-d.answers:
			if r, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(d.token)); err == nil {
				return r, nil
			}
		case <-deadline:
			return protocol.JoinResponse{}, fmt.Errorf("no answer from %s", fwd)
		}
	}
}

var errRefused = errors.New("refused")

// join joins through fwd, following a Try Alternate once, and returns the
// forwarder that admitted the device and the answers on the way (a join
// refused without an alternate returns errRefused and the refusal).
func (d *cityDevice) join(fwd netip.AddrPort) (netip.AddrPort, []protocol.JoinResponse, error) {
	var seen []protocol.JoinResponse
	for hops := 0; hops < 6; hops++ {
		r, err := d.request(fwd)
		if err != nil {
			return netip.AddrPort{}, seen, err
		}
		seen = append(seen, r)
		switch {
		case r.OK:
			d.fwd = fwd
			return fwd, seen, nil
		case r.Code == protocol.CodeUnauthorized && len(r.Cookie) > 0:
			d.cookie = r.Cookie
		case r.Code == protocol.CodeTryAlternate && r.Alternate.IsValid():
			fwd, d.cookie = r.Alternate, nil
		default:
			return netip.AddrPort{}, seen, fmt.Errorf("%w: %d %s", errRefused, r.Code, r.Reason)
		}
	}
	return netip.AddrPort{}, seen, errors.New("too many hops")
}

// from is how many intact packets arrived from ssrc, and how many were
// corrupt in all.
func (d *cityDevice) from(ssrc uint32) (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got[ssrc], d.corrupt
}
