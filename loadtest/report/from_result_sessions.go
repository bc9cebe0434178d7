package report

import (
	"fmt"
	"strconv"

	"github.com/callrelay/callrelay/loadtest"
)

// hasSessions reports whether the run has anything to say about lost
// sessions and re-joins: some happened, the plan changed how devices
// re-join, or failures were injected.
func hasSessions(r *loadtest.Result) bool {
	t := r.Totals.All
	return t.SessionsLost > 0 || t.CallsDropped > 0 || t.RejoinSilenceMs.Count > 0 ||
		r.Plan.Rejoin != (loadtest.Rejoin{}) || len(r.Events) > 0
}

// sessionsSection shows what users of calls that lost their forwarder
// felt: calls dropped, sessions lost, and the silence of every re-join.
func sessionsSection(r *loadtest.Result) Section {
	secs := r.Seconds
	count := func(f func(loadtest.Measures) int) []Point {
		return pick(secs, func(s loadtest.Second) (float64, bool) { return float64(f(s.All)), true })
	}
	silence := func(name string, v func(loadtest.Percentiles) float64) Series {
		return Series{Name: name, Points: pick(secs, func(s loadtest.Second) (float64, bool) {
			return v(s.All.RejoinSilenceMs), s.All.RejoinSilenceMs.Count > 0
		})}
	}
	return Section{Title: "Dropped calls and re-joins",
		Note: "A call is dropped when one of its members' sessions is lost for good: no forwarder took the device back in time (or re-joins are off), or the relay ended it. " +
			"A re-join's silence runs from the last audio packet the device heard before it noticed it had lost its forwarder to the first one after. " +
			"Speech frames missed meanwhile count as lost, and so do those a lost session missed, or would have sent, until its call closed.",
		Charts: []Chart{
			{Kind: KindLine, Title: "Sessions lost and calls dropped", XLabel: "seconds", YLabel: "per second", Series: []Series{
				{Name: "sessions lost", Points: count(func(m loadtest.Measures) int { return m.SessionsLost })},
				{Name: "calls dropped", Points: count(func(m loadtest.Measures) int { return m.CallsDropped })},
			}},
			{Kind: KindLine, Title: "Re-join silence", XLabel: "seconds", YLabel: "ms", Series: []Series{
				silence("p50", func(p loadtest.Percentiles) float64 { return p.P50 }),
				silence("p99", func(p loadtest.Percentiles) float64 { return p.P99 }),
				silence("max", func(p loadtest.Percentiles) float64 { return p.Max }),
			}, Options: ChartOptions{Thresholds: targetLine(r, "rejoin_silence_p99_ms")}},
		},
		Tables: []Table{{
			Title:   "Per class (silence in ms)",
			Columns: []string{"class", "calls set up", "dropped", "dropped %", "sessions lost", "re-joins", "silence p50", "p95", "p99", "max"},
			Rows: classRows(r.Totals, func(m loadtest.Measures) []string {
				s := m.RejoinSilenceMs
				maxS := "—"
				if s.Count > 0 {
					maxS = num3(s.Max)
				}
				return []string{strconv.Itoa(m.CallsStarted - m.CallsFailed), strconv.Itoa(m.CallsDropped), pct(m.DroppedCallsPct),
					strconv.Itoa(m.SessionsLost), strconv.FormatUint(s.Count, 10), p(s, 50), p(s, 95), p(s, 99), maxS}
			}),
		}},
	}
}

// lateJoinSection shows whether the late joiners decrypted everyone.
func lateJoinSection(r *loadtest.Result) Section {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	l := r.Plan.LateJoin
	note := "Late joiners must decrypt every member, whose RTP sequence numbers may have rolled over before they came: each packet carries its rollover counter. " +
		"A stream the relay held back from a late joiner (a silent member outside the forwarding set) is neither decrypted nor failed."
	if l.Share > 0 {
		note = fmt.Sprintf("%s of the members (never a call's first) joined %s after their call started%s. ", pct(100*l.Share), l.After.D(),
			map[bool]string{true: ", after every stream had rolled over", false: ""}[l.Rollover]) + note
	}
	return Section{Title: "Late joiners", Note: note, Tables: []Table{{
		Columns: []string{"class", "late joiners", "streams expected", "decrypted", "decrypted %", "never decrypted", "first decrypted after a rollover", "packets failed"},
		Rows: classRows(r.Totals, func(m loadtest.Measures) []string {
			j := m.LateJoin
			share := "—"
			if j.StreamsExpected > 0 {
				share = pct(100 * float64(j.StreamsDecrypted) / float64(j.StreamsExpected))
			}
			return []string{strconv.Itoa(j.Joined), u(j.StreamsExpected), u(j.StreamsDecrypted), share,
				u(j.StreamsUndecryptable), u(j.StreamsAfterRollover), u(j.DecryptFailures)}
		}),
	}}}
}
