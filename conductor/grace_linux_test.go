package conductor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// decisionLog records the decisions published for one call.
type decisionLog struct {
	mu  sync.Mutex
	ds  []protocol.CallDecision
	ats []time.Time
}

func (l *decisionLog) since(t0 time.Time) (ds []protocol.CallDecision, ats []time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, at := range l.ats {
		if at.After(t0) {
			ds, ats = append(ds, l.ds[i]), append(ats, at)
		}
	}
	return ds, ats
}

// A real Redis stopped (SIGSTOP) under a conductor holding a call's
// partition: the conductor decides on past its lease's validity, up to
// StoreGrace after its last renewal, then stops; when Redis answers again,
// its lease has lapsed there and it takes it again in place at a new epoch
// and decides on.
func TestDecidesThroughStoreOutageWithinGrace(t *testing.T) {
	r := testenv.Redis(t)
	store, err := statestore.OpenRedis(r.URL(), statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	const grace = 3 * time.Second
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Logger = nc, key, store, store, zaptest.NewLogger(t)
	cfg.Partitions, cfg.LeaseTTL, cfg.AcquireEvery, cfg.StoreGrace = 1, time.Second, 100*time.Millisecond, grace
	cfg.Republish = 200 * time.Millisecond // decisions heard often enough to see when they stop
	c, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	call, speaker := protocol.NewID(), protocol.NewID()
	_, err = store.AddMember(context.Background(), call, protocol.ClassGroup, 8, speaker,
		statestore.Member{Forwarder: "fwd-a", Addr: netip.MustParseAddrPort("198.51.100.1:5000"), JoinedAt: time.Now()})
	require.NoError(t, err)
	log := &decisionLog{}
	_, err = nc.Subscribe(protocol.CallSubject(cfg.Subject, call), func(m *nats.Msg) {
		var d protocol.CallDecision
		if d.Unmarshal(m.Data, key) == nil {
			log.mu.Lock()
			log.ds, log.ats = append(log.ds, d), append(log.ats, time.Now())
			log.mu.Unlock()
		}
	})
	require.NoError(t, err)
	stopMeta := feedMetadata(t, nc, key, cfg.Subject, call, speaker)
	defer stopMeta()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if ds, _ := log.since(time.Time{}); len(ds) == 0 {
			return errors.New("no decision yet")
		}
		return nil
	})
	first, _ := log.since(time.Time{})
	epoch := first[0].Epoch

	// outage stops Redis for d and returns the decisions made meanwhile,
	// when each was heard after the stop, and when Redis was back.
	outage := func(d time.Duration) ([]protocol.CallDecision, []time.Duration, time.Time) {
		require.NoError(t, r.Signal(syscall.SIGSTOP))
		stopped := time.Now()
		<-time.After(d) // the scenario's length, not a synchronisation
		ds, ats := log.since(stopped)
		require.NoError(t, r.Signal(syscall.SIGCONT))
		var in []time.Duration
		for _, at := range ats {
			in = append(in, at.Sub(stopped))
		}
		return ds, in, time.Now()
	}
	newerSince := func(t0 time.Time, than uint32) func() error {
		return func() error {
			ds, _ := log.since(t0)
			for _, d := range ds {
				if d.Epoch > than {
					return nil
				}
			}
			return fmt.Errorf("no decision of a newer epoch than %d since Redis is back", than)
		}
	}

	// Shorter than the grace: decisions all along, under the old epoch;
	// then the lapsed lease is taken again in place.
	ds, in, back := outage(grace - time.Second)
	t.Logf("Redis stopped %v: %d decisions heard, the last %v in", grace-time.Second, len(in), in[len(in)-1])
	require.NotEmpty(t, ds)
	require.Greater(t, in[len(in)-1], cfg.LeaseTTL, "deciding on past the lease's validity")
	for _, d := range ds {
		require.Equal(t, epoch, d.Epoch, "under the lease's epoch")
	}
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, newerSince(back, epoch))
	require.Equal(t, map[int]uint64{0: uint64(epoch) + 1}, c.Owned(), "taken again by the same conductor")
	epoch++

	// Longer than the grace: it stops within the grace of its last
	// renewal, and takes the partition again when Redis is back.
	ds, in, back = outage(2 * grace)
	t.Logf("Redis stopped %v: %d decisions heard, the last %v in", 2*grace, len(in), in[len(in)-1])
	require.NotEmpty(t, ds, "decisions went on while Redis was stopped")
	require.Greater(t, in[len(in)-1], 2*cfg.LeaseTTL, "deciding on well past the lease's validity")
	require.Less(t, in[len(in)-1], grace+cfg.LeaseTTL, "and no longer than the grace after the last renewal")
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, newerSince(back, epoch))
	require.Equal(t, map[int]uint64{0: uint64(epoch) + 1}, c.Owned())
}

// feedMetadata publishes, every 100 ms, a batch in which speaker talks.
func feedMetadata(t *testing.T, nc *nats.Conn, key protocol.ClusterKey, subject string, call, speaker protocol.ID) func() {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for seq := uint64(1); ; seq++ {
			b := protocol.MetadataBatch{Forwarder: "fwd-a", Seq: seq, At: time.Now(), TickMillis: 100,
				Calls: []protocol.CallMetadata{{Call: call, Members: []protocol.MemberMetadata{{Participant: speaker,
					Packets: 5, VoicePackets: 5, PayloadBytes: 450, MeanLevel: 30, MaxLevel: 25}}}}}
			if raw, err := b.Marshal(nil, key); err == nil {
				_ = nc.Publish(protocol.MetadataSubject(subject, 0), raw)
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(stop); <-done }) }
}
