package systemtest

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// natsOutage is how long the NATS server is down in the outage test: five
// times the default peer timeout, longer than the default orphan delay.
const natsOutage = 15 * time.Second

// outageForwarder starts a forwarder with the production cluster timings
// (forwarder.DefaultCluster: a heartbeat a second, peers silent 3 s taken
// for dead, orphans removed after 10 s) and the production NATS client
// options (reconnect for ever, every 200 ms).
func (e *env) outageForwarder(t *testing.T, id string) *forwarder.Forwarder {
	t.Helper()
	nc, err := nats.Connect(e.nats.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, time.Second
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key = id, "127.0.0.1:0", e.key
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	cfg.Cluster.Partitions = partitions
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	return f
}

// recordWatch reads the call's record from Redis every 50 ms and keeps
// every reading in which a member is missing or placed on a forwarder
// other than the one it joined.
type recordWatch struct {
	mu        sync.Mutex
	reads     int
	errors    int
	wrong     int
	firstBad  string
	stop      chan struct{}
	done      chan struct{}
	placement map[protocol.ID]string
}

func watchRecord(t *testing.T, store statestore.Store, call protocol.ID, placement map[protocol.ID]string) *recordWatch {
	w := &recordWatch{stop: make(chan struct{}), done: make(chan struct{}), placement: placement}
	go func() {
		defer close(w.done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tk.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			rec, err := store.Get(ctx, call)
			cancel()
			w.note(rec, err)
		}
	}()
	t.Cleanup(w.end)
	return w
}

func (w *recordWatch) note(rec statestore.Call, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reads++
	if err != nil {
		w.errors++
		return
	}
	for p, fwd := range w.placement {
		m, ok := rec.Members[p]
		if ok && m.Forwarder == fwd {
			continue
		}
		w.wrong++
		if w.firstBad == "" {
			w.firstBad = fmt.Sprintf("at %s participant %s (on %s): in record %v, on %q", time.Now().Format("15:04:05.000"), p, fwd, ok, m.Forwarder)
		}
		return
	}
}

func (w *recordWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *recordWatch) result() (reads, errors, wrong int, first string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reads, w.errors, w.wrong, w.firstBad
}

// sender sends one packet from each member every 20 ms and counts them.
type sender struct {
	ms   []*calltest.Member
	sent []atomic.Int64
}

func startSending(t *testing.T, ms []*calltest.Member) *sender {
	s := &sender{ms: ms, sent: make([]atomic.Int64, len(ms))}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				for i, m := range ms {
					m.Send()
					s.sent[i].Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return s
}

// crossCounts is, for every ordered pair of members on different
// forwarders, how many packets the receiver got from the sender so far.
func crossCounts(ms []*calltest.Member, fwdOf []int) map[[2]int]int {
	out := map[[2]int]int{}
	for i, rx := range ms {
		for j, tx := range ms {
			if fwdOf[i] != fwdOf[j] {
				out[[2]int{j, i}] = rx.Count(tx.SSRC)
			}
		}
	}
	return out
}

// The NATS server is shut down for 15 s and started again on the same
// port, under a call with two devices on each of two forwarders, every
// device sending throughout. The forwarders keep trunking to each other
// (they hear each other's trunk keepalives), never take each other for
// dead, never touch each other's members in Redis, and the audio across
// forwarders has no gap during the outage or after NATS returns.
func TestNATSOutageKeepsPeersAndCalls(t *testing.T) {
	e := newEnv(t)
	fa, fb := e.outageForwarder(t, "fwd-a"), e.outageForwarder(t, "fwd-b")
	fwds := []*forwarder.Forwarder{fa, fb}
	ids := []string{"fwd-a", "fwd-b"}
	call := protocol.NewID()
	fwdOf := []int{0, 0, 1, 1}
	ms := make([]*calltest.Member, len(fwdOf))
	placement := map[protocol.ID]string{}
	for i, fi := range fwdOf {
		ms[i] = e.join(t, call, uint32(i+1), fwds[fi].Addr())
		placement[ms[i].ID] = ids[fi]
	}
	snd := startSending(t, ms)
	calltest.AllHearAll(t, ms, time.Now(), 10*time.Second)
	// Both forwarders know each other and the record holds everyone.
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for i, f := range fwds {
			if s := f.Stats(); s.Peers != 1 {
				return fmt.Errorf("%s knows %d peers", ids[i], s.Peers)
			}
		}
		rec, err := e.store.Get(context.Background(), call)
		if err != nil {
			return err
		}
		if len(rec.Members) != len(ms) {
			return fmt.Errorf("record has %d members", len(rec.Members))
		}
		return nil
	})
	watch := watchRecord(t, e.store, call, placement)

	// The outage.
	rx0, tx0 := crossCounts(ms, fwdOf), sentCounts(snd)
	for _, m := range ms {
		m.ResetGaps()
	}
	e.nats.Shutdown()
	outageEnd := time.After(natsOutage) // the scenario's length, not a synchronisation
	// Each forwarder soon hears the other only on the trunk, and keeps it.
	testenv.CheckFor(t, 5*forwarder.DefaultCluster().PeerTimeout, 20*time.Millisecond, func() error {
		for i, f := range fwds {
			p := f.Stats().Peering
			if p.NATSUp || p.ByNATS != 0 || p.ByTrunk != 1 {
				return fmt.Errorf("%s: NATS up %v, peers heard by NATS %d, by trunk %d", ids[i], p.NATSUp, p.ByNATS, p.ByTrunk)
			}
		}
		return nil
	})
	<-outageEnd
	for i, f := range fwds {
		s := f.Stats()
		require.Equal(t, 1, s.Peers, "%s still counts its peer", ids[i])
		require.Equal(t, 1, s.Peering.ByTrunk, "%s hears its peer on the trunk", ids[i])
		require.NotZero(t, s.Peering.KeepalivesIn, ids[i])
		require.True(t, s.Peering.LeaseHeld, "%s holds its liveness lease", ids[i])
		require.Zero(t, s.Peering.Held, "%s never had a silent peer", ids[i])
	}
	rx1, tx1 := crossCounts(ms, fwdOf), sentCounts(snd)
	for pair, n := range rx1 {
		sent := tx1[pair[0]] - tx0[pair[0]]
		got := n - rx0[pair]
		loss := 1 - float64(got)/float64(sent)
		t.Logf("during the outage member %d heard member %d: %d of %d packets (loss %.2f %%)", pair[1], pair[0], got, sent, 100*loss)
		require.Less(t, loss, 0.05, "trunk media kept flowing during the outage: member %d from member %d", pair[1], pair[0])
	}

	// NATS returns on the same port.
	restarted := time.Now()
	require.NoError(t, e.nats.Restart())
	var recovered time.Duration
	testenv.CheckFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		for i, rx := range ms {
			for j, tx := range ms {
				if fwdOf[i] != fwdOf[j] && !rx.LastFrom(tx.SSRC).After(restarted) {
					return fmt.Errorf("member %d has not heard member %d since NATS restarted", i, j)
				}
			}
		}
		recovered = time.Since(restarted)
		return nil
	})
	t.Logf("both directions heard %v after NATS restarted", recovered)
	require.Less(t, recovered, time.Second, "one-way audio after recovery")

	// The forwarders hear each other's heartbeats again; the call goes on
	// through two reconcile rounds.
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for i, f := range fwds {
			if s := f.Stats(); s.Peers != 1 || s.Peering.ByNATS != 1 || s.Peering.Resyncs != 1 {
				return fmt.Errorf("%s knows %d peers, %d heard by NATS, %d resyncs", ids[i], s.Peers, s.Peering.ByNATS, s.Peering.Resyncs)
			}
		}
		return nil
	})
	// Two reconcile rounds after NATS is back, watched: the record and the
	// audio must stay as they were (the window is the scenario's length).
	<-time.After(2 * forwarder.DefaultCluster().ReconcileEvery)
	watch.end()
	reads, readErrs, wrong, first := watch.result()
	t.Logf("record read %d times during and after the outage: %d wrong, %d errors", reads, wrong, readErrs)
	require.Zero(t, wrong, "members wrongly removed or moved in Redis; first: %s", first)
	require.Zero(t, readErrs)
	for i, rx := range ms {
		for j, tx := range ms {
			if i != j {
				gap := rx.MaxGap(tx.SSRC)
				t.Logf("member %d from member %d: longest silence %v", i, j, gap)
				require.Less(t, gap, time.Second, "member %d from member %d", i, j)
			}
		}
	}
}

func sentCounts(s *sender) map[int]int {
	out := map[int]int{}
	for i := range s.sent {
		out[i] = int(s.sent[i].Load())
	}
	return out
}
