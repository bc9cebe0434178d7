package loadtest

import (
	"sync"
	"time"
)

// liveCall is a call once set up: its members (the on-time ones, then
// the late joiners as they are admitted), their listeners, and how many
// of them are still up.
type liveCall struct {
	r     *runner
	spec  *callSpec
	cls   int
	start time.Time
	// onTime are the members admitted at the start (never changed);
	// members are all of them, late joiners appended by the sender
	// goroutine, which alone touches the slice until the call closes.
	onTime  []*member
	members []*member

	wg sync.WaitGroup // the listeners
	// alive counts the members up: listening, their session not lost. The
	// call is up (Second.CallsUp) while one is.
	mu    sync.Mutex
	alive int
}

func newLiveCall(r *runner, c *callSpec, members []*member) *liveCall {
	return &liveCall{r: r, spec: c, cls: c.idx(), start: time.Now(), onTime: members,
		members: append([]*member(nil), members...)}
}

// up counts d members up (+1) or no longer (-1) in the run's participants
// up, and the call in its calls up while one of its members is.
func (lc *liveCall) up(d int) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	before := lc.alive
	lc.alive += d
	lc.r.partsUp.Add(int64(d))
	switch {
	case before == 0 && lc.alive > 0:
		lc.r.callsUp.Add(1)
	case before > 0 && lc.alive == 0:
		lc.r.callsUp.Add(-1)
	}
}

// closed counts the call's members still up as no longer: it has closed.
func (lc *liveCall) closed() {
	lc.mu.Lock()
	n := lc.alive
	lc.mu.Unlock()
	lc.up(-n)
}

// listen starts m's listener and counts m in: its figures are harvested
// from now on.
func (lc *liveCall) listen(m *member) {
	l := newListener(lc, m)
	m.ear = l
	lc.r.register([]*member{m}, lc.cls)
	lc.up(1)
	lc.wg.Add(1)
	go func() {
		defer lc.wg.Done()
		l.run()
	}()
}

// finish counts, once every listener is done, how the call went: failed
// (fewer than two members were ever admitted, unless the run's end cut it
// short before its late joiners came: cut), dropped (a member lost); the
// speech frames sessions that lost their forwarder missed; the late
// joiners' streams.
func (lc *liveCall) finish(cut bool) {
	lost := 0
	for _, m := range lc.members {
		if m.lost.Load() {
			lost++
		}
	}
	lc.countMissed(true)
	lc.countLate()
	lc.r.event(func(w *classWindows) {
		switch {
		case len(lc.members) < 2 && !cut:
			w[lc.cls].callsFailed++
		case lost > 0:
			w[lc.cls].callsDropped++
		}
	})
}

// countMissed adds to each receiver's expected frames the speech frames
// it never got from a sender because either lost its session: those after
// the last it heard (or those sent since it was admitted, if it heard
// none) up to the sender's older mark, which in-flight frames have had
// time to pass; it is called every mark (sender goroutine), so they count
// about when they were missed. final (the call is over) also counts the
// pairs in which either re-joined: frames lost in a re-join that no later
// frame revealed (observe counts those that one did). Counted frames are
// not counted again.
func (lc *liveCall) countMissed(final bool) {
	for _, rx := range lc.members {
		var missed uint64
		for _, tx := range lc.members {
			if tx == rx {
				continue
			}
			lost := rx.lost.Load() || tx.lost.Load()
			if !lost && !(final && (rx.rejoined.Load() || tx.rejoined.Load())) {
				continue
			}
			from := max(rx.heard[tx.idx].Load(), rx.counted[tx.idx])
			if rx.base != nil {
				from = max(from, rx.base[tx.idx]) // a late joiner: what was said before it came
			}
			if to := tx.marks[0]; to > from {
				missed += uint64(to - from)
				rx.counted[tx.idx] = to
			}
		}
		if missed > 0 {
			rx.mu.Lock()
			rx.win.expected += missed
			rx.mu.Unlock()
		}
	}
}
