package loadtest

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

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
	cams     []bool  // by member index: sends video (nil: audio only)
	late     []bool  // by member index: joins LateJoin.After the start (nil: none)
	nets     []uint8 // by member index: trTCP, trTLS or (UDP) trUDP4 (nil: all UDP)
	cities   []uint8 // by member index: its city in Plan.Cities (nil: no cities)
}

// netOf is member i's network: trTCP or trTLS if it blocks UDP, else trUDP4.
func (c *callSpec) netOf(i int) uint8 {
	if c.nets == nil {
		return trUDP4
	}
	return c.nets[i]
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
	// A city's device (geo.go): city indexes Plan.Cities, links are its
	// access links, via maps each forwarder to its link's address;
	// joinedOn and endOn are the forwarders that admitted it and that had
	// it when the call closed.
	city            int
	links           []*accessLink
	via             map[netip.AddrPort]netip.AddrPort
	joinedOn, endOn netip.AddrPort
	// tr is the transport its figures are filed under (transport.go),
	// set when its join ends; r.mu guards it.
	tr uint8

	frame  uint32 // sender goroutine only
	speech uint32 // speech frames sent, sender goroutine only
	plain  []byte
	pkt    []byte
	// marks are the speech counter as it was at the last two marks
	// (every markEvery): marks[0] is at least markEvery old, so the
	// frames up to it have had time to arrive (sender goroutine only).
	marks [2]uint32

	// Network adaptation (media.go), set up before the receivers start:
	// fb is the member's Feedback; cam its camera (nil: audio only), on
	// camSSRCs; videoOf maps the SSRCs of the call's other cameras to
	// their layer; sub keeps its subscription to them.
	fb       *client.Feedback
	cam      *client.VideoSender
	camSSRCs [protocol.MaxSimulcastLayers]uint32
	videoOf  map[uint32]uint8
	sub      *client.Subscriber

	// ear is its receiving side (listen.go). lost: its session ended by
	// itself, not closed by the call; rejoined: it lost its forwarder and
	// was taken back at least once.
	ear      *listener
	lost     atomic.Bool
	rejoined atomic.Bool
	// heard holds, by member index, the highest speech-frame counter it
	// decrypted from that member (written by its listener); counted, up
	// to which counter the frames it missed from that member were counted
	// (countMissed, sender goroutine only).
	heard   []atomic.Uint32
	counted []uint32
	// A late joiner (latejoin.go): base holds, by member index, the
	// speech counter of every member present when it was admitted, and
	// expect the SSRCs of those of them up then. Set before its listener
	// starts.
	late   bool
	base   []uint32
	expect []uint32

	mu   sync.Mutex
	win  window // media figures since the last harvest
	seen seen   // the library counters already in win
}

// markEvery is how often the senders' speech counters are marked (in
// frames): the frames a lost session missed are counted up to a mark,
// so that those still in flight when a call closes are not.
const markEvery = 25

// stream is what a receiver knows of one sender's stream.
type stream struct {
	next        uint32 // highest frame counter seen + 1
	speechNext  uint32 // highest speech-frame counter seen + 1 (0: none yet)
	lastSpeech  frameInfo
	lastSpArr   time.Time // arrival of lastSpeech
	lastTransit float64   // ns
	lastArrival time.Time
	jitter      float64 // ns, RFC 3550 estimate
	// delay is this sender-receiver pair's one-way delays (ms), for the
	// call's mouth-to-ear estimate (geo.go).
	delay Sketch
}

