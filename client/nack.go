package client

import "time"

// seqTracker follows one received RTP stream's sequence numbers (RFC 3550
// A.1, A.3): it extends them past the 16-bit wrap, tells new packets from
// duplicates with a bitmap of the last seqWindow numbers, and keeps the
// numbers missing from gaps, due for generic NACK (RFC 4585 6.2.1) after a
// short wait for reordering, again about one round trip apart, and given
// up after a while. Time is an input; nothing here reads the clock or
// allocates once the pending list has grown to its working size.
type seqTracker struct {
	started bool
	base    int64 // extended number of the first packet
	max     int64 // highest extended number received
	bits    [seqWindow / 64]uint64
	// badSeq is the packet after a suspicious jump (RFC 3550 A.1): if it
	// comes next, the sender restarted its numbering.
	badSeq    uint16
	badSeqSet bool

	pending []missing // ascending by ext

	received                       uint64 // distinct packets within the numbering
	duplicates, late, restarts     uint64
	missed, reordered              uint64 // numbers found missing; of them, arrived before any NACK
	recovered, unrecovered, nacked uint64 // arrived after a NACK; given up; NACKs (per number and try)
	skipped                        uint64 // missing numbers not taken as loss (pol.maxGap, or a switch at a key frame)

	expectedPrior, receivedPrior uint64 // at the last receiver report
}

const (
	// seqWindow is how many sequence numbers behind the highest a stream
	// remembers (a power of two, a multiple of 64): duplicates older than
	// that are not recognised, and a missing packet that falls out of it is
	// given up.
	seqWindow = 2048
	// maxPending bounds the missing numbers a stream tracks: beyond it, the
	// oldest are given up at once.
	maxPending = 512
	// maxDropout is the largest forward jump taken as loss (RFC 3550 A.1);
	// a larger one, or an old number outside the window, is a suspected
	// restart of the sender's numbering, confirmed by the next packet.
	maxDropout = 3000
)

type missing struct {
	ext   int64
	first time.Time // when the gap was seen
	due   time.Time // when the next NACK is due
	nacks int
}

// nackPolicy is when missing packets are NACKed and given up.
type nackPolicy struct {
	wait     time.Duration // before the first NACK, for reordering
	interval time.Duration // between NACKs of one number (about one RTT)
	tries    int           // NACKs per number
	giveUp   time.Duration // after the gap was seen
	// maxGap: a longer run of missing numbers is not loss but the relay
	// choosing (audio held back while its sender is silent, a video layer
	// not forwarded for a while): skipped, not NACKed. 0: no limit.
	maxGap int64
}

// Longest gaps NACKed: a burst of lost audio packets is short; a longer
// one is the relay's forwarding gate. Video bursts are longer (one frame
// is many packets), a layer not forwarded longer still.
const (
	audioMaxGap = 5
	videoMaxGap = 64
)

// seqVerdict classifies a received packet.
type seqVerdict uint8

const (
	seqNew       seqVerdict = iota // the highest yet, in order or after a gap
	seqFilled                      // filled a gap: reordered or recovered
	seqLate                        // not a known duplicate, but too old or given up
	seqDuplicate                   // seen before: drop it
)

// push records packet seq arriving at now. skipGap says that a gap before
// it is not loss (it starts a key frame: the relay switched this receiver
// to the stream there).
func (s *seqTracker) push(seq uint16, now time.Time, pol *nackPolicy, skipGap bool) seqVerdict {
	if !s.started {
		s.restart(seq)
		return seqNew
	}
	ext := unwrapSeq(s.max, seq)
	d := ext - s.max
	switch {
	case d > 0 && d <= maxDropout:
		s.advance(ext, now, pol, skipGap)
		return seqNew
	case d == 0:
		s.duplicates++
		return seqDuplicate
	case d < 0 && -d < seqWindow:
		return s.old(ext)
	}
	// A big jump either way: a sender that restarted its numbering, or a
	// stray packet. The next packet decides.
	if s.badSeqSet && seq == s.badSeq {
		s.restarts++
		s.unrecovered += uint64(len(s.pending))
		s.restart(seq)
		return seqNew
	}
	s.badSeq, s.badSeqSet = seq+1, true
	s.late++
	return seqLate
}

// restart starts the numbering afresh at seq (the RFC 3550 counts with
// it); the other counters go on.
func (s *seqTracker) restart(seq uint16) {
	s.started, s.badSeqSet = true, false
	s.base, s.max = int64(seq), int64(seq)
	s.bits = [seqWindow / 64]uint64{}
	s.pending = s.pending[:0]
	s.received, s.expectedPrior, s.receivedPrior = 1, 0, 0
	s.mark(s.max)
}

// advance takes ext, the new highest number; the numbers skipped are
// missing.
func (s *seqTracker) advance(ext int64, now time.Time, pol *nackPolicy, skipGap bool) {
	if ext-s.max >= seqWindow {
		s.bits = [seqWindow / 64]uint64{}
	} else {
		for e := s.max + 1; e <= ext; e++ {
			s.bits[bitWord(e)] &^= bitMask(e)
		}
	}
	// Pending numbers the window leaves behind can no longer be told from
	// duplicates: given up.
	drop := 0
	for drop < len(s.pending) && s.pending[drop].ext <= ext-seqWindow {
		drop++
	}
	s.dropPending(drop)
	if gap := ext - s.max - 1; gap > 0 {
		if skipGap || pol.maxGap > 0 && gap > pol.maxGap {
			s.skipped += uint64(gap) //nolint:gosec // positive
			for e := s.max + 1; e < ext; e++ {
				s.mark(e) // not expected: a late one is a duplicate, not a recovery
			}
		} else {
			s.gap(s.max+1, ext-1, now, pol)
		}
	}
	s.max = ext
	s.badSeqSet = false
	s.received++
	s.mark(ext)
}

