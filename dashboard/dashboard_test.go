package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is a dashboard on real NATS and Redis, and a publisher connection.
type env struct {
	srv    *Server
	key    protocol.ClusterKey
	pub    *nats.Conn
	store  *statestore.Redis
	redis  *testenv.RedisServer
	clock  *fakeClock
	base   string
	client *http.Client
}

// start runs a dashboard; edits adjust its config.
func start(t *testing.T, edits ...func(c *Config)) *env {
	t.Helper()
	ns := testenv.NATS(t)
	rs := testenv.Redis(t)
	store, err := statestore.OpenRedis(rs.URL(), statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	sub, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(sub.Close)
	pub, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(pub.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)

	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases = sub, key, store, store
	cfg.Listen, cfg.Now, cfg.Partitions = "127.0.0.1:0", clock.Now, 8
	cfg.PushEvery, cfg.PollEvery = 50*time.Millisecond, 50*time.Millisecond
	for _, edit := range edits {
		edit(&cfg)
	}
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections) // no idle keep-alive goroutines left for goleak
	e := &env{srv: s, key: key, pub: pub, store: store, redis: rs, clock: clock, base: "http://" + s.Addr().String(),
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		r, err := e.client.Get(e.base + "/healthz")
		if err == nil {
			r.Body.Close()
		}
		return err
	})
	return e
}

func (e *env) publish(t *testing.T, m interface {
	Marshal([]byte, protocol.ClusterKey) ([]byte, error)
}, key protocol.ClusterKey) {
	t.Helper()
	b, err := m.Marshal(nil, key)
	require.NoError(t, err)
	require.NoError(t, e.pub.Publish("callrelay.forwarders", b))
	require.NoError(t, e.pub.Flush())
}

func (e *env) state(t *testing.T) Snapshot {
	t.Helper()
	r, err := e.client.Get(e.base + "/api/state")
	require.NoError(t, err)
	defer r.Body.Close()
	require.Equal(t, http.StatusOK, r.StatusCode)
	require.Equal(t, "application/json; charset=utf-8", r.Header.Get("Content-Type"))
	var s Snapshot
	require.NoError(t, json.NewDecoder(r.Body).Decode(&s))
	return s
}

// waitState polls /api/state until ok accepts it.
func (e *env) waitState(t *testing.T, ok func(s Snapshot) error) Snapshot {
	t.Helper()
	var s Snapshot
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		s = e.state(t)
		return ok(s)
	})
	return s
}

func fwdByID(s Snapshot, id string) *ForwarderView {
	for i := range s.Forwarders {
		if s.Forwarders[i].ID == id {
			return &s.Forwarders[i]
		}
	}
	return nil
}

var testStarted = time.Unix(1_799_999_000, 0).UTC()

func announce(id string, seq uint64) *protocol.ForwarderAnnounce {
	return &protocol.ForwarderAnnounce{ID: id, Media: netip.MustParseAddrPort("192.0.2.10:3478"),
		Trunk: netip.MustParseAddrPort("10.0.0.7:7001"), Sessions: 10, Calls: 4, Load: 300, Seq: seq, Started: testStarted}
}

func report(id string, seq uint64, level uint8) *protocol.LoadReport {
	return &protocol.LoadReport{Forwarder: id, Started: testStarted, Seq: seq, Level: level,
		Signals: [5]uint16{200, 100, 0, 150, 300}, Sessions: 10, CallsOneToOne: 3, CallsGroup: 1}
}

