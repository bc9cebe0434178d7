package loadtest

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/protocol"
)

// Late joiners (Plan.LateJoin): a share of a call's members join After the
// call started. They are made and given every member's key before they
// join, so that what they hear decrypts from the first packet; they are
// admitted into the running call by its sender goroutine (admitLate),
// which gives the members their key before their first frame goes out.

// drawLate picks the members of a call of size and length duration that
// join late: each but the first with probability l.Share, from the call's
// own seed (every agent draws the same); none when the call is not longer
// than l.After.
func drawLate(seed uint64, size int, duration time.Duration, l LateJoin) []bool {
	if l.Share <= 0 || duration <= l.After.D() {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x1a7e))
	late := make([]bool, size)
	for i := 1; i < size; i++ {
		late[i] = rng.Float64() < l.Share
	}
	return late
}

func (c *callSpec) isLate(i int) bool { return i < len(c.late) && c.late[i] }

func (c *callSpec) hasLate() bool {
	for _, l := range c.late {
		if l {
			return true
		}
	}
	return false
}

// videoRolloverPackets is how many packets into a video layer it rolls
// over with LateJoin.Rollover.
const videoRolloverPackets = 100

// audioFirstSequence is the on-time members' first audio sequence number:
// 0 (random) unless l.Rollover, then one that rolls over half way to the
// late joins (a sender whose ticks run late gets there later: the half
// leaves it room).
func (l LateJoin) audioFirstSequence() uint16 {
	if !l.Rollover {
		return 0
	}
	k := max(int(l.After.D()/2/frameEvery), 1) // packets before the rollover, < 2^15 (After <= 10m)
	return uint16(1<<16 - k)
}

// videoFirstSequence is every camera layer's first sequence number: 0
// (random) unless l.Rollover.
func (l LateJoin) videoFirstSequence() uint16 {
	if !l.Rollover {
		return 0
	}
	return 1<<16 - videoRolloverPackets
}

// startLate joins the call's late members in the background and hands
// the admitted to the channel it returns (nil: none to come); stop ends
// the joins, waits for them, and makes any member admitted after the
// call's end leave.
func (r *runner) startLate(ctx context.Context, lc *liveCall, call protocol.ID) (late <-chan *member, stop func()) {
	if !lc.spec.hasLate() {
		return nil, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan *member, lc.spec.size)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.joinLate(ctx, lc, call, out)
	}()
	return out, func() {
		cancel()
		<-done
		close(out)
		var left []*member
		for m := range out {
			left = append(left, m)
		}
		closeAll(left)
	}
}

// joinLate waits until LateJoin.After since the call's start, then joins
// its late members in parallel, each knowing every member's key, and
// sends the admitted to out (which has room for all).
func (r *runner) joinLate(ctx context.Context, lc *liveCall, call protocol.ID, out chan<- *member) {
	wait := time.NewTimer(time.Until(lc.start.Add(r.p.LateJoin.After.D())))
	defer wait.Stop()
	select {
	case <-ctx.Done():
		return
	case <-wait.C:
	}
	var ms []*member
	for i := range lc.spec.size {
		if lc.spec.isLate(i) {
			m := newMember(i, lc.spec.size)
			m.late = true
			ms = append(ms, m)
		}
	}
	for _, m := range ms {
		for _, o := range append(lc.onTime[:len(lc.onTime):len(lc.onTime)], ms...) {
			if o != m {
				_ = m.recv.AddSender(o.ssrc, o.key) // a fresh valid key cannot fail
			}
		}
	}
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.join(ctx, call, lc.spec, m, 0) {
				out <- m
			}
		}()
	}
	wg.Wait()
}

// admitLate takes the late joiner m into the running call (sender
// goroutine): the members present get its key before its first frame,
// it notes what they have said so far and who is up, subscribes to
// their cameras, and starts listening.
func (lc *liveCall) admitLate(m *member) {
	m.base = make([]uint32, lc.spec.size)
	for _, o := range lc.members {
		if !o.late { // the other late joiners knew its key before they joined
			_ = o.recv.AddSender(m.ssrc, m.key) // a fresh valid key cannot fail
		}
		m.base[o.idx] = o.speech
		if !o.lost.Load() {
			m.expect = append(m.expect, o.ssrc)
		}
	}
	setUpLate(m, lc.members)
	lc.listen(m)
	lc.members = append(lc.members, m)
	lc.r.event(func(w *classWindows) { w[lc.cls].late.Joined++ })
}

// setUpLate gives a late joiner its Feedback and subscribes it to the
// cameras of the members present (their layers' keys first).
func setUpLate(m *member, present []*member) {
	m.fb = client.NewFeedback(m.sess, client.FeedbackConfig{SSRC: m.ssrc})
	m.seen.streams = make(map[uint32]streamSeen)
	var subs []protocol.VideoSubscription
	for _, c := range present {
		if c.cam == nil {
			continue
		}
		if m.videoOf == nil {
			m.videoOf = make(map[uint32]uint8)
		}
		for l, ssrc := range c.camSSRCs {
			_ = m.recv.AddSender(ssrc, c.key) // a fresh valid key cannot fail
			m.videoOf[ssrc] = uint8(l)        //nolint:gosec // 0..2
		}
		if len(subs) < protocol.MaxSubscriptions {
			subs = append(subs, protocol.VideoSubscription{Participant: c.id})
		}
	}
	if len(subs) > 0 {
		m.sub = client.NewSubscriber(m.sess, m.ssrc)
		_ = m.sub.Subscribe(subs) // a failed write is resent by the Subscriber
	}
}

// countLate counts, once the listeners are done, what each late joiner
// decrypted of the streams it should have.
func (lc *liveCall) countLate() {
	var lm LateJoinMeasures
	for _, m := range lc.members {
		if !m.late {
			continue
		}
		lm.StreamsExpected += uint64(len(m.expect))
		for _, ssrc := range m.expect {
			switch {
			case m.ear.streams[ssrc] != nil:
				lm.StreamsDecrypted++
			case m.ear.failed[ssrc] > 0:
				lm.StreamsUndecryptable++
			}
		}
		lm.StreamsAfterRollover += m.recv.Stats().FirstROC
	}
	if lm != (LateJoinMeasures{}) {
		lc.r.event(func(w *classWindows) { w[lc.cls].late.add(&lm) })
	}
}
