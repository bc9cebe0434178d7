package loadtest

import "math"

// Sketch is a fixed-size log-bucketed histogram of non-negative values
// (milliseconds here): bucket i holds values in [base^i, base^(i+1)) of
// sketchMin, so a percentile read from it is within about 2% of the true
// value, whatever the number of samples. Its size never grows; two
// sketches merge by adding counts. The zero Sketch is empty and ready.
// Not safe for concurrent use.
type Sketch struct {
	counts [sketchBuckets]uint32
	n      uint64
	sum    float64
	max    float64
}

const (
	sketchMin     = 0.01 // ms: values below fall in bucket 0
	sketchBase    = 1.04 // relative width of a bucket
	sketchBuckets = 400  // 0.01 ms * 1.04^400 ≈ 65 minutes
)

var logBase = math.Log(sketchBase)

func bucketOf(v float64) int {
	if v <= sketchMin {
		return 0
	}
	i := int(math.Log(v/sketchMin)/logBase) + 1
	if i >= sketchBuckets {
		return sketchBuckets - 1
	}
	return i
}

// bucketValue is the value a bucket stands for: the geometric middle of
// its bounds.
func bucketValue(i int) float64 {
	if i == 0 {
		return sketchMin
	}
	return sketchMin * math.Pow(sketchBase, float64(i)-0.5)
}

// Add records one value; negative values count as 0.
func (s *Sketch) Add(v float64) {
	if v < 0 || math.IsNaN(v) {
		v = 0
	}
	s.counts[bucketOf(v)]++
	s.n++
	s.sum += v
	if v > s.max {
		s.max = v
	}
}

// Merge adds o's samples to s.
func (s *Sketch) Merge(o *Sketch) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		s.counts[i] += c
	}
	s.n += o.n
	s.sum += o.sum
	if o.max > s.max {
		s.max = o.max
	}
}

// Reset empties s.
func (s *Sketch) Reset() { *s = Sketch{} }

// Count returns the number of samples.
func (s *Sketch) Count() uint64 { return s.n }

// Quantile returns the q-quantile (0..1), 0 when empty. The result never
// exceeds the largest value recorded.
func (s *Sketch) Quantile(q float64) float64 {
	if s.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range s.counts {
		seen += uint64(c)
		if seen >= rank {
			return math.Min(bucketValue(i), s.max)
		}
	}
	return s.max
}

// Percentiles summarises s.
func (s *Sketch) Percentiles() Percentiles {
	if s.n == 0 {
		return Percentiles{}
	}
	return Percentiles{
		Count: s.n,
		P50:   round3(s.Quantile(0.50)),
		P95:   round3(s.Quantile(0.95)),
		P99:   round3(s.Quantile(0.99)),
		Max:   round3(s.max),
		Mean:  round3(s.sum / float64(s.n)),
	}
}

// round3 keeps three decimals, so results read well and compare stably.
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
