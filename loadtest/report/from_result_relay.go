package report

import (
	"strconv"

	"github.com/callrelay/callrelay/loadtest"
)

// relaySection shows what the forwarders reported about themselves:
// throttle level (a step chart, 0..4), CPU and memory signals and
// sessions per forwarder, and a summary table. A forwarder that did not
// report in a second leaves a gap.
func relaySection(r *loadtest.Result, markers []Marker) Section {
	h := r.Relay
	var ids []string
	for _, f := range h.Forwarders {
		ids = append(ids, f.ID)
	}
	perForwarder := func(v func(loadtest.ForwarderSecond) float64) []Series {
		out := make([]Series, len(ids))
		for i, id := range ids {
			out[i] = Series{Name: id, Points: pick(r.Seconds, func(s loadtest.Second) (float64, bool) {
				f, ok := s.Forwarders[id]
				return v(f), ok
			})}
		}
		return out
	}
	t := Table{Title: "Forwarders over the run",
		Columns: []string{"forwarder", "peak level", "at second", "seconds throttled", "CPU mean", "CPU max", "memory max", "sessions max", "drained"}}
	for _, f := range h.Forwarders {
		drained := "no"
		if f.Drained {
			drained = "yes"
		}
		t.Rows = append(t.Rows, []string{f.ID, strconv.Itoa(f.PeakLevel), strconv.Itoa(f.PeakLevelAtS), strconv.Itoa(f.SecondsThrottled),
			pct(f.CPUMeanPct), pct(f.CPUMaxPct), pct(f.MemoryMaxPct), strconv.Itoa(f.SessionsMax), drained})
	}
	counts := Table{Title: "Load reports read on " + h.Subject, Rows: [][]string{
		{"valid reports", strconv.Itoa(h.Reports)},
		{"bad (failed authentication or decoding)", strconv.Itoa(h.BadReports)},
		{"stale (sequence did not advance)", strconv.Itoa(h.StaleReports)},
		{"other messages", strconv.Itoa(h.OtherMessages)},
	}}
	return Section{Title: "Relay",
		Note: "What the forwarders published about themselves every second (LoadReports on the cluster bus). CPU and memory are load signals in percent of each forwarder's capacity.",
		Charts: []Chart{
			{Kind: KindLine, Title: "Throttle level per forwarder", XLabel: "seconds", YLabel: "level",
				Series:  perForwarder(func(f loadtest.ForwarderSecond) float64 { return float64(f.Level) }),
				Options: ChartOptions{YMax: 4, Step: true, Markers: markers}},
			{Kind: KindLine, Title: "Relay CPU", XLabel: "seconds", YLabel: "% of capacity",
				Series:  perForwarder(func(f loadtest.ForwarderSecond) float64 { return f.CPUPct }),
				Options: ChartOptions{Markers: markers}},
			{Kind: KindLine, Title: "Relay memory", XLabel: "seconds", YLabel: "% of capacity",
				Series:  perForwarder(func(f loadtest.ForwarderSecond) float64 { return f.MemoryPct }),
				Options: ChartOptions{Markers: markers}},
			{Kind: KindLine, Title: "Sessions per forwarder", XLabel: "seconds", YLabel: "sessions",
				Series:  perForwarder(func(f loadtest.ForwarderSecond) float64 { return float64(f.Sessions) }),
				Options: ChartOptions{Markers: markers}},
		},
		Tables: []Table{t, counts}}
}

// chaosSection lists the chaos events with the longest media gap after
// each.
func chaosSection(r *loadtest.Result) Section {
	t := Table{Columns: []string{"at", "action", "target", "pid", "result", "longest media gap after", "until"}}
	for _, e := range r.Events {
		result, pid := "sent", "—"
		if e.PID > 0 {
			pid = strconv.Itoa(e.PID)
		}
		if e.Kind == loadtest.ChaosDown || e.Kind == loadtest.ChaosUp {
			result = "done in " + ms(e.TookMs)
		}
		if e.Err != "" {
			result = "failed: " + e.Err
		}
		t.Rows = append(t.Rows, []string{num3(e.AtMs/1000) + " s", e.Kind, e.Target, pid, result,
			ms(e.MaxGapAfterMs), num3(e.WindowEndS) + " s"})
	}
	return Section{Title: "Chaos",
		Note: "Failures injected during the run, drawn as vertical markers on the time-series charts: signals to processes (kill, term, stop and cont) and services taken down and brought up. " +
			"The longest gap after an event covers the seconds from it to the next event (or the end).",
		Tables: []Table{t}}
}

// eventMarkers returns a marker per chaos event, at its second.
func eventMarkers(r *loadtest.Result) []Marker {
	var out []Marker
	for _, e := range r.Events {
		out = append(out, Marker{X: e.AtMs / 1000, Label: e.Kind + " " + e.Target})
	}
	return out
}

// agentsSection lists the agents of a distributed run.
func agentsSection(agents []loadtest.AgentInfo) Section {
	t := Table{Columns: []string{"agent", "share", "calls started", "CPU mean", "CPU max", "tick lag mean", "media dropped", "status"}}
	for _, a := range agents {
		status := "merged"
		switch {
		case a.Missing:
			status = "missing"
		case a.Err != "":
			status = "failed: " + a.Err
		case a.Generator.Bottleneck:
			status = "merged; generator was a bottleneck"
		}
		g := a.Generator
		t.Rows = append(t.Rows, []string{a.ID, strconv.Itoa(a.Index) + " of " + strconv.Itoa(a.Of), strconv.Itoa(a.CallsStarted),
			pct(g.CPUMeanPct), pct(g.CPUMaxPct), ms(g.TickLagMeanMs), strconv.FormatUint(g.MediaDropped, 10), status})
	}
	return Section{Title: "Agents", Note: "Each agent made the calls of its share of the arrivals; the figures above are merged from their raw counts and sketches.", Tables: []Table{t}}
}
