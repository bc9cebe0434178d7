package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// fleetRegions are the simulated fleet's regions: forwarder i is in
// fleetRegions[i%4].
var fleetRegions = []string{"ap-south", "eu-west", "sa-east", "us-east"}

// fleetBound is how long the page may take to show 300 forwarders, their
// regions and the charts, from navigation (a shared 2-core machine running
// other tests: generous; the test logs what it took).
const fleetBound = 30 * time.Second

// fleetFeeder publishes n simulated forwarders' load reports once a second
// over NATS, as forwarders do; while spiking, every second forwarder of
// eu-west is at level 3, 95 % CPU, refusing new calls and new members.
type fleetFeeder struct {
	n       int
	key     protocol.ClusterKey
	nc      *nats.Conn
	spiking atomic.Bool
	started time.Time
	seq     uint64
	reports []protocol.LoadReport
	// conds are two conductors' reports (eu-west, us-east): decisions
	// take 12 ms at p99, 180 ms in eu-west while spiking.
	conds []protocol.ConductorReport
}

func (f *fleetFeeder) spikes(i int) bool { return f.spiking.Load() && i%4 == 1 && (i/4)%2 == 0 }

// tick publishes one report per forwarder.
func (f *fleetFeeder) tick(t *testing.T) {
	f.seq++
	for i := range f.reports {
		r := &f.reports[i]
		r.Seq, r.At = f.seq, time.Now()
		r.Admitted[0] += uint32(i % 3)
		r.Admitted[5]++
		r.Ops.StoreWrites += 10
		r.Ops.StoreWriteUs += 10 * uint64(800+i)
		r.Ops.NATSRTTs++
		r.Ops.NATSRTTUs += uint64(300 + i)
		r.HasAdapt = true
		r.Adapt.Nacked += 20
		r.Adapt.Resent += 18
		r.Level, r.Signals[0] = 0, uint16(300+i)
		if f.spikes(i) {
			r.Level, r.Signals[0] = 3, 950
			r.Refused[1] += 2
			r.Refused[2] += 3
			r.Refused[3]++
			r.Admitted[4]++
		}
		b, err := r.Marshal(nil, f.key)
		require.NoError(t, err)
		require.NoError(t, f.nc.Publish("callrelay.forwarders", b))
	}
	for i := range f.conds {
		r := &f.conds[i]
		r.Seq, r.At, r.Decisions = f.seq, time.Now(), r.Decisions+uint64(r.InInterval)
		r.P50, r.P99 = 4*time.Millisecond, 12*time.Millisecond
		if f.spiking.Load() && r.Region == "eu-west" {
			r.P50, r.P99 = 60*time.Millisecond, 180*time.Millisecond
		}
		r.Max = r.P99 + time.Millisecond
		b, err := r.Marshal(nil, f.key)
		require.NoError(t, err)
		require.NoError(t, f.nc.Publish("callrelay.conductors", b))
	}
	require.NoError(t, f.nc.Flush())
}

func newFleetFeeder(t *testing.T, n int, key protocol.ClusterKey, url string) *fleetFeeder {
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	f := &fleetFeeder{n: n, key: key, nc: nc, started: time.Now(), reports: make([]protocol.LoadReport, n)}
	for i := range f.reports {
		f.reports[i] = protocol.LoadReport{Forwarder: fmt.Sprintf("fwd-%03d", i), Started: f.started, Sessions: 100,
			CallsOneToOne: 20, CallsGroup: 5, Signals: [5]uint16{300, 200, 0, 250, 400}, HasOps: true,
			Ops: protocol.LoadOps{Region: fleetRegions[i%len(fleetRegions)]}}
		// The trunk RTT section: 10 ms per region index sum, plus 0..2 ms
		// by the forwarder's rank in its region (fleetRegions is in name
		// order, as the section's rows must be).
		for b, peer := range fleetRegions {
			if a := i % len(fleetRegions); a != b {
				rtt := time.Duration(10*(a+b+1)+(i/4)%3) * time.Millisecond
				f.reports[i].RTTs = append(f.reports[i].RTTs, protocol.RegionRTT{Region: peer, RTT: rtt, Dev: time.Millisecond})
			}
		}
	}
	for _, region := range []string{"eu-west", "us-east"} {
		f.conds = append(f.conds, protocol.ConductorReport{Conductor: "cnd-" + region + "/0a0b0c0d", Region: region, Started: f.started,
			Interval: time.Second, Calls: 40, Partitions: 32, InInterval: 120})
	}
	return f
}

