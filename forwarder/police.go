package forwarder

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Ingress policing: what one member may send into its call.
//
// Every datagram a member sends that the relay would forward (RTP, and
// RTCP that is not consumed as feedback) passes its policer first, two
// token buckets of bytes:
//
//   - the member's cap, over everything forwarded: the conductor's target
//     for the sender (TotalBps, audio included) times TargetHeadroom, at
//     least MinBps, once a decision named it; before that, or for a member
//     no decision names, the cap of its call's class;
//   - its audio alone, at AudioBps (what an Opus stream can be at most).
//
// Audio goes before video: an audio packet within the audio cap is always
// forwarded and charged to the member's cap, which it may leave in debt
// (down to minus one burst); video and forwarded RTCP pass only while the
// member's cap has room. A member sending ten times its share loses the
// excess of its video, never its audio within the audio cap, and nobody
// else loses anything. Dropped packets are counted by kind
// (DropPolicedAudio, DropPolicedVideo, DropPolicedRTCP).
//
// A cap that goes up applies at once; one that goes down (a lower target)
// applies LowerAfter later, the time a sender takes to follow its new
// target. The control goroutine sets the caps; the reader serving the
// member's flow owns the buckets. They are atomics only so that a reader
// taking over a flow after an address change does not race the one before
// it; nothing is locked or allocated per packet.

// PoliceConfig bounds what one member may send (bits per second of whole
// datagrams, the way the relay receives them).
type PoliceConfig struct {
	// GroupBps and OneToOneBps cap a member of a group or one-to-one call
	// that no conductor decision has given a target (no conductor, audio
	// only, or not yet decided). 0 disables policing altogether.
	GroupBps, OneToOneBps uint64
	// TargetHeadroom: with a conductor target, the cap is the target times
	// this (encoders overshoot, key frames), and at least MinBps.
	TargetHeadroom float64
	MinBps         uint64
	// AudioBps caps a member's audio (packets with the audio level
	// extension) on its own.
	AudioBps uint64
	// Burst is how much more than its cap a member may send at once: this
	// long at its cap (key frames).
	Burst time.Duration
	// LowerAfter is how long a lower cap waits before it applies.
	LowerAfter time.Duration
}

// DefaultPolice returns the policing defaults: 5 Mbit/s in group calls and
// 8 Mbit/s in one-to-one calls without a target, 1.5 times the target with
// one (at least 600 kbit/s), 512 kbit/s of audio (Opus tops out at 510),
// one second of burst, and five seconds for a sender to follow a lower target.
func DefaultPolice() PoliceConfig {
	return PoliceConfig{
		GroupBps:       5_000_000,
		OneToOneBps:    8_000_000,
		TargetHeadroom: 1.5,
		MinBps:         600_000,
		AudioBps:       512_000,
		Burst:          time.Second,
		LowerAfter:     5 * time.Second,
	}
}

func (p *PoliceConfig) validate() error {
	if p.GroupBps == 0 && p.OneToOneBps == 0 {
		return nil // not policed: the rest is not used
	}
	var errs []error
	if p.GroupBps == 0 || p.OneToOneBps == 0 || p.MinBps == 0 || p.AudioBps == 0 {
		errs = append(errs, fmt.Errorf("forwarder: police caps group %d, one-to-one %d, minimum %d, audio %d bit/s: all positive, or group and one-to-one both 0 (no policing)",
			p.GroupBps, p.OneToOneBps, p.MinBps, p.AudioBps))
	}
	if !(p.TargetHeadroom >= 1 && p.TargetHeadroom <= 10) {
		errs = append(errs, fmt.Errorf("forwarder: police target headroom %v, want 1..10", p.TargetHeadroom))
	}
	if p.Burst < 100*time.Millisecond || p.Burst > 10*time.Second || p.LowerAfter < 0 || p.LowerAfter > time.Minute {
		errs = append(errs, fmt.Errorf("forwarder: police burst %s (100ms..10s), lower after %s (0..1m)", p.Burst, p.LowerAfter))
	}
	return errors.Join(errs...)
}

// policeParams are the data path's policing settings, fixed at start.
type policeParams struct {
	audioRate, audioBurst int64 // bytes per second, bytes
	burstNS               int64 // a member's burst: this long at its cap
}

