package dashboard

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// spillReport is forwarder id of region at sequence seq, with the given
// spill-over counters ("region=joins" pairs, in region order) and refusals.
func spillReport(id, region string, started time.Time, seq uint64, refused uint64, to ...string) *protocol.LoadReport {
	r := report(id, seq, 2)
	r.Started, r.HasOps, r.Ops.Region = started, true, region
	r.Spill.Refused = refused
	for _, kv := range to {
		name, n, _ := strings.Cut(kv, "=")
		var joins uint64
		_, err := fmt.Sscan(n, &joins)
		if err != nil {
			panic(err)
		}
		r.Spill.To = append(r.Spill.To, protocol.RegionSpill{Region: name, Joins: joins})
	}
	return r
}

// regionByName finds a region card.
func regionByName(rs []RegionView, name string) RegionView {
	for _, r := range rs {
		if r.Region == name {
			return r
		}
	}
	return RegionView{Region: "missing " + name}
}

func (e *env) metrics(t *testing.T) string {
	t.Helper()
	resp, err := e.client.Get(e.base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// waitSeqOf waits until the dashboard took report seq of forwarder id (of
// its latest process).
func (e *env) waitSeqOf(t *testing.T, id string, started time.Time, seq uint64) Snapshot {
	t.Helper()
	return e.waitState(t, func(s Snapshot) error {
		if f := fwdByID(s, id); f == nil || f.Seq != seq || !f.Started.Equal(started) {
			return fmt.Errorf("report %d of %s not taken yet", seq, id)
		}
		return nil
	})
}

// Spill-over from the load reports' cumulative counters, over real NATS on
// a fake clock: the growth between reports lands on the referring region's
// card (out, by target) and the target's (in); a forwarder's first report
// is its baseline; reports lost in between cost nothing; a restart (new
// started) or a counter gone back starts a new series; the last minute
// empties a minute later, the from→to list five minutes later; /metrics
// keeps counters that never go back.
func TestSpillOverRegions(t *testing.T) {
	e := start(t, func(c *Config) { c.PushEvery = 100 * time.Millisecond })
	s0 := testStarted
	// Baselines: fwd-eu1 had referred 5 joins to uk before the dashboard
	// heard it; they are not this minute's.
	e.publish(t, spillReport("fwd-eu1", "eu-west", s0, 1, 0, "uk=5"), e.key)
	e.publish(t, spillReport("fwd-eu2", "eu-west", s0, 1, 0), e.key)
	e.publish(t, spillReport("fwd-uk", "uk", s0, 1, 0), e.key)
	e.publish(t, spillReport("fwd-za", "za", s0, 1, 0), e.key)
	e.waitSeqOf(t, "fwd-za", s0, 1)
	e.waitSeqOf(t, "fwd-eu1", s0, 1)

	// Growth: eu1 +3 to uk, +1 to za (a new row), 2 with no region in
	// reach; eu2 +4 to uk.
	e.publish(t, spillReport("fwd-eu1", "eu-west", s0, 2, 2, "uk=8", "za=1"), e.key)
	e.publish(t, spillReport("fwd-eu2", "eu-west", s0, 2, 0, "uk=4"), e.key)
	e.waitSeqOf(t, "fwd-eu1", s0, 2)
	s := e.waitSeqOf(t, "fwd-eu2", s0, 2)
	rs := regions(s.Forwarders)
	eu, uk, za := regionByName(rs, "eu-west"), regionByName(rs, "uk"), regionByName(rs, "za")
	require.Equal(t, [3]uint64{8, 0, 2}, [3]uint64{eu.SpilledOut1m, eu.ReferredIn1m, eu.SpillRefused1m})
	require.Equal(t, [3]uint64{0, 7, 0}, [3]uint64{uk.SpilledOut1m, uk.ReferredIn1m, uk.SpillRefused1m})
	require.Equal(t, [3]uint64{0, 1, 0}, [3]uint64{za.SpilledOut1m, za.ReferredIn1m, za.SpillRefused1m})
	eu1 := fwdByID(s, "fwd-eu1")
	require.Equal(t, &SpillView{To: []SpillTargetView{{Region: "uk", Joins1m: 3, Joins5m: 3, Total: 8}, {Region: "za", Joins1m: 1, Joins5m: 1, Total: 1}},
		Refused1m: 2, Refused5m: 2, RefusedTotal: 2}, eu1.Spill)
	require.Nil(t, fwdByID(s, "fwd-uk").Spill, "uk never spilled")
	require.Equal(t, []SpillPairView{{From: "eu-west", To: "uk", Joins1m: 7, Joins5m: 7}, {From: "eu-west", To: "za", Joins1m: 1, Joins5m: 1}},
		spillPairs(s.Forwarders))
	require.Contains(t, s.Verdict.Issues,
		"region eu-west spilled 8 new joins to other regions in the last minute (7 to uk, 1 to za); 2 refused with no region in reach (all over the latency budget, unmeasured or full)")

	// The stream: the full message has the list and the cards; a steady
	// delta has no list.
	rd, stop := events(t, e)
	defer stop()
	first, _ := readSized(t, rd)
	require.True(t, first.Full)
	require.NotNil(t, first.Spills, "a full message always has the list")
	list, msg := *first.Spills, first
	for i := 0; len(list) != 2; i++ { // the first may predate the reports
		require.Less(t, i, 100, "the list never came: %+v", list)
		msg, _ = readSized(t, rd)
		if msg.Spills != nil {
			list = *msg.Spills
		}
	}
	require.Equal(t, uint64(7), regionByName(msg.Regions, "uk").ReferredIn1m)
	require.Equal(t, uint64(8), regionByName(msg.Regions, "eu-west").SpilledOut1m)
	steady, _ := readSized(t, rd)
	require.False(t, steady.Full)
	require.Nil(t, steady.Spills, "a steady delta leaves the list out")

	// Reports 3 and 4 of eu1 are lost: 5 carries their growth. eu1 then
	// restarts (a later started: its 1 join to uk is all new), and eu2's
	// counter goes back without a new started (taken as a restart too).
	e.publish(t, spillReport("fwd-eu1", "eu-west", s0, 5, 2, "uk=10", "za=1"), e.key)
	e.waitSeqOf(t, "fwd-eu1", s0, 5)
	s1 := s0.Add(time.Minute)
	e.publish(t, spillReport("fwd-eu1", "eu-west", s1, 1, 0, "uk=1"), e.key)
	e.publish(t, spillReport("fwd-eu2", "eu-west", s0, 3, 0, "uk=1"), e.key)
	e.waitSeqOf(t, "fwd-eu1", s1, 1)
	s = e.waitSeqOf(t, "fwd-eu2", s0, 3)
	rs = regions(s.Forwarders)
	require.Equal(t, uint64(12), regionByName(rs, "eu-west").SpilledOut1m, "8 + 2 lost + 1 restarted + 1 gone back")
	require.Equal(t, uint64(11), regionByName(rs, "uk").ReferredIn1m)
	var changed FleetMsg
	for i := 0; changed.Spills == nil; i++ {
		require.Less(t, i, 100, "the list's change never came")
		changed, _ = readSized(t, rd)
		require.False(t, changed.Full)
	}
	stop()
	m := e.metrics(t)
	for _, line := range []string{`callrelay_dashboard_region_spill_joins_total{from="eu-west",to="uk"} 11`,
		`callrelay_dashboard_region_spill_joins_total{from="eu-west",to="za"} 1`,
		`callrelay_dashboard_region_spill_refused_total{region="eu-west"} 2`} {
		require.Contains(t, m, line+"\n")
	}

	// A minute later the cards are back to 0; the list keeps the pairs of
	// the last five minutes, then drops them. The totals stay.
	e.clock.Add(time.Minute)
	s = e.waitState(t, func(s Snapshot) error {
		if r := regionByName(regions(s.Forwarders), "eu-west"); r.SpilledOut1m != 0 {
			return fmt.Errorf("eu-west still spilled %d in the last minute", r.SpilledOut1m)
		}
		return nil
	})
	require.Equal(t, []SpillPairView{{From: "eu-west", To: "uk", Joins5m: 11}, {From: "eu-west", To: "za", Joins5m: 1}}, spillPairs(s.Forwarders))
	e.clock.Add(5 * time.Minute)
	e.publish(t, spillReport("fwd-eu1", "eu-west", s1, 2, 0, "uk=1"), e.key) // still up, nothing new
	s = e.waitSeqOf(t, "fwd-eu1", s1, 2)
	require.Empty(t, spillPairs(s.Forwarders))
	require.Equal(t, &SpillView{To: []SpillTargetView{{Region: "uk", Total: 1}}}, fwdByID(s, "fwd-eu1").Spill, "the report's totals stay")
	require.Contains(t, e.metrics(t), `callrelay_dashboard_region_spill_joins_total{from="eu-west",to="uk"} 11`+"\n")
}

// A report whose spill-over section breaks the rules is authentic but
// malformed: dropped whole and counted, as any malformed report; the
// forwarder's state stays what its last good report said. The bytes are
// sealed here from the spec (README 7: HMAC-SHA256 with the cluster-message
// subkey), not by the protocol package, which refuses to make them.
func TestSpillOverMalformedDropped(t *testing.T) {
	e := start(t)
	good := spillReport("fwd-eu1", "eu-west", testStarted, 1, 1, "uk=3")
	e.publish(t, good, e.key)
	e.waitSeqOf(t, "fwd-eu1", testStarted, 1)

	for i, edit := range []func(b []byte) []byte{
		func(b []byte) []byte { // the region row's count of joins set to 0
			binary.BigEndian.PutUint64(b[len(b)-8:], 0)
			return b
		},
		func(b []byte) []byte { return b[:len(b)-1] },         // the row truncated
		func(b []byte) []byte { b[len(b)-12] = 33; return b }, // 33 rows
	} {
		r := spillReport("fwd-eu1", "eu-west", testStarted, uint64(2+i), 1, "uk=3")
		wire, err := r.Marshal(nil, e.key)
		require.NoError(t, err)
		body := edit(wire[8 : len(wire)-16])
		require.NoError(t, e.pub.Publish("callrelay.forwarders", sealByHand(e.key, body)))
	}
	require.NoError(t, e.pub.Flush())
	s := e.waitState(t, func(s Snapshot) error {
		if s.Dropped.Malformed != 3 {
			return fmt.Errorf("dropped %+v", s.Dropped)
		}
		return nil
	})
	require.Zero(t, s.Dropped.Forged, "authentic: the tag is right")
	f := fwdByID(s, "fwd-eu1")
	require.EqualValues(t, 1, f.Seq)
	require.Equal(t, uint64(3), f.Spill.To[0].Total)
	require.Contains(t, e.metrics(t), `callrelay_dashboard_heartbeats_dropped_total{reason="malformed"} 3`+"\n")
}

// sealByHand frames body as a LoadReport and tags it as README 7 says.
func sealByHand(k protocol.ClusterKey, body []byte) []byte {
	sub := hmac.New(sha256.New, k[:])
	sub.Write([]byte("callrelay cluster message v1"))
	msg := append([]byte{'C', 'R', 'L', 'C', 1, 5, byte(len(body) >> 8), byte(len(body))}, body...)
	mac := hmac.New(sha256.New, sub.Sum(nil))
	mac.Write(msg)
	return append(msg, mac.Sum(nil)[:16]...)
}

// The row of a section that counts the regions a forwarder did not name
// shows as (other), and is never credited to a card as referred in; the
// dashboard's own totals stay within maxSpillPairs, the rest booked as
// (other)→(other).
func TestSpillOtherRegions(t *testing.T) {
	prev := protocol.LoadSpill{To: []protocol.RegionSpill{{Region: "", Joins: 2}, {Region: "uk", Joins: 1}}}
	cur := protocol.LoadSpill{To: []protocol.RegionSpill{{Region: "", Joins: 5}, {Region: "uk", Joins: 1}}}
	to, refused := spillGrowth(&prev, &cur, false)
	require.Equal(t, []protocol.RegionSpill{{Region: "", Joins: 3}}, to)
	require.Zero(t, refused)
	w := bucket{spill: to}
	v := spillView(&cur, &w, &w)
	require.Equal(t, []SpillTargetView{{Region: otherRegions, Joins1m: 3, Joins5m: 3, Total: 5}, {Region: "uk", Total: 1}}, v.To)
	fwds := []ForwarderView{{ID: "a", Region: "eu", Up: true, Spill: v}, {ID: "b", Region: "", Up: true}}
	rs := regions(fwds)
	require.Equal(t, uint64(3), regionByName(rs, "eu").SpilledOut1m)
	require.Zero(t, regionByName(rs, "").ReferredIn1m, "(other) is not the card of the forwarders without a region")

	var tr tracker
	for i := range maxSpillPairs + 10 {
		tr.bookSpill("eu", []protocol.RegionSpill{{Region: fmt.Sprintf("r%05d", i), Joins: 1}}, 0)
	}
	joins, _ := tr.spillTotals()
	require.Len(t, joins, maxSpillPairs+1)
	require.Equal(t, uint64(10), joins[spillPair{otherRegions, otherRegions}])
}
