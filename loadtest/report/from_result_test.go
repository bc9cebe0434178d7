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

// A run with video and feedback gets its section: bitrates, layers, NACK
// recovery, and a table per class; the loss chart shows loss before NACK
// too. A run without them has no such section.
func TestFromResultVideoAndFeedback(t *testing.T) {
	r := &loadtest.Result{DurationMs: 3000}
	r.Plan.Profile.Kind = "steady"
	r.Plan.Video.Share = 0.2
	for i := range 3 {
		s := loadtest.Second{T: i}
		s.All.PacketsExpected, s.All.LossPct, s.All.RawLossPct = 100, 0.5, 2
		s.All.Video = loadtest.VideoMeasures{SenderSeconds: 2, Layers: [3]uint64{1, 1, 0}, SentKbps: 1500, ReceivedKbps: 4200}
		s.All.Feedback = loadtest.FeedbackMeasures{Reports: 10, NACKs: 3}
		s.All.Feedback.Video.Recovered = 4
		r.Seconds = append(r.Seconds, s)
	}
	r.Totals.All = r.Seconds[0].All

	in := FromResult(r)
	var titles []string
	for _, s := range in.Sections {
		titles = append(titles, s.Title)
	}
	require.Equal(t, []string{"Calls", "Media quality", "Video and feedback", "Load generator"}, titles)
	require.Contains(t, in.Meta, Field{"video", "20.0 % of participants send a camera"})
	text := parsePage(t, render(t, in)).allText()
	for _, want := range []string{"Video bitrate", "Cameras by simulcast layers sent", "NACK recovery", "before NACK", "loss after NACK", "4200", "video given up"} {
		require.Contains(t, text, want)
	}

	r.Totals.All = loadtest.Measures{}
	for _, s := range FromResult(r).Sections {
		require.NotEqual(t, "Video and feedback", s.Title)
	}
}