// The fleet view in headless Chromium against a `callrelay dashboard`
// process fed 300 simulated forwarders in 4 regions over real NATS: the
// page shows every cell, the 4 region summaries and the charts within
// fleetBound; when eu-west spikes, its cells, its summary and the charts
// (the heat strip's pixels, the joins and load read-outs) show it as it
// happens; hovering a chart moves every panel to that second; a cell opens
// its forwarder's row; two conductors' reports draw the decision latency
// chart, whose p99 rises with the spike; no console error. The screenshot is saved to
// $CALLRELAY_ARTIFACTS (default: the system's temporary directory).
func TestDashboardFleetInBrowser(t *testing.T) {
	const n = 300
	chromium, err := exec.LookPath("chromium")
	require.NoError(t, err, "chromium not on PATH: run `make deps` (it installs Debian's chromium)")
	ns := testenv.NATS(t)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	p, base := dashboardAt(t, env("CALLRELAY_CLUSTER_KEY="+key.String(), "CALLRELAY_NATS_URL="+ns.ClientURL()), "--listen", "127.0.0.1:0")

	feeder := newFleetFeeder(t, n, key, ns.ClientURL())
	ctx, stopFeed := context.WithTimeout(context.Background(), 150*time.Second) // bounded
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			feeder.tick(t)
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	defer func() { stopFeed(); <-fed }()

	bctx, problems := newBrowser(t, chromium)
	eval := func(js string) string {
		out, err := chromedp.Run(bctx, chromedp.Evaluate[string](js))
		require.NoError(t, err, js)
		return out
	}
	began := time.Now()
	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(base+"/")))
	testenv.CheckFor(t, fleetBound, 100*time.Millisecond, func() error {
		got := eval(`document.querySelectorAll('#grid .cell').length + "/" + document.querySelectorAll('#regions .region').length + "/" +
			(document.querySelector('[data-panel=heat] .readout').textContent.includes("300 forwarders") ? "heat" : "-")`)
		if got != "300/4/heat" {
			return fmt.Errorf("cells/regions/heat: %s", got)
		}
		return nil
	})
	rendered := time.Since(began)
	// The trunk RTT matrix: 4 measuring regions; eu-west to us-east is
	// 50 ms plus 0, 1 or 2 ms on 25 forwarders each: median 51, worst 52.
	testenv.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		got := eval(`document.querySelectorAll('#trunks tbody tr').length + "/" +
			(document.querySelector('#trunks tr[data-from="eu-west"] td[data-to="us-east"]') || {textContent: "-"}).textContent`)
		if got != "4/51.0 ms (52.0 ms)" {
			return fmt.Errorf("trunk matrix rows/eu-west to us-east: %s", got)
		}
		return nil
	})
	require.Equal(t, "0", eval(`String(document.querySelectorAll('#grid .cell:not([data-level="0"])').length)`), "no spike yet")
	require.Equal(t, "0", eval(`document.querySelector('.region[data-region="eu-west"]').dataset.maxLevel`))

	// The spike: 38 of eu-west's 75 forwarders go to level 3.
	feeder.spiking.Store(true)
	spikeAt := time.Now()
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got := eval(`[document.querySelectorAll('#grid .cell[data-level="3"]').length,
			document.querySelector('.region[data-region="eu-west"]').dataset.maxLevel,
			document.querySelector('.region[data-region="eu-west"] .summary').textContent,
			document.querySelector('[data-panel=heat] .readout').textContent,
			document.querySelector('[data-panel=joins] .readout').textContent,
			document.querySelector('[data-panel=load] .readout').textContent].join(" | ")`)
		for _, want := range []string{"38 | 3 | 75 / 75 up · 38 throttling", "L3 38", "new group call 0/", "95.0% of capacity, worst signal: cpu"} {
			if !strings.Contains(got, want) {
				return fmt.Errorf("want %q in %s", want, got)
			}
		}
		return nil
	})
	shown := time.Since(spikeAt)
	// The conductors' decision latency: the read-out says the slowest
	// conductor's p99 of the latest second, and the chart's red p99 line
	// is drawn at its right edge, above the blue p50.
	testenv.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		got := eval(`(() => { const p = document.querySelector('[data-panel=decision]'), c = p.querySelector('canvas'), g = c.getContext('2d');
			let red = -1, blue = -1;
			for (let y = 0; y < c.height; y++) { const d = g.getImageData(c.width - 3, y, 1, 1).data;
				if (red < 0 && d[0] > 150 && d[1] < 100 && d[2] < 100 && d[3] > 100) red = y;
				if (blue < 0 && d[2] > 150 && d[0] < 100 && d[3] > 100) blue = y; }
			return p.querySelector('.readout').textContent + " | red " + red + " blue " + blue; })()`)
		if !strings.Contains(got, "p50 60.0 ms, p99 180.0 ms (slowest conductor) · 240 decisions/s · 2 conductor(s)") {
			return fmt.Errorf("decision latency read-out: %s", got)
		}
		var red, blue int
		if _, err := fmt.Sscanf(got[strings.LastIndex(got, "| red"):], "| red %d blue %d", &red, &blue); err != nil || red < 0 || blue <= red {
			return fmt.Errorf("the chart's p99 (red) line not drawn above p50 (blue) at the latest second: %s", got)
		}
		return nil
	})
	// Worst first: the level-3 cells lead the grid; the heat strip's top
	// rows are drawn in level 3's colour at the latest second.
	require.Equal(t, "3", eval(`document.querySelector('#grid .cell').dataset.level`))
	testenv.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		got := eval(`(() => { const c = document.querySelector('[data-panel=heat] canvas'), g = c.getContext('2d');
			const rh = c.height / 300; let n = 0;
			for (let i = 0; i < 300; i++) { const d = g.getImageData(c.width - 3, Math.floor(i * rh), 1, 1).data;
				if (d[0] === 0xd3 && d[1] === 0x54 && d[2] === 0x00) n++; }
			return String(n); })()`)
		if got != "38" {
			return fmt.Errorf("%s rows of the heat strip in level 3's colour at the latest second, want 38", got)
		}
		return nil
	})
	// Filters: eu-west only, throttling only.
	eval(`(() => { for (const [id, v] of [["f-region", "eu-west"], ["f-level", "throttling"]]) {
		const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event("change")); } return ""; })()`)
	require.Equal(t, "38 eu-west", eval(`(() => { const cs = Array.from(document.querySelectorAll('#grid .cell'));
		return cs.length + " " + Array.from(new Set(cs.map(c => c.dataset.region))).join(","); })()`))

	// The time cursor: hover the NACK chart 10 s before its right edge;
	// every panel shows that second. The pointer is moved again on every
	// poll, at the canvas's current place: the grid and region summaries
	// above the charts change height as deltas arrive, which can move the
	// canvas from under a still pointer (Chrome then sends mouseleave and
	// the page rightly follows the latest second again). The readouts and
	// the cursor label are read in one evaluation.
	hover := func() error {
		var fx, fy float64
		if _, err := fmt.Sscan(eval(`(() => { const c = document.querySelector('[data-panel=nack] canvas');
			c.scrollIntoView({block: "center"}); const r = c.getBoundingClientRect();
			return (r.left + r.width * (1 - 10 / 900)) + " " + (r.top + r.height / 2); })()`), &fx, &fy); err != nil {
			return err
		}
		return chromedp.Do(bctx, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, fx, fy))
	}
	testenv.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if err := hover(); err != nil {
			return err
		}
		got := eval(`(() => { const secs = Array.from(document.querySelectorAll('.panel .readout')).map(r => r.dataset.sec);
			const l = document.getElementById('cursor-time');
			return Array.from(new Set(secs)).join(",") + " " + l.dataset.sec + " " + l.textContent; })()`)
		f := strings.Fields(got)
		if len(f) < 3 || !strings.HasPrefix(f[2], "cursor:") || strings.Contains(f[0], ",") || f[0] != f[1] {
			return fmt.Errorf("panels not on one cursor second (readout seconds, cursor second, label): %s", got)
		}
		return nil
	})
	// The drill-down: a cell opens its forwarder's row.
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(`#grid .cell[data-id="fwd-001"]`),
		chromedp.WaitVisible(`tr[data-forwarder="fwd-001"] .level[data-level="3"]`)))
	require.NoError(t, chromedp.Do(bctx, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, 5, 5)))

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	dir := os.Getenv("CALLRELAY_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	shot := filepath.Join(dir, "callrelay-dashboard-fleet.png")
	require.NoError(t, os.WriteFile(shot, png, 0o644))
	t.Logf("300 forwarders in 4 regions: page rendered in %v (bound %v); spike shown %v after it began; screenshot %s (%d bytes)",
		rendered.Round(time.Millisecond), fleetBound, shown.Round(time.Millisecond), shot, len(png))
	require.Empty(t, problems(), "console errors or exceptions")
	code, _ := p.stop(t, syscall.SIGINT)
	require.Equal(t, 0, code)
}
