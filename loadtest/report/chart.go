package report

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Point is one sample of a series. In a LineChart, X is usually seconds since
// the start of the run; a NaN or infinite Y leaves a gap in the line.
type Point struct{ X, Y float64 }

// Series is one named line (LineChart) or one layer of bars (StackedBars).
type Series struct {
	Name   string
	Points []Point
}

// Threshold is a horizontal target line drawn dashed across a chart.
type Threshold struct {
	Value float64
	Label string // e.g. "target p95 150 ms"; the value when empty
}

// ChartOptions adjusts a chart. The zero value gives a 1000×280 chart whose
// y axis starts at zero (or below, for negative data) and ends at a nice tick.
type ChartOptions struct {
	Width, Height int // whole chart without its legend, in px; 1000×280 when zero

	// YMax, when non-zero, is the top of the y axis: throttle levels 0..4
	// use 4 even if only level 0 was seen. Values above it are drawn at it.
	YMax float64

	// Step draws each series as a step function (the value holds until the
	// next point), for levels such as throttle levels.
	Step bool

	// Thresholds are drawn as dashed, labelled lines; the y axis grows to
	// show them unless YMax cuts them off.
	Thresholds []Threshold

	// Markers are drawn as labelled vertical lines (line charts only),
	// e.g. the chaos events; markers outside the data's x range are left
	// out.
	Markers []Marker
}

// Marker is a vertical line at X, such as an event during the run.
type Marker struct {
	X     float64
	Label string
}

// palette is the Okabe-Ito colour-blind-safe palette, ordered for contrast
// on white (its yellow is left out). Series past the eighth reuse the colours
// with a dash pattern.
var palette = []string{
	"#0072B2", "#E69F00", "#009E73", "#D55E00",
	"#CC79A7", "#56B4E9", "#000000", "#8C8C8C",
}

var dashes = []string{"", "6 3", "2 2"}

func seriesColor(i int) string { return palette[i%len(palette)] }
func seriesDash(i int) string  { return dashes[(i/len(palette))%len(dashes)] }

const (
	defaultWidth  = 1000
	defaultHeight = 280
	marginLeft    = 64
	marginRight   = 20
	marginTop     = 34
	marginBottom  = 46
	legendRow     = 18
	charWidth     = 7 // rough width of a 12px character, for layout only
	fontAttrs     = `font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" font-size="12"`
)

// frame maps data coordinates onto the plot area of a chart.
type frame struct {
	width, height          int // without the legend
	left, right, top, bot  float64
	x0, x1, y0, y1         float64
	xTicks, yTicks         []float64
	xFormat, yFormat       func(float64) string
	legendRows, legendTall int
}

func newFrame(opts ChartOptions) *frame {
	f := &frame{width: opts.Width, height: opts.Height}
	if f.width <= 0 {
		f.width = defaultWidth
	}
	if f.height <= 0 {
		f.height = defaultHeight
	}
	f.left, f.top = marginLeft, marginTop
	f.right = float64(f.width - marginRight)
	f.bot = float64(f.height - marginBottom)
	return f
}

func (f *frame) px(x float64) float64 {
	return f.left + (x-f.x0)/(f.x1-f.x0)*(f.right-f.left)
}

func (f *frame) py(y float64) float64 {
	y = math.Max(math.Min(y, f.y1), f.y0)
	return f.bot - (y-f.y0)/(f.y1-f.y0)*(f.bot-f.top)
}

// setY fixes the y domain from the data range [lo, hi], always including zero
// and the thresholds, ending at YMax when set.
func (f *frame) setY(lo, hi float64, opts ChartOptions) {
	lo, hi = math.Min(lo, 0), math.Max(hi, 0)
	for _, t := range opts.Thresholds {
		if finite(t.Value) {
			lo, hi = math.Min(lo, t.Value), math.Max(hi, t.Value)
		}
	}
	if opts.YMax != 0 && finite(opts.YMax) && opts.YMax > lo {
		hi = opts.YMax
	}
	ticks, step := niceTicks(lo, hi, 5)
	f.y0, f.y1 = ticks[0], ticks[len(ticks)-1]
	if opts.YMax != 0 && finite(opts.YMax) && opts.YMax > f.y0 {
		f.y1 = opts.YMax
		ticks = keepWithin(ticks, f.y0, f.y1)
	}
	f.yTicks = ticks
	f.yFormat = tickFormatter(step, math.Max(math.Abs(f.y0), math.Abs(f.y1)))
}

