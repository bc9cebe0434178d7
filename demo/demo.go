// Package demo runs the whole relay on one machine: a forwarder on a loopback
// port and simulated participants in one-to-one and group calls whose media
// is end-to-end encrypted with SRTP keys the forwarder never sees. Group
// calls have video (some members send a synthetic camera, the others
// subscribe to it), and every device runs the client library's feedback
// (NACKs, RR+REMB, PLIs), optionally over an emulated lossy downlink. It
// is what `callrelay demo` runs, and the integration tests drive it too.
//
// It must never hand a media key to the forwarder, and never decide success
// on anything but what the receiving devices decrypted.
package demo

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

// Config says what to simulate.
type Config struct {
	Listen      string        // forwarders' address; default 127.0.0.1:0 (a port each)
	Forwarders  int           // forwarders in the cluster; default 3
	OneToOne    int           // number of one-to-one calls; default 2
	Groups      int           // number of group calls; default 1
	GroupSize   int           // members per group call; default 5
	Duration    time.Duration // how long the calls run once every member joined; 0: until ctx ends
	Interval    time.Duration // summary line period; default 1s
	PacketEvery time.Duration // audio packetisation; default 20ms (50 packets/s)
	// CapacitySessions sizes each forwarder for this many sessions (a load
	// signal of the throttle; 0: not a signal).
	CapacitySessions int
	// SpikeCalls group calls of GroupSize join at once SpikeAfter into the
	// run (New Year's Eve at midnight, in small); joins the cluster refuses
	// are counted, not fatal.
	SpikeAfter time.Duration
	SpikeCalls int
	// Dashboard is the live dashboard's listen address (empty: none).
	Dashboard string
	// VideoSenders members of each group call (the first ones) send camera
	// video; every member subscribes to the others' cameras. Default 3
	// (at most GroupSize); negative: audio only. Spike calls are audio
	// only.
	VideoSenders int
	// LossyPercent, when above 0, drops that share (0..50) of the RTP one
	// participant receives (the last member of the first group call), in
	// its own client process before its Feedback sees it: an emulated bad
	// downlink whose loss the Feedback NACKs and the relay resends.
	LossyPercent float64
	Logger       *zap.Logger
}

func (c *Config) defaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	if c.Forwarders == 0 {
		c.Forwarders = 3
	}
	if c.OneToOne == 0 && c.Groups == 0 {
		c.OneToOne, c.Groups = 2, 1
	}
	if c.GroupSize == 0 {
		c.GroupSize = 5
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.PacketEvery == 0 {
		c.PacketEvery = 20 * time.Millisecond
	}
	if c.VideoSenders == 0 {
		c.VideoSenders = 3
	}
	c.VideoSenders = min(max(c.VideoSenders, 0), c.GroupSize)
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// validate says what is out of range.
func (c *Config) validate() error {
	if c.GroupSize < 3 || c.GroupSize > 64 {
		return fmt.Errorf("demo: group size %d: want 3..64", c.GroupSize)
	}
	if c.LossyPercent < 0 || c.LossyPercent > 50 {
		return fmt.Errorf("demo: lossy percent %v: want 0..50", c.LossyPercent)
	}
	if c.Forwarders < 1 || c.Forwarders > 16 {
		return fmt.Errorf("demo: %d forwarders: want 1..16", c.Forwarders)
	}
	return nil
}

// Result is what the devices saw, summed over all of them.
type Result struct {
	Participants int
	Sent         uint64 // packets the devices sent
	Decrypted    uint64 // packets receivers decrypted and found byte-exact
	Failed       uint64 // packets that failed to decrypt or differed (audio and video)
	// Video is the group calls' video, Feedback what the devices' client
	// Feedback sent and found; Loss what the simulated loss did (nil
	// without Config.LossyPercent).
	Video    VideoResult
	Feedback FeedbackResult
	Loss     *LossResult
	// Forwarder holds the forwarder's final counters, read after the
	// participants left and it stopped (Sessions and Calls no longer count
	// the participants whose leave it answered).
	Forwarder forwarder.Stats
}

// Run starts the forwarder and the calls, prints a summary line every
// Interval to out, and returns when ctx ends or Duration has passed.
func Run(ctx context.Context, cfg Config, out io.Writer) (Result, error) {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	pub, priv, err := protocol.GenerateSigningKey()
	if err != nil {
		return Result{}, err
	}
	verifier, err := protocol.NewTokenVerifier(pub)
	if err != nil {
		return Result{}, err
	}
	out = &lockedWriter{w: out}
	c, err := startCluster(cfg, verifier, out)
	if err != nil {
		return Result{}, err
	}
	defer c.close()
	members, err := joinCalls(ctx, priv, c.fwds, cfg, out)
	defer func() {
		for _, m := range members {
			m.close()
		}
	}()
	if err != nil {
		return Result{}, err
	}
	fmt.Fprintf(out, "%d participants joined; Ctrl-C to stop\n", len(members))
	lossy := pickLossy(cfg, members, out)

	// Duration is the calls' time, counted once every member has joined:
	// starting Redis, NATS, the forwarders and the conductor and gathering
	// the calls can take seconds on a loaded machine, and must not eat it.
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	began := time.Now()
	spiked, err := runCalls(ctx, cfg, priv, c.fwds, members, lossy, out)
	if err != nil {
		return Result{}, err
	}
	// Leave while the forwarder still answers, then stop it, and only then
	// read its counters: a reader publishes them after sending its batch, so
	// a snapshot of a running forwarder can lag what the receivers already
	// decrypted.
	for _, m := range members {
		m.close()
	}
	members = append(members, spiked...)
	for _, m := range spiked {
		m.close()
	}
	c.stopRelay()
	return result(members, c.fwds, lossy, began, out), nil
}

// runCalls starts the members' video, sending and receiving, and the
// spike if configured; prints the summary lines until ctx ends; and
// returns once every sender and receiver has stopped, with the members
// the spike joined.
func runCalls(ctx context.Context, cfg Config, priv []byte, fwds []*forwarder.Forwarder, members []*participant, lossy *participant, out io.Writer) ([]*participant, error) {
	var wg sync.WaitGroup
	start := func(m *participant) {
		wg.Add(2)
		go func() { defer wg.Done(); m.send(ctx, cfg.PacketEvery) }()
		go func() { defer wg.Done(); m.receive(ctx) }()
	}
	for _, m := range members {
		if err := m.startVideo(); err != nil {
			return nil, err
		}
	}
	for _, m := range members {
		start(m)
	}
	sp := &spike{}
	if cfg.SpikeCalls > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp.run(ctx, cfg, priv, fwds, len(members), cfg.OneToOne+cfg.Groups, out, start)
		}()
	}
	summarise(ctx, cfg.Interval, out, fwds, members, lossy)
	wg.Wait()
	return sp.members(), nil
}

