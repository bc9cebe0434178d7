package forwarder_test

import (
	"context"
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

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// trunkGate stands in front of a forwarder's trunk (it is the trunk address
// the forwarder advertises) and relays every datagram to it, unless it is
// shut: then everything sent to that forwarder's trunk is lost, as behind a
// broken switch port. A test stand-in for a network fault, since loopback
// cannot be cut.
type trunkGate struct {
	front   *net.UDPConn
	out     *net.UDPConn
	backend netip.AddrPort
	shut    atomic.Bool
	relayed atomic.Uint64
	wg      sync.WaitGroup
}

func newTrunkGate(t *testing.T) *trunkGate {
	t.Helper()
	front, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	out, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	// The port the forwarder's trunk will bind, picked now so the gate
	// knows where to relay before the forwarder starts.
	probe, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	g := &trunkGate{front: front, out: out, backend: probe.LocalAddr().(*net.UDPAddr).AddrPort()}
	require.NoError(t, probe.Close())
	g.wg.Add(1)
	go g.run()
	t.Cleanup(func() { _ = front.Close(); _ = out.Close(); g.wg.Wait() })
	return g
}

func (g *trunkGate) run() {
	defer g.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, _, err := g.front.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil || g.shut.Load() {
			continue
		}
		if _, err := g.out.WriteToUDPAddrPort(buf[:n], g.backend); err == nil {
			g.relayed.Add(1)
		}
	}
}