func policeParamsOf(p PoliceConfig) policeParams {
	if p.GroupBps == 0 && p.OneToOneBps == 0 {
		return policeParams{}
	}
	rate := int64(min(p.AudioBps/8, maxPoliceRate))
	return policeParams{audioRate: rate, audioBurst: burstOf(rate, p.Burst.Nanoseconds()), burstNS: p.Burst.Nanoseconds()}
}

const (
	maxPoliceRate = 1 << 30 // bytes per second: so rate × 2 s of nanoseconds fits an int64
	minBurst      = 8 * maxDatagram
)

func burstOf(rate, burstNS int64) int64 {
	return max(rate*(burstNS/1e6)/1e3, minBurst)
}

// ingress is a member's policer. capRate is written by the control
// goroutine; the buckets by the reader serving the member's flow.
type ingress struct {
	capRate atomic.Int64 // bytes per second; 0: not policed
	all     tokenBucket  // everything forwarded, audio included
	audio   tokenBucket  // audio alone
}

// tokenBucket is bytes, refilled from the time of the last packet.
type tokenBucket struct {
	tokens, lastNS atomic.Int64
}

// refill brings the bucket up to nowNS and returns its tokens.
func (b *tokenBucket) refill(rate, burst, nowNS int64) int64 {
	tokens, last := b.tokens.Load(), b.lastNS.Load()
	switch el := nowNS - last; {
	case last == 0:
		tokens = burst
	case el > 0:
		tokens = min(burst, tokens+rate*min(el, 2e9)/1e9)
	}
	if last != nowNS {
		b.lastNS.Store(nowNS)
	}
	return tokens
}

// policeKind is what a policed datagram is.
type policeKind uint8

const (
	policeAudio policeKind = iota
	policeVideo
	policeRTCP
)

var policeDrops = [...]DropReason{policeAudio: DropPolicedAudio, policeVideo: DropPolicedVideo, policeRTCP: DropPolicedRTCP}

// police decides whether m may send size more bytes of kind now, and
// counts a refusal.
func (r *reader) police(m *mediaInfo, size int, kind policeKind) bool {
	in := &m.police
	rate := in.capRate.Load()
	if rate == 0 {
		return true
	}
	p := &r.f.police
	now, n := r.now(), int64(size)
	burst := burstOf(rate, p.burstNS)
	tokens := in.all.refill(rate, burst, now)
	if kind == policeAudio {
		a := in.audio.refill(p.audioRate, p.audioBurst, now)
		if a < n {
			in.audio.tokens.Store(a)
			in.all.tokens.Store(tokens)
			r.drops[DropPolicedAudio]++
			return false
		}
		in.audio.tokens.Store(a - n)
		in.all.tokens.Store(max(tokens-n, -burst)) // audio may leave the cap in debt
		return true
	}
	if tokens < n {
		in.all.tokens.Store(tokens)
		r.drops[policeDrops[kind]]++
		return false
	}
	in.all.tokens.Store(tokens - n)
	return true
}

// policeRate is the cap the control goroutine wants for s now, in bytes
// per second (0: not policed).
func (c *control) policeRate(s *session) int64 {
	p := &c.f.cfg.Police
	if p.GroupBps == 0 && p.OneToOneBps == 0 {
		return 0
	}
	bps := p.GroupBps
	if s.call.class == protocol.ClassOneToOne {
		bps = p.OneToOneBps
	}
	if t := s.video.target; t != nil {
		bps = max(uint64(float64(t.TotalBps)*p.TargetHeadroom), p.MinBps)
	}
	return int64(min(bps/8, maxPoliceRate))
}

// policeTick applies s's cap: at once when it goes up, LowerAfter after it
// first went down, unless it came back up meanwhile.
func (c *control) policeTick(s *session, now time.Time) {
	want := c.policeRate(s)
	in := &s.media.police
	cur := in.capRate.Load()
	switch {
	case want >= cur:
		if want > cur {
			in.capRate.Store(want)
		}
		s.policeLower = time.Time{}
	case s.policeLower.IsZero():
		s.policeLower = now
	case now.Sub(s.policeLower) >= c.f.cfg.Police.LowerAfter:
		in.capRate.Store(want)
		s.policeLower = time.Time{}
	}
}
