package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// trunkRTT is what forwarder i (region a = i mod 4) measures to region b:
// 10 ms per region index sum plus a jitter of 0..4 ms by its rank k in
// its region.
func trunkRTT(i, b int) time.Duration {
	a, k := i%len(fleetRegions), i/len(fleetRegions)
	return time.Duration(10*(a+b+1)+k%5) * time.Millisecond
}

// fleetTrunkReport is fleetReport with a trunk RTT section: a row for
// each other region, in name order.
func fleetTrunkReport(i int, seq uint64) *protocol.LoadReport {
	r := fleetReport(i, seq, 0)
	for _, b := range []int{2, 0, 3, 1} { // ap-south, eu-west, sa-east, us-east
		if b != i%len(fleetRegions) {
			r.RTTs = append(r.RTTs, protocol.RegionRTT{Region: fleetRegions[b], RTT: trunkRTT(i, b), Dev: time.Millisecond})
		}
	}
	return r
}

// 300 forwarders in 4 regions report their trunk RTTs over real NATS:
// each row carries its forwarder's section; the first /events message
// carries the 12-pair matrix (median and worst over each region's 75
// forwarders); a steady delta leaves it out; one forwarder's RTT going up
// puts it in the next delta with the new worst. The extra bytes are
// logged.
func TestTrunkMatrix300(t *testing.T) {
	const n = 300
	e := start(t, func(c *Config) { c.PollEvery, c.PushEvery = time.Hour, 200*time.Millisecond })
	for i := range n {
		e.publish(t, fleetTrunkReport(i, 1), e.key)
	}
	testenv.CheckFor(t, 60*time.Second, 250*time.Millisecond, func() error {
		s := e.state(t)
		if len(s.Forwarders) != n {
			return fmt.Errorf("%d forwarders seen, dropped %+v", len(s.Forwarders), s.Dropped)
		}
		for _, f := range s.Forwarders {
			if len(f.Trunks) != 3 {
				return fmt.Errorf("%s: trunks %+v", f.ID, f.Trunks)
			}
		}
		return nil
	})
	s := e.state(t)
	require.Equal(t, "fwd-000", s.Forwarders[0].ID)
	require.Equal(t, []TrunkRTTView{{Region: "ap-south", RTTMs: 30, DevMs: 1}, {Region: "sa-east", RTTMs: 40, DevMs: 1},
		{Region: "us-east", RTTMs: 20, DevMs: 1}}, s.Forwarders[0].Trunks)

	rd, stop := events(t, e)
	defer stop()
	var full FleetMsg
	for i := 0; len(full.Cells) != n; i++ {
		require.Less(t, i, 100)
		full, _ = readSized(t, rd)
	}
	require.NotNil(t, full.Trunks)
	m := *full.Trunks
	require.Len(t, m, 12)
	for _, p := range m {
		a, b := regionIndex(t, p.From), regionIndex(t, p.To)
		base := int64(10*(a+b+1)) * 1000
		require.Equal(t, n/4, p.Forwarders, "%+v", p)
		require.Equal(t, base+2000, p.MedianUs, "%+v: 15 forwarders at each jitter 0..4, the 38th at 2 ms", p)
		require.Equal(t, base+4000, p.WorstUs, "%+v", p)
		require.Equal(t, fmt.Sprintf("fwd-%03d", 4*74+a), p.WorstID, "%+v: the last of those at 4 ms", p)
	}
	require.Equal(t, "ap-south", m[0].From)
	require.Equal(t, "eu-west", m[0].To)

	steady, steadyBytes := readSized(t, rd)
	require.False(t, steady.Full)
	require.Nil(t, steady.Trunks, "a steady delta leaves the matrix out")

	// fwd-000 (eu-west) now measures 200 ms to us-east.
	r := fleetTrunkReport(0, 2)
	r.RTTs[2].RTT = 200 * time.Millisecond
	e.publish(t, r, e.key)
	var changed FleetMsg
	var changedBytes int
	for i := 0; changed.Trunks == nil; i++ {
		require.Less(t, i, 100, "the matrix change never came")
		changed, changedBytes = readSized(t, rd)
		require.False(t, changed.Full)
	}
	var eu TrunkView
	for _, p := range *changed.Trunks {
		if p.From == "eu-west" && p.To == "us-east" {
			eu = p
		}
	}
	require.Equal(t, TrunkView{From: "eu-west", To: "us-east", Forwarders: 75, MedianUs: 22000, WorstUs: 200000, WorstID: "fwd-000"}, eu)
	// The same in /metrics, for Grafana's panel by region pair.
	resp, err := e.client.Get(e.base + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	for _, line := range []string{`callrelay_dashboard_trunk_rtt_seconds{from="eu-west",stat="median",to="us-east"} 0.022`,
		`callrelay_dashboard_trunk_rtt_seconds{from="eu-west",stat="worst",to="us-east"} 0.2`,
		`callrelay_dashboard_trunk_rtt_seconds{from="ap-south",stat="median",to="eu-west"} 0.032`} {
		require.Contains(t, string(body), line+"\n")
	}
	var matrix []byte
	matrix, err = json.Marshal(changed.Trunks)
	require.NoError(t, err)
	t.Logf("trunk matrix at %d forwarders in 4 regions (12 pairs): %d bytes in a delta when it changed (this one %d bytes in all), 0 when steady (steady delta %d bytes)",
		n, len(matrix)+len(`,"trunks":`), changedBytes, steadyBytes)
}

func regionIndex(t *testing.T, r string) int {
	t.Helper()
	for i, n := range fleetRegions {
		if n == r {
			return i
		}
	}
	t.Fatalf("unknown region %q", r)
	return -1
}
