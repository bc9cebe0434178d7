package loadtest

import "math"

// window accumulates one call class's figures over an interval (a second,
// a ramp step, the run). It is fixed in size whatever the load: counters
// and Sketches. Not safe for concurrent use; its owner locks.
type window struct {
	callsStarted, callsFailed  int
	callsDropped, sessionsLost int
	setups                     Setups
	offTransport               int // admitted over another transport than the device's (transport.go)

	setup, firstAudio, delay, speaker Sketch
	rejoinSilence                     Sketch
	// The fast engine's probe calls' delay and its baseline pairs'.
	probeDelay, baseDelay Sketch
	late                  LateJoinMeasures

	sent, received, expected, decryptFail uint64
	speechRcvd                            uint64 // speech frames received (expected counts speech frames)
	jitterSum                             float64
	jitterN                               uint64
	jitterMax                             float64
	maxGap                                float64
	recovered                             uint64 // speech frames that filled a gap (after a NACK, or reordered)

	fb    FeedbackMeasures
	video VideoMeasures // counters only: the rates are made by measures
}

func (w *window) merge(o *window) {
	w.callsStarted += o.callsStarted
	w.callsFailed += o.callsFailed
	w.callsDropped += o.callsDropped
	w.sessionsLost += o.sessionsLost
	w.setups.Attempted += o.setups.Attempted
	w.setups.Admitted += o.setups.Admitted
	w.setups.Refused.Capacity += o.setups.Refused.Capacity
	w.setups.Refused.TryAlternate += o.setups.Refused.TryAlternate
	w.setups.Refused.Timeout += o.setups.Refused.Timeout
	w.setups.Refused.Other += o.setups.Refused.Other
	w.offTransport += o.offTransport
	w.setup.Merge(&o.setup)
	w.firstAudio.Merge(&o.firstAudio)
	w.delay.Merge(&o.delay)
	w.speaker.Merge(&o.speaker)
	w.rejoinSilence.Merge(&o.rejoinSilence)
	w.probeDelay.Merge(&o.probeDelay)
	w.baseDelay.Merge(&o.baseDelay)
	w.late.add(&o.late)
	w.sent += o.sent
	w.received += o.received
	w.expected += o.expected
	w.speechRcvd += o.speechRcvd
	w.decryptFail += o.decryptFail
	w.jitterSum += o.jitterSum
	w.jitterN += o.jitterN
	w.jitterMax = math.Max(w.jitterMax, o.jitterMax)
	w.maxGap = math.Max(w.maxGap, o.maxGap)
	w.recovered += o.recovered
	w.fb.add(&o.fb)
	w.video.add(&o.video)
}

func (w *window) reset() { *w = window{} }

// add adds o's counts.
func (l *LateJoinMeasures) add(o *LateJoinMeasures) {
	l.Joined += o.Joined
	l.StreamsExpected += o.StreamsExpected
	l.StreamsDecrypted += o.StreamsDecrypted
	l.StreamsUndecryptable += o.StreamsUndecryptable
	l.StreamsAfterRollover += o.StreamsAfterRollover
	l.DecryptFailures += o.DecryptFailures
}

// measures turns the window into Measures; secs is its length, for rates.
func (w *window) measures(secs float64) Measures {
	m := Measures{
		CallsStarted:     w.callsStarted,
		CallsFailed:      w.callsFailed,
		CallsDropped:     w.callsDropped,
		SessionsLost:     w.sessionsLost,
		RejoinSilenceMs:  w.rejoinSilence.Percentiles(),
		LateJoin:         w.late,
		Setups:           w.setups,
		SetupSuccessPct:  100,
		SetupMs:          w.setup.Percentiles(),
		FirstAudioMs:     w.firstAudio.Percentiles(),
		PacketsSent:      w.sent,
		PacketsReceived:  w.received,
		PacketsExpected:  w.expected,
		DecryptFailures:  w.decryptFail,
		DelayMs:          w.delay.Percentiles(),
		JitterMaxMs:      round3(w.jitterMax),
		MaxGapMs:         round3(w.maxGap),
		SpeakerSwitchMs:  w.speaker.Percentiles(),
		PacketsRecovered: w.recovered,
		Feedback:         w.fb,
		Video:            w.video,
	}
	if ended := w.setups.Admitted + w.setups.Refused.Total(); ended > 0 {
		m.SetupSuccessPct = round3(100 * float64(w.setups.Admitted) / float64(ended))
	}
	if up := w.callsStarted - w.callsFailed; up > 0 {
		m.DroppedCallsPct = round3(min(100, 100*float64(w.callsDropped)/float64(up)))
	}
	if w.expected > w.speechRcvd {
		m.PacketsLost = w.expected - w.speechRcvd
	}
	if w.expected > 0 {
		m.LossPct = round3(100 * float64(m.PacketsLost) / float64(w.expected))
		m.RawLossPct = round3(min(100, 100*float64(m.PacketsLost+w.recovered)/float64(w.expected)))
	}
	if w.probeDelay.Count() > 0 || w.baseDelay.Count() > 0 {
		m.ProbeDelayMs, m.BaselineDelayMs = w.probeDelay.Percentiles(), w.baseDelay.Percentiles()
		if w.probeDelay.Count() > 0 && w.baseDelay.Count() > 0 {
			m.RelayAddedDelayP99Ms = round3(max(0, m.ProbeDelayMs.P99-m.BaselineDelayMs.P99))
		}
	}
	if w.jitterN > 0 {
		m.JitterMs = round3(w.jitterSum / float64(w.jitterN))
	}
	if secs > 0 {
		v := &w.video
		m.RelayPacketsPerSec = round3(float64(w.sent+w.received+v.PacketsSent+v.PacketsReceived) / secs)
		m.Video.SentKbps = round3(float64(v.BytesSent) * 8 / 1000 / secs)
		m.Video.ReceivedKbps = round3(float64(v.BytesReceived) * 8 / 1000 / secs)
	}
	return m
}

// classWindows holds one window per call class (index classIndex).
type classWindows [2]window

const (
	idxOneToOne = 0
	idxGroup    = 1
)

func (c *classWindows) merge(o *classWindows) {
	c[0].merge(&o[0])
	c[1].merge(&o[1])
}

func (c *classWindows) reset() { *c = classWindows{} }

// all returns the classes merged.
func (c *classWindows) all() *window {
	var w window
	w.merge(&c[0])
	w.merge(&c[1])
	return &w
}

// jitterUpdate is RFC 3550 6.4.1's interarrival jitter estimator: d is the
// difference of relative transit times of two consecutive packets,
// (Rj - Ri) - (Sj - Si); the estimate moves 1/16 of the way to |d|.
func jitterUpdate(j, d float64) float64 {
	return j + (math.Abs(d)-j)/16
}
