package bwe

// MaxStreams is how many streams (stream indexes 0..MaxStreams-1) an
// Estimator tells apart for loss counting and delay measurement.
const MaxStreams = 4

const (
	// staleNs: a delay verdict older than this no longer steers the
	// controller (the streams went quiet or lost their send times).
	staleNs = 500_000_000
	// standingQueueMs: with loss, a queueing delay above this is a full
	// queue.
	standingQueueMs = 50
)

// Defaults for a zero Config field.
const (
	DefaultInitialBps = 300_000
	DefaultMinBps     = 30_000
	DefaultMaxBps     = 20_000_000
)

// Config bounds an Estimator. Zero fields take the defaults.
type Config struct {
	InitialBps uint64 // estimate before any measurement
	MinBps     uint64 // the estimate never goes below ...
	MaxBps     uint64 // ... or above these
}

// withDefaults fills zero fields and makes the bounds consistent: MaxBps is
// raised to MinBps if below it, and InitialBps clamped between them.
func (c Config) withDefaults() Config {
	if c.InitialBps == 0 {
		c.InitialBps = DefaultInitialBps
	}
	if c.MinBps == 0 {
		c.MinBps = DefaultMinBps
	}
	if c.MaxBps == 0 {
		c.MaxBps = DefaultMaxBps
	}
	c.MaxBps = max(c.MaxBps, c.MinBps)
	c.InitialBps = min(max(c.InitialBps, c.MinBps), c.MaxBps)
	return c
}

// Estimator estimates the capacity of one network leg from the packets
// that cross it. It is a plain value of fixed size: embed it, call Init,
// then OnPacket per packet and Update every 25..100 ms. It holds no locks;
// the caller serialises all calls.
type Estimator struct {
	window   rateWindow
	seqs     [MaxStreams]seqTracker
	arrivals [MaxStreams]interArrival
	detector delayDetector
	ctrl     controller

	base    int64 // arrival of the first packet: the detector's time origin
	hasBase bool

	abnormalAt    int64 // last time the delay was not steady (over- or underuse)
	hasAbnormal   bool
	standingArmed bool // the queue was seen below standingQueueMs since the last standing-queue decrease

	estimate uint64
	incoming uint64
	loss     float64
}

// Init resets e to its initial state under cfg.
func (e *Estimator) Init(cfg Config) {
	cfg = cfg.withDefaults()
	*e = Estimator{estimate: cfg.InitialBps, standingArmed: true}
	e.window.reset()
	e.detector.init()
	e.ctrl.init(cfg)
}

// OnPacket records one packet that arrived at arrival (unix ns).
//
// sendTime is when the sender sent it, in ns on the sender's own clock
// (see SendTimeUnwrapper); hasSendTime is false when the packet carried no
// send time, and then only rate and loss drive the estimate. size is the
// whole RTP packet in bytes. stream (0..MaxStreams-1) and seq, the RTP
// sequence number, count loss per stream.
//
// The stream index also names the send-time clock: packets of one index
// must all carry send times from one sender. Give each SSRC (or each
// sender) its own index. Packets with an index out of range count towards
// the incoming rate only.
func (e *Estimator) OnPacket(arrival int64, sendTime int64, hasSendTime bool, size int, stream int, seq uint16) {
	if !e.hasBase {
		e.base, e.hasBase = arrival, true
	}
	if stream < 0 || stream >= MaxStreams {
		e.window.add(arrival, max(size, 0), 0, 0)
		return
	}
	expected, received := e.seqs[stream].add(seq)
	e.window.add(arrival, max(size, 0), expected, received)
	if !hasSendTime {
		return
	}
	s, ok, reset := e.arrivals[stream].add(arrival, sendTime)
	if reset {
		e.detector.resetStream(stream)
	}
	if ok {
		xMs := float64(s.arrival-e.base) / 1e6
		dMs := float64(s.arrDelta-s.sendDelta) / 1e6
		e.detector.sample(stream, xMs, dMs, s.arrival)
	}
}

// Update runs the controller at now (unix ns) and returns the estimate in
// bits per second.
func (e *Estimator) Update(now int64) uint64 {
	if e.window.started && now < e.window.last {
		now = e.window.last
	}
	st := e.window.stats(now)
	u, steady := e.usage(now, st)
	est := e.ctrl.update(now, u, steady, st)
	e.estimate = uint64(est + 0.5)
	e.incoming = uint64(st.bps + 0.5)
	e.loss = st.loss
	return e.estimate
}

// usage is the delay-based verdict for the controller at now, and whether
// the delay has been steady for a whole window.
func (e *Estimator) usage(now int64, st windowStats) (u usage, steady bool) {
	d := &e.detector
	if d.hasAbnormal && (!e.hasAbnormal || d.abnormalAt > e.abnormalAt) {
		e.abnormalAt, e.hasAbnormal = d.abnormalAt, true
	}
	if !d.hasLast || now-d.lastAt > staleNs {
		return usageNormal, !e.hasAbnormal || now-e.abnormalAt >= windowNs
	}
	u = d.usage
	// A queue that stays full shows no delay gradient, only delay and
	// loss: a sender that started above the capacity filled it before the
	// trend could see it grow. Treat it once as overuse, so that a sender
	// that follows the estimate drains it; a sender that does not follow
	// it keeps the queue full, and then the incoming rate is the capacity.
	switch {
	case d.queueMs < standingQueueMs:
		e.standingArmed = true
	case u == usageNormal && e.standingArmed && st.lossOK && st.loss >= lossLow:
		e.standingArmed = false
		u = usageOver
		e.abnormalAt, e.hasAbnormal = now, true
	}
	return u, u == usageNormal && (!e.hasAbnormal || now-e.abnormalAt >= windowNs)
}

// Estimate returns the estimate of the last Update, in bits per second
// (Config.InitialBps before the first).
func (e *Estimator) Estimate() uint64 { return e.estimate }

// IncomingBps returns the rate that arrived in the second before the last
// Update, in bits per second (at the start, what arrived divided by at
// least 200 ms).
func (e *Estimator) IncomingBps() uint64 { return e.incoming }

// LossFraction returns the fraction of packets lost before the last
// Update, 0..1, counted from each stream's sequence numbers over the last
// second, or longer (up to 4 s) until 20 packets were expected; 0 when
// fewer were.
func (e *Estimator) LossFraction() float64 { return e.loss }

// SkipTo tells the estimator that the next packet of stream has sequence
// number seq and that the numbers skipped before it were never sent on
// this leg (a relay held them back or forwarded another layer): they are
// not counted as lost. Call it before that packet's OnPacket.
func (e *Estimator) SkipTo(stream int, seq uint16) {
	if stream >= 0 && stream < MaxStreams && e.seqs[stream].started {
		e.seqs[stream].max = seq - 1
	}
}
