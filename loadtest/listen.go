package loadtest

import (
	"encoding/binary"
	"errors"
	"sort"
	"time"

	"github.com/pion/rtp"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

// A member's receiving side: it decrypts what the member hears until its
// session ends, measuring delay, jitter, loss and gaps per sender stream,
// counting the video, and timing the silence of every re-join.

// arrivalHistory is how many audio arrivals a listener remembers, to find
// the silence around the moment its device noticed it had lost its
// forwarder (the event comes after the new forwarder took it back, maybe
// after a few packets from it).
const arrivalHistory = 16

// maxFailedStreams bounds the SSRCs whose decrypt failures a late joiner
// counts.
const maxFailedStreams = 64

// listener is one member's receiving side; its fields belong to its
// goroutine (run) until the call's listeners are all done.
type listener struct {
	lc       *liveCall
	m        *member
	observer bool // follows the dominant speaker (a group call's first member)

	hdr     rtp.Header
	tracker client.SpeakerTracker
	streams map[uint32]*stream // by SSRC: the audio streams decrypted
	buf     []byte
	any     bool // an audio packet was decrypted
	// arrivals is a ring of the last audio arrivals (Unix ns), next its
	// write index; pending is the start of a re-join's silence not yet
	// ended by a packet (0: none).
	arrivals [arrivalHistory]int64
	next     int
	pending  int64
	// failed counts a late joiner's audio decrypt failures by SSRC.
	failed map[uint32]uint64
}

func newListener(lc *liveCall, m *member) *listener {
	l := &listener{lc: lc, m: m, observer: m.idx == 0 && !m.late && lc.spec.class == protocol.ClassGroup,
		streams: make(map[uint32]*stream, lc.spec.size), buf: make([]byte, 0, client.MaxPacketSize)}
	if m.late {
		l.failed = make(map[uint32]uint64)
	}
	return l
}

// run takes the member's packets and session events until its session
// ends; the Feedback sees every packet first and drops duplicates.
func (l *listener) run() {
	media, events := l.m.sess.Media(), l.m.sess.Events()
	for media != nil || events != nil {
		select {
		case pkt, ok := <-media:
			if !ok {
				media = nil
				continue
			}
			if l.m.fb.Observe(pkt) { // else a duplicate: counted by the Feedback
				l.packet(pkt)
			}
			pkt.Release()
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			l.event(ev)
		}
	}
	l.ended()
}

// packet handles one packet: video to its counters, audio decrypted and
// measured, RTCP to the camera (and the observer's speaker tracker).
func (l *listener) packet(pkt *client.Packet) {
	m := l.m
	switch pkt.Kind {
	case protocol.KindRTP:
		ssrc, ok := rtpSSRC(pkt.Data)
		if layer, isVideo := m.videoOf[ssrc]; ok && isVideo {
			ok := m.openVideo(pkt.Data, l.buf, &l.hdr, layer)
			m.mu.Lock()
			countVideo(&m.win, len(pkt.Data), layer, ok)
			m.mu.Unlock()
			return
		}
		l.audio(pkt, ssrc)
	case protocol.KindRTCP:
		if m.cam != nil {
			m.cam.HandleRTCP(pkt.Data)
		}
		if !l.observer {
			return
		}
		if id, changed := l.tracker.Observe(pkt.Data); changed {
			lc := l.lc
			if lat, ok := switchLatency(lc.onTime, lc.spec.sched, id, lc.start, time.Now()); ok {
				lc.r.event(func(w *classWindows) { w[lc.cls].speaker.Add(ms(lat)) })
			}
		}
	}
}

// audio decrypts and measures one audio packet of stream ssrc.
func (l *listener) audio(pkt *client.Packet, ssrc uint32) {
	m := l.m
	got, err := m.recv.Open(l.buf, pkt.Data, &l.hdr)
	if err != nil || len(got) < frameHeader {
		if l.failed != nil && (l.failed[ssrc] > 0 || len(l.failed) < maxFailedStreams) {
			l.failed[ssrc]++
		}
		m.mu.Lock()
		m.win.decryptFail++
		if m.late {
			m.win.late.DecryptFailures++
		}
		m.mu.Unlock()
		return
	}
	counter := binary.BigEndian.Uint32(got[0:4])
	speech := binary.BigEndian.Uint32(got[4:8])
	sent := int64(binary.BigEndian.Uint64(got[8:16]))
	at := pkt.Received.UnixNano()
	m.mu.Lock()
	if !l.any {
		l.any = true
		m.win.firstAudio.Add(ms(pkt.Received.Sub(m.began)))
	}
	if l.pending != 0 && at > l.pending {
		m.win.rejoinSilence.Add(float64(at-l.pending) / 1e6)
		l.pending = 0
	}
	st := observe(&m.win, l.streams, l.hdr.SSRC, frameInfo{counter, speech, len(got) > frameHeader}, sent, pkt.Received)
	m.mu.Unlock()
	if i := memberOf(l.hdr.SSRC); i < len(m.heard) && st.speechNext > 0 {
		m.heard[i].Store(st.speechNext - 1)
	}
	l.arrivals[l.next%arrivalHistory] = at
	l.next++
}

// event takes a session event: a re-join (the device lost its forwarder
// and was taken back) is timed as the silence around the moment the
// device noticed the loss: from the last audio packet heard before it to
// the first one after, now or when it comes.
func (l *listener) event(ev client.SessionEvent) {
	if movedOff(l.m.tr, ev) { // m.tr was set before the listener started
		l.m.mu.Lock()
		l.m.win.offTransport++
		l.m.mu.Unlock()
	}
	if ev.Kind != client.EventFailover && ev.Kind != client.EventRejoined {
		return
	}
	l.m.rejoined.Store(true)
	began := time.Now().Add(-ev.Took).UnixNano()
	before, after := silenceAround(&l.arrivals, began)
	if after == 0 {
		if l.pending == 0 {
			l.pending = before
		}
		return
	}
	l.m.mu.Lock()
	l.m.win.rejoinSilence.Add(float64(after-before) / 1e6)
	l.m.mu.Unlock()
}

// silenceAround finds, among the arrivals (Unix ns, 0: none), the last
// one at or before t and the first after that (0 when none came yet).
// With none at or before t (nothing heard yet, or the history already
// full of later arrivals), the silence is taken to start at t.
func silenceAround(arrivals *[arrivalHistory]int64, t int64) (before, after int64) {
	for _, a := range arrivals {
		if a != 0 && a <= t && a > before {
			before = a
		}
	}
	if before == 0 {
		before = t
	}
	for _, a := range arrivals {
		if a > before && (after == 0 || a < after) {
			after = a
		}
	}
	return before, after
}

// ended notes how the session ended: closed by the call, or lost, which
// counts (and the member is no longer up). A re-join's silence that no
// packet ended lasts until then.
func (l *listener) ended() {
	m, lc := l.m, l.lc
	if l.pending != 0 {
		m.mu.Lock()
		m.win.rejoinSilence.Add(ms(time.Since(time.Unix(0, l.pending))))
		m.mu.Unlock()
		l.pending = 0
	}
	if err := m.sess.Err(); err == nil || errors.Is(err, client.ErrClosed) {
		return
	}
	m.lost.Store(true)
	lc.r.event(func(w *classWindows) { w[lc.cls].sessionsLost++ })
	lc.up(-1)
}

// frameInfo is what a frame's header says of it.
type frameInfo struct {
	counter, speech uint32 // frame counter, speech-frame counter
	isSpeech        bool
}

// observe records one decrypted frame of stream ssrc in w. Delay and
// jitter count every frame; loss and gaps count speech frames only (see
// Measures.PacketsExpected): a gap is measured between two speech frames
// of one talk spurt (no silence frame was sent between them), so the
// silence a conductor holds back is no gap, but a failover in mid-sentence
// is. It returns the stream's state.
func observe(w *window, streams map[uint32]*stream, ssrc uint32, f frameInfo, sentNs int64, arrival time.Time) *stream {
	transit := float64(arrival.UnixNano() - sentNs)
	w.received++
	w.delay.Add(transit / 1e6)
	s := streams[ssrc]
	if s == nil {
		s = &stream{next: f.counter + 1, lastTransit: transit, lastArrival: arrival}
		streams[ssrc] = s
		s.delay.Add(transit / 1e6)
	} else {
		s.delay.Add(transit / 1e6)
		if f.counter >= s.next {
			s.next = f.counter + 1
		}
		s.jitter = jitterUpdate(s.jitter, transit-s.lastTransit)
		s.lastTransit, s.lastArrival = transit, arrival
		j := s.jitter / 1e6
		w.jitterSum += j
		w.jitterN++
		if j > w.jitterMax {
			w.jitterMax = j
		}
	}
	if !f.isSpeech {
		return s
	}
	w.speechRcvd++
	switch {
	case s.speechNext == 0:
		w.expected++
		s.speechNext = f.speech + 1
	case f.speech >= s.speechNext:
		w.expected += uint64(f.speech - s.speechNext + 1)
		s.speechNext = f.speech + 1
	default:
		// An older frame than the newest: it filled a gap, resent by the
		// relay after a NACK (or reordered). Duplicates never get here:
		// the Feedback dropped them.
		w.recovered++
	}
	if l := s.lastSpeech; l.isSpeech && f.counter > l.counter && f.counter-l.counter == f.speech-l.speech {
		if gap := ms(arrival.Sub(s.lastSpArr)); gap > w.maxGap {
			w.maxGap = gap
		}
	}
	if f.counter >= s.lastSpeech.counter || !s.lastSpeech.isSpeech {
		s.lastSpeech, s.lastSpArr = f, arrival
	}
	return s
}

// switchLatency is the time from the start of the new speaker's latest
// talk spurt (begun before now) to now; false when the speaker is not a
// member or has not spoken within the last 10 s.
func switchLatency(members []*member, sched talkspurt.Schedule, id protocol.ID, start, now time.Time) (time.Duration, bool) {
	for _, m := range members {
		if m.id != id {
			continue
		}
		at := now.Sub(start)
		if m.idx >= len(sched) {
			return 0, false
		}
		sp := sched[m.idx]
		i := sort.Search(len(sp), func(i int) bool { return sp[i].Start > at }) - 1
		if i < 0 || at-sp[i].Start > 10*time.Second {
			return 0, false
		}
		return at - sp[i].Start, true
	}
	return 0, false
}
