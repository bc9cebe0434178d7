package conductor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// The reporter's quantiles are those of the latencies sent in the
// interval, events beyond a report's worth are counted, and take starts a
// new interval.
func TestReporterInterval(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	r := newReporter(prometheus.NewRegistry(), t0)
	for i := 1; i <= 100; i++ {
		r.decisionSent()
		r.decided(time.Duration(i) * time.Millisecond)
	}
	r.decisionSent() // a repeat without news: counted, no latency
	r.setCalls(3, 5)
	r.setCalls(4, 2)
	r.setCalls(4, 0)
	for range protocol.MaxConductorEvents + 3 {
		r.event(protocol.ConductorEvent{Kind: protocol.ConductorSpeaker, Call: protocol.NewID(), At: t0})
	}
	var rep protocol.ConductorReport
	r.take(&rep)
	require.Equal(t, uint64(1), rep.Seq)
	require.Equal(t, uint32(101), rep.InInterval)
	require.Equal(t, uint64(101), rep.Decisions)
	require.Equal(t, 50*time.Millisecond, rep.P50)
	require.Equal(t, 99*time.Millisecond, rep.P99)
	require.Equal(t, 100*time.Millisecond, rep.Max)
	require.Equal(t, uint32(5), rep.Calls)
	require.Len(t, rep.Events, protocol.MaxConductorEvents)
	require.Equal(t, uint32(3), rep.EventsLost)
	require.Equal(t, 3.0, testutil.ToFloat64(r.lostTotal))

	r.take(&rep)
	require.Equal(t, uint64(2), rep.Seq)
	require.Zero(t, rep.InInterval)
	require.Equal(t, uint64(101), rep.Decisions, "cumulative")
	require.Zero(t, rep.P99)
	require.Empty(t, rep.Events)
	require.Zero(t, rep.EventsLost)

	var nilRep *reporter // a Conductor built by a test without New
	nilRep.decisionSent()
	nilRep.decided(time.Second)
	nilRep.event(protocol.ConductorEvent{})
	nilRep.setCalls(1, 1)
}

// Beyond maxLatencySamples the kept samples stay a fair sample: a second
// half ten times slower moves the median into it.
func TestReporterReservoir(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	r := newReporter(nil, t0)
	for range 3 * maxLatencySamples {
		r.decisionSent()
		r.decided(time.Millisecond)
	}
	for range 4 * maxLatencySamples {
		r.decisionSent()
		r.decided(10 * time.Millisecond)
	}
	var rep protocol.ConductorReport
	r.take(&rep)
	require.Len(t, r.samples, 0)
	require.Equal(t, 10*time.Millisecond, rep.P50)
	require.Equal(t, 10*time.Millisecond, rep.P99)
	require.Equal(t, uint32(7*maxLatencySamples), rep.InInterval)
}

// A changed allocation reports, per pair in both plans, a cut when the
// rank went down (or to none) and a layer switch when it went up; pairs
// new to the plan are not switches.
func TestNoteLayers(t *testing.T) {
	rep := newReporter(nil, time.Now())
	p := &partition{c: &Conductor{rep: rep, cfg: Default()}}
	a, b, c := aid(1), aid(2), aid(3)
	cs := &callState{id: protocol.NewID(), video: &callVideo{
		nextLayers: []protocol.LayerAssign{{Receiver: a, Sender: b, Rank: RankHigh}, {Receiver: b, Sender: a, Rank: RankLow},
			{Receiver: c, Sender: a, Rank: RankHigh}},
		layers: []protocol.LayerAssign{{Receiver: a, Sender: b, Rank: RankLow}, {Receiver: b, Sender: a, Rank: RankHigh},
			{Receiver: c, Sender: a, Rank: RankNone}, {Receiver: c, Sender: b, Rank: RankHigh}},
	}}
	now := time.UnixMilli(1_800_000_000_000)
	p.noteLayers(cs, now)
	require.Equal(t, []protocol.ConductorEvent{
		{Kind: protocol.ConductorCut, At: now, Call: cs.id, Participant: a, Other: b, From: RankHigh, To: RankLow},
		{Kind: protocol.ConductorLayer, At: now, Call: cs.id, Participant: b, Other: a, From: RankLow, To: RankHigh},
		{Kind: protocol.ConductorCut, At: now, Call: cs.id, Participant: c, Other: a, From: RankHigh, To: RankNone},
	}, rep.events)
}

