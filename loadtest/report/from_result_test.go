package report

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/loadtest"
)

func TestFromResult(t *testing.T) {
	r := &loadtest.Result{
		Start:      time.Date(2025, 12, 31, 23, 58, 0, 0, time.UTC),
		DurationMs: 65_400,
		Stopped:    "target_broken",
		Generator:  loadtest.GeneratorHealth{GOMAXPROCS: 2, NumCPU: 2, Bottleneck: true, Reasons: []string{"CPU above 85 %"}},
		Verdict: loadtest.Verdict{Pass: false, Checks: []loadtest.Check{
			{Target: "delay_p95_ms", Op: "<=", Limit: 150, Measured: 182.4, Pass: false},
			{Target: "setup_success_pct", Op: ">=", Limit: 99, Measured: 99.5, Pass: true},
		}},
		Knee:  &loadtest.Knee{Found: true, Step: 3, Rate: 4, ConcurrentCalls: 120, PacketsPerSec: 24000, BrokeAtStep: 4, BrokenTargets: []string{"delay_p95_ms"}},
		Steps: []loadtest.Step{{Index: 3, Rate: 4, Met: true}, {Index: 4, Rate: 5, Broken: []string{"delay_p95_ms"}}},
	}
	r.Plan.Profile.Kind = "ramp"
	r.Plan.Forwarders = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:7000")}
	for i := range 60 {
		s := loadtest.Second{T: i, CallsUp: i * 2, TargetRate: 4}
		s.All.Setups = loadtest.Setups{Attempted: 10, Admitted: 9, Refused: loadtest.Refusals{Capacity: 1}}
		if i%10 != 0 { // some seconds without delay samples
			s.All.DelayMs = loadtest.Percentiles{Count: 100, P50: 20, P95: 90 + float64(i), P99: 140 + float64(i)}
			s.All.PacketsExpected, s.All.PacketsReceived, s.All.LossPct = 1000, 990, 1
		}
		r.Seconds = append(r.Seconds, s)
	}

	in := FromResult(r)
	require.False(t, in.Verdict.Pass)
	require.Equal(t, "1 of 2 targets missed", in.Verdict.Summary)
	require.Equal(t, Check{Target: "p95 one-way delay", Measured: "182 ms", Limit: "≤ 150 ms"}, in.Verdict.Checks[0])
	require.Equal(t, "≥ 99.0 %", in.Verdict.Checks[1].Limit)
	require.Equal(t, []string{"CPU above 85 %"}, in.Warnings)
	require.True(t, in.Knee.Found)
	require.Contains(t, in.Subtitle, "127.0.0.1:7000")
	require.Contains(t, in.Subtitle, "1m5s")

	root := parsePage(t, render(t, in))
	text := root.allText()
	for _, want := range []string{"FAIL", "p95 one-way delay", "Ramp steps", "Setups by outcome", "target 150 ms", "CPU above 85 %"} {
		require.Contains(t, text, want)
	}
}