// joinCalls joins the one-to-one and group calls, in order, and returns
// the participants joined (on an error too, for the caller to close).
func joinCalls(ctx context.Context, priv []byte, fwds []*forwarder.Forwarder, cfg Config, out io.Writer) ([]*participant, error) {
	var members []*participant
	for i := 0; i < cfg.OneToOne+cfg.Groups; i++ {
		class, size, video := protocol.ClassOneToOne, 2, 0
		if i >= cfg.OneToOne {
			class, size, video = protocol.ClassGroup, cfg.GroupSize, cfg.VideoSenders
		}
		ms, err := joinCall(ctx, priv, fwds, class, size, len(members), i+1, video, cfg, out)
		members = append(members, ms...)
		if err != nil {
			return members, err
		}
	}
	return members, nil
}

// result adds up what the devices saw, once they left and the forwarders
// stopped, and prints the totals: the video and feedback lines since
// began, then the done line.
func result(members []*participant, fwds []*forwarder.Forwarder, lossy *participant, began time.Time, out io.Writer) Result {
	res := Result{Participants: len(members), Forwarder: sumStats(fwds)}
	for _, m := range members {
		res.Sent += m.sent.Load()
		res.Decrypted += m.decrypted.Load()
		res.Failed += m.failed.Load()
	}
	end := tallyOf(members, time.Now())
	res.Video, res.Feedback = end.video, end.fb
	res.Loss = lossResult(lossy, end.at)
	for _, l := range videoLines(tally{at: began}, end, res.Forwarder, res.Loss) {
		fmt.Fprintln(out, l)
	}
	fmt.Fprintf(out, "done: %d participants, %d packets sent, %d decrypted byte-exact by receivers, %d failed; forwarders: %d in, %d out, %d over the trunk, %d dropped\n",
		res.Participants, res.Sent, res.Decrypted, res.Failed, res.Forwarder.PacketsIn, res.Forwarder.PacketsOut, res.Forwarder.TrunkOut, res.Forwarder.TotalDrops())
	return res
}

// videoEvery is about how often the video and feedback lines are printed.
const videoEvery = 5 * time.Second

