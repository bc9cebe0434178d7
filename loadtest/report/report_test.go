package report

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// sampleInput is a spike run with one missed target, a generator warning,
// a knee and every kind of chart and table the runner produces.
func sampleInput() Input {
	const secs = 120
	calls, p50, p95, p99 := make([]Point, secs), make([]Point, secs), make([]Point, secs), make([]Point, secs)
	lossBefore, lossAfter := make([]Point, secs), make([]Point, secs)
	fwd := []Series{{Name: "forwarder-a"}, {Name: "forwarder-b"}, {Name: "forwarder-c"}}
	cats := make([]string, secs)
	admitted, overCap, noFwd := make([]Point, secs), make([]Point, secs), make([]Point, secs)
	for i := range secs {
		x := float64(i)
		load := 200 + 1800*math.Min(1, math.Max(0, (x-20)/40))
		if x > 90 {
			load = math.Max(200, load-(x-90)*60)
		}
		calls[i] = Point{x, math.Min(load, 1500)}
		p50[i] = Point{x, 18 + load/200}
		p95[i] = Point{x, 35 + load/40}
		p99[i] = Point{x, 60 + load/25}
		lossBefore[i] = Point{x, 0.1 + load/1000}
		lossAfter[i] = Point{x, 0.02 + load/8000}
		if i >= 100 && i < 104 { // failover: no measurements
			p50[i].Y, p95[i].Y, p99[i].Y = math.NaN(), math.NaN(), math.NaN()
		}
		cats[i] = fmt.Sprint(i)
		admitted[i] = Point{x, math.Min(load/20, 75)}
		overCap[i] = Point{x, math.Max(0, load/20-75)}
		if i%17 == 0 {
			noFwd[i] = Point{x, 2}
		}
		for f := range fwd {
			lvl := math.Floor(math.Max(0, load-900-float64(f)*150) / 250)
			fwd[f].Points = append(fwd[f].Points, Point{x, math.Min(lvl, 4)})
		}
	}
	return Input{
		Title:    "callrelay load test — spike",
		Subtitle: "profile spike · 2m0s · relays 10.0.0.1:7000, 10.0.0.2:7000",
		Meta: []Field{
			{"command", "callrelay loadtest -profile spike -duration 2m"},
			{"started", "2025-12-31T23:58:00Z"},
		},
		Verdict: Verdict{
			Pass:    false,
			Summary: "1 of 3 targets missed",
			Checks: []Check{
				{Target: "p95 setup latency, 1:1 calls", Measured: "142 ms", Limit: "≤ 250 ms", Pass: true},
				{Target: "p95 one-way delay", Measured: "182 ms", Limit: "≤ 150 ms", Pass: false},
				{Target: "loss after recovery", Measured: "0.21 %", Limit: "≤ 1 %", Pass: true},
			},
		},
		Knee: &Knee{Found: true, Summary: "p95 one-way delay passed 150 ms at 1,480 calls", Facts: []Field{
			{"calls", "1,480"}, {"packets/s per forwarder core", "41,200"},
		}},
		Warnings: []string{"load generator CPU at 93 % for 12 s (t=58..70 s): delay figures may be its own"},
		Sections: []Section{
			{Title: "Calls", Charts: []Chart{
				{Kind: KindLine, Title: "Calls up", XLabel: "seconds", YLabel: "calls", Series: []Series{{Name: "calls up", Points: calls}}},
				{Kind: KindStackedBars, Title: "Setups by outcome", Categories: cats,
					Series: []Series{{Name: "admitted", Points: admitted}, {Name: "refused: over capacity", Points: overCap}, {Name: "refused: no forwarder", Points: noFwd}}},
				{Kind: KindLine, Title: "Throttle level per forwarder", XLabel: "seconds", YLabel: "level", Series: fwd,
					Options: ChartOptions{Step: true, YMax: 4}},
			}, Tables: []Table{{
				Title:   "Call setup (ms)",
				Columns: []string{"class", "setup p50", "setup p95", "setup p99", "first audio p50", "first audio p95", "first audio p99"},
				Rows:    [][]string{{"1:1", "41", "142", "310", "95", "210", "402"}, {"group 6", "55", "171", "390", "120", "260", "470"}},
			}}},
			{Title: "Media quality", Note: "Delay is measured from a send timestamp carried inside the encrypted payload.", Charts: []Chart{
				{Kind: KindLine, Title: "One-way delay percentiles", XLabel: "seconds", YLabel: "ms",
					Series:  []Series{{Name: "p50", Points: p50}, {Name: "p95", Points: p95}, {Name: "p99", Points: p99}},
					Options: ChartOptions{Thresholds: []Threshold{{Value: 150, Label: "target p95 150 ms"}}}},
				{Kind: KindLine, Title: "Packet loss", XLabel: "seconds", YLabel: "%",
					Series: []Series{{Name: "before NACK recovery", Points: lossBefore}, {Name: "after recovery", Points: lossAfter}}},
			}, Tables: []Table{{
				Title:   "Media (ms unless noted)",
				Columns: []string{"class", "delay p50", "delay p95", "delay p99", "jitter p95", "loss before recovery", "speaker switch p95"},
				Rows:    [][]string{{"1:1", "22", "118", "182", "9", "1.9 %", "—"}, {"group 6", "25", "131", "199", "11", "2.3 %", "640"}},
			}, {
				Title: "Relay process",
				Rows:  [][]string{{"peak CPU", "188 %"}, {"peak RSS", "412 MiB"}},
			}}},
		},
	}
}

