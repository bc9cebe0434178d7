package report

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
)

// Input is everything the page shows, already measured, judged and
// formatted by the caller. Numbers in tables and checks are strings so the
// caller chooses units and precision ("212 ms", "0.4 %").
type Input struct {
	Title    string  // e.g. "callrelay load test — spike"
	Subtitle string  // one line: profile, duration, relay addresses
	Meta     []Field // further facts under the subtitle: command line, start time, agents
	Verdict  Verdict
	Knee     *Knee     // what a ramp found; nil when the profile looks for none
	Warnings []string  // load generator health: its own CPU, send drops, clock issues
	Sections []Section // in page order
}

// Field is one labelled value.
type Field struct{ Key, Value string }

// Verdict is the outcome of the run against its targets.
type Verdict struct {
	Pass    bool
	Summary string  // one line under the banner, e.g. "2 of 7 targets missed"
	Checks  []Check // one row per target
}

// Check is one target and what was measured against it.
type Check struct {
	Target   string // what is checked, e.g. "p95 setup latency, 1:1 calls"
	Measured string // e.g. "212 ms"
	Limit    string // e.g. "≤ 150 ms"
	Pass     bool
}

// Knee is where a ramp broke a quality target.
type Knee struct {
	Found   bool    // false: no target broke within the load offered
	Summary string  // e.g. "p95 one-way delay passed 150 ms at step 7"
	Facts   []Field // e.g. {"calls", "1,200"}, {"packets/s per forwarder core", "41,000"}
}

// Section is a titled group of charts and tables.
type Section struct {
	Title  string
	Note   string // optional paragraph under the title
	Charts []Chart
	Tables []Table
}

// ChartKind selects how a Chart is drawn.
type ChartKind int

const (
	KindLine        ChartKind = iota // LineChart
	KindStackedBars                  // StackedBars
)

// Chart is one precomputed chart.
type Chart struct {
	Kind       ChartKind
	Title      string
	XLabel     string // line charts only
	YLabel     string // line charts only
	Series     []Series
	Categories []string // stacked bars only: one bar per category
	Options    ChartOptions
}

// SVG draws the chart as an inline <svg> element.
func (c Chart) SVG() (string, error) {
	switch c.Kind {
	case KindLine:
		return LineChart(c.Title, c.XLabel, c.YLabel, c.Series, c.Options), nil
	case KindStackedBars:
		return StackedBars(c.Title, c.Categories, c.Series, c.Options), nil
	default:
		return "", fmt.Errorf("report: chart %q: unknown kind %d", c.Title, c.Kind)
	}
}

// Table is a titled table; with two columns it reads as key and value,
// with more it holds e.g. one row per call class and a column per percentile.
type Table struct {
	Title   string
	Columns []string // header cells; none for a headerless table
	Rows    [][]string
}

//go:embed page.html.tmpl
var pageSource string

var page = template.Must(template.New("page").Parse(pageSource))

// pageSection is a Section with its charts drawn.
type pageSection struct {
	Section
	ID   string
	SVGs []template.HTML
}

// Render writes in as one self-contained HTML page: inline CSS and SVG, no
// script, nothing fetched. Nothing is written if rendering fails.
func Render(w io.Writer, in Input) error {
	data := struct {
		Input
		Sections []pageSection
	}{Input: in}
	for i, s := range in.Sections {
		ps := pageSection{Section: s, ID: fmt.Sprintf("section-%d", i+1)}
		for _, c := range s.Charts {
			svg, err := c.SVG()
			if err != nil {
				return err
			}
			ps.SVGs = append(ps.SVGs, template.HTML(svg)) //nolint:gosec // chart code escapes every text
		}
		data.Sections = append(data.Sections, ps)
	}
	var buf bytes.Buffer
	if err := page.Execute(&buf, data); err != nil {
		return fmt.Errorf("report: render: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}
