package bwe

import "math"

// The incoming rate and loss are counted in fixed time buckets. The rate
// window is the current bucket and the rateBuckets-1 before it; the loss
// window is at least as long and reaches further back, up to ringBuckets,
// until it expects minLossExpected packets, so that loss is measured at low
// packet rates too.
const (
	bucketNs    = 50_000_000 // 50 ms
	rateBuckets = 20         // window of 1 s
	ringBuckets = 80         // loss window of up to 4 s
	windowNs    = bucketNs * rateBuckets

	// minSpanNs is the shortest span a rate is computed over, so the first
	// packets do not give absurd rates; before it has passed the rate is an
	// underestimate.
	minSpanNs = 200_000_000

	// minLossExpected is how many packets the loss window must expect
	// before its loss fraction is trusted.
	minLossExpected = 20
)

// bucket holds what arrived in one bucketNs slice of time.
type bucket struct {
	idx      int64 // absolute index: arrival / bucketNs
	bytes    int64
	received int64 // packets counted for loss (valid stream index)
	expected int64 // packets the sequence numbers say were sent
}

// rateWindow counts bytes and loss over the last buckets.
type rateWindow struct {
	b       [ringBuckets]bucket
	first   int64 // arrival of the first packet
	last    int64 // latest arrival seen
	started bool
}

// windowStats is what rateWindow.stats measured.
type windowStats struct {
	bps     float64
	loss    float64
	rateOK  bool // something arrived: bps is usable (an underestimate at first)
	settled bool // bps spans at least minSpanNs
	lossOK  bool // enough packets were expected to trust loss
}

// reset empties the window.
func (w *rateWindow) reset() {
	*w = rateWindow{}
	for i := range w.b {
		w.b[i].idx = math.MinInt64
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func slotOf(k int64) int { return int(((k % ringBuckets) + ringBuckets) % ringBuckets) }

// add counts a packet that arrived at t. expected and received feed the
// loss fraction (both 0 for packets of unknown streams).
func (w *rateWindow) add(t int64, bytes int, expected, received int64) {
	if !w.started {
		w.started = true
		w.first = t
		w.last = t
	}
	if t > w.last {
		w.last = t
	}
	k := floorDiv(t, bucketNs)
	slot := &w.b[slotOf(k)]
	if slot.idx != k {
		if slot.idx > k {
			return // older than the ring
		}
		*slot = bucket{idx: k}
	}
	slot.bytes += int64(bytes)
	slot.expected += expected
	slot.received += received
}

// stats sums the windows ending at now.
func (w *rateWindow) stats(now int64) windowStats {
	var st windowStats
	if !w.started {
		return st
	}
	now = max(now, w.last)
	kNow := floorDiv(now, bucketNs)
	var bytes, expected, received int64
	for age := int64(0); age < ringBuckets; age++ {
		if age >= rateBuckets && expected >= minLossExpected {
			break
		}
		s := &w.b[slotOf(kNow-age)]
		if s.idx != kNow-age {
			continue
		}
		if age < rateBuckets {
			bytes += s.bytes
		}
		expected += s.expected
		received += s.received
	}
	start := max((kNow-rateBuckets+1)*bucketNs, w.first)
	span := max(now-start, minSpanNs)
	st.bps = float64(bytes) * 8e9 / float64(span)
	st.rateOK = bytes > 0
	st.settled = st.rateOK && now-w.first >= minSpanNs
	if expected >= minLossExpected {
		st.lossOK = true
		if lost := expected - received; lost > 0 {
			st.loss = float64(lost) / float64(expected)
		}
	}
	return st
}
