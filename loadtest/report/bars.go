package report

import (
	"math"
	"strings"
)

// StackedBars returns an inline <svg> element with one bar per category,
// stacked from the given series in order (put "admitted" first, then each
// refusal reason). stacks[j].Points[i].Y is series j's value for
// categories[i]; X is ignored. Missing, NaN and negative values count as
// zero. Category labels are thinned so they do not overlap. Without
// categories or with all values zero the chart says "no data".
func StackedBars(title string, categories []string, stacks []Series, opts ChartOptions) string {
	f := newFrame(opts)
	vals, maxTotal := stackValues(categories, stacks)
	f.layoutLegend(seriesNames(stacks))
	var w svgWriter
	n := len(categories)
	f.x0, f.x1 = 0, math.Max(float64(n), 1)
	if maxTotal <= 0 {
		f.setY(0, 1, opts)
		w.open(f, title)
		w.axes(f, "", "", false)
		w.noData(f)
	} else {
		f.setY(0, maxTotal, opts)
		w.open(f, title)
		w.axes(f, "", "", false)
		w.categoryLabels(f, categories)
		for j, s := range stacks {
			w.barLayer(f, j, s.Name, categories, vals)
		}
		w.thresholds(f, opts.Thresholds)
	}
	w.legend(f, seriesNames(stacks), true)
	return w.close()
}

// stackValues returns vals[j][i], the non-negative value of stack j for
// category i, and the largest per-category total.
func stackValues(categories []string, stacks []Series) ([][]float64, float64) {
	vals := make([][]float64, len(stacks))
	totals := make([]float64, len(categories))
	for j, s := range stacks {
		vals[j] = make([]float64, len(categories))
		for i := range categories {
			if i < len(s.Points) && finite(s.Points[i].Y) && s.Points[i].Y > 0 {
				vals[j][i] = s.Points[i].Y
				totals[i] += s.Points[i].Y
			}
		}
	}
	var maxTotal float64
	for _, t := range totals {
		maxTotal = math.Max(maxTotal, t)
	}
	return vals, maxTotal
}

// categoryLabels writes every k-th category label, k chosen so labels fit.
func (w *svgWriter) categoryLabels(f *frame, categories []string) {
	longest := 1
	for _, c := range categories {
		longest = max(longest, len([]rune(c)))
	}
	slot := (f.right - f.left) / float64(len(categories))
	every := max(1, int(math.Ceil(float64(longest*charWidth+8)/slot)))
	w.printf(`<g class="x-ticks" fill="#333333" text-anchor="middle">`)
	for i := 0; i < len(categories); i += every {
		w.printf(`<text x="%s" y="%s">%s</text>`, num(f.px(float64(i)+0.5)), num(f.bot+17), esc(categories[i]))
	}
	w.printf(`</g>`)
}

// barLayer writes series j's boxes on top of the layers below it.
func (w *svgWriter) barLayer(f *frame, j int, name string, categories []string, vals [][]float64) {
	slot := (f.right - f.left) / float64(len(categories))
	bw, pad := slot*0.8, slot*0.1
	if slot < 4 {
		bw, pad = slot, 0
	}
	label := legendName(name, j)
	w.printf(`<g class="series" data-name="%s" fill="%s">`, esc(label), seriesColor(j))
	for i, c := range categories {
		v := vals[j][i]
		if v == 0 {
			continue
		}
		var below float64
		for k := 0; k < j; k++ {
			below += vals[k][i]
		}
		top, bottom := f.py(below+v), f.py(below)
		w.printf(`<rect x="%s" y="%s" width="%s" height="%s"><title>%s</title></rect>`,
			num(f.left+float64(i)*slot+pad), num(top), num(bw), num(bottom-top),
			esc(strings.Join([]string{c, label, valueLabel(v)}, " · ")))
	}
	w.printf(`</g>`)
}
