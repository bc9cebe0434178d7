package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// fleetRegions are the simulated fleet's regions.
var fleetRegions = []string{"eu-west", "us-east", "ap-south", "sa-east"}

// fleetReport is forwarder i of a simulated fleet (i mod 4 its region).
func fleetReport(i int, seq uint64, level uint8) *protocol.LoadReport {
	r := report(fmt.Sprintf("fwd-%03d", i), seq, level)
	r.HasOps, r.Ops.Region = true, fleetRegions[i%len(fleetRegions)]
	r.Signals[0] = uint16(200 + 150*int(level))
	return r
}

// 300 forwarders in 4 regions over real NATS: the first message of the
// stream has every cell and the 4 regions; a steady second's delta has no
// cell; a spike's delta has only the forwarders that changed. The sizes
// are logged (the report's bytes per update).
func TestFleetDeltas300(t *testing.T) {
	const n = 300
	e := start(t, func(c *Config) { c.PollEvery, c.PushEvery = time.Hour, 200*time.Millisecond }) // partitions and health steady
	for i := range n {
		e.publish(t, fleetReport(i, 1, 0), e.key)
	}
	// Polled slowly: each /api/state builds every row under the tracker's
	// lock, which the 300 reports need too (-race on a loaded machine).
	testenv.CheckFor(t, 60*time.Second, 250*time.Millisecond, func() error {
		if s := e.state(t); len(s.Forwarders) != n {
			return fmt.Errorf("%d forwarders seen, dropped %+v", len(s.Forwarders), s.Dropped)
		}
		return nil
	})
	rd, stop := events(t, e)
	defer stop()
	// Skip to a full message with every forwarder.
	var full FleetMsg
	var fullBytes int
	for i := 0; len(full.Cells) != n; i++ {
		require.Less(t, i, 100)
		full, fullBytes = readSized(t, rd)
	}
	require.True(t, full.Full)
	require.Len(t, full.Regions, 4)
	for _, r := range full.Regions {
		require.Equal(t, n/4, r.Forwarders, r.Region)
		require.Equal(t, n/4, r.Up, r.Region)
	}
	steady, steadyBytes := readSized(t, rd)
	require.False(t, steady.Full)
	require.Empty(t, steady.Cells)

	// The spike: 30 forwarders of eu-west go to level 3.
	for i := 0; i < 120; i += 4 {
		e.publish(t, fleetReport(i, 2, 3), e.key)
	}
	var spike FleetMsg
	var spikeBytes int
	changed := map[string]bool{}
	for i := 0; len(changed) < 30; i++ {
		require.Less(t, i, 100, "the spike's cells never came: %v", changed)
		spike, spikeBytes = readSized(t, rd)
		require.False(t, spike.Full)
		for _, c := range spike.Cells {
			require.Equal(t, "eu-west", c.Region, "only the spiking forwarders change")
			require.Equal(t, 3, c.Level)
			changed[c.ID] = true
		}
	}
	eu := spike.Regions[1]
	require.Equal(t, "eu-west", eu.Region)
	require.Equal(t, 30, eu.Throttling)
	require.Equal(t, 3, eu.MaxLevel)
	require.Equal(t, [5]int{45, 0, 0, 30, 0}, eu.Levels)
	require.NotNil(t, spike.Verdict)
	require.True(t, strings.HasPrefix(spike.Verdict.Text, "THROTTLING on 30 forwarders: fwd-000 (level 3"), spike.Verdict.Text)
	// The same by region in /metrics, for Prometheus and Grafana.
	r, err := e.client.Get(e.base + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	require.NoError(t, err)
	for _, line := range []string{`callrelay_dashboard_region_forwarders{level="3",region="eu-west"} 30`,
		`callrelay_dashboard_region_forwarders{level="0",region="eu-west"} 45`,
		`callrelay_dashboard_region_forwarders{level="0",region="us-east"} 75`,
		`callrelay_dashboard_region_load_max_ratio{region="eu-west"} 0.65`,
		`callrelay_dashboard_region_joins_total{class="new_group",outcome="refused",region="ap-south"} 0`} {
		require.Contains(t, string(body), line+"\n")
	}
	t.Logf("bytes per /events message at %d forwarders in 4 regions: full %d, steady delta %d, spike delta %d (30 cells)",
		n, fullBytes, steadyBytes, spikeBytes)
	require.Less(t, steadyBytes, fullBytes/4, "a steady second's delta is a fraction of the full message")
}

// events opens /events.
func events(t *testing.T, e *env) (*bufio.Reader, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/events", nil)
	require.NoError(t, err)
	r, err := e.client.Do(req)
	require.NoError(t, err)
	return bufio.NewReaderSize(r.Body, 1<<20), func() { _ = r.Body.Close(); cancel() }
}

// readSized reads one message and its size on the wire.
func readSized(t *testing.T, rd *bufio.Reader) (FleetMsg, int) {
	t.Helper()
	size := 0
	for {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		size += len(line)
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var m FleetMsg
			require.NoError(t, json.Unmarshal([]byte(data), &m))
			blank, err := rd.ReadString('\n')
			require.NoError(t, err)
			return m, size + len(blank)
		}
	}
}