func (g *trunkGate) addr() netip.AddrPort { return g.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// gated starts a forwarder whose trunk sits behind a gate and whose NATS
// client the test holds (closing it silences the forwarder on NATS while
// it runs on).
func (e *clusterEnv) gated(t *testing.T, id string) (*clusterNode, *trunkGate, *nats.Conn) {
	t.Helper()
	g := newTrunkGate(t)
	nc, err := nats.Connect(e.nats.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	n := e.startWith(t, id, func(c *forwarder.Config) {
		c.Cluster.TrunkListen, c.Cluster.TrunkAdvertise, c.Cluster.NATS = g.backend.String(), g.addr(), nc
	})
	return n, g, nc
}

// watchPlacements polls the call's record until stop and reports the first
// reading in which a member of want is missing or on another forwarder.
func watchPlacements(store statestore.Store, call protocol.ID, want map[protocol.ID]string, stop <-chan struct{}) <-chan string {
	out := make(chan string, 1)
	go func() {
		defer close(out)
		for {
			rec, err := store.Get(context.Background(), call)
			if err == nil {
				for p, fwd := range want {
					if m, ok := rec.Members[p]; !ok || m.Forwarder != fwd {
						out <- fmt.Sprintf("participant %s of %s: in the record %v, on %q", p, fwd, ok, m.Forwarder)
						return
					}
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return out
}

// observe runs a scenario phase for d (its length, not a synchronisation)
// while the record is watched: no member of want may be removed or moved.
// check, polled meanwhile, must hold throughout.
func observe(t *testing.T, store statestore.Store, call protocol.ID, want map[protocol.ID]string, d time.Duration, check func() error) {
	t.Helper()
	stop := make(chan struct{})
	bad := watchPlacements(store, call, want, stop)
	end := time.After(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case msg, ok := <-bad:
			if ok {
				t.Fatalf("a live member was removed or moved: %s", msg)
			}
		case <-tick.C:
			if err := check(); err != nil {
				close(stop)
				t.Fatal(err)
			}
			continue
		case <-end:
			close(stop)
			if msg, ok := <-bad; ok {
				t.Fatalf("a live member was removed or moved: %s", msg)
			}
			return
		}
	}
}

// Peer liveness, rule by rule, with three forwarders whose trunks can be
// cut and whose NATS connections can be closed:
//
//  1. NATS down and A's trunk cut: A hears nobody, yet takes nobody for
//     dead (its own NATS is down) and keeps trunking to them.
//  2. NATS back, B and C silent on NATS (their connections closed) and A's
//     trunk cut: every peer of A falls silent at once while A's NATS is
//     fine; the store says both hold their liveness lease, so A keeps both
//     and removes none of their members.
//  3. C stops (its lease is released): A takes C for dead and removes its
//     member; B is then alone silent and is taken for dead, but its member
//     stays, because B still holds its lease.
//  4. A's trunk heals: A hears B on the trunk again.
func TestPeerLivenessRules(t *testing.T) {
	e := newClusterEnv(t)
	a, ga, _ := e.gated(t, "fwd-a")
	b, _, ncB := e.gated(t, "fwd-b")
	c, _, ncC := e.gated(t, "fwd-c")
	orphanAfter := 2 * time.Second // startWith's
	call := protocol.NewID()
	m1 := e.join(t, call, 6, 1, a.f.Addr())
	m2 := e.join(t, call, 6, 2, b.f.Addr())
	m3 := e.join(t, call, 6, 3, c.f.Addr())
	ms := []*member{m1, m2, m3}
	stop := make(chan struct{})
	defer close(stop)
	talk(t, ms, stop)
	allHearAll(t, ms, time.Now(), 10*time.Second)
	rec, err := e.store.Get(context.Background(), call)
	require.NoError(t, err)
	want := map[protocol.ID]string{}
	for p, m := range rec.Members {
		want[p] = m.Forwarder
	}
	require.Len(t, want, 3)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, n := range []*clusterNode{a, b, c} {
			if p := n.f.Stats().Peering; p.ByNATS != 2 || p.ByTrunk != 2 || !p.LeaseHeld {
				return fmt.Errorf("%s: %+v", n.id, p)
			}
		}
		return nil
	})

	// 1. Our NATS is down and we hear nobody on the trunk either.
	e.nats.Shutdown()
	ga.shut.Store(true)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if p := a.f.Stats().Peering; p.Held[0] != 2 || p.ByTrunk != 0 {
			return fmt.Errorf("fwd-a: %+v", p)
		}
		return nil
	})
	out, phase1 := a.f.Stats().TrunkOut, time.Now()
	observe(t, e.store, call, want, 2*orphanAfter, func() error {
		if s := a.f.Stats(); s.Peers != 2 {
			return fmt.Errorf("fwd-a took a peer for dead while its own NATS was down: %d peers", s.Peers)
		}
		return nil
	})
	require.Greater(t, a.f.Stats().TrunkOut, out, "fwd-a kept trunking to the peers it could not hear")
	for _, m := range []*member{m2, m3} {
		require.True(t, m.LastFrom(m1.SSRC).After(phase1.Add(orphanAfter)), "m1 heard through fwd-a's trunk")
	}
	allHearAll(t, []*member{m2, m3}, time.Now(), 5*time.Second)

	// NATS returns, the trunk heals: everyone hears everyone on both paths,
	// and each forwarder re-announced its placements.
	ga.shut.Store(false)
	require.NoError(t, e.nats.Restart())
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, n := range []*clusterNode{a, b, c} {
			if p := n.f.Stats().Peering; p.ByNATS != 2 || p.ByTrunk != 2 || p.Resyncs == 0 {
				return fmt.Errorf("%s: %+v", n.id, p)
			}
		}
		return nil
	})
	allHearAll(t, ms, time.Now(), 5*time.Second)

	// 2. Every peer of A falls silent at once, A's NATS is fine.
	ncB.Close()
	ncC.Close()
	ga.shut.Store(true)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if p := a.f.Stats().Peering; p.Held[1] != 2 {
			return fmt.Errorf("fwd-a: %+v", p)
		}
		return nil
	})
	cut := time.Now()
	observe(t, e.store, call, want, 2*orphanAfter, func() error {
		if s := a.f.Stats(); s.Peers != 2 {
			return fmt.Errorf("fwd-a took a peer for dead when all fell silent at once: %d peers", s.Peers)
		}
		return nil
	})
	for _, m := range []*member{m2, m3} {
		require.True(t, m.LastFrom(m1.SSRC).After(cut.Add(orphanAfter)), "fwd-a still trunks to the silent peers")
	}

	// 3. C stops for good.
	c.stop()
	delete(want, memberOn(t, rec, "fwd-c"))
	testenv.CheckFor(t, 5*orphanAfter, 20*time.Millisecond, func() error {
		r, err := e.store.Get(context.Background(), call)
		if err != nil {
			return err
		}
		if len(r.Members) != 2 {
			return fmt.Errorf("record has %d members", len(r.Members))
		}
		if s := a.f.Stats(); s.Peers != 0 || s.Peering.Held[2] == 0 {
			return fmt.Errorf("fwd-a: %d peers, %+v", s.Peers, s.Peering)
		}
		return nil
	})
	observe(t, e.store, call, want, 2*orphanAfter, func() error { return nil })

	// 4. A's trunk heals: B is heard again, and A trunks to it again
	// (the placement comes back from the record).
	ga.shut.Store(false)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := a.f.Stats(); s.Peers != 1 || s.Peering.ByTrunk != 1 {
			return fmt.Errorf("fwd-a: %d peers, %+v", s.Peers, s.Peering)
		}
		return nil
	})
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
}