// summarise prints one line per interval, and the video and feedback
// lines about every videoEvery, until ctx ends.
func summarise(ctx context.Context, every time.Duration, out io.Writer, fwds []*forwarder.Forwarder, members []*participant, lossy *participant) {
	t := time.NewTicker(every)
	defer t.Stop()
	prev, prevAt := sumStats(fwds), time.Now()
	videoTicks := max(1, int((videoEvery+every-1)/every))
	prevVideo := tally{at: prevAt}
	for tick := 1; ; tick++ {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s := sumStats(fwds)
			secs := now.Sub(prevAt).Seconds()
			var dec, failed uint64
			for _, m := range members {
				dec += m.decrypted.Load()
				failed += m.failed.Load()
			}
			fmt.Fprintf(out, "sessions %d  calls %d  throttle %s  in %6.0f pkt/s  out %6.0f pkt/s  trunk %6.0f pkt/s  silent %5.0f pkt/s held back  %7.1f kB/s out  drops %d  decrypted %d  failed %d\n",
				s.Sessions, s.Calls, levels(fwds),
				float64(s.PacketsIn-prev.PacketsIn)/secs, float64(s.PacketsOut-prev.PacketsOut)/secs,
				float64(s.TrunkOut-prev.TrunkOut)/secs, float64(s.AudioMuted-prev.AudioMuted)/secs,
				float64(s.BytesOut-prev.BytesOut)/secs/1000, s.TotalDrops(), dec, failed)
			prev, prevAt = s, now
			if tick%videoTicks == 0 {
				cur := tallyOf(members, now)
				for _, l := range videoLines(prevVideo, cur, s, lossResult(lossy, now)) {
					fmt.Fprintln(out, l)
				}
				prevVideo = cur
			}
		}
	}
}

// joinCall mints tokens for one call, joins its members, and gives each
// member the others' media keys (standing in for the app's end-to-end
// encrypted key exchange, which the relay is not part of). The members talk
// by a P.59 conversation schedule; in a group call the first member prints
// each change of dominant speaker the relay tells it.
func joinCall(ctx context.Context, priv []byte, fwds []*forwarder.Forwarder, class protocol.CallClass, size, firstIndex, callNo, video int, cfg Config, out io.Writer) ([]*participant, error) {
	call := protocol.NewID()
	length := cfg.Duration
	if length <= 0 {
		length = 8 * time.Hour
	}
	rng := rand.New(rand.NewPCG(uint64(callNo), uint64(time.Now().UnixNano())))
	sched := talkspurt.Group(rng, size, length+time.Minute)
	start := time.Now()
	var ms []*participant
	for j := 0; j < size; j++ {
		id := protocol.NewID()
		tok, err := protocol.SignToken(priv, protocol.Token{CallID: call, ParticipantID: id,
			Class: class, MaxSize: uint16(size), Expiry: time.Now().Add(time.Hour)})
		if err != nil {
			return ms, err
		}
		// Members of one call on different forwarders: the trunk joins them.
		fwd := fwds[(firstIndex+j)%len(fwds)].Addr()
		p, err := newParticipant(ctx, fwd, tok, id, uint32(firstIndex+j+1), cfg.Logger)
		if err != nil {
			return ms, fmt.Errorf("demo: joining participant %d of call %s: %w", j+1, call, err)
		}
		p.talking = func(at time.Duration) bool { return sched.Talking(j, at) }
		p.start = start
		ms = append(ms, p)
	}
	if class == protocol.ClassGroup {
		ms[0].onSpeaker = func(id protocol.ID) {
			for _, m := range ms {
				if m.id == id {
					fmt.Fprintf(out, "call %d (group): dominant speaker is participant %d\n", callNo, m.ssrc)
				}
			}
		}
	}
	for _, a := range ms {
		for _, b := range ms {
			if a != b {
				if err := a.recv.AddSender(b.ssrc, b.key); err != nil {
					return ms, err
				}
			}
		}
	}
	return ms, setUpVideo(ms[:min(video, len(ms))], ms)
}

// setUpVideo makes cams the call's video senders: each gets its layers'
// SSRCs, every member the cameras' keys and a subscription to every
// camera but its own.
func setUpVideo(cams, ms []*participant) error {
	for _, c := range cams {
		c.sendsVideo = true
		for l := range c.videoSSRCs {
			c.videoSSRCs[l] = videoSSRC(c.ssrc, l)
		}
	}
	for _, m := range ms {
		for _, c := range cams {
			if c == m {
				continue
			}
			if m.videoLayer == nil {
				m.videoLayer = make(map[uint32]uint8)
			}
			for l, ssrc := range c.videoSSRCs {
				if err := m.recv.AddSender(ssrc, c.key); err != nil {
					return err
				}
				m.videoLayer[ssrc] = uint8(l) //nolint:gosec // 0..2
			}
			m.subs = append(m.subs, protocol.VideoSubscription{Participant: c.id})
		}
	}
	return nil
}

