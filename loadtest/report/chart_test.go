package report

import (
	"encoding/xml"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// node is a generic XML element, for checking the SVG's structure.
type node struct {
	XMLName  xml.Name
	Attrs    []xml.Attr `xml:",any,attr"`
	Children []node     `xml:",any"`
	Text     string     `xml:",chardata"`
}

// parseSVG parses s strictly as XML and requires an <svg> root.
func parseSVG(t *testing.T, s string) node {
	t.Helper()
	var root node
	d := xml.NewDecoder(strings.NewReader(s))
	d.Strict = true
	require.NoError(t, d.Decode(&root), "SVG does not parse:\n%s", s)
	require.Equal(t, "svg", root.XMLName.Local)
	return root
}

func (n node) attr(name string) string {
	for _, a := range n.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// find returns every element below n (and n) for which match is true.
func (n node) find(match func(node) bool) []node {
	var out []node
	if match(n) {
		out = append(out, n)
	}
	for _, c := range n.Children {
		out = append(out, c.find(match)...)
	}
	return out
}

func byClass(class string) func(node) bool {
	return func(n node) bool { return n.attr("class") == class }
}

func byName(name string) func(node) bool {
	return func(n node) bool { return n.XMLName.Local == name }
}

// texts returns the text of every <text> element below n.
func (n node) texts() []string {
	var out []string
	for _, e := range n.find(byName("text")) {
		out = append(out, e.Text)
	}
	return out
}

func legendNames(root node) []string {
	var names []string
	for _, g := range root.find(byClass("legend")) {
		names = append(names, g.texts()...)
	}
	return names
}

func ramp(n int, f func(i int) float64) []Point {
	pts := make([]Point, n)
	for i := range pts {
		pts[i] = Point{X: float64(i), Y: f(i)}
	}
	return pts
}

func TestLineChartWellFormed(t *testing.T) {
	nan := math.NaN()
	many := make([]Series, 12)
	for i := range many {
		many[i] = Series{Name: "forwarder-" + strconv.Itoa(i), Points: ramp(30, func(j int) float64 { return float64((i + j) % 5) })}
	}
	for _, tc := range []struct {
		name   string
		series []Series
		opts   ChartOptions
		noData bool
	}{
		{"nil", nil, ChartOptions{}, true},
		{"empty series", []Series{{Name: "calls"}}, ChartOptions{}, true},
		{"all NaN", []Series{{Name: "calls", Points: []Point{{0, nan}, {1, nan}}}}, ChartOptions{}, true},
		{"single point", []Series{{Name: "calls", Points: []Point{{3, 7}}}}, ChartOptions{}, false},
		{"constant", []Series{{Name: "calls", Points: ramp(10, func(int) float64 { return 42 })}}, ChartOptions{}, false},
		{"negative", []Series{{Name: "skew", Points: ramp(10, func(i int) float64 { return -float64(i) * 3.7 })}}, ChartOptions{}, false},
		{"tiny", []Series{{Name: "loss", Points: ramp(10, func(i int) float64 { return 0.003 + float64(i)*0.002 })}}, ChartOptions{}, false},
		{"threshold and ymax", []Series{{Name: "p95", Points: ramp(10, func(i int) float64 { return float64(i * 30) })}},
			ChartOptions{YMax: 200, Thresholds: []Threshold{{Value: 150, Label: "target"}}}, false},
		{"step levels", many, ChartOptions{Step: true, YMax: 4, Width: 500, Height: 200}, false},
		{"unnamed", []Series{{Points: ramp(3, func(i int) float64 { return float64(i) })}}, ChartOptions{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svg := LineChart("Calls up", "seconds", "calls", tc.series, tc.opts)
			root := parseSVG(t, svg)
			require.Contains(t, root.texts(), "Calls up")
			require.Len(t, legendNames(root), len(tc.series))
			require.Equal(t, tc.noData, len(root.find(byClass("no-data"))) == 1)
			require.Equal(t, svg, LineChart("Calls up", "seconds", "calls", tc.series, tc.opts), "output must be deterministic")
		})
	}
}

func TestLineChartLegendListsEverySeries(t *testing.T) {
	var series []Series
	var want []string
	for i := range 11 {
		name := "class " + strconv.Itoa(i)
		want = append(want, name)
		series = append(series, Series{Name: name, Points: ramp(5, func(j int) float64 { return float64(i * j) })})
	}
	root := parseSVG(t, LineChart("t", "x", "y", series, ChartOptions{}))
	require.Equal(t, want, legendNames(root))

	// Each series has its own group and a distinct colour or dash pattern.
	groups := root.find(byClass("series"))
	require.Len(t, groups, len(series))
	seen := map[string]bool{}
	for i, g := range groups {
		require.Equal(t, want[i], g.attr("data-name"))
		style := g.attr("stroke") + "/" + g.attr("stroke-dasharray")
		require.False(t, seen[style], "style %s reused", style)
		seen[style] = true
	}
}

func TestLineChartNaNBreaksLine(t *testing.T) {
	pts := ramp(12, func(i int) float64 { return float64(i) })
	pts[3].Y = math.NaN()
	pts[6].Y = math.Inf(1)
	pts[7].Y = math.NaN()
	pts[10].Y = math.NaN() // leaves 11 alone: drawn as a dot
	root := parseSVG(t, LineChart("delay", "s", "ms", []Series{{Name: "p50", Points: pts}}, ChartOptions{}))
	g := root.find(byClass("series"))
	require.Len(t, g, 1)
	paths := g[0].find(byName("path"))
	require.Len(t, paths, 3, "runs 0-2, 4-5, 8-9")
	for _, p := range paths {
		require.Equal(t, 1, strings.Count(p.attr("d"), "M"), "one move per run: %s", p.attr("d"))
	}
	require.Len(t, g[0].find(byName("circle")), 1, "the lone point 11")
}

func TestLineChartUnsortedInput(t *testing.T) {
	pts := []Point{{2, 2}, {0, 0}, {1, 1}}
	root := parseSVG(t, LineChart("t", "", "", []Series{{Name: "a", Points: pts}}, ChartOptions{}))
	d := root.find(byName("path"))[0].attr("d")
	fields := strings.Fields(strings.NewReplacer("M", "", "L", "").Replace(d))
	var xs []float64
	for i := 0; i < len(fields); i += 2 {
		x, err := strconv.ParseFloat(fields[i], 64)
		require.NoError(t, err)
		xs = append(xs, x)
	}
	require.IsIncreasing(t, xs)
}

func TestLineChartStep(t *testing.T) {
	pts := []Point{{0, 0}, {1, 2}, {2, 2}, {3, 4}}
	root := parseSVG(t, LineChart("throttle", "s", "level", []Series{{Name: "fwd-1", Points: pts}}, ChartOptions{Step: true, YMax: 4}))
	d := root.find(byName("path"))[0].attr("d")
	require.NotContains(t, d, "L")
	require.Equal(t, 3, strings.Count(d, "H"), d)
	require.Equal(t, 3, strings.Count(d, "V"), d)
	var ticks []string
	for _, g := range root.find(byClass("y-ticks")) {
		ticks = g.texts()
	}
	require.Equal(t, []string{"0", "1", "2", "3", "4"}, ticks)
}

func TestLineChartYMaxClips(t *testing.T) {
	pts := []Point{{0, 0}, {1, 1}, {2, 500}}
	root := parseSVG(t, LineChart("t", "", "", []Series{{Name: "a", Points: pts}}, ChartOptions{YMax: 4}))
	for _, g := range root.find(byClass("y-ticks")) {
		require.Equal(t, []string{"0", "1", "2", "3", "4"}, g.texts())
	}
	d := root.find(byName("path"))[0].attr("d")
	require.True(t, strings.HasSuffix(d, " "+num(marginTop)), "500 drawn at the top: %s", d)
}

func TestLineChartThreshold(t *testing.T) {
	pts := ramp(10, func(i int) float64 { return float64(i) })
	root := parseSVG(t, LineChart("delay p95", "s", "ms", []Series{{Name: "p95", Points: pts}},
		ChartOptions{Thresholds: []Threshold{{Value: 150, Label: "target 150 ms"}, {Value: 20}}}))
	lines := root.find(byClass("threshold"))
	require.Len(t, lines, 2, "the axis grows to show the target")
	require.NotEmpty(t, lines[0].attr("stroke-dasharray"))
	g := root.find(byClass("thresholds"))[0]
	require.Equal(t, []string{"target 150 ms", "20"}, g.texts())
}

func TestChartTextIsEscaped(t *testing.T) {
	title := `<script>alert("x")</script> & 'co'`
	name := `<b>a&b</b>`
	for _, svg := range []string{
		LineChart(title, "<x>", "<y>", []Series{{Name: name, Points: ramp(3, func(i int) float64 { return float64(i) })}},
			ChartOptions{Thresholds: []Threshold{{Value: 1, Label: "<t>"}}}),
		LineChart(title, "<x>", "<y>", nil, ChartOptions{}),
		StackedBars(title, []string{"<c>"}, []Series{{Name: name, Points: []Point{{0, 1}}}},
			ChartOptions{Thresholds: []Threshold{{Value: 1, Label: "<t>"}}}),
	} {
		require.NotContains(t, svg, "<script")
		require.NotContains(t, svg, "<b>")
		require.NotContains(t, svg, "<x>")
		require.NotContains(t, svg, "<c>")
		require.NotContains(t, svg, "<t>")
		root := parseSVG(t, svg)
		require.Contains(t, root.texts(), title, "the title reads back unchanged")
		require.Equal(t, title, root.attr("aria-label"))
	}
}

func TestStackedBars(t *testing.T) {
	cats := []string{"0", "1", "2", "3"}
	stacks := []Series{
		{Name: "admitted", Points: []Point{{0, 10}, {1, 20}, {2, 0}, {3, 5}}},
		{Name: "refused: over capacity", Points: []Point{{0, 0}, {1, 5}, {2, math.NaN()}, {3, -1}}},
		{Name: "refused: no forwarder", Points: []Point{{0, 1}}}, // shorter than categories
	}
	svg := StackedBars("Setups by outcome", cats, stacks, ChartOptions{Thresholds: []Threshold{{Value: 22, Label: "peak"}}})
	root := parseSVG(t, svg)
	require.Equal(t, []string{"admitted", "refused: over capacity", "refused: no forwarder"}, legendNames(root))
	groups := root.find(byClass("series"))
	require.Len(t, groups, 3)
	counts := []int{3, 1, 1} // zero, NaN, negative and missing values draw nothing
	for i, g := range groups {
		require.Len(t, g.find(byName("rect")), counts[i], g.attr("data-name"))
	}
	// Second category: "refused" sits right on top of "admitted".
	adm := groups[0].find(byName("rect"))[1]
	ref := groups[1].find(byName("rect"))[0]
	y := func(n node, a string) float64 {
		v, err := strconv.ParseFloat(n.attr(a), 64)
		require.NoError(t, err)
		return v
	}
	require.InDelta(t, y(adm, "y"), y(ref, "y")+y(ref, "height"), 0.11)
	require.InDelta(t, 4*y(ref, "height"), y(adm, "height"), 0.5, "20 vs 5")
	require.Contains(t, ref.find(byName("title"))[0].Text, "refused: over capacity")
	require.Len(t, root.find(byClass("threshold")), 1)
	require.Equal(t, svg, StackedBars("Setups by outcome", cats, stacks, ChartOptions{Thresholds: []Threshold{{Value: 22, Label: "peak"}}}))
}

func TestStackedBarsNoData(t *testing.T) {
	for name, cats := range map[string][]string{"no categories": nil, "all zero": {"0", "1"}} {
		t.Run(name, func(t *testing.T) {
			root := parseSVG(t, StackedBars("Setups", cats, []Series{{Name: "admitted", Points: []Point{{0, 0}}}}, ChartOptions{}))
			require.Len(t, root.find(byClass("no-data")), 1)
			require.Equal(t, []string{"admitted"}, legendNames(root))
		})
	}
}

func TestStackedBarsThinsLabels(t *testing.T) {
	cats := make([]string, 600)
	pts := make([]Point, 600)
	for i := range cats {
		cats[i] = strconv.Itoa(i)
		pts[i] = Point{Y: float64(i % 7)}
	}
	root := parseSVG(t, StackedBars("Setups", cats, []Series{{Name: "admitted", Points: pts}}, ChartOptions{}))
	labels := root.find(byClass("x-ticks"))[0].texts()
	require.Equal(t, "0", labels[0])
	require.Less(t, len(labels), 40)
	require.Greater(t, len(labels), 5)
}
