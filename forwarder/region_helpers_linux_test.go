package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/regions"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Helpers of the region tests (region_netns_linux_test.go): forwarders
// whose sockets live in a region's namespace, and devices that speak the
// wire protocol by hand from a city's namespace (the client library opens
// sockets from several goroutines, which a thread's namespace would not
// hold). NATS and Redis stay on the host's loopback: the emulated paths
// are the ones media takes, devices to forwarders and trunks between them.

// startInRegion is clusterEnv.startWith for a forwarder whose media and
// trunk sockets are bound in region's namespace, with that region.
func (e *clusterEnv) startInRegion(t *testing.T, tp *regions.Topology, region, id string, mod func(*forwarder.Config)) *clusterNode {
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
	n := &clusterNode{id: id, f: f, stop: func() {
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

// gauge reads a gauge of f's collector by its labels.
func gauge(t *testing.T, f *forwarder.Forwarder, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(f.Collector()))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
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

func newCityDevice(t *testing.T, tp *regions.Topology, city string, token []byte, ssrc uint32) *cityDevice {
	t.Helper()
	d := &cityDevice{t: t, token: token, ssrc: ssrc, answers: make(chan []byte, 16), got: map[uint32]int{}, stop: make(chan struct{})}
	require.NoError(t, tp.Do(city, func() error {
		var err error
		d.conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tp.Addr(city), 0)))
		return err
	}))
	_ = d.conn.SetReadBuffer(1 << 20)
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.read() }()
	t.Cleanup(d.close)
	return d
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

func (d *cityDevice) read() {
	buf := make([]byte, 2048)
	for {
		n, _, err := d.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		if stun.IsMessage(b) {
			select {
			case d.answers <- append([]byte(nil), b...):
			default: // a keepalive's answer nobody waits for
			}
			continue
		}
		if len(b) < 20 || protocol.Classify(b) != protocol.KindRTP {
			continue
		}
		ssrc, seq := binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint16(b[2:4])
		ok := len(b) == 110
		for i := 20; ok && i < len(b); i++ {
			ok = b[i] == payloadOf(ssrc, seq, i)
		}
		d.mu.Lock()
		if ok {
			d.got[ssrc]++
		} else {
			d.corrupt++
		}
		d.mu.Unlock()
	}
}

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

// talk starts keepalives every 100 ms and audio every 20 ms to the
// forwarder joined, until the device is closed or stopTalking.
func (d *cityDevice) talk() (stopTalking func()) {
	quit := make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for seq := uint16(1); ; seq++ {
			select {
			case <-d.stop:
				return
			case <-quit:
				return
			case <-tick.C:
			}
			if seq%5 == 0 {
				if m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Cookie: d.cookie}); err == nil {
					_, _ = d.conn.WriteToUDPAddrPort(m.Raw, d.fwd)
				}
			}
			p := calltest.AudioRTP(d.ssrc, seq, true)
			for i := 20; i < len(p); i++ {
				p[i] = payloadOf(d.ssrc, seq, i)
			}
			if _, err := d.conn.WriteToUDPAddrPort(p, d.fwd); err == nil {
				d.sent.Add(1)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit) }) }
}

// from is how many intact packets arrived from ssrc, and how many were
// corrupt in all.
func (d *cityDevice) from(ssrc uint32) (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got[ssrc], d.corrupt
}