// setX fixes the x domain to the data range exactly, with nice ticks inside.
func (f *frame) setX(lo, hi float64) {
	ticks, step := niceTicks(lo, hi, 8)
	if lo == hi {
		lo, hi = ticks[0], ticks[len(ticks)-1]
	}
	f.x0, f.x1 = lo, hi
	f.xTicks = keepWithin(ticks, lo, hi)
	f.xFormat = tickFormatter(step, math.Max(math.Abs(lo), math.Abs(hi)))
}

func keepWithin(ticks []float64, lo, hi float64) []float64 {
	eps := (hi - lo) * 1e-9
	var out []float64
	for _, t := range ticks {
		if t >= lo-eps && t <= hi+eps {
			out = append(out, t)
		}
	}
	return out
}

// layoutLegend computes how many rows the legend of these names needs.
func (f *frame) layoutLegend(names []string) {
	f.legendRows = 0
	for _, p := range legendPositions(f, names) {
		f.legendRows = max(f.legendRows, p.row+1)
	}
	f.legendTall = f.height + f.legendRows*legendRow
	if f.legendRows > 0 {
		f.legendTall += 6
	}
}

type legendPos struct {
	x   float64
	row int
}

func legendPositions(f *frame, names []string) []legendPos {
	out := make([]legendPos, len(names))
	x, row := f.left, 0
	for i, name := range names {
		w := float64(28 + charWidth*utf8.RuneCountInString(legendName(name, i)) + 18)
		if x > f.left && x+w > f.right {
			x, row = f.left, row+1
		}
		out[i] = legendPos{x: x, row: row}
		x += w
	}
	return out
}

func legendName(name string, i int) string {
	if name == "" {
		return "series " + strconv.Itoa(i+1)
	}
	return name
}

// svgWriter accumulates an SVG document.
type svgWriter struct{ strings.Builder }

func (w *svgWriter) printf(format string, args ...any) { fmt.Fprintf(w, format, args...) }

// num formats a coordinate with one decimal, deterministically.
func num(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func esc(s string) string { return html.EscapeString(s) }

// open writes the root element, background and title.
func (w *svgWriter) open(f *frame, title string) {
	w.printf(`<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s" %s>`,
		f.width, f.legendTall, f.width, f.legendTall, esc(title), fontAttrs)
	w.printf(`<title>%s</title>`, esc(title))
	w.printf(`<rect class="bg" x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`, f.width, f.legendTall)
	w.printf(`<text class="chart-title" x="%s" y="20" font-size="14" font-weight="600" fill="#111111">%s</text>`, num(f.left), esc(title))
}

// axes writes the grid, both axes with their tick labels and axis labels.
func (w *svgWriter) axes(f *frame, xLabel, yLabel string, xTickLabels bool) {
	w.printf(`<g class="grid" stroke="#e3e3e3" stroke-width="1">`)
	for _, t := range f.yTicks {
		y := num(f.py(t))
		w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`, num(f.left), y, num(f.right), y)
	}
	w.printf(`</g><g class="axes" stroke="#555555" stroke-width="1">`)
	w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`, num(f.left), num(f.bot), num(f.right), num(f.bot))
	w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`, num(f.left), num(f.top), num(f.left), num(f.bot))
	w.printf(`</g><g class="y-ticks" fill="#333333" text-anchor="end">`)
	for _, t := range f.yTicks {
		w.printf(`<text x="%s" y="%s">%s</text>`, num(f.left-6), num(f.py(t)+4), esc(f.yFormat(t)))
	}
	w.printf(`</g>`)
	if xTickLabels {
		w.printf(`<g class="x-ticks" fill="#333333" text-anchor="middle">`)
		for _, t := range f.xTicks {
			x := num(f.px(t))
			w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#555555"/>`, x, num(f.bot), x, num(f.bot+4))
			w.printf(`<text x="%s" y="%s">%s</text>`, x, num(f.bot+17), esc(f.xFormat(t)))
		}
		w.printf(`</g>`)
	}
	if xLabel != "" {
		w.printf(`<text class="x-label" x="%s" y="%s" text-anchor="middle" fill="#333333">%s</text>`,
			num((f.left+f.right)/2), num(f.bot+35), esc(xLabel))
	}
	if yLabel != "" {
		cy := num((f.top + f.bot) / 2)
		w.printf(`<text class="y-label" x="16" y="%s" text-anchor="middle" fill="#333333" transform="rotate(-90 16 %s)">%s</text>`,
			cy, cy, esc(yLabel))
	}
}

