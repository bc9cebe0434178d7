package bwe

// maxSeqJump is the largest sequence number jump counted as loss or
// reordering; a larger one is taken as a restarted stream.
const maxSeqJump = 1000

// seqTracker follows one stream's RTP sequence numbers for loss counting.
type seqTracker struct {
	max     uint16
	started bool
}

// add returns how many more packets the stream is now known to have sent
// (0 for late and duplicate packets) and whether this one counts as
// received (duplicates of the newest packet do not).
func (s *seqTracker) add(seq uint16) (expected, received int64) {
	if !s.started {
		s.started = true
		s.max = seq
		return 1, 1
	}
	d := int64(int16(seq - s.max))
	switch {
	case d == 0:
		return 0, 0
	case d > maxSeqJump || d < -maxSeqJump:
		s.max = seq // restarted stream: count it as a fresh start
		return 1, 1
	case d > 0:
		s.max = seq
		return d, 1
	default:
		return 0, 1 // late: fills a gap counted before
	}
}
