package systemtest

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/dashboard"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// spillForwarder starts a forwarder of the cluster in region, counting
// only sessions against a capacity of capacity sessions (so a test puts it
// at a throttle level by joining members); it stops with the test.
func (e *env) spillForwarder(t *testing.T, id, region string, capacity int) *forwarder.Forwarder {
	t.Helper()
	v, err := protocol.NewTokenVerifier(e.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	store, err := statestore.OpenRedis(e.storeURL, statestore.Config{})
	require.NoError(t, err)
	nc := e.natsConn(t)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zaptest.NewLogger(t).Named(id)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, time.Second
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key, cfg.Cluster.Region = id, "127.0.0.1:0", e.key, region
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout = 100*time.Millisecond, 500*time.Millisecond
	cfg.Cluster.ReconcileEvery, cfg.Cluster.OrphanAfter = 500*time.Millisecond, 2*time.Second
	cfg.Cluster.Partitions = partitions
	cfg.Cluster.SpillBudget = time.Second // loopback RTTs reach tens of ms on a loaded machine
	cfg.Load.CapacitySessions, cfg.Load.CPUCores, cfg.Load.QueueDropsFull = capacity, 1e6, 1e9
	cfg.Load.HoldDown, cfg.LoadEvery = time.Minute, 50*time.Millisecond
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	return f
}

// spillToken signs a token for a new participant of call.
func (e *env) spillToken(t *testing.T, call protocol.ID, class protocol.CallClass) []byte {
	t.Helper()
	tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(),
		Class: class, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	return tok
}

// Regional spill-over on the dashboard, through real parts: two forwarders
// on loopback sockets in regions eu and za, a dashboard, one NATS server.
// eu is pushed to throttle level 2 by its own members; new calls that come
// to it are referred to za (300 Try Alternate) and admitted there. The
// dashboard, from the forwarders' load reports alone, shows them as
// spilled out on eu's card (to za), referred in on za's, in the from→to
// list and in /metrics; za's admissions show they came.
func TestSpillOverOnDashboard(t *testing.T) {
	e := newEnv(t)
	eu := e.spillForwarder(t, "fwd-eu", "eu", 5)
	za := e.spillForwarder(t, "fwd-za", "za", 100)

	cfg := dashboard.Default()
	cfg.NATS, cfg.Key, cfg.Listen = e.natsConn(t), e.key, "127.0.0.1:0"
	cfg.PushEvery = 200 * time.Millisecond
	cfg.Logger = zaptest.NewLogger(t).Named("dashboard")
	d, err := dashboard.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; cfg.NATS.Close() })
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "http://" + d.Addr().String()
	state := func() dashboard.Snapshot {
		var s dashboard.Snapshot
		r, err := client.Get(base + "/api/state")
		require.NoError(t, err)
		defer r.Body.Close()
		require.NoError(t, json.NewDecoder(r.Body).Decode(&s))
		return s
	}
	fwd := func(s dashboard.Snapshot, id string) *dashboard.ForwarderView {
		for i := range s.Forwarders {
			if s.Forwarders[i].ID == id {
				return &s.Forwarders[i]
			}
		}
		return nil
	}

	// eu at level 2 (4 of 5 sessions), having measured za and heard its
	// level; the dashboard has both forwarders' reports (its baselines).
	call := protocol.NewID()
	for i := range 4 {
		m := calltest.Join(t, e.spillToken(t, call, protocol.ClassGroup), uint32(100+i), eu.Addr())
		require.Equal(t, eu.Addr(), m.S.Forwarder())
	}
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if l := eu.Stats().ThrottleLevel; l != forwarder.ThrottleNewOneToOne {
			return fmt.Errorf("fwd-eu at level %d", l)
		}
		if len(eu.Regions().RTTs) == 0 {
			return fmt.Errorf("fwd-eu has not measured za yet")
		}
		s := state()
		for _, id := range []string{"fwd-eu", "fwd-za"} {
			if f := fwd(s, id); f == nil || !f.HasReport || f.Region == "" {
				return fmt.Errorf("the dashboard has no report of %s yet", id)
			}
		}
		if fwd(s, "fwd-eu").Level != 2 {
			return fmt.Errorf("the dashboard does not show fwd-eu at level 2 yet")
		}
		return nil
	})
	admittedZA := func(s dashboard.Snapshot) (n uint64) {
		for _, c := range fwd(s, "fwd-za").Classes { // za does not throttle: unclassified
			n += c.AdmittedTotal
		}
		return n
	}
	before := admittedZA(state())

	// Three new calls come to eu: each is referred to za and lands there.
	const spilled = 3
	for i := range spilled {
		m := calltest.Join(t, e.spillToken(t, protocol.NewID(), protocol.ClassGroup), uint32(200+i), eu.Addr())
		require.Equal(t, za.Addr(), m.S.Forwarder(), "call %d: eu throttles, za has room", i)
	}
	require.Equal(t, []protocol.RegionSpill{{Region: "za", Joins: spilled}}, eu.Regions().SpillTo)

	// The dashboard: fwd-eu's row, the region cards and the list on
	// /events, and /metrics.
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		s := state()
		v := fwd(s, "fwd-eu").Spill
		if v == nil || len(v.To) != 1 || v.To[0] != (dashboard.SpillTargetView{Region: "za", Joins1m: spilled, Joins5m: spilled, Total: spilled}) {
			return fmt.Errorf("fwd-eu's spill-over on the dashboard: %+v", v)
		}
		if got := admittedZA(s) - before; got != spilled {
			return fmt.Errorf("fwd-za admitted %d joins, want %d", got, spilled)
		}
		return nil
	})
	msg := waitSpillMsg(t, client, base, func(m dashboard.FleetMsg, spills []dashboard.SpillPairView) error {
		var euCard, zaCard dashboard.RegionView
		for _, r := range m.Regions {
			switch r.Region {
			case "eu":
				euCard = r
			case "za":
				zaCard = r
			}
		}
		if euCard.SpilledOut1m != spilled || euCard.ReferredIn1m != 0 || zaCard.ReferredIn1m != spilled || zaCard.SpilledOut1m != 0 {
			return fmt.Errorf("cards: eu %+v, za %+v", euCard, zaCard)
		}
		if len(spills) != 1 || spills[0] != (dashboard.SpillPairView{From: "eu", To: "za", Joins1m: spilled, Joins5m: spilled}) {
			return fmt.Errorf("list %+v", spills)
		}
		return nil
	})
	require.Zero(t, msg.Regions[0].SpillRefused1m)

	r, err := client.Get(base + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(body), fmt.Sprintf(`callrelay_dashboard_region_spill_joins_total{from="eu",to="za"} %d`, spilled)+"\n")
	t.Logf("fwd-eu referred %d new calls to za (RTT %v); the dashboard shows eu spilled out %d, za referred in %d; fwd-za admitted them",
		spilled, eu.Regions().RTTs, spilled, spilled)
}

// waitSpillMsg reads /events, applying deltas to the from→to list, until ok
// accepts a message and the list as it stands then.
func waitSpillMsg(t *testing.T, client *http.Client, base string, ok func(dashboard.FleetMsg, []dashboard.SpillPairView) error) dashboard.FleetMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	require.NoError(t, err)
	r, err := client.Do(req)
	require.NoError(t, err)
	defer r.Body.Close()
	rd := bufio.NewReaderSize(r.Body, 1<<20)
	var spills []dashboard.SpillPairView
	var last error
	for {
		line, err := rd.ReadString('\n')
		require.NoError(t, err, "last: %v", last)
		data, found := strings.CutPrefix(line, "data: ")
		if !found {
			continue
		}
		var m dashboard.FleetMsg
		require.NoError(t, json.Unmarshal([]byte(data), &m))
		if m.Spills != nil {
			spills = *m.Spills
		}
		if last = ok(m, spills); last == nil {
			return m
		}
	}
}