// thresholds writes the dashed target lines with their labels.
func (w *svgWriter) thresholds(f *frame, ts []Threshold) {
	if len(ts) == 0 {
		return
	}
	w.printf(`<g class="thresholds">`)
	for _, t := range ts {
		if !finite(t.Value) || t.Value < f.y0 || t.Value > f.y1 {
			continue
		}
		label := t.Label
		if label == "" {
			label = f.yFormat(t.Value)
		}
		y := f.py(t.Value)
		w.printf(`<line class="threshold" x1="%s" y1="%s" x2="%s" y2="%s" stroke="#B00020" stroke-width="1.5" stroke-dasharray="8 4"/>`,
			num(f.left), num(y), num(f.right), num(y))
		w.printf(`<text x="%s" y="%s" text-anchor="end" fill="#B00020">%s</text>`, num(f.right-4), num(y-4), esc(label))
	}
	w.printf(`</g>`)
}

// markers writes the vertical event lines with their labels, the labels
// staggered over three rows so that close events stay readable.
func (w *svgWriter) markers(f *frame, ms []Marker) {
	if len(ms) == 0 {
		return
	}
	w.printf(`<g class="markers">`)
	n := 0
	for _, m := range ms {
		if !finite(m.X) || m.X < f.x0 || m.X > f.x1 {
			continue
		}
		x := f.px(m.X)
		w.printf(`<line class="marker" x1="%s" y1="%s" x2="%s" y2="%s" stroke="#6A3D9A" stroke-width="1.5" stroke-dasharray="3 3"/>`,
			num(x), num(f.top), num(x), num(f.bot))
		if m.Label != "" {
			w.printf(`<text x="%s" y="%s" fill="#6A3D9A" font-size="11">%s</text>`, num(x+3), num(f.top+11+float64(n%3)*12), esc(m.Label))
		}
		n++
	}
	w.printf(`</g>`)
}

// noData writes the centred "no data" notice.
func (w *svgWriter) noData(f *frame) {
	w.printf(`<text class="no-data" x="%s" y="%s" text-anchor="middle" fill="#777777" font-size="14">no data</text>`,
		num((f.left+f.right)/2), num((f.top+f.bot)/2))
}

