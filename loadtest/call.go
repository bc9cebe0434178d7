package loadtest

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/stun/v3"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

// Audio framing: 20 ms Opus frames at 48 kHz, sent 50 times a second.
const (
	frameEvery = 20 * time.Millisecond
	frameTicks = 960 // RTP timestamp units per frame
	// Plaintext: frame counter (4 bytes), speech-frame counter (4: counts
	// speech frames only) and send time in Unix ns (8), then filler up to
	// speechSize for speech; silence (DTX comfort noise) is the 16-byte
	// header alone.
	frameHeader = 16
	speechSize  = 80
	payloadType = 111
)

// callSpec is one call the dispatcher drew.
type callSpec struct {
	no       int
	class    protocol.CallClass
	size     int
	duration time.Duration
	sched    talkspurt.Schedule
	seed     uint64
	cams     []bool // by member index: sends video (nil: audio only)
}

func (c *callSpec) idx() int {
	if c.class == protocol.ClassGroup {
		return idxGroup
	}
	return idxOneToOne
}

// member is one simulated participant.
type member struct {
	idx    int
	id     protocol.ID
	ssrc   uint32
	key    client.MediaKey
	sess   *client.Session
	sender *client.Sender
	recv   *client.Receiver
	began  time.Time // join start

	frame  uint32 // sender goroutine only
	speech uint32 // speech frames sent, sender goroutine only
	plain  []byte
	pkt    []byte

	// Network adaptation (media.go), set up before the receivers start:
	// fb is the member's Feedback; cam its camera (nil: audio only), on
	// camSSRCs; videoOf maps the SSRCs of the call's other cameras to
	// their layer; sub keeps its subscription to them.
	fb       *client.Feedback
	cam      *client.VideoSender
	camSSRCs [protocol.MaxSimulcastLayers]uint32
	videoOf  map[uint32]uint8
	sub      *client.Subscriber

	mu   sync.Mutex
	win  window // media figures since the last harvest
	seen seen   // the library counters already in win
}

// stream is what a receiver knows of one sender's stream.
type stream struct {
	next        uint32 // highest frame counter seen + 1
	speechNext  uint32 // highest speech-frame counter seen + 1 (0: none yet)
	lastSpeech  frameInfo
	lastSpArr   time.Time // arrival of lastSpeech
	lastTransit float64   // ns
	lastArrival time.Time
	jitter      float64 // ns, RFC 3550 estimate
}

// runCall sets up one call, runs its media for its duration (or until ctx
// ends), and closes it. Every step is bounded in time.
func (r *runner) runCall(ctx context.Context, c *callSpec) {
	cls := c.idx()
	r.event(func(w *classWindows) { w[cls].callsStarted++ })
	members := r.joinAll(ctx, c)
	if len(members) < 2 {
		r.event(func(w *classWindows) { w[cls].callsFailed++ })
		closeAll(members)
		return
	}
	for _, a := range members {
		for _, b := range members {
			if a != b {
				_ = a.recv.AddSender(b.ssrc, b.key) // a fresh valid key cannot fail
			}
		}
	}
	r.callsUp.Add(1)
	r.partsUp.Add(int64(len(members)))
	defer r.callsUp.Add(-1)
	defer r.partsUp.Add(-int64(len(members)))
	setUpMedia(members, c.cams)
	start := time.Now()
	r.register(members, cls)
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		observer := i == 0 && c.class == protocol.ClassGroup
		go func() { defer wg.Done(); r.receive(m, cls, observer, members, c.sched, start) }()
	}
	r.sendLoop(ctx, c, members, start)
	// Cameras and feedback stop before the leave, so that nothing of
	// theirs reaches a forwarder after it.
	stopVideo(members)
	closeFeedback(members)
	closeAll(members)
	wg.Wait()
	r.unregister(members, cls)
}

