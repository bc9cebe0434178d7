package report

import (
	"strconv"
	"strings"

	"github.com/callrelay/callrelay/loadtest"
)

func callsSection(r *loadtest.Result) Section {
	secs := r.Seconds
	cats := make([]string, len(secs))
	for i, s := range secs {
		cats[i] = strconv.Itoa(s.T)
	}
	refused := func(name string, f func(loadtest.Refusals) int) Series {
		return Series{Name: name, Points: pick(secs, func(s loadtest.Second) (float64, bool) { return float64(f(s.All.Setups.Refused)), true })}
	}
	always := func(f func(loadtest.Second) float64) []Point {
		return pick(secs, func(s loadtest.Second) (float64, bool) { return f(s), true })
	}
	return Section{Title: "Calls", Charts: []Chart{
		{Kind: KindLine, Title: "Calls up", XLabel: "seconds", YLabel: "calls", Series: []Series{
			{Name: "calls up", Points: always(func(s loadtest.Second) float64 { return float64(s.CallsUp) })},
		}},
		{Kind: KindLine, Title: "Call arrivals", XLabel: "seconds", YLabel: "calls/s", Series: []Series{
			{Name: "asked for", Points: always(func(s loadtest.Second) float64 { return s.TargetRate })},
			{Name: "started", Points: always(func(s loadtest.Second) float64 { return float64(s.All.CallsStarted) })},
		}},
		{Kind: KindStackedBars, Title: "Setups by outcome (joins per second)", Categories: cats, Series: []Series{
			{Name: "admitted", Points: always(func(s loadtest.Second) float64 { return float64(s.All.Setups.Admitted) })},
			refused("refused: 508 capacity", func(r loadtest.Refusals) int { return r.Capacity }),
			refused("refused: 300 try alternate", func(r loadtest.Refusals) int { return r.TryAlternate }),
			refused("refused: timeout", func(r loadtest.Refusals) int { return r.Timeout }),
			refused("refused: other", func(r loadtest.Refusals) int { return r.Other }),
		}},
		{Kind: KindLine, Title: "Setup latency", XLabel: "seconds", YLabel: "ms",
			Series:  percentileSeries(secs, func(m loadtest.Measures) loadtest.Percentiles { return m.SetupMs }),
			Options: ChartOptions{Thresholds: targetLine(r, "setup_p95_ms")}},
	}, Tables: []Table{{
		Title:   "Call setup per class (ms)",
		Columns: []string{"class", "calls", "failed", "dropped", "joins", "success", "setup p50", "p95", "p99", "first audio p50", "p95", "p99"},
		Rows: classRows(r.Totals, func(m loadtest.Measures) []string {
			return []string{strconv.Itoa(m.CallsStarted), strconv.Itoa(m.CallsFailed), strconv.Itoa(m.CallsDropped), strconv.Itoa(m.Setups.Attempted),
				pct(m.SetupSuccessPct), p(m.SetupMs, 50), p(m.SetupMs, 95), p(m.SetupMs, 99),
				p(m.FirstAudioMs, 50), p(m.FirstAudioMs, 95), p(m.FirstAudioMs, 99)}
		}),
	}}}
}

func mediaSection(r *loadtest.Result) Section {
	secs := r.Seconds
	return Section{Title: "Media quality",
		Note: "One-way delay is measured from a send timestamp inside the encrypted payload; sender and receiver share the generator's clock. " +
			"Loss counts speech frames that never arrived, after the receivers' NACKs and the relay's retransmissions; before NACK adds those that arrived only late.",
		Charts: []Chart{
			{Kind: KindLine, Title: "One-way delay percentiles", XLabel: "seconds", YLabel: "ms",
				Series:  percentileSeries(secs, func(m loadtest.Measures) loadtest.Percentiles { return m.DelayMs }),
				Options: ChartOptions{Thresholds: targetLine(r, "delay_p95_ms")}},
			{Kind: KindLine, Title: "Packet loss", XLabel: "seconds", YLabel: "% of expected", Series: []Series{
				{Name: "loss after NACK", Points: pick(secs, func(s loadtest.Second) (float64, bool) { return s.All.LossPct, s.All.PacketsExpected > 0 })},
				{Name: "before NACK", Points: pick(secs, func(s loadtest.Second) (float64, bool) { return s.All.RawLossPct, s.All.PacketsExpected > 0 })},
			}, Options: ChartOptions{Thresholds: targetLine(r, "loss_pct")}},
			{Kind: KindLine, Title: "Jitter and media gaps", XLabel: "seconds", YLabel: "ms", Series: []Series{
				{Name: "jitter (mean)", Points: pick(secs, func(s loadtest.Second) (float64, bool) { return s.All.JitterMs, s.All.PacketsReceived > 0 })},
				{Name: "longest gap", Points: pick(secs, func(s loadtest.Second) (float64, bool) { return s.All.MaxGapMs, s.All.PacketsReceived > 0 })},
			}},
		},
		Tables: []Table{{
			Title:   "Media per class (ms unless noted)",
			Columns: []string{"class", "delay p50", "p95", "p99", "jitter mean", "jitter max", "loss after NACK", "before NACK", "longest gap", "decrypt failures", "speaker switch p50", "p95"},
			Rows: classRows(r.Totals, func(m loadtest.Measures) []string {
				return []string{p(m.DelayMs, 50), p(m.DelayMs, 95), p(m.DelayMs, 99), ms(m.JitterMs), ms(m.JitterMaxMs),
					pct(m.LossPct), pct(m.RawLossPct), ms(m.MaxGapMs), strconv.FormatUint(m.DecryptFailures, 10),
					p(m.SpeakerSwitchMs, 50), p(m.SpeakerSwitchMs, 95)}
			}),
		}},
	}
}

