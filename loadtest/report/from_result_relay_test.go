package report

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/loadtest"
)

func TestFromResultRelayChaosAgents(t *testing.T) {
	r := &loadtest.Result{Stopped: "profile_done", DurationMs: 10_000}
	r.Plan.Profile.Kind = "steady"
	for i := range 10 {
		s := loadtest.Second{T: i, Forwarders: map[string]loadtest.ForwarderSecond{
			"fwd-b": {Level: 0, CPUPct: 20, Sessions: 4, Reports: 1},
		}}
		if i < 6 { // fwd-a is killed at 6 s and reports no more
			s.Forwarders["fwd-a"] = loadtest.ForwarderSecond{Level: min(i/2, 3), CPUPct: 50 + float64(i), Sessions: 10, Reports: 1}
		}
		s.All.PacketsReceived, s.All.MaxGapMs = 100, 20
		r.Seconds = append(r.Seconds, s)
	}
	r.Relay = &loadtest.RelayHealth{Subject: "callrelay.forwarders", Reports: 16, BadReports: 2, PeakLevel: 3, CPUMaxPct: 55,
		Forwarders: []loadtest.ForwarderSummary{{ID: "fwd-a", PeakLevel: 3, PeakLevelAtS: 6}, {ID: "fwd-b"}}}
	r.Events = []loadtest.Event{{AtMs: 6000, Kind: "kill", Target: "fwd-a", PID: 1234, MaxGapAfterMs: 812, WindowEndS: 10}}
	r.Agents = []loadtest.AgentInfo{{ID: "host-1", Index: 0, Of: 2, CallsStarted: 7}, {ID: "host-2", Index: 1, Of: 2, Missing: true}}

	in := FromResult(r)
	var titles []string
	for _, s := range in.Sections {
		titles = append(titles, s.Title)
	}
	// A run with chaos shows its dropped calls and re-joins, none or not.
	require.Equal(t, []string{"Calls", "Media quality", "Dropped calls and re-joins", "Relay", "Chaos", "Load generator", "Agents"}, titles)
	relay := in.Sections[3]
	level := relay.Charts[0]
	require.Equal(t, "Throttle level per forwarder", level.Title)
	require.True(t, level.Options.Step)
	require.Equal(t, 4.0, level.Options.YMax)
	require.Len(t, level.Series, 2)
	require.Equal(t, "fwd-a", level.Series[0].Name)
	require.Equal(t, 2.0, level.Series[0].Points[5].Y)
	require.True(t, level.Series[0].Points[7].Y != level.Series[0].Points[7].Y, "no report: a gap (NaN)")
	require.Equal(t, "Relay CPU", relay.Charts[1].Title)
	require.Equal(t, 55.0, relay.Charts[1].Series[0].Points[5].Y)
	// Every line chart carries the chaos marker.
	for _, s := range in.Sections {
		for _, c := range s.Charts {
			if c.Kind == KindLine {
				require.Equal(t, []Marker{{X: 6, Label: "kill fwd-a"}}, c.Options.Markers, c.Title)
			}
		}
	}
	require.Contains(t, strings.Join(in.Warnings, "\n"), "agent host-2 (1 of 2) sent no result")
	require.Contains(t, strings.Join(in.Warnings, "\n"), "2 forwarder load reports failed authentication")

	root := parsePage(t, render(t, in))
	text := root.allText()
	for _, want := range []string{"Throttle level per forwarder", "Relay CPU", "fwd-a", "fwd-b", "kill fwd-a", "812 ms", "host-1", "missing"} {
		require.Contains(t, text, want)
	}
	markers := root.find(byClass("marker"))
	require.NotEmpty(t, markers)
}

func TestLineChartMarkers(t *testing.T) {
	svg := LineChart("m", "s", "v", []Series{{Name: "a", Points: ramp(10, func(i int) float64 { return float64(i) })}},
		ChartOptions{Markers: []Marker{{X: 3, Label: "kill <fwd>"}, {X: 42, Label: "outside"}}})
	root := parseSVG(t, svg)
	require.Len(t, root.find(byClass("marker")), 1)
	require.Contains(t, svg, "kill &lt;fwd&gt;")
	require.NotContains(t, svg, "outside")
}