// joinAll joins the call's members in parallel and returns the admitted.
func (r *runner) joinAll(ctx context.Context, c *callSpec) []*member {
	call := protocol.NewID()
	cls := c.idx()
	out := make([]*member, c.size)
	var wg sync.WaitGroup
	for i := range c.size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := r.join(ctx, call, c, i)
			if ctx.Err() != nil && err != nil {
				return // the run is ending: neither admitted nor refused
			}
			r.event(func(w *classWindows) {
				w[cls].setups.Attempted++
				if err != nil {
					countRefusal(&w[cls].setups.Refused, err)
					return
				}
				w[cls].setups.Admitted++
				w[cls].setup.Add(ms(time.Since(m.began)))
			})
			out[i] = m
		}()
	}
	wg.Wait()
	admitted := out[:0]
	for _, m := range out {
		if m != nil {
			admitted = append(admitted, m)
		}
	}
	return admitted
}

func (r *runner) join(ctx context.Context, call protocol.ID, c *callSpec, i int) (*member, error) {
	m := &member{idx: i, id: protocol.NewID(), ssrc: rand.Uint32() | 1, key: client.NewMediaKey(),
		recv: client.NewReceiver(), plain: make([]byte, 0, speechSize), pkt: make([]byte, 0, 256)}
	mint := func() ([]byte, error) {
		return protocol.SignToken(r.p.SigningKey, protocol.Token{CallID: call, ParticipantID: m.id,
			Class: c.class, MaxSize: uint16(c.size), Expiry: time.Now().Add(r.p.TokenLifetime.D())})
	}
	tok, err := mint()
	if err != nil {
		return nil, err
	}
	var source client.TokenSource
	if r.p.RefreshTokens {
		source = func(context.Context) ([]byte, error) { return mint() }
	}
	m.sender, err = client.NewSender(client.SenderConfig{SSRC: m.ssrc, PayloadType: payloadType, Key: m.key})
	if err != nil {
		return nil, err
	}
	jctx, cancel := context.WithTimeout(ctx, r.p.JoinTimeout.D())
	defer cancel()
	alternates := -1 // never send to an address the plan does not name
	if r.p.FollowAlternates {
		alternates = 0 // the client's default
	}
	m.began = time.Now()
	m.sess, err = client.Join(jctx, client.Config{
		Forwarders:    r.p.Forwarders,
		Token:         tok,
		TokenSource:   source,
		LocalAddr:     r.p.LocalAddr,
		JoinTimeout:   r.p.JoinTimeout.D(),
		MaxAlternates: alternates,
		// A failover must not leave the plan's forwarders either: a
		// Session re-joins only Forwarders (and a MigrateTo target).
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// countRefusal files a failed join under its reason.
func countRefusal(ref *Refusals, err error) {
	var je *client.JoinError
	switch {
	case errors.As(err, &je) && je.Code == stun.CodeInsufficientCapacity:
		ref.Capacity++
	case errors.As(err, &je) && je.Code == stun.CodeTryAlternate:
		ref.TryAlternate++
	case errors.Is(err, client.ErrJoinTimeout) || errors.Is(err, context.DeadlineExceeded):
		ref.Timeout++
	default:
		ref.Other++
	}
}

func closeAll(ms []*member) {
	var wg sync.WaitGroup
	for _, m := range ms {
		if m != nil && m.sess != nil {
			wg.Add(1)
			go func() { defer wg.Done(); _ = m.sess.Close() }()
		}
	}
	wg.Wait()
}

// sendLoop sends every member's 20 ms frame per tick until the call's
// duration is over or ctx ends.
func (r *runner) sendLoop(ctx context.Context, c *callSpec, ms []*member, start time.Time) {
	tick := time.NewTicker(frameEvery)
	defer tick.Stop()
	end := time.NewTimer(c.duration)
	defer end.Stop()
	rng := rand.New(rand.NewPCG(c.seed, 7))
	for {
		select {
		case <-ctx.Done():
			return
		case <-end.C:
			return
		case fired := <-tick.C:
			r.noteLag(time.Since(fired))
			at := time.Since(start)
			for _, m := range ms {
				m.sendFrame(rng, c.sched.Talking(m.idx, at))
			}
		}
	}
}

// sendFrame seals and sends one audio frame: speech-sized with a loud
// level and the voice flag while talking, a small near-silent frame
// otherwise (as Opus with DTX comfort noise).
func (m *member) sendFrame(rng *rand.Rand, talking bool) {
	lvl, size := client.AudioLevel{Level: 110 + uint8(rng.IntN(17))}, frameHeader
	if talking {
		lvl, size = client.AudioLevel{Level: 15 + uint8(rng.IntN(20)), Voice: true}, speechSize
	}
	p := m.plain[:size]
	if talking {
		m.speech++
	}
	binary.BigEndian.PutUint32(p[0:4], m.frame)
	binary.BigEndian.PutUint32(p[4:8], m.speech)
	now := time.Now()
	binary.BigEndian.PutUint64(p[8:16], uint64(now.UnixNano()))
	for i := frameHeader; i < size; i++ {
		p[i] = byte(m.frame) + byte(i)
	}
	// abs-send-time, for the relay's estimate of this member's uplink.
	if m.sender.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, now) != nil {
		return
	}
	out, err := m.sender.Seal(m.pkt, client.Sample{Payload: p, Timestamp: m.frame * frameTicks, AudioLevel: lvl})
	m.frame++
	if err != nil || m.sess.WriteRTP(out) != nil {
		return
	}
	m.mu.Lock()
	m.win.sent++
	m.mu.Unlock()
}

// receive decrypts what m hears until its session ends, measuring delay,
// jitter, loss and gaps per sender stream, and counting the video; the
// Feedback sees every packet first and drops duplicates, and RTCP goes to
// the camera. The observer also follows the dominant speaker.
func (r *runner) receive(m *member, cls int, observer bool, members []*member, sched talkspurt.Schedule, start time.Time) {
	var hdr rtp.Header
	var tracker client.SpeakerTracker
	streams := make(map[uint32]*stream, len(members))
	buf := make([]byte, 0, client.MaxPacketSize)
	heard := false
	for pkt := range m.sess.Media() {
		if !m.fb.Observe(pkt) {
			pkt.Release() // a duplicate: counted by the Feedback
			continue
		}
		switch pkt.Kind {
		case protocol.KindRTP:
			if ssrc, ok := rtpSSRC(pkt.Data); ok {
				if layer, isVideo := m.videoOf[ssrc]; isVideo {
					ok := m.openVideo(pkt.Data, buf, &hdr, layer)
					m.mu.Lock()
					countVideo(&m.win, len(pkt.Data), layer, ok)
					m.mu.Unlock()
					break
				}
			}
			got, err := m.recv.Open(buf, pkt.Data, &hdr)
			if err != nil || len(got) < frameHeader {
				m.mu.Lock()
				m.win.decryptFail++
				m.mu.Unlock()
				break
			}
			counter := binary.BigEndian.Uint32(got[0:4])
			speech := binary.BigEndian.Uint32(got[4:8])
			sent := int64(binary.BigEndian.Uint64(got[8:16]))
			m.mu.Lock()
			if !heard {
				heard = true
				m.win.firstAudio.Add(ms(pkt.Received.Sub(m.began)))
			}
			observe(&m.win, streams, hdr.SSRC, frameInfo{counter, speech, len(got) > frameHeader}, sent, pkt.Received)
			m.mu.Unlock()
		case protocol.KindRTCP:
			if m.cam != nil {
				m.cam.HandleRTCP(pkt.Data)
			}
			if !observer {
				break
			}
			if id, changed := tracker.Observe(pkt.Data); changed {
				if lat, ok := switchLatency(members, sched, id, start, time.Now()); ok {
					r.event(func(w *classWindows) { w[cls].speaker.Add(ms(lat)) })
				}
			}
		}
		pkt.Release()
	}
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
// is.
func observe(w *window, streams map[uint32]*stream, ssrc uint32, f frameInfo, sentNs int64, arrival time.Time) {
	transit := float64(arrival.UnixNano() - sentNs)
	w.received++
	w.delay.Add(transit / 1e6)
	s := streams[ssrc]
	if s == nil {
		s = &stream{next: f.counter + 1, lastTransit: transit, lastArrival: arrival}
		streams[ssrc] = s
	} else {
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
		return
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

// ms converts a duration to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
