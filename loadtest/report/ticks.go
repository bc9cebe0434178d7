package report

import (
	"math"
	"strconv"
	"strings"
)

// maxTicks bounds the tick count for pathological inputs.
const maxTicks = 200

// niceTicks returns evenly spaced tick values with a step of 1, 2 or 5 times
// a power of ten, covering [lo, hi] (the first tick is at or below lo, the
// last at or above hi), about target intervals apart, and the step itself.
// A constant range is widened around its value; non-finite bounds give 0..1.
func niceTicks(lo, hi float64, target int) (ticks []float64, step float64) {
	if target < 1 {
		target = 1
	}
	if !finite(lo) || !finite(hi) {
		lo, hi = 0, 1
	}
	if lo > hi {
		lo, hi = hi, lo
	}
	if lo == hi {
		pad := math.Abs(lo) / 2
		if pad == 0 {
			lo, hi = 0, 1
		} else {
			lo, hi = lo-pad, hi+pad
		}
	}
	mant, exp := niceStep((hi - lo) / float64(target))
	step = tickValue(1, mant, exp)
	i0 := math.Floor(lo/step + 1e-9)
	i1 := math.Ceil(hi/step - 1e-9)
	if i1-i0 > maxTicks {
		return []float64{lo, hi}, hi - lo
	}
	for i := i0; i <= i1; i++ {
		ticks = append(ticks, tickValue(i, mant, exp))
	}
	return ticks, step
}

// niceStep returns the smallest step mant×10^exp not below raw, with mant
// one of 1, 2 or 5.
func niceStep(raw float64) (mant float64, exp int) {
	if !(raw > 0) || !finite(raw) {
		return 1, 0
	}
	exp = int(math.Floor(math.Log10(raw)))
	f := raw / math.Pow(10, float64(exp))
	switch {
	case f <= 1+1e-9:
		mant = 1
	case f <= 2+1e-9:
		mant = 2
	case f <= 5+1e-9:
		mant = 5
	default:
		mant, exp = 1, exp+1
	}
	return mant, exp
}

// tickValue returns i×mant×10^exp, dividing by an exact power of ten for
// negative exponents so that 3×0.005 prints as 0.015, not 0.015000000000000001.
func tickValue(i, mant float64, exp int) float64 {
	if exp >= 0 {
		return i * mant * math.Pow(10, float64(exp))
	}
	return i * mant / math.Pow(10, float64(-exp))
}

// tickFormatter returns a function that labels ticks spaced step apart, the
// largest of which has magnitude maxAbs: as few decimals as the step needs,
// and k, M or G suffixes for large values.
func tickFormatter(step, maxAbs float64) func(float64) string {
	scale, suffix := 1.0, ""
	switch {
	case maxAbs >= 1e10:
		scale, suffix = 1e9, "G"
	case maxAbs >= 1e7:
		scale, suffix = 1e6, "M"
	case maxAbs >= 1e4:
		scale, suffix = 1e3, "k"
	}
	decimals := 0
	if s := step / scale; s > 0 && finite(s) {
		for decimals < 12 {
			v := s * math.Pow(10, float64(decimals))
			if math.Abs(v-math.Round(v)) < 1e-6*v {
				break
			}
			decimals++
		}
	}
	return func(v float64) string {
		s := strconv.FormatFloat(v/scale, 'f', decimals, 64)
		if strings.Trim(s, "-0.") == "" {
			s = strings.TrimPrefix(s, "-")
		}
		return s + suffix
	}
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// valueLabel formats a data value for a tooltip: at most three decimals,
// no trailing zeros.
func valueLabel(v float64) string {
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

// num3 formats a measured value with three significant digits (at least
// the integer part), e.g. 0.0123, 4.56, 78.9, 1234.
func num3(v float64) string {
	if !finite(v) {
		return "—"
	}
	decimals := 0
	if a := math.Abs(v); a > 0 && a < 100 {
		decimals = min(6, 2-int(math.Floor(math.Log10(a))))
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

func ms(v float64) string  { return num3(v) + " ms" }
func pct(v float64) string { return num3(v) + " %" }
