package report

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lo, hi float64
		want   []float64
		step   float64
	}{
		{"unit", 0, 1, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}, 0.2},
		{"hundreds", 0, 937, []float64{0, 200, 400, 600, 800, 1000}, 200},
		{"small", 0.003, 0.02, []float64{0, 0.005, 0.01, 0.015, 0.02}, 0.005},
		{"levels", 0, 4, []float64{0, 1, 2, 3, 4}, 1},
		{"negative", -50, -3, []float64{-50, -40, -30, -20, -10, 0}, 10},
		{"across zero", -1, 1, []float64{-1, -0.5, 0, 0.5, 1}, 0.5},
		{"reversed", 937, 0, []float64{0, 200, 400, 600, 800, 1000}, 200},
		{"constant", 5, 5, []float64{2, 3, 4, 5, 6, 7, 8}, 1},
		{"constant negative", -5, -5, []float64{-8, -7, -6, -5, -4, -3, -2}, 1},
		{"constant zero", 0, 0, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}, 0.2},
		{"NaN", math.NaN(), 3, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}, 0.2},
		{"large", 0, 123456, []float64{0, 50000, 100000, 150000}, 50000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, step := niceTicks(tc.lo, tc.hi, 5)
			require.InDelta(t, tc.step, step, tc.step*1e-9)
			require.Len(t, got, len(tc.want), "ticks %v", got)
			for i := range got {
				// Exact: tick values must print without float noise.
				require.Equal(t, tc.want[i], got[i], "ticks %v", got)
			}
		})
	}
}

func TestNiceTicksAlwaysCover(t *testing.T) {
	for _, r := range [][2]float64{{0, 1e-9}, {1e9, 1e9 + 7}, {-0.3, 0.7}, {0.1, 0.10001}, {17, 4242}} {
		got, step := niceTicks(r[0], r[1], 5)
		require.GreaterOrEqual(t, len(got), 2, "%v", r)
		require.LessOrEqual(t, got[0], r[0], "%v", r)
		require.GreaterOrEqual(t, got[len(got)-1], r[1], "%v", r)
		mant, _ := niceStep(step)
		require.Contains(t, []float64{1, 2, 5}, mant, "step %v", step)
	}
}

func TestTickFormatter(t *testing.T) {
	for _, tc := range []struct {
		step, maxAbs, v float64
		want            string
	}{
		{0.2, 1, 0.6, "0.6"},
		{0.005, 0.02, 0.015, "0.015"},
		{200, 1000, 400, "400"},
		{50000, 150000, 150000, "150k"},
		{2500, 12500, 7500, "7.5k"},
		{5e6, 2e7, 1.5e7, "15M"},
		{0.5, 1, math.Copysign(0, -1), "0.0"},
		{10, 50, -40, "-40"},
	} {
		require.Equal(t, tc.want, tickFormatter(tc.step, tc.maxAbs)(tc.v), "%+v", tc)
	}
}