// legend writes one entry per series, with a line or a box swatch.
func (w *svgWriter) legend(f *frame, names []string, boxes bool) {
	if len(names) == 0 {
		return
	}
	w.printf(`<g class="legend" fill="#222222">`)
	for i, p := range legendPositions(f, names) {
		y := float64(f.height) + float64(p.row*legendRow) + 6
		w.printf(`<g class="legend-item">`)
		if boxes {
			w.printf(`<rect x="%s" y="%s" width="18" height="10" fill="%s"/>`, num(p.x), num(y), seriesColor(i))
		} else {
			w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="2.5"%s/>`,
				num(p.x), num(y+5), num(p.x+20), num(y+5), seriesColor(i), dashAttr(i))
		}
		w.printf(`<text x="%s" y="%s">%s</text></g>`, num(p.x+26), num(y+10), esc(legendName(names[i], i)))
	}
	w.printf(`</g>`)
}

func dashAttr(i int) string {
	if d := seriesDash(i); d != "" {
		return ` stroke-dasharray="` + d + `"`
	}
	return ""
}

func (w *svgWriter) close() string {
	w.printf(`</svg>`)
	return w.String()
}

func seriesNames(series []Series) []string {
	names := make([]string, len(series))
	for i, s := range series {
		names[i] = s.Name
	}
	return names
}

// LineChart returns an inline <svg> element plotting each series as a line,
// with nice ticks on both axes, a legend listing every series, and the
// options' thresholds. Points are drawn in increasing X; a point with a NaN
// or infinite coordinate breaks the line. Without any finite point the chart
// says "no data"; a lone point is drawn as a dot.
func LineChart(title, xLabel, yLabel string, series []Series, opts ChartOptions) string {
	f := newFrame(opts)
	segs, xlo, xhi, ylo, yhi := segmentAll(series)
	f.layoutLegend(seriesNames(series))
	var w svgWriter
	if math.IsInf(xlo, 1) { // no finite point
		f.setX(0, 1)
		f.setY(0, 1, opts)
		w.open(f, title)
		w.axes(f, xLabel, yLabel, false)
		w.noData(f)
	} else {
		f.setX(xlo, xhi)
		f.setY(ylo, yhi, opts)
		w.open(f, title)
		w.axes(f, xLabel, yLabel, true)
		w.thresholds(f, opts.Thresholds)
		w.markers(f, opts.Markers)
		for i, s := range series {
			w.line(f, i, s.Name, segs[i], opts.Step)
		}
	}
	w.legend(f, seriesNames(series), false)
	return w.close()
}

// segmentAll splits every series into runs of finite points sorted by X and
// returns the finite data range (+Inf/-Inf bounds when there is none).
func segmentAll(series []Series) (segs [][][]Point, xlo, xhi, ylo, yhi float64) {
	xlo, ylo = math.Inf(1), math.Inf(1)
	xhi, yhi = math.Inf(-1), math.Inf(-1)
	segs = make([][][]Point, len(series))
	for i, s := range series {
		pts := append([]Point(nil), s.Points...)
		sort.SliceStable(pts, func(a, b int) bool { return pts[a].X < pts[b].X })
		var cur []Point
		for _, p := range pts {
			if !finite(p.X) || !finite(p.Y) {
				if len(cur) > 0 {
					segs[i] = append(segs[i], cur)
					cur = nil
				}
				continue
			}
			cur = append(cur, p)
			xlo, xhi = math.Min(xlo, p.X), math.Max(xhi, p.X)
			ylo, yhi = math.Min(ylo, p.Y), math.Max(yhi, p.Y)
		}
		if len(cur) > 0 {
			segs[i] = append(segs[i], cur)
		}
	}
	return segs, xlo, xhi, ylo, yhi
}

// line writes one series: a path per unbroken run, a dot for a lone point.
func (w *svgWriter) line(f *frame, i int, name string, segs [][]Point, step bool) {
	color := seriesColor(i)
	w.printf(`<g class="series" data-name="%s" stroke="%s" fill="none" stroke-width="2" stroke-linejoin="round"%s>`,
		esc(legendName(name, i)), color, dashAttr(i))
	for _, seg := range segs {
		if len(seg) == 1 {
			w.printf(`<circle cx="%s" cy="%s" r="3" fill="%s" stroke="none"/>`, num(f.px(seg[0].X)), num(f.py(seg[0].Y)), color)
			continue
		}
		var d strings.Builder
		for j, p := range seg {
			x, y := num(f.px(p.X)), num(f.py(p.Y))
			switch {
			case j == 0:
				d.WriteString("M" + x + " " + y)
			case step:
				d.WriteString(" H" + x + " V" + y)
			default:
				d.WriteString(" L" + x + " " + y)
			}
		}
		w.printf(`<path d="%s"/>`, d.String())
	}
	w.printf(`</g>`)
}
