package bwe

// Grouping of packets into bursts, as in draft-ietf-rmcat-gcc-02 §5.2.
const (
	// burstSendNs: packets sent within this long of a group's first packet
	// belong to the group (a video frame, or a paced burst).
	burstSendNs = 5_000_000
	// burstArrivalNs and maxBurstNs: a packet that arrives within
	// burstArrivalNs of the group's last packet, and earlier than its send
	// spacing predicts, joins the group too, as long as the group spans at
	// most maxBurstNs of arrival time. This folds bursts released at once
	// by the network (Wi-Fi aggregation, a cleared jitter spike) into one
	// group instead of reading them as a queue draining.
	burstArrivalNs = 5_000_000
	maxBurstNs     = 100_000_000
	// resetOffsetNs: an arrival delta this much longer or shorter than the
	// send delta, or a send time jumping back this far, is a clock jump, a
	// restarted sender or an outage, not queueing; the stream's history is
	// dropped. So it is after resetReordered packets in a row sent before
	// the current group (a clock that stepped back a little).
	resetOffsetNs  = 3_000_000_000
	resetReordered = 3
)

// group is one burst of packets.
type group struct {
	firstSend    int64
	lastSend     int64
	firstArrival int64
	lastArrival  int64
}

// delaySample is the comparison of two consecutive complete groups.
type delaySample struct {
	arrival   int64 // arrival of the later group's last packet
	sendDelta int64 // between the groups' last send times
	arrDelta  int64 // between the groups' last arrival times
}

// interArrival groups one stream's packets (one sender clock) and compares
// each complete group with the one before.
type interArrival struct {
	cur, prev       group
	hasCur, hasPrev bool
	reordered       int // packets in a row sent before the current group
}

// add records a packet. It returns a sample when the packet completed a
// group that has a predecessor, and reset when the stream's earlier
// history must be forgotten.
func (ia *interArrival) add(arrival, send int64) (s delaySample, ok, reset bool) {
	if !ia.hasCur {
		ia.start(arrival, send)
		return s, false, false
	}
	c := &ia.cur
	if send < c.firstSend {
		ia.reordered++
		if c.firstSend-send > resetOffsetNs || ia.reordered >= resetReordered {
			ia.hasPrev = false
			ia.start(arrival, send)
			return s, false, true
		}
		return s, false, false // reordered: too late to place in its group
	}
	ia.reordered = 0
	if ia.inGroup(arrival, send) {
		c.lastSend = max(c.lastSend, send)
		c.lastArrival = max(c.lastArrival, arrival)
		return s, false, false
	}
	// The packet opens a new group: the current one is complete.
	if ia.hasPrev {
		s = delaySample{
			arrival:   c.lastArrival,
			sendDelta: c.lastSend - ia.prev.lastSend,
			arrDelta:  c.lastArrival - ia.prev.lastArrival,
		}
		if d := s.arrDelta - s.sendDelta; s.arrDelta < 0 || d >= resetOffsetNs || d <= -resetOffsetNs {
			ia.hasPrev = false
			ia.start(arrival, send)
			return delaySample{}, false, true
		}
		ok = true
	}
	ia.prev = *c
	ia.hasPrev = true
	ia.start(arrival, send)
	return s, ok, false
}

func (ia *interArrival) start(arrival, send int64) {
	ia.reordered = 0
	ia.cur = group{firstSend: send, lastSend: send, firstArrival: arrival, lastArrival: arrival}
	ia.hasCur = true
}

// inGroup reports whether a packet belongs to the current group.
func (ia *interArrival) inGroup(arrival, send int64) bool {
	c := &ia.cur
	if send-c.firstSend <= burstSendNs {
		return true
	}
	arrDelta := arrival - c.lastArrival
	sendDelta := send - c.lastSend
	return arrDelta <= burstArrivalNs && arrDelta-sendDelta < 0 &&
		arrival-c.firstArrival < maxBurstNs
}
