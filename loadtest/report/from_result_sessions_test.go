package report

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/loadtest"
)

// A run in which a forwarder was killed: the dropped calls, the sessions
// lost and the re-joins' silence get their section, the calls table a
// column, the chaos table the service's down and up; late joiners get
// theirs. A quiet run without late joiners has neither section.
func TestFromResultSessionsAndLateJoin(t *testing.T) {
	r := &loadtest.Result{DurationMs: 4000}
	r.Plan.Profile.Kind = "steady"
	r.Plan.LateJoin = loadtest.LateJoin{Share: 0.25, After: loadtest.Duration(30e9), Rollover: true}
	limit := 0.0
	r.Plan.Targets.DroppedCallsPct = &limit
	r.Verdict.Checks = []loadtest.Check{{Target: "dropped_calls_pct", Op: "<=", Limit: 0, Measured: 12.5},
		{Target: "rejoin_silence_p99_ms", Op: "<=", Limit: 1000, Measured: 420, Pass: true}}
	for i := range 4 {
		s := loadtest.Second{T: i}
		if i == 2 {
			s.All.SessionsLost, s.All.CallsDropped = 3, 1
			s.All.RejoinSilenceMs = loadtest.Percentiles{Count: 5, P50: 60, P95: 400, P99: 420, Max: 431}
		}
		r.Seconds = append(r.Seconds, s)
	}
	r.Events = []loadtest.Event{{AtMs: 1000, Kind: loadtest.ChaosKill, Target: "fwd-a", PID: 4242},
		{AtMs: 1500, Kind: loadtest.ChaosDown, Target: "redis", TookMs: 12}, {AtMs: 3500, Kind: loadtest.ChaosUp, Target: "redis", TookMs: 40}}
	r.Totals.All = loadtest.Measures{CallsStarted: 9, CallsFailed: 1, CallsDropped: 1, SessionsLost: 3, DroppedCallsPct: 12.5,
		RejoinSilenceMs: loadtest.Percentiles{Count: 5, P50: 60, P95: 400, P99: 420, Max: 431},
		LateJoin:        loadtest.LateJoinMeasures{Joined: 4, StreamsExpected: 10, StreamsDecrypted: 9, StreamsUndecryptable: 1, StreamsAfterRollover: 9, DecryptFailures: 77}}

	in := FromResult(r)
	var titles []string
	for _, s := range in.Sections {
		titles = append(titles, s.Title)
	}
	require.Equal(t, []string{"Calls", "Media quality", "Dropped calls and re-joins", "Late joiners", "Chaos", "Load generator"}, titles)
	require.Contains(t, in.Meta, Field{"late joiners", "25.0 % of members, 30s after their call started"})
	require.Equal(t, Check{Target: "dropped calls", Measured: "12.5 %", Limit: "≤ 0 %"}, in.Verdict.Checks[0])
	require.Equal(t, "p99 re-join silence", in.Verdict.Checks[1].Target)
	text := parsePage(t, render(t, in)).allText()
	for _, want := range []string{"Sessions lost and calls dropped", "Re-join silence", "sessions lost", "431", "12.5 %",
		"streams expected", "never decrypted", "first decrypted after a rollover", "90.0 %", "after every stream had rolled over",
		"done in 12.0 ms", "down", "redis", "4242"} {
		require.Contains(t, text, want)
	}

	quiet := &loadtest.Result{DurationMs: 1000}
	quiet.Plan.Profile.Kind = "steady"
	for _, s := range FromResult(quiet).Sections {
		require.NotContains(t, []string{"Dropped calls and re-joins", "Late joiners"}, s.Title)
	}
}