// parsePage parses the whole page strictly as XML (the template writes
// well-formed markup) and returns its root.
func parsePage(t *testing.T, page string) node {
	t.Helper()
	var root node
	d := xml.NewDecoder(strings.NewReader(page))
	d.Strict = true
	require.NoError(t, d.Decode(&root))
	require.Equal(t, "html", root.XMLName.Local)
	return root
}

// allText returns the character data of every element below n.
func (n node) allText() string {
	var b strings.Builder
	b.WriteString(n.Text)
	for _, c := range n.Children {
		b.WriteString(" " + c.allText())
	}
	return b.String()
}

func render(t *testing.T, in Input) string {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, Render(&buf, in))
	return buf.String()
}

func TestRenderSample(t *testing.T) {
	in := sampleInput()
	page := render(t, in)
	root := parsePage(t, page)

	banner := root.find(func(n node) bool { return n.attr("id") == "verdict" })
	require.Len(t, banner, 1)
	require.Contains(t, banner[0].attr("class"), "fail")
	require.Contains(t, banner[0].allText(), "FAIL")
	require.Contains(t, banner[0].allText(), in.Verdict.Summary)

	text := root.allText()
	for _, want := range []string{in.Title, in.Subtitle, in.Warnings[0], in.Knee.Summary, "41,200"} {
		require.Contains(t, text, want)
	}
	for _, c := range in.Verdict.Checks {
		require.Contains(t, text, c.Target)
		require.Contains(t, text, c.Measured)
	}
	svgs := root.find(byName("svg"))
	var chartTitles int
	for _, s := range in.Sections {
		require.Contains(t, text, s.Title)
		for _, c := range s.Charts {
			chartTitles++
			require.Contains(t, text, c.Title)
		}
		for _, tb := range s.Tables {
			require.Contains(t, text, tb.Title)
			for _, row := range tb.Rows {
				for _, cell := range row {
					require.Contains(t, text, cell)
				}
			}
		}
	}
	require.Len(t, svgs, chartTitles)

	// Self-contained: no scripts, nothing fetched.
	require.Empty(t, root.find(byName("script")))
	require.Empty(t, root.find(byName("link")))
	require.Empty(t, root.find(byName("img")))
	require.NotContains(t, page, "src=")
	require.NotContains(t, page, "@import")
	require.NotContains(t, strings.ReplaceAll(page, `xmlns="http://www.w3.org/2000/svg"`, ""), "http")

	require.Equal(t, page, render(t, in), "output must be deterministic")

	writeSample(t, page)
}

// writeSample saves the page to t.TempDir() and, when CALLRELAY_REPORT_SAMPLE
// names a file, there too, for a human or a browser test to open.
func writeSample(t *testing.T, page string) {
	t.Helper()
	paths := []string{filepath.Join(t.TempDir(), "report.html")}
	if p := os.Getenv("CALLRELAY_REPORT_SAMPLE"); p != "" {
		paths = append(paths, p)
	}
	for _, p := range paths {
		require.NoError(t, os.WriteFile(p, []byte(page), 0o644))
		t.Logf("sample report: %s", p)
	}
}

func TestRenderPass(t *testing.T) {
	in := Input{Title: "steady", Verdict: Verdict{Pass: true, Checks: []Check{{Target: "loss", Measured: "0 %", Limit: "≤ 1 %", Pass: true}}}}
	root := parsePage(t, render(t, in))
	banner := root.find(func(n node) bool { return n.attr("id") == "verdict" })[0]
	require.Contains(t, banner.attr("class"), "pass")
	require.Contains(t, banner.allText(), "PASS")
	require.Empty(t, root.find(func(n node) bool { return n.attr("id") == "generator-health" }), "no warnings, no box")
	require.Empty(t, root.find(func(n node) bool { return n.attr("id") == "knee" }))
}

func TestRenderEmptyInput(t *testing.T) {
	root := parsePage(t, render(t, Input{}))
	require.Contains(t, root.allText(), "FAIL", "no verdict given is no pass")
}

func TestRenderEscapes(t *testing.T) {
	evil := `<script>alert(1)</script>&"'`
	in := Input{
		Title: evil, Subtitle: evil, Meta: []Field{{evil, evil}}, Warnings: []string{evil},
		Verdict: Verdict{Summary: evil, Checks: []Check{{Target: evil, Measured: evil, Limit: evil}}},
		Knee:    &Knee{Summary: evil, Facts: []Field{{evil, evil}}},
		Sections: []Section{{Title: evil, Note: evil,
			Charts: []Chart{{Title: evil, XLabel: evil, YLabel: evil, Series: []Series{{Name: evil, Points: []Point{{0, 1}, {1, 2}}}}}},
			Tables: []Table{{Title: evil, Columns: []string{evil}, Rows: [][]string{{evil, evil}}}}}},
	}
	page := render(t, in)
	require.NotContains(t, page, "<script")
	root := parsePage(t, page)
	require.Empty(t, root.find(byName("script")))
	require.Contains(t, root.allText(), evil)
}

func TestRenderUnknownChartKind(t *testing.T) {
	in := Input{Sections: []Section{{Charts: []Chart{{Kind: ChartKind(9), Title: "x"}}}}}
	var buf bytes.Buffer
	require.ErrorContains(t, Render(&buf, in), "unknown kind")
	require.Zero(t, buf.Len(), "nothing written on error")
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestRenderWriteError(t *testing.T) {
	require.True(t, errors.Is(Render(failWriter{}, sampleInput()), io.ErrClosedPipe))
}