// pickLossy gives the simulated loss, if configured, to the last member of
// the first group call (the last participant without group calls) and says
// so.
func pickLossy(cfg Config, members []*participant, out io.Writer) *participant {
	if cfg.LossyPercent <= 0 || len(members) == 0 {
		return nil
	}
	i := len(members) - 1
	if cfg.Groups > 0 {
		i = 2*cfg.OneToOne + cfg.GroupSize - 1
	}
	p := members[i]
	p.loss = newLossy(cfg.LossyPercent, uint64(p.ssrc))
	fmt.Fprintf(out, "lossy: participant %d drops %.1f%% of the RTP it receives, in its own client before its feedback sees it (emulated; the relay's network is fine)\n",
		p.ssrc, cfg.LossyPercent)
	return p
}

// lossResult reads p's simulated loss (nil without one).
func lossResult(p *participant, now time.Time) *LossResult {
	if p == nil || p.loss == nil {
		return nil
	}
	return &LossResult{Participant: p.ssrc, Percent: p.loss.pct, lossStats: p.loss.stats(now)}
}

// sumStats adds up the forwarders' counters.
func sumStats(fwds []*forwarder.Forwarder) forwarder.Stats {
	var t forwarder.Stats
	for _, f := range fwds {
		s := f.Stats()
		t.PacketsIn += s.PacketsIn
		t.BytesIn += s.BytesIn
		t.PacketsOut += s.PacketsOut
		t.BytesOut += s.BytesOut
		t.TrunkIn += s.TrunkIn
		t.TrunkOut += s.TrunkOut
		t.Sessions += s.Sessions
		t.Calls += s.Calls
		t.Joins += s.Joins
		t.AudioMuted += s.AudioMuted
		t.Nacked += s.Nacked
		for i := range t.NackOutcomes {
			t.NackOutcomes[i] += s.NackOutcomes[i]
		}
		t.KeyRequests += s.KeyRequests
		t.ResentBytes += s.ResentBytes
		t.KeyFramesAsked += s.KeyFramesAsked
		t.Probes += s.Probes
		t.ProbeBytes += s.ProbeBytes
		t.TargetsSent += s.TargetsSent
		t.Subscriptions += s.Subscriptions
		t.SubsRejected += s.SubsRejected
		for i := range t.Drops {
			t.Drops[i] += s.Drops[i]
		}
	}
	return t
}

// lockedWriter serialises the lines of several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// levels shows each forwarder's throttle level, e.g. "0/2/0".
func levels(fwds []*forwarder.Forwarder) string {
	var b strings.Builder
	for i, f := range fwds {
		if i > 0 {
			b.WriteByte('/')
		}
		fmt.Fprintf(&b, "%d", f.Stats().ThrottleLevel)
	}
	return b.String()
}

// spike joins a burst of group calls and reports what the cluster took.
type spike struct {
	mu sync.Mutex
	ms []*participant
}

func (s *spike) members() []*participant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*participant(nil), s.ms...)
}

func (s *spike) run(ctx context.Context, cfg Config, priv []byte, fwds []*forwarder.Forwarder, firstIndex, firstCall int, out io.Writer, start func(*participant)) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(cfg.SpikeAfter):
	}
	fmt.Fprintf(out, "spike: %d group calls of %d joining now\n", cfg.SpikeCalls, cfg.GroupSize)
	joined, refused := 0, 0
	for i := range cfg.SpikeCalls {
		jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ms, err := joinCall(jctx, priv, fwds, protocol.ClassGroup, cfg.GroupSize, firstIndex+i*cfg.GroupSize, firstCall+i+1, 0, cfg, out)
		cancel()
		if err != nil {
			// A call that could not gather all its members is given up
			// whole: its media keys were never exchanged.
			for _, m := range ms {
				m.close()
			}
			refused += cfg.GroupSize
			continue
		}
		joined += len(ms)
		s.mu.Lock()
		s.ms = append(s.ms, ms...)
		s.mu.Unlock()
		for _, m := range ms {
			start(m)
		}
		if ctx.Err() != nil {
			return
		}
	}
	fmt.Fprintf(out, "spike: %d participants joined, %d refused (throttled: try alternate, then retry later)\n", joined, refused)
}
