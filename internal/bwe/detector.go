package bwe

import "math"

// Trendline filter and overuse detector (draft-ietf-rmcat-gcc-02 §5.3-5.4,
// with the trendline estimator that implementations use in place of the
// draft's Kalman filter). Delays are in milliseconds here; the threshold
// constants are calibrated for that unit and for trendGain.
const (
	trendWindow    = 20   // newest groups per stream in the regression
	trendHorizonMs = 1000 // points older than this before the newest are left out
	trendMinPoints = 8    // points needed, over all streams, before the slope is used
	trendSmoothing = 0.9  // exponential smoothing of the accumulated delay
	trendGain      = 4.0  // m = slope x min(deltas, trendMaxDeltas) x trendGain
	trendMaxDeltas = 60

	// trendSignificance: overuse also needs the smoothed slope to exceed
	// this many standard errors of the slope fitted to the raw (unsmoothed)
	// delays, so that jitter, which leaves short-lived slopes in the
	// smoothed delay, does not pass for a growing queue.
	trendSignificance = 3

	thresholdInitialMs = 12.5
	thresholdMinMs     = 6
	thresholdMaxMs     = 600
	thresholdKUp       = 0.0087 // per ms, when |m| is above the threshold
	thresholdKDown     = 0.039  // per ms, when |m| is below it
	thresholdMaxJumpMs = 15     // |m| this far above the threshold does not adapt it
	thresholdMaxDtMs   = 100

	overuseTimeMs = 10 // m must stay above the threshold this long to signal overuse

	// The base delay of a stream is its lowest raw accumulated delay over
	// the last baseBuckets x baseBucketMs (a sliding minimum, so that clock
	// drift between sender and receiver does not accumulate); the delay
	// above it is the queue the packets waited in.
	baseBucketMs = 10_000
	baseBuckets  = 6
)

// usage is the detector's verdict on the bottleneck queue.
type usage uint8

const (
	usageNormal usage = iota // delay steady
	usageOver                // queue growing: send less
	usageUnder               // queue draining: hold
)

// trendStream is one sender clock's recent points: arrival time x, and the
// accumulated delay variation, smoothed (y) and raw (r). The accumulated
// delay has an unknown offset per sender clock, which is why each stream
// keeps its own points, and its own centred sums for the fit.
type trendStream struct {
	x, y, r       [trendWindow]float64
	n, next       int
	acc, smoothed float64
	lastX         float64

	// Sums of products of deviations from the means, over the points
	// within trendHorizonMs of lastX, updated at each push.
	fitN               int
	sxx, sxy, sxr, srr float64

	base    [baseBuckets]float64 // minimum r per bucket
	baseIdx [baseBuckets]int64   // bucket number + 1; 0 for an empty bucket
}

func (t *trendStream) push(xMs, dMs float64) {
	t.acc += dMs
	t.smoothed = trendSmoothing*t.smoothed + (1-trendSmoothing)*t.acc
	t.x[t.next], t.y[t.next], t.r[t.next] = xMs, t.smoothed, t.acc
	t.next = (t.next + 1) % trendWindow
	if t.n < trendWindow {
		t.n++
	}
	t.lastX = xMs
	t.sums()
	k := int64(xMs/baseBucketMs) + 1
	i := k % baseBuckets
	if t.baseIdx[i] != k {
		t.baseIdx[i], t.base[i] = k, t.acc
	} else {
		t.base[i] = min(t.base[i], t.acc)
	}
}

// sums recomputes the centred sums over the points in the horizon.
func (t *trendStream) sums() {
	lo := t.lastX - trendHorizonMs
	var sx, sy, sr float64
	n := 0
	for j := 0; j < t.n; j++ {
		if t.x[j] >= lo {
			sx += t.x[j]
			sy += t.y[j]
			sr += t.r[j]
			n++
		}
	}
	t.fitN, t.sxx, t.sxy, t.sxr, t.srr = n, 0, 0, 0, 0
	if n < 2 {
		return
	}
	mx, my, mr := sx/float64(n), sy/float64(n), sr/float64(n)
	for j := 0; j < t.n; j++ {
		if t.x[j] >= lo {
			dx, dy, dr := t.x[j]-mx, t.y[j]-my, t.r[j]-mr
			t.sxx += dx * dx
			t.sxy += dx * dy
			t.sxr += dx * dr
			t.srr += dr * dr
		}
	}
}

// queueMs is how far the smoothed delay at xMs lies above the base delay.
func (t *trendStream) queueMs(xMs float64) float64 {
	k := int64(xMs/baseBucketMs) + 1
	base := math.Inf(1)
	for i, idx := range t.baseIdx {
		if idx > k-baseBuckets && idx <= k {
			base = min(base, t.base[i])
		}
	}
	if math.IsInf(base, 1) {
		return 0
	}
	return max(t.smoothed-base, 0)
}

