package loadtest

// wheel is the fast engine's timer wheel: every scheduled event (a
// device's next 20 ms frame, its keepalive, a join's retransmission, a
// call's end) sits in the slot of its due tick, so that advancing one tick
// touches only that tick's events, whatever the number of devices. Events
// due more than a turn ahead wait in their slot for their turn (due is
// kept whole). One goroutine owns it.
type wheel struct {
	slots [][]wheelEvent
	now   int64 // the last tick advanced to
}

// wheelEvent is one scheduled event: what to do (kind) to whom (id), due
// at tick due.
type wheelEvent struct {
	due  int64
	id   int32
	kind uint8
}

// newWheel makes a wheel of n slots (a power of two) starting at tick 0.
func newWheel(n int) *wheel {
	if n <= 0 || n&(n-1) != 0 {
		panic("loadtest: wheel size must be a power of two")
	}
	return &wheel{slots: make([][]wheelEvent, n)}
}

// schedule adds an event due at tick due; one due at or before now fires
// at the next advance.
func (w *wheel) schedule(due int64, id int32, kind uint8) {
	if due <= w.now {
		due = w.now + 1
	}
	s := &w.slots[due&int64(len(w.slots)-1)]
	*s = append(*s, wheelEvent{due: due, id: id, kind: kind})
}

// advance moves the wheel to tick to, calling fire for every event due
// by then, in tick order (events of one tick in the order scheduled),
// and reports how many fired. fire may schedule more events, which fire
// in this advance when they are due by to.
func (w *wheel) advance(to int64, fire func(tick int64, e wheelEvent)) int {
	n := 0
	for w.now < to {
		w.now++
		idx := w.now & int64(len(w.slots)-1)
		s := w.slots[idx]
		w.slots[idx] = s[:0:0]
		keep := s[:0]
		for i, e := range s {
			if e.due > w.now {
				keep = append(keep, e) // a later turn
				continue
			}
			s[i] = wheelEvent{}
			fire(w.now, e)
			n++
		}
		// Events scheduled into this slot by fire (due a turn later) were
		// appended to the fresh slot; put the ones waiting first.
		if len(keep) > 0 {
			w.slots[idx] = append(keep, w.slots[idx]...)
		} else if len(w.slots[idx]) == 0 {
			w.slots[idx] = s[:0] // reuse the backing array
		}
	}
	return n
}

// pending counts the events scheduled (for tests).
func (w *wheel) pending() int {
	n := 0
	for _, s := range w.slots {
		n += len(s)
	}
	return n
}