func stepsSection(steps []loadtest.Step) Section {
	t := Table{Columns: []string{"step", "rate (calls/s)", "mean calls up", "relay packets/s", "setup p95", "delay p95", "loss", "result"}}
	for _, s := range steps {
		res := "met"
		if !s.Met {
			res = "broke " + strings.Join(s.Broken, ", ")
		}
		m := s.Measures
		t.Rows = append(t.Rows, []string{strconv.Itoa(s.Index), num3(s.Rate), num3(s.MeanCallsUp), num3(m.RelayPacketsPerSec),
			p(m.SetupMs, 95), p(m.DelayMs, 95), pct(m.LossPct), res})
	}
	return Section{Title: "Ramp steps", Tables: []Table{t}}
}

func generatorSection(r *loadtest.Result) Section {
	g := r.Generator
	secs := r.Seconds
	return Section{Title: "Load generator", Charts: []Chart{
		{Kind: KindLine, Title: "Generator CPU", XLabel: "seconds", YLabel: "% of one core", Series: []Series{
			{Name: "CPU", Points: pick(secs, func(s loadtest.Second) (float64, bool) { return s.GeneratorCPUPct, true })},
		}, Options: ChartOptions{Thresholds: []Threshold{{Value: 85 * float64(max(g.GOMAXPROCS, 1)), Label: "85 % of GOMAXPROCS"}}}},
		{Kind: KindLine, Title: "Sender tick lag", XLabel: "seconds", YLabel: "ms", Series: []Series{
			{Name: "mean lateness", Points: pick(secs, func(s loadtest.Second) (float64, bool) { return s.TickLagMs, true })},
		}},
	}, Tables: []Table{{Rows: [][]string{
		{"CPU mean / max", pct(g.CPUMeanPct) + " / " + pct(g.CPUMaxPct)},
		{"tick lag mean / max", ms(g.TickLagMeanMs) + " / " + ms(g.TickLagMaxMs)},
		{"late ticks (> 10 ms)", strconv.FormatUint(g.LateTicks, 10)},
		{"media dropped by the generator", strconv.FormatUint(g.MediaDropped, 10)},
		{"arrivals skipped", strconv.Itoa(g.SkippedArrivals)},
	}}}}
}

// percentileSeries returns p50, p95 and p99 lines over all classes, with
// gaps in seconds without samples.
func percentileSeries(secs []loadtest.Second, f func(loadtest.Measures) loadtest.Percentiles) []Series {
	line := func(name string, v func(loadtest.Percentiles) float64) Series {
		return Series{Name: name, Points: pick(secs, func(s loadtest.Second) (float64, bool) {
			pc := f(s.All)
			return v(pc), pc.Count > 0
		})}
	}
	return []Series{
		line("p50", func(p loadtest.Percentiles) float64 { return p.P50 }),
		line("p95", func(p loadtest.Percentiles) float64 { return p.P95 }),
		line("p99", func(p loadtest.Percentiles) float64 { return p.P99 }),
	}
}

// classRows returns one row per call class, named, with the given cells.
func classRows(t loadtest.Totals, cells func(loadtest.Measures) []string) [][]string {
	return [][]string{
		append([]string{"one-to-one"}, cells(t.OneToOne)...),
		append([]string{"group"}, cells(t.Group)...),
		append([]string{"all"}, cells(t.All)...),
	}
}

// p formats percentile q (50, 95 or 99) of pc in ms, "—" without samples.
func p(pc loadtest.Percentiles, q int) string {
	if pc.Count == 0 {
		return "—"
	}
	switch q {
	case 50:
		return num3(pc.P50)
	case 95:
		return num3(pc.P95)
	default:
		return num3(pc.P99)
	}
}