func TestReportConfigValidate(t *testing.T) {
	cfg := DefaultReportConfig()
	require.NoError(t, cfg.validate())
	cfg.Region = "eu west"
	require.ErrorContains(t, cfg.validate(), "--region")
	cfg = ReportConfig{Every: 0}
	require.ErrorContains(t, cfg.validate(), "--report-every")
}

// A conductor over a real Redis and NATS publishes authenticated reports
// on <prefix>.conductors: its lease holder name, region, the call it
// holds, decisions with their latency, and the call's first speaker switch.
func TestConductorPublishesReports(t *testing.T) {
	store, err := statestore.OpenRedis(testenv.Redis(t).URL(), statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Logger = nc, key, store, store, zaptest.NewLogger(t)
	cfg.Partitions, cfg.Report = 1, ReportConfig{Region: "eu-west", Every: 100 * time.Millisecond}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	c, err := New(cfg)
	require.NoError(t, err)

	var mu sync.Mutex
	var reports []protocol.ConductorReport
	sub, err := nc.Subscribe(protocol.ConductorsSubject(cfg.Subject), func(m *nats.Msg) {
		var r protocol.ConductorReport
		if r.Unmarshal(m.Data, key) == nil {
			mu.Lock()
			reports = append(reports, r)
			mu.Unlock()
		}
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, nc.Flush())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	call, speaker := protocol.NewID(), protocol.NewID()
	_, err = store.AddMember(context.Background(), call, protocol.ClassGroup, 8, speaker,
		statestore.Member{Forwarder: "fwd-a", Addr: netip.MustParseAddrPort("198.51.100.1:5000"), JoinedAt: time.Now()})
	require.NoError(t, err)
	stop := publishSpeech(t, nc, key, cfg.Subject, call, speaker)
	defer stop()

	var seen struct {
		latency, calls, speaker bool
		last                    protocol.ConductorReport
	}
	testenv.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range reports {
			if r.Conductor != c.Owner() || r.Region != "eu-west" || r.Interval != 100*time.Millisecond {
				return fmt.Errorf("report from %q region %q interval %s", r.Conductor, r.Region, r.Interval)
			}
			seen.latency = seen.latency || r.InInterval > 0 && r.P99 > 0 && r.P50 <= r.P99 && r.P99 <= r.Max
			seen.calls = seen.calls || r.Calls == 1 && r.Partitions == 1
			for _, e := range r.Events {
				seen.speaker = seen.speaker || e.Kind == protocol.ConductorSpeaker && e.Call == call && e.Participant == speaker
			}
			seen.last = r
		}
		if !seen.latency || !seen.calls || !seen.speaker {
			return fmt.Errorf("not yet seen in %d reports: latency %v, calls %v, speaker %v", len(reports), seen.latency, seen.calls, seen.speaker)
		}
		return nil
	})
	for i := 1; i < len(reports); i++ {
		require.True(t, reports[i].Newer(&reports[i-1]), "reports in sequence")
	}
	require.Positive(t, testutil.ToFloat64(c.rep.published))
	n, err := testutil.GatherAndCount(reg, "callrelay_conductor_decision_latency_seconds")
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

// publishSpeech publishes, every 100 ms until stopped, a batch in which
// speaker talks.
func publishSpeech(t *testing.T, nc *nats.Conn, key protocol.ClusterKey, subject string, call, speaker protocol.ID) func() {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for seq := uint64(1); seq < 600; seq++ { // a minute at most
			b := protocol.MetadataBatch{Forwarder: "fwd-a", Seq: seq, At: time.Now(), TickMillis: 100,
				Calls: []protocol.CallMetadata{{Call: call, Members: []protocol.MemberMetadata{{Participant: speaker,
					Packets: 5, VoicePackets: 5, PayloadBytes: 450, MeanLevel: 30, MaxLevel: 25}}}}}
			raw, err := b.Marshal(nil, key)
			if err != nil {
				panic(errors.Join(errors.New("encoding metadata"), err))
			}
			_ = nc.Publish(protocol.MetadataSubject(subject, 0), raw)
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
