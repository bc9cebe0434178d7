package protocol

import "sync/atomic"

// TrunkReplayWindow is the number of sequence numbers a receiver's replay
// window spans (README.md section 6): a frame whose sequence is this far or
// further below the highest accepted one of its stream is dropped as old.
const TrunkReplayWindow = 512

// TrunkReplay is the replay window of one trunk stream (origin forwarder
// tag and stream): like the sliding window of SRTP (RFC 3711 3.3.2) and
// IPsec (RFC 4303 3.4.3), but with a 64-bit slot per position instead of
// a bit, so that any number of goroutines can check frames concurrently
// with one compare-and-swap each, with no lock. Slot s mod
// TrunkReplayWindow holds the highest sequence accepted among those that
// share its position; a sequence is new if it is above that and within the
// window of the highest accepted one. The zero value is an empty window
// (sequence 0 is never accepted). Accept allocates nothing. 4 KiB.
type TrunkReplay struct {
	top   atomic.Uint64
	slots [TrunkReplayWindow]atomic.Uint64
}

// Accept reports whether seq is new to the window, and records it if so.
// Two concurrent calls with the same seq accept it once between them.
func (w *TrunkReplay) Accept(seq uint64) bool {
	top := w.top.Load()
	if seq+TrunkReplayWindow <= top || seq+TrunkReplayWindow < seq {
		return false // older than the window (or so large it wraps: never sent)
	}
	slot := &w.slots[seq%TrunkReplayWindow]
	for {
		v := slot.Load()
		if v >= seq {
			return false // seen, or an older one whose place a newer one took
		}
		if slot.CompareAndSwap(v, seq) {
			break
		}
	}
	for top < seq && !w.top.CompareAndSwap(top, seq) {
		top = w.top.Load()
	}
	return true
}