// gap notes the numbers from..to (inclusive) missing.
func (s *seqTracker) gap(from, to int64, now time.Time, pol *nackPolicy) {
	n := to - from + 1
	s.missed += uint64(n) //nolint:gosec // positive
	if n > maxPending {
		s.unrecovered += uint64(n - maxPending) //nolint:gosec // positive
		from = to - maxPending + 1
		n = maxPending
	}
	if over := len(s.pending) + int(n) - maxPending; over > 0 {
		s.dropPending(over)
	}
	due := now.Add(pol.wait)
	for e := from; e <= to; e++ {
		s.pending = append(s.pending, missing{ext: e, first: now, due: due})
	}
}

// dropPending gives up the n oldest pending numbers.
func (s *seqTracker) dropPending(n int) {
	if n <= 0 {
		return
	}
	s.unrecovered += uint64(n) //nolint:gosec // positive
	s.pending = s.pending[:copy(s.pending, s.pending[n:])]
}

// old handles a number within the window below the highest.
func (s *seqTracker) old(ext int64) seqVerdict {
	if ext < s.base {
		s.late++ // sent before the first packet seen: outside the numbering
		return seqLate
	}
	if s.has(ext) {
		s.duplicates++
		return seqDuplicate
	}
	s.mark(ext)
	s.received++
	i, found := s.findPending(ext)
	if !found {
		s.late++ // given up before it came, or older than the first packet
		return seqLate
	}
	if s.pending[i].nacks > 0 {
		s.recovered++
	} else {
		s.reordered++
	}
	s.pending = append(s.pending[:i], s.pending[i+1:]...)
	return seqFilled
}

// findPending binary-searches the pending list for ext.
func (s *seqTracker) findPending(ext int64) (int, bool) {
	lo, hi := 0, len(s.pending)
	for lo < hi {
		mid := (lo + hi) / 2
		if s.pending[mid].ext < ext {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, lo < len(s.pending) && s.pending[lo].ext == ext
}

func (s *seqTracker) has(ext int64) bool { return s.bits[bitWord(ext)]&bitMask(ext) != 0 }

func (s *seqTracker) mark(ext int64) { s.bits[bitWord(ext)] |= bitMask(ext) }

// bitWord and bitMask place ext in the bitmap (as unsigned, so that a
// number below 0 maps consistently too).
func bitWord(ext int64) uint64 { return uint64(ext) / 64 % (seqWindow / 64) } //nolint:gosec // modular on purpose
func bitMask(ext int64) uint64 { return 1 << (uint64(ext) % 64) }             //nolint:gosec // modular on purpose

// due appends to out the numbers to NACK at now, gives up those whose time
// is over, and returns out, how many were given up, and when the next
// NACK or give-up is due (zero when nothing is pending).
func (s *seqTracker) due(now time.Time, pol *nackPolicy, out []uint16) ([]uint16, int, time.Time) {
	var next time.Time
	gaveUp := 0
	keep := s.pending[:0]
	for _, m := range s.pending {
		end := m.first.Add(pol.giveUp)
		if !now.Before(end) {
			gaveUp++
			continue
		}
		if m.nacks < pol.tries && !now.Before(m.due) {
			out = append(out, uint16(m.ext)) //nolint:gosec // the low 16 bits are the sequence number
			m.nacks++
			m.due = now.Add(pol.interval)
			s.nacked++
		}
		next = earliest(next, end)
		if m.nacks < pol.tries {
			next = earliest(next, m.due)
		}
		keep = append(keep, m)
	}
	s.pending = keep
	s.unrecovered += uint64(gaveUp) //nolint:gosec // a count
	return out, gaveUp, next
}

// report returns the RFC 3550 6.4.1 reception statistics since the last
// report: the fraction lost (1/256), the cumulative number lost (clamped
// to the 24-bit field) and the extended highest sequence number.
func (s *seqTracker) report() (fraction uint8, lost uint32, highest uint32) {
	expected := uint64(s.max - s.base + 1) //nolint:gosec // max >= base
	expInt, recvInt := expected-s.expectedPrior, s.received-s.receivedPrior
	s.expectedPrior, s.receivedPrior = expected, s.received
	if expInt > 0 && expInt > recvInt {
		fraction = uint8((expInt - recvInt) << 8 / expInt) //nolint:gosec // < 256
	}
	if expected > s.received {
		lost = uint32(min(expected-s.received, 0x7FFFFF)) //nolint:gosec // clamped
	}
	return fraction, lost, uint32(s.max) //nolint:gosec // the extended number wraps at 2^32
}

// lost is the cumulative number lost (RFC 3550 A.3): expected less
// received, never below 0.
func (s *seqTracker) lost() uint64 {
	expected := uint64(s.max - s.base + 1) //nolint:gosec // max >= base
	if expected > s.received {
		return expected - s.received
	}
	return 0
}

// unwrapSeq extends seq to the 64-bit number closest to ref.
func unwrapSeq(ref int64, seq uint16) int64 {
	return ref + int64(int16(seq-uint16(ref))) //nolint:gosec // the low 16 bits of ref
}

// earliest returns the earlier of a and b, a zero time meaning "none".
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