// delayDetector turns delay samples from up to MaxStreams sender clocks
// into one usage signal for the leg they share.
type delayDetector struct {
	streams      [MaxStreams]trendStream
	numDeltas    int
	thresholdMs  float64
	prevM        float64
	overuseMs    float64 // time m has been above the threshold; -1 when it is not
	overuseCount int
	lastXMs      float64
	hasLast      bool
	lastAt       int64 // arrival (ns) of the newest sample
	usage        usage
	abnormalAt   int64 // arrival (ns) of the newest sample judged over- or underuse
	hasAbnormal  bool
	queueMs      float64 // queueing delay seen by the newest sample
}

func (d *delayDetector) init() {
	*d = delayDetector{thresholdMs: thresholdInitialMs, overuseMs: -1}
}

// resetStream forgets one stream's points (its clock jumped).
func (d *delayDetector) resetStream(i int) { d.streams[i] = trendStream{} }

// sample adds the delay variation dMs (arrival delta minus send delta) of
// a group of stream i that completed at xMs (ms since the estimator's
// first packet), at unix time at.
func (d *delayDetector) sample(i int, xMs, dMs float64, at int64) {
	d.streams[i].push(xMs, dMs)
	if d.numDeltas < trendMaxDeltas {
		d.numDeltas++
	}
	var dt float64
	if d.hasLast {
		dt = max(xMs-d.lastXMs, 0)
	}
	d.lastXMs, d.hasLast, d.lastAt = xMs, true, at
	d.queueMs = d.streams[i].queueMs(xMs)
	fit, ok := d.fit(xMs)
	if !ok {
		d.usage = usageNormal
		return
	}
	m := fit.slope * float64(d.numDeltas) * trendGain
	d.detect(m, dt, fit.slope > trendSignificance*fit.rawSE)
}

// trendFit is the result of delayDetector.fit.
type trendFit struct {
	slope float64 // of the smoothed delay against arrival time
	rawSE float64 // standard error of the slope of the raw delay
}

// fit is the least-squares slope of delay against arrival time, pooled
// over streams: each stream is centred on its own means, so the unknown
// offsets between sender clocks cancel, and the sums of products are added
// up ("within" regression). Streams silent for trendHorizonMs are left out.
func (d *delayDetector) fit(newestMs float64) (trendFit, bool) {
	lo := newestMs - trendHorizonMs
	var sxx, sxy, sxr, srr float64
	points, streams := 0, 0
	for i := range d.streams {
		t := &d.streams[i]
		if t.fitN < 2 || t.lastX < lo {
			continue
		}
		sxx += t.sxx
		sxy += t.sxy
		sxr += t.sxr
		srr += t.srr
		points += t.fitN
		streams++
	}
	if points < trendMinPoints || sxx <= 0 {
		return trendFit{}, false
	}
	rawSlope := sxr / sxx
	rss := max(srr-rawSlope*sxr, 0)
	dof := max(float64(points-streams-1), 1)
	return trendFit{slope: sxy / sxx, rawSE: math.Sqrt(rss / dof / sxx)}, true
}

// detect compares the modified trend m with the adaptive threshold.
func (d *delayDetector) detect(m, dtMs float64, significant bool) {
	switch {
	case m > d.thresholdMs:
		if d.overuseMs < 0 {
			d.overuseMs = dtMs / 2
		} else {
			d.overuseMs += dtMs
		}
		d.overuseCount++
		if d.overuseMs > overuseTimeMs && d.overuseCount > 1 && m >= d.prevM && significant {
			d.overuseMs, d.overuseCount = 0, 0
			d.usage = usageOver
		}
	case m < -d.thresholdMs:
		d.overuseMs, d.overuseCount = -1, 0
		d.usage = usageUnder
	default:
		d.overuseMs, d.overuseCount = -1, 0
		d.usage = usageNormal
	}
	if d.usage != usageNormal {
		d.abnormalAt, d.hasAbnormal = d.lastAt, true
	}
	d.prevM = m
	d.adapt(m, dtMs)
}

// adapt moves the threshold towards |m|: quickly down, slowly up, so that
// it follows the delay noise of the path but not a real queue build-up.
func (d *delayDetector) adapt(m, dtMs float64) {
	a := math.Abs(m)
	if a > d.thresholdMs+thresholdMaxJumpMs {
		return
	}
	k := thresholdKUp
	if a < d.thresholdMs {
		k = thresholdKDown
	}
	d.thresholdMs += k * (a - d.thresholdMs) * min(dtMs, thresholdMaxDtMs)
	d.thresholdMs = min(max(d.thresholdMs, thresholdMinMs), thresholdMaxMs)
}