func TestDashboardTwoForwarders(t *testing.T) {
	e := start(t)
	e.holdPartitions(t, "cond-1/00ff", 0, 1, 2)
	e.holdPartitions(t, "cond-2/beef", 3, 4, 6, 7)
	// fwd-a: calm, dual stack, with TCP and TLS listeners. fwd-b: level
	// 2, refusing new calls.
	aa := announce("fwd-a", 1)
	aa.Media6 = netip.MustParseAddrPort("[2001:db8::10]:3478")
	aa.Streams[0][0] = netip.MustParseAddrPort("192.0.2.10:443")
	aa.Streams[1][1] = netip.MustParseAddrPort("[2001:db8::10]:443")
	e.publish(t, aa, e.key)
	e.publish(t, report("fwd-a", 1, 0), e.key)
	b1 := report("fwd-b", 1, 2)
	b1.Signals = [5]uint16{950, 400, 10, 200, 600}
	b1.Admitted, b1.Refused = [6]uint32{50, 5, 5, 20, 10, 3}, [6]uint32{0, 0, 0, 0, 0, 0}
	e.publish(t, b1, e.key)
	e.waitState(t, func(s Snapshot) error {
		if b := fwdByID(s, "fwd-b"); b == nil || b.Seq != 1 {
			return fmt.Errorf("fwd-b not seen yet")
		}
		if a := fwdByID(s, "fwd-a"); a == nil || !a.HasReport {
			return fmt.Errorf("fwd-a not seen yet")
		}
		return nil
	})
	// A second later fwd-b refused 4 new group calls and 7 new
	// one-to-one calls, and admitted 2 rejoins.
	e.clock.Add(time.Second)
	b2 := *b1
	b2.Seq, b2.Sessions, b2.CallsOneToOne, b2.CallsGroup = 2, 120, 40, 12
	b2.Admitted[5], b2.Refused[1], b2.Refused[2] = 5, 4, 7
	e.publish(t, &b2, e.key)
	s := e.waitState(t, func(s Snapshot) error {
		if b := fwdByID(s, "fwd-b"); b == nil || b.Seq != 2 {
			return fmt.Errorf("fwd-b report 2 not seen yet")
		}
		return nil
	})

	require.Len(t, s.Forwarders, 2)
	a, b := fwdByID(s, "fwd-a"), fwdByID(s, "fwd-b")
	require.True(t, a.Up)
	require.Equal(t, "192.0.2.10:3478", a.Media)
	require.Equal(t, "[2001:db8::10]:3478", a.Media6)
	require.Equal(t, []string{"tcp 192.0.2.10:443", "tls [2001:db8::10]:443"}, a.Streams)
	require.Equal(t, 0, a.Level)
	require.Equal(t, 300, a.Load, "the worst signal")
	require.Equal(t, "sessions", a.Worst)

	require.True(t, b.Up)
	require.Equal(t, 2, b.Level)
	require.Equal(t, "level 2: new one-to-one calls refused", b.LevelText)
	require.Equal(t, 950, b.Load)
	require.Equal(t, "cpu", b.Worst)
	require.EqualValues(t, 120, b.Sessions)
	require.EqualValues(t, 40, b.CallsOneToOne)
	require.EqualValues(t, 12, b.CallsGroup)
	require.EqualValues(t, 4, b.Classes[1].Refused1, "deltas, not the cumulative counters")
	require.EqualValues(t, 7, b.Classes[2].Refused5)
	require.EqualValues(t, 2, b.Classes[5].Admitted1)
	require.EqualValues(t, 0, b.Classes[0].Admitted1, "the first report is the baseline")
	require.EqualValues(t, 50, b.Classes[0].AdmittedTotal)

	require.Equal(t, "THROTTLING", s.Verdict.Status)
	require.Equal(t, "THROTTLING on fwd-b (level 2: new one-to-one calls refused)", s.Verdict.Text)
	require.EqualValues(t, 2, s.Cluster.Up)
	require.EqualValues(t, 43, s.Cluster.CallsOneToOne)
	require.EqualValues(t, 13, s.Cluster.CallsGroup)
	require.EqualValues(t, 11, s.Cluster.Classes[1].Refused1+s.Cluster.Classes[2].Refused1)

	// A minute on, the refusals have left the 1-minute window but not the
	// 5-minute one.
	e.clock.Add(61 * time.Second)
	b3 := b2
	b3.Seq = 3
	e.publish(t, &b3, e.key)
	s = e.waitState(t, func(s Snapshot) error {
		if b := fwdByID(s, "fwd-b"); b == nil || b.Seq != 3 {
			return fmt.Errorf("fwd-b report 3 not seen yet")
		}
		return nil
	})
	b = fwdByID(s, "fwd-b")
	require.EqualValues(t, 0, b.Classes[1].Refused1)
	require.EqualValues(t, 4, b.Classes[1].Refused5)
	require.False(t, fwdByID(s, "fwd-a").Up, "fwd-a fell silent 61 s ago")

	// Partitions and health came from real Redis and NATS: nobody holds a
	// partition.
	s = e.waitState(t, func(s Snapshot) error {
		if !s.Partitions.Checked || !s.Health.NATS.Checked || !s.Health.Redis.Checked {
			return fmt.Errorf("not polled yet")
		}
		if len(s.Partitions.Unowned) != 1 {
			// A poll from before the leases were taken (a loaded machine).
			return fmt.Errorf("partitions not polled since the leases were taken: unowned %v", s.Partitions.Unowned)
		}
		return nil
	})
	require.True(t, s.Health.NATS.OK)
	require.True(t, s.Health.Redis.OK, s.Health.Redis.Error)
	require.Equal(t, []int{5}, s.Partitions.Unowned)
	require.Equal(t, -1, s.Partitions.Owner[5])
	require.Len(t, s.Partitions.Owners, 2)
	for _, o := range s.Partitions.Owners {
		switch o.Conductor {
		case "cond-1":
			require.Equal(t, "cond-1/00ff", o.Owner)
			require.Equal(t, 3, o.Partitions)
		case "cond-2":
			require.Equal(t, 4, o.Partitions)
		default:
			t.Fatalf("owner %+v", o)
		}
		require.NotZero(t, o.MinEpoch)
	}
	require.Contains(t, s.Verdict.Issues, "1 of 8 conductor partitions have no owner: their calls get no speaker decisions")
}