// The history, second by second on a fake clock: joins and refusals land
// in the second their report came, in the forwarder's region and the
// fleet's series; Redis and NATS times are the means of the second; the
// levels strip run-length codes each second; an hour later the old
// seconds are gone and the rings are no bigger.
func TestHistorySeries(t *testing.T) {
	e := start(t)
	t0 := e.clock.Now().Unix()
	waitBooked(t, e)
	r := fleetReport(0, 1, 0) // eu-west
	e.publish(t, r, e.key)
	e.waitState(t, func(s Snapshot) error {
		if len(s.Forwarders) != 1 {
			return fmt.Errorf("not seen yet")
		}
		return nil
	})
	// Second t0+1: 5 admitted new group calls, 2 refused; 4 Redis writes
	// in 10 ms, 1 NATS round trip of 2 ms; level 1.
	e.clock.Add(time.Second) // t0 is complete once recorded
	waitHistory(t, e, 5, func(h HistoryView) error {
		if h.End != t0 {
			return fmt.Errorf("end %d, want %d", h.End, t0)
		}
		return nil
	})
	r2 := fleetReport(0, 2, 1)
	r2.Admitted[1], r2.Refused[1] = 5, 2
	r2.Ops.StoreWrites, r2.Ops.StoreWriteUs, r2.Ops.NATSRTTs, r2.Ops.NATSRTTUs = 4, 10_000, 1, 2000
	e.publish(t, r2, e.key)
	waitSeq(t, e, 2)
	e.clock.Add(time.Second) // t0+1 is complete
	h := waitHistory(t, e, 5, func(h HistoryView) error {
		if h.End != t0+1 {
			return fmt.Errorf("end %d, want %d", h.End, t0+1)
		}
		return nil
	})
	for _, name := range []string{seriesAll, "eu-west"} {
		p := h.Series[name][4]
		require.Equal(t, t0+1, p.Sec, name)
		require.Equal(t, uint32(5), p.Admitted[1], name)
		require.Equal(t, uint32(2), p.Refused[1], name)
		require.Equal(t, 2.5, p.StoreMs, name)
		require.Equal(t, 2.0, p.RTTMs, name)
		require.Equal(t, uint16(1), p.Throttling, name)
		require.Equal(t, int32(350), p.LoadMax, name)
		require.Equal(t, "cpu", p.Worst, name)
		prev := h.Series[name][3]
		require.Equal(t, t0, prev.Sec)
		require.Equal(t, -1.0, prev.StoreMs, "nothing measured in that second")
	}
	require.Equal(t, []StripView{{ID: "fwd-000", Region: "eu-west", Levels: "-*3,0*1,1*1"}}, h.Forwarders)

	// An hour and a bit later (the forwarder still reporting): the seconds
	// above are gone from every ring.
	for range 3 {
		e.clock.Add(30 * time.Minute)
		waitBooked(t, e)
		r2.Seq++
		e.publish(t, r2, e.key)
		waitSeq(t, e, r2.Seq)
	}
	e.clock.Add(time.Second)
	end := e.clock.Now().Unix() - 1
	h = waitHistory(t, e, historyLen, func(h HistoryView) error {
		if h.End != end {
			return fmt.Errorf("end %d, want %d", h.End, end)
		}
		return nil
	})
	for _, p := range h.Series[seriesAll] {
		require.True(t, p.Sec == 0 || p.Sec > end-historyLen, "second %d is more than an hour old", p.Sec)
	}
	require.Len(t, h.Series[seriesAll], historyLen)
	strip, total := h.Forwarders[0].Levels, 0
	require.True(t, strings.HasSuffix(strip, ",1*1"), strip)
	require.NotContains(t, strip, "0*", "the level-0 second is more than an hour old: %s", strip)
	for _, run := range strings.Split(strip, ",") {
		_, count, _ := strings.Cut(run, "*")
		c, err := strconv.Atoi(count)
		require.NoError(t, err)
		total += c
	}
	require.Equal(t, historyLen, total, strip)
	t.Logf("history memory: %d bytes a forwarder, %d bytes a series (at 300 forwarders and 4 regions: %.1f MB)",
		unsafe.Sizeof(fwdState{}.hist), unsafe.Sizeof([historyLen]point{}),
		float64(300*unsafe.Sizeof(fwdState{}.hist)+5*unsafe.Sizeof([historyLen]point{}))/1e6)
}

// waitBooked waits until the second before the fake clock's now is booked.
// Publish only after it: the pushes that book seconds run on a real ticker,
// and one falling between a publish and the clock's next step would book
// the second before with that report (in production the two are at most
// PushEvery apart, and the report is booked a second early at worst).
func waitBooked(t *testing.T, e *env) {
	t.Helper()
	booked := e.clock.Now().Unix() - 1
	waitHistory(t, e, 1, func(h HistoryView) error {
		if h.End != booked {
			return fmt.Errorf("end %d, want %d", h.End, booked)
		}
		return nil
	})
}

// waitSeq waits until the dashboard took report seq of fwd-000.
func waitSeq(t *testing.T, e *env, seq uint64) {
	t.Helper()
	e.waitState(t, func(s Snapshot) error {
		if f := fwdByID(s, "fwd-000"); f == nil || f.Seq != seq {
			return fmt.Errorf("report %d not taken yet", seq)
		}
		return nil
	})
}

func waitHistory(t *testing.T, e *env, secs int, ok func(h HistoryView) error) HistoryView {
	t.Helper()
	var h HistoryView
	// Polled gently: an hour of history is built under the tracker's lock,
	// which the push loop needs too.
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		r, err := e.client.Get(fmt.Sprintf("%s/api/history?secs=%d", e.base, secs))
		if err != nil {
			return err
		}
		defer r.Body.Close()
		if r.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", r.StatusCode)
		}
		h = HistoryView{}
		if err := json.NewDecoder(r.Body).Decode(&h); err != nil {
			return err
		}
		return ok(h)
	})
	return h
}