// memberOn names the record's one member on fwd.
func memberOn(t *testing.T, rec statestore.Call, fwd string) protocol.ID {
	t.Helper()
	for p, m := range rec.Members {
		if m.Forwarder == fwd {
			return p
		}
	}
	t.Fatalf("nobody on %s", fwd)
	return protocol.ID{}
}

// A forwarder's trunk takes keepalives by the rules of README 6.2: a valid
// one makes its sender a peer heard on the trunk; a repeated or older one
// (a replay) is ignored; one whose origin tag is not its id's, or sealed
// with another key, is dropped and counted; a trunk-only peer that falls
// silent while NATS is fine is taken for dead.
func TestTrunkKeepaliveReceive(t *testing.T) {
	e := newClusterEnv(t)
	a := e.start(t, "fwd-a")
	sock, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	defer sock.Close()
	codec := protocol.NewTrunkCodec(e.key)
	started := time.Now().Add(-time.Minute)
	codec.Number(255, protocol.TrunkSeqStart(started))
	var first []byte
	send := func(c *protocol.TrunkCodec, k protocol.TrunkKeepalive) {
		t.Helper()
		frame, err := protocol.SealTrunkKeepalive(c, nil, &k)
		require.NoError(t, err)
		if first == nil {
			first = frame
		}
		_, err = sock.WriteToUDPAddrPort(frame, a.f.TrunkAddr())
		require.NoError(t, err)
	}
	heard := func(n uint64) {
		t.Helper()
		testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if s := a.f.Stats(); s.Peering.KeepalivesIn != n || s.Peers != 1 || s.Peering.ByTrunk != 1 {
				return fmt.Errorf("%d keepalives taken, %d peers, %+v", s.Peering.KeepalivesIn, s.Peers, s.Peering)
			}
			return nil
		})
	}
	send(codec, protocol.TrunkKeepalive{Forwarder: "fwd-x", Started: started, Seq: 1})
	heard(1)

	// The same frame again (the trunk's replay window drops it), the same
	// keepalive in a new frame, an older process's, then a forged origin
	// and a frame sealed with another key; and a newer one, which alone is
	// taken.
	_, err = sock.WriteToUDPAddrPort(first, a.f.TrunkAddr())
	require.NoError(t, err)
	send(codec, protocol.TrunkKeepalive{Forwarder: "fwd-x", Started: started, Seq: 1})
	send(codec, protocol.TrunkKeepalive{Forwarder: "fwd-x", Started: started.Add(-time.Hour), Seq: 99})
	good, err := protocol.SealTrunkKeepalive(codec, nil, &protocol.TrunkKeepalive{Forwarder: "fwd-x", Started: started, Seq: 50})
	require.NoError(t, err)
	var h protocol.TrunkHeader
	payload, err := codec.Open(good, &h)
	require.NoError(t, err)
	h.Origin = protocol.ForwarderTag("fwd-y") // authentic, but not fwd-x's tag
	forged := codec.Seal(nil, &h, payload)
	_, err = sock.WriteToUDPAddrPort(forged, a.f.TrunkAddr())
	require.NoError(t, err)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	send(protocol.NewTrunkCodec(other), protocol.TrunkKeepalive{Forwarder: "fwd-x", Started: started, Seq: 51})
	send(codec, protocol.TrunkKeepalive{Forwarder: "fwd-x", Started: started, Seq: 2})
	heard(2)
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := a.f.Stats(); s.Drops[forwarder.DropTrunkAuth] != 2 || s.Drops[forwarder.DropTrunkReplay] != 1 {
			return fmt.Errorf("%d trunk authentication drops, %d replays", s.Drops[forwarder.DropTrunkAuth], s.Drops[forwarder.DropTrunkReplay])
		}
		return nil
	})

	// fwd-x falls silent; fwd-a's NATS is fine and fwd-x is its only peer.
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if s := a.f.Stats(); s.Peers != 0 {
			return fmt.Errorf("%d peers", s.Peers)
		}
		return nil
	})
	require.Equal(t, uint64(2), a.f.Stats().Peering.KeepalivesIn)
}