func TestDashboardEvents(t *testing.T) {
	e := start(t)
	e.publish(t, report("fwd-a", 1, 1), e.key)
	e.waitState(t, func(s Snapshot) error {
		if fwdByID(s, "fwd-a") == nil {
			return fmt.Errorf("fwd-a not seen yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/events", nil)
	require.NoError(t, err)
	r, err := e.client.Do(req)
	require.NoError(t, err)
	defer r.Body.Close()
	require.Equal(t, "text/event-stream", r.Header.Get("Content-Type"))
	rd := bufio.NewReader(r.Body)
	first := readFleet(t, rd, 1)[0] // the full message, sent at once
	require.True(t, first.Full)
	require.NotNil(t, first.Partitions)
	require.NotNil(t, first.Verdict)
	// The first push after fwd-a's report has its cell (and the verdict).
	m, last := first, first.Seq
	for i := 0; len(m.Cells) == 0; i++ {
		require.Less(t, i, 50, "no message with fwd-a's cell")
		m = readFleet(t, rd, 1)[0]
		require.False(t, m.Full, "a reader that keeps up gets deltas")
		require.Equal(t, last+1, m.Seq)
		last = m.Seq
	}
	require.Equal(t, []Cell{{ID: "fwd-a", Level: 1, Load: 30, Worst: "sessions", Up: true}}, m.Cells)
	require.Equal(t, "THROTTLING on fwd-a (level 1: new group calls refused)", m.Verdict.Text)
	d := readFleet(t, rd, 1)[0]
	require.False(t, d.Full)
	require.Equal(t, m.Seq+1, d.Seq)
	require.Empty(t, d.Cells, "nothing changed: no cell")
	if d.Verdict != nil {
		require.NotEqual(t, *m.Verdict, *d.Verdict, "a verdict is sent only when it changed (here: the first partitions sweep)")
	}
	for i := 0; d.Verdict != nil; i++ {
		require.Less(t, i, 50, "every delta repeats the verdict")
		d = readFleet(t, rd, 1)[0]
	}
	require.Len(t, d.Regions, 1)
	require.Equal(t, 1, d.Regions[0].Throttling)
}

// readFleet reads n messages of an /events stream.
func readFleet(t *testing.T, rd *bufio.Reader, n int) []FleetMsg {
	t.Helper()
	var got []FleetMsg
	for len(got) < n {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var m FleetMsg
			require.NoError(t, json.Unmarshal([]byte(data), &m))
			got = append(got, m)
		}
	}
	return got
}

// holdPartitions takes the partitions' leases as a conductor would.
func (e *env) holdPartitions(t *testing.T, owner string, parts ...int) {
	t.Helper()
	for _, p := range parts {
		_, err := e.store.AcquireLease(context.Background(), statestore.PartitionLease(p), owner, time.Minute)
		require.NoError(t, err)
	}
}

func TestDashboardDropsForgeries(t *testing.T) {
	e := start(t)
	e.holdPartitions(t, "cond-1/00ff", 0, 1, 2, 3, 4, 5, 6, 7)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	e.publish(t, report("fwd-evil", 1, 4), other)
	e.publish(t, announce("fwd-evil", 1), other)
	require.NoError(t, e.pub.Publish("callrelay.forwarders", []byte("not a cluster message")))
	notice := &protocol.MemberNotice{Op: protocol.MemberLeft, Call: protocol.NewID(), Participant: protocol.NewID(), Forwarder: "fwd-a"}
	e.publish(t, notice, e.key)
	e.publish(t, report("fwd-a", 5, 0), e.key)
	e.publish(t, report("fwd-a", 4, 3), e.key) // older: a replay
	s := e.waitState(t, func(s Snapshot) error {
		if s.Dropped.Forged != 2 || s.Dropped.Malformed != 1 || s.Dropped.Unexpected != 1 || s.Dropped.Stale != 1 {
			return fmt.Errorf("dropped %+v", s.Dropped)
		}
		return nil
	})
	require.Len(t, s.Forwarders, 1)
	require.Equal(t, "fwd-a", s.Forwarders[0].ID)
	require.Equal(t, 0, s.Forwarders[0].Level, "the replayed level-3 report is ignored")
	s = e.waitState(t, func(s Snapshot) error {
		if len(s.Partitions.Unowned) != 0 {
			return fmt.Errorf("partitions not polled since taken: %+v", s.Partitions)
		}
		return nil
	})
	require.Equal(t, "OK", s.Verdict.Status, s.Verdict.Text)
	require.EqualValues(t, 5, s.Forwarders[0].Seq)
}

func TestDashboardForwarderDown(t *testing.T) {
	e := start(t)
	e.publish(t, announce("fwd-a", 1), e.key)
	e.waitState(t, func(s Snapshot) error {
		if f := fwdByID(s, "fwd-a"); f == nil || !f.Up {
			return fmt.Errorf("fwd-a not up yet")
		}
		return nil
	})
	e.clock.Add(2900 * time.Millisecond)
	require.True(t, fwdByID(e.state(t), "fwd-a").Up, "silent 2.9 s: still up")
	e.clock.Add(200 * time.Millisecond)
	s := e.state(t)
	f := fwdByID(s, "fwd-a")
	require.False(t, f.Up, "silent 3.1 s: down")
	require.InDelta(t, 3.1, f.SilentSecs, 0.01)
	require.Equal(t, "DOWN", s.Verdict.Status)
	require.Contains(t, s.Verdict.Text, "fwd-a")

	e.clock.Add(11 * time.Minute)
	require.Empty(t, e.state(t).Forwarders, "forgotten after ForgetAfter")
}

func TestDashboardCallDrillDown(t *testing.T) {
	// No conductor here: each drill-down waits DecisionWait for nothing.
	e := start(t, func(c *Config) { c.DecisionWait = 50 * time.Millisecond })
	ctx := context.Background()
	call, alice, bob := protocol.NewID(), protocol.NewID(), protocol.NewID()
	trunk := netip.MustParseAddrPort("10.0.0.7:7001")
	_, err := e.store.AddMember(ctx, call, protocol.ClassGroup, 5, alice, statestore.Member{Forwarder: "fwd-a", Trunk: trunk,
		Addr: netip.MustParseAddrPort("198.51.100.1:5000"), SSRCs: []uint32{1, 2}, JoinedAt: time.Unix(1_800_000_000, 0)})
	require.NoError(t, err)
	_, err = e.store.AddMember(ctx, call, protocol.ClassGroup, 5, bob, statestore.Member{Forwarder: "fwd-b", Trunk: trunk,
		Addr: netip.MustParseAddrPort("198.51.100.2:5000"), SSRCs: []uint32{3}, JoinedAt: time.Unix(1_800_000_001, 0)})
	require.NoError(t, err)
	e.publish(t, announce("fwd-a", 1), e.key)

	get := func(id string) (int, []byte) {
		t.Helper()
		r, err := e.client.Get(e.base + "/api/call?id=" + id)
		require.NoError(t, err)
		defer r.Body.Close()
		b, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		return r.StatusCode, b
	}

	// Before any checkpoint: members, no speaker.
	code, body := get(call.String())
	require.Equal(t, http.StatusOK, code, string(body))
	var v CallView
	require.NoError(t, json.Unmarshal(body, &v))
	require.Equal(t, "group", v.Class)
	require.Len(t, v.Members, 2)
	require.False(t, v.Speaker.Known)
	require.Contains(t, v.Speaker.Note, "no conductor checkpoint")
	require.False(t, v.Video.Seen)
	require.Contains(t, v.Video.Note, "no decision seen")

	// The conductor's checkpoint names bob.
	since := time.Unix(1_800_000_005, 0).UTC()
	ck := statestore.ConductorCheckpoint{Epoch: 3, Seq: 17, Speaker: statestore.SpeakerState{Dominant: bob, Since: since,
		LastSpoke: map[protocol.ID]time.Time{bob: since, alice: since.Add(-time.Second)}}}
	ckpt, err := ck.MarshalBinary()
	require.NoError(t, err)
	require.NoError(t, e.store.SaveCheckpoint(ctx, call, statestore.ConductorCheckpointKind, ckpt, time.Minute))
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		code, body = get(call.String())
		v = CallView{}
		if err := json.Unmarshal(body, &v); err != nil || !v.Members[0].ForwarderUp {
			return fmt.Errorf("fwd-a not up yet: %s", body)
		}
		return nil
	})
	require.Equal(t, http.StatusOK, code)
	require.True(t, v.Speaker.Known)
	require.Equal(t, bob.String(), v.Speaker.Dominant)
	require.EqualValues(t, 3, v.Speaker.Epoch)
	require.EqualValues(t, 17, v.Speaker.Seq)
	require.True(t, since.Equal(v.Speaker.Since))
	require.Equal(t, alice.String(), v.Members[0].Participant, "in joining order")
	require.Equal(t, "fwd-a", v.Members[0].Forwarder)
	require.Empty(t, v.Members[0].Addr, "no admin token: no device address (auth_test.go)")
	require.True(t, v.AddrsHidden)
	require.True(t, v.Members[0].ForwarderUp)
	require.False(t, v.Members[1].ForwarderUp, "fwd-b never heard")
	require.True(t, v.Members[1].Dominant)
	require.Equal(t, protocol.PartitionOf(call, 8), v.Partition)

	// A corrupt checkpoint still shows the members, with a note.
	require.NoError(t, e.store.SaveCheckpoint(ctx, call, statestore.ConductorCheckpointKind, []byte{2, 0, 0}, time.Minute))
	code, body = get(call.String())
	require.Equal(t, http.StatusOK, code)
	v = CallView{}
	require.NoError(t, json.Unmarshal(body, &v))
	require.False(t, v.Speaker.Known)
	require.Contains(t, v.Speaker.Note, "malformed conductor checkpoint")
	require.Contains(t, v.Speaker.Note, "of 3 bytes, want at least 11")
	require.Len(t, v.Members, 2)
	require.EqualValues(t, 1, e.srv.malformed.checkpoint.Load())

	for _, tt := range []struct {
		id   string
		code int
		msg  string
	}{
		{"", http.StatusBadRequest, "missing call id"},
		{"xyz", http.StatusBadRequest, `call id \"xyz\": want 32 hex digits`},
		{strings.Repeat("g", 32), http.StatusBadRequest, "want 32 hex digits"},
		{strings.Repeat("a", 33), http.StatusBadRequest, "want 32 hex digits"},
		{strings.Repeat("0", 32), http.StatusBadRequest, "not all zero"},
		{protocol.NewID().String(), http.StatusNotFound, "not found: it has ended, or never existed"},
	} {
		code, body := get(tt.id)
		require.Equal(t, tt.code, code, "id %q: %s", tt.id, body)
		require.Contains(t, string(body), tt.msg)
	}
}

func TestDashboardPage(t *testing.T) {
	e := start(t)
	for path, want := range map[string]string{
		"/":          `id="verdict"`,
		"/app.js":    "EventSource",
		"/style.css": ".level[data-level=\"2\"]",
		"/healthz":   "ok",
		"/readyz":    "ready",
		"/metrics":   `callrelay_dashboard_heartbeats_dropped_total{reason="forged"}`,
	} {
		r, err := e.client.Get(e.base + path)
		require.NoError(t, err)
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, r.StatusCode, path)
		require.Contains(t, string(b), want, path)
		require.Contains(t, r.Header.Get("Content-Security-Policy"), "default-src 'self'")
	}
}

func TestConfigValidate(t *testing.T) {
	err := Default().Validate()
	require.ErrorContains(t, err, "--nats-url")
	require.ErrorContains(t, err, "--cluster-key")
	c := Default()
	c.Partitions = 0
	require.ErrorContains(t, c.Validate(), "0 partitions")
	c = Default()
	c.MaxDecisionLookups = 0
	require.ErrorContains(t, c.Validate(), "max decision lookups 0")
}