// runCall sets up one call, runs its media for its duration (or until ctx
// ends), admits its late joiners, and closes it. Every step is bounded in
// time. A call whose members are all lost runs on, silent, to its planned
// end: what it would have carried counts as lost (countMissed).
func (r *runner) runCall(ctx context.Context, c *callSpec) {
	cls := c.idx()
	r.event(func(w *classWindows) { w[cls].callsStarted++ })
	call := protocol.NewID()
	members := r.joinAll(ctx, call, c)
	if len(members) < 2 && (len(members) == 0 || !c.hasLate()) {
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
	setUpMedia(members, c.cams, r.p.LateJoin.videoFirstSequence())
	lc := newLiveCall(r, c, members)
	for _, m := range members {
		lc.listen(m)
	}
	late, stopLate := r.startLate(ctx, lc, call)
	r.sendLoop(ctx, lc, late)
	stopLate()
	if r.geo != nil {
		notePlaced(lc.members)
	}
	// Cameras and feedback stop before the leave, so that nothing of
	// theirs reaches a forwarder after it.
	stopVideo(lc.members)
	closeFeedback(lc.members)
	closeAll(lc.members)
	lc.wg.Wait()
	if r.geo != nil {
		r.geo.record(lc)
	}
	lc.closed()
	lc.finish(ctx.Err() != nil)
	r.unregister(lc.members, cls)
}

// joinAll joins the call's on-time members in parallel and returns the
// admitted.
func (r *runner) joinAll(ctx context.Context, call protocol.ID, c *callSpec) []*member {
	first := r.p.LateJoin.audioFirstSequence()
	out := make([]*member, c.size)
	var wg sync.WaitGroup
	for i := range c.size {
		if c.isLate(i) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := newMember(i, c.size)
			if r.join(ctx, call, c, m, first) {
				out[i] = m
			}
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

// newMember is participant i of a call of size, not yet joined. Its audio
// SSRC's low byte is 2i+1 (size <= 100): receivers tell the sender from
// it without a lookup (memberOf).
func newMember(i, size int) *member {
	return &member{idx: i, id: protocol.NewID(), ssrc: rand.Uint32()&^0xff | uint32(i)<<1 | 1, key: client.NewMediaKey(), //nolint:gosec // i < 100
		recv: client.NewReceiver(), plain: make([]byte, 0, speechSize), pkt: make([]byte, 0, 256),
		heard: make([]atomic.Uint32, size), counted: make([]uint32, size)}
}

// memberOf is the member index an audio SSRC names (newMember).
func memberOf(ssrc uint32) int { return int(ssrc&0xff) >> 1 }

// join joins m to call, its first RTP sequence number first (0: a random
// one), and counts the setup; it reports whether m was admitted. A join
// cut short by the end of the run is not counted.
func (r *runner) join(ctx context.Context, call protocol.ID, c *callSpec, m *member, first uint16) bool {
	err := r.dial(ctx, call, c, m, first)
	if ctx.Err() != nil && err != nil {
		return false // the run is ending: neither admitted nor refused
	}
	cls, took := c.idx(), ms(time.Since(m.began))
	var sess *client.Session
	if err == nil {
		sess = m.sess
	}
	tr, off := joinedOn(c.netOf(m.idx), sess, r.p.Forwarders)
	r.mu.Lock()
	defer r.mu.Unlock()
	m.tr = tr
	for _, w := range []*window{&r.cur[cls], &r.trans[tr]} {
		w.setups.Attempted++
		if err != nil {
			countRefusal(&w.setups.Refused, err)
			continue
		}
		w.setups.Admitted++
		w.setup.Add(took)
		if off {
			w.offTransport++
		}
	}
	return err == nil
}

// dial mints m's token and joins it through multi-connect.
func (r *runner) dial(ctx context.Context, call protocol.ID, c *callSpec, m *member, first uint16) error {
	mint := func() ([]byte, error) {
		return protocol.SignToken(r.p.SigningKey, protocol.Token{CallID: call, ParticipantID: m.id,
			Class: c.class, MaxSize: uint16(c.size), Expiry: time.Now().Add(r.p.TokenLifetime.D())})
	}
	tok, err := mint()
	if err != nil {
		return err
	}
	var source client.TokenSource
	if r.p.RefreshTokens {
		source = func(context.Context) ([]byte, error) { return mint() }
	}
	m.sender, err = client.NewSender(client.SenderConfig{SSRC: m.ssrc, PayloadType: payloadType, Key: m.key, FirstSequence: first})
	if err != nil {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, r.p.JoinTimeout.D())
	defer cancel()
	alternates := -1 // never send to an address the plan does not name
	if r.p.FollowAlternates {
		alternates = 0 // the client's default
	}
	cfg := client.Config{
		Forwarders:    r.p.Forwarders,
		Token:         tok,
		TokenSource:   source,
		LocalAddr:     r.p.LocalAddr,
		JoinTimeout:   r.p.JoinTimeout.D(),
		MaxAlternates: alternates,
		// A failover must not leave the plan's forwarders either: a
		// Session re-joins only Forwarders (and a MigrateTo target).
		RejoinTimeout: r.p.Rejoin.timeout(),
		FailoverAfter: r.p.Rejoin.FailoverAfter.D(),
	}
	r.nets.configure(&cfg, c.netOf(m.idx)) // a device whose network blocks UDP
	if r.geo != nil && c.cities != nil {
		if err := r.geo.route(&cfg, c, m); err != nil {
			return err
		}
	}
	m.began = time.Now()
	m.sess, err = client.Join(jctx, cfg)
	if err != nil {
		m.closeLinks()
	} else if m.via != nil {
		m.joinedOn = m.forwarderOf()
	}
	return err
}

// timeout is the client's RejoinTimeout for the plan: a nanosecond when
// re-joins are off (a re-join's deadline has passed when it starts).
func (j Rejoin) timeout() time.Duration {
	if j.Off {
		return time.Nanosecond
	}
	return j.Timeout.D()
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
			go func() { defer wg.Done(); _ = m.sess.Close(); m.closeLinks() }()
		}
	}
	wg.Wait()
}

// sendLoop sends every member's 20 ms frame per tick until the call's
// duration is over or ctx ends, and admits the late joiners that come.
func (r *runner) sendLoop(ctx context.Context, lc *liveCall, late <-chan *member) {
	c := lc.spec
	tick := time.NewTicker(frameEvery)
	defer tick.Stop()
	end := time.NewTimer(c.duration)
	defer end.Stop()
	rng := rand.New(rand.NewPCG(c.seed, 7))
	for n := 1; ; {
		select {
		case <-ctx.Done():
			return
		case <-end.C:
			return
		case m := <-late:
			lc.admitLate(m)
		case fired := <-tick.C:
			r.noteLag(time.Since(fired))
			at := time.Since(lc.start)
			for _, m := range lc.members {
				m.sendFrame(rng, c.sched.Talking(m.idx, at))
				if n%markEvery == 0 {
					m.marks[0], m.marks[1] = m.marks[1], m.speech
				}
			}
			if n%markEvery == 0 {
				lc.countMissed(false)
			}
			n++
		}
	}
}

// sendFrame seals and sends one audio frame: speech-sized with a loud
// level and the voice flag while talking, a small near-silent frame
// otherwise (as Opus with DTX comfort noise). A lost member sends
// nothing, but its counters go on: what it would have said is missed.
func (m *member) sendFrame(rng *rand.Rand, talking bool) {
	lvl, size := client.AudioLevel{Level: 110 + uint8(rng.IntN(17))}, frameHeader
	if talking {
		lvl, size = client.AudioLevel{Level: 15 + uint8(rng.IntN(20)), Voice: true}, speechSize
	}
	if talking {
		m.speech++
	}
	if m.lost.Load() {
		m.frame++
		return
	}
	p := m.plain[:size]
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

// ms converts a duration to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
