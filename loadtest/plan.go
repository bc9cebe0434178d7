package loadtest

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/callrelay/callrelay/protocol"
)

// Duration is a time.Duration that reads and writes as a Go duration
// string ("1m30s") in YAML and JSON plans and results.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalText writes d as a duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads a duration string such as "500ms" or "2m".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("loadtest: duration %q: want a Go duration such as 500ms or 2m: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// Profile kinds.
const (
	ProfileSteady = "steady"
	ProfileSpike  = "spike"
	ProfileRamp   = "ramp"
)

// Plan describes one load test: where to send, what calls to make, how
// their arrivals are shaped, the bounds that stop the run whatever
// happens, and the quality targets. Zero fields take the defaults of
// DefaultPlan (see WithDefaults); Validate says what is wrong.
type Plan struct {
	// Forwarders are the relay's forwarder addresses. Every call joins
	// through multi-connect to all of them; the generator sends to no
	// other address. Required.
	Forwarders []netip.AddrPort `json:"forwarders" yaml:"forwarders"`
	// SigningKey is the Ed25519 private key that mints join tokens (the
	// one whose public key the forwarders trust). Required; never written
	// to a plan or result file.
	SigningKey ed25519.PrivateKey `json:"-" yaml:"-"`
	// LocalAddr is the address the participants' sockets bind to. Default:
	// unspecified (the system chooses).
	LocalAddr netip.Addr `json:"local_addr,omitzero" yaml:"local_addr,omitempty"`

	// Mix is the call mix.
	Mix Mix `json:"mix" yaml:"mix"`
	// Video is the video mix (default: audio only).
	Video Video `json:"video,omitzero" yaml:"video,omitempty"`
	// CallDuration is the calls' length distribution.
	CallDuration CallDuration `json:"call_duration" yaml:"call_duration"`
	// Profile shapes the call arrivals over time.
	Profile Profile `json:"profile" yaml:"profile"`
	// Bounds stop the run whatever the profile says.
	Bounds Bounds `json:"bounds" yaml:"bounds"`
	// Targets are the quality targets of the verdict (and of the ramp).
	Targets Targets `json:"targets" yaml:"targets"`

	// RelayCores is how many CPU cores the relay's forwarders have in
	// total, if known (0: unknown); the ramp's knee is divided by it.
	RelayCores float64 `json:"relay_cores,omitempty" yaml:"relay_cores,omitempty"`
	// JoinTimeout bounds one participant's join. Default 5s.
	JoinTimeout Duration `json:"join_timeout" yaml:"join_timeout"`
	// TokenLifetime is how long each participant's join token is valid,
	// from when it is minted (just before its join); expiries are whole
	// seconds. Default 1h. A call that outlives its tokens goes on through
	// failovers and drains on the forwarders' resumption tickets, or on
	// fresh tokens with RefreshTokens.
	TokenLifetime Duration `json:"token_lifetime" yaml:"token_lifetime"`
	// RefreshTokens gives every participant a TokenSource minting a fresh
	// token of TokenLifetime, as an application's signalling service
	// would: the client renews its token before it expires.
	RefreshTokens bool `json:"refresh_tokens,omitempty" yaml:"refresh_tokens,omitempty"`
	// Rejoin is what a device does when it loses its forwarder (it died,
	// hung or forgot the device): by default it re-joins through
	// multi-connect, as the client library does.
	Rejoin Rejoin `json:"rejoin,omitzero" yaml:"rejoin,omitempty"`
	// LateJoin makes a share of the members join their call a while
	// after it started (default: everyone joins at once).
	LateJoin LateJoin `json:"late_join,omitzero" yaml:"late_join,omitempty"`
	// FollowAlternates lets a join follow 300 Try Alternate to a
	// forwarder the relay names, which may be outside Forwarders. Off by
	// default: the generator then sends to Forwarders only, and a 300
	// counts as a refusal (try_alternate_300).
	FollowAlternates bool `json:"follow_alternates,omitempty" yaml:"follow_alternates,omitempty"`
	// Seed makes the call mix, durations, arrivals and conversations
	// reproducible; 0 picks one from the clock (written back in the
	// result's plan echo).
	Seed uint64 `json:"seed" yaml:"seed"`

	// NATS, when set, is the relay's cluster bus: Run subscribes to
	// <Subject>.forwarders and records the forwarders' LoadReports
	// (throttle level, sessions, CPU and memory signals) per second in
	// Second.Forwarders and Result.Relay. Set by the caller, never written.
	NATS *nats.Conn `json:"-" yaml:"-"`
	// ClusterKey authenticates the LoadReports; required with NATS.
	// Set by the caller like SigningKey; never written.
	ClusterKey protocol.ClusterKey `json:"-" yaml:"-"`
	// Subject is the relay's NATS subject prefix. Default "callrelay".
	Subject string `json:"subject,omitempty" yaml:"subject,omitempty"`

	// Chaos are the failures to inject during the run (chaos.go): kill,
	// term or stop a process named in Processes, or take a service named
	// in Services down for a while, at a given time.
	Chaos []ChaosAction `json:"chaos,omitempty" yaml:"chaos,omitempty"`
	// Processes maps the chaos targets' names ("fwd-a", "conductor",
	// "redis") to their process ids. Set by the caller: the library never
	// guesses a pid. Never written.
	Processes map[string]int `json:"-" yaml:"-"`
	// Services maps the targets of down actions ("redis", "nats") to how
	// to take them down and bring them back: servers the caller started
	// itself, or commands (CommandService). Set by the caller; never
	// written.
	Services map[string]Service `json:"-" yaml:"-"`

	// Engine is how the calls are made: "full" (the default: every
	// participant a client library Session, Feedback, SRTP on every
	// frame) or "fast" (fast.go: thousands of devices on a few sockets and
	// goroutines, pre-sealed frames, sampled probe calls with full SRTP;
	// audio only), for capacity runs.
	Engine string `json:"engine,omitempty" yaml:"engine,omitempty"`
	// Fast tunes the fast engine.
	Fast Fast `json:"fast,omitzero" yaml:"fast,omitempty"`
	// RelayPID, when set, is the relay process whose CPU (from
	// /proc/<pid>/stat) is read every second (Second.RelayCPUPct) and per
	// ramp step (Step.RelayCPUPct, Step.PacketsPerRelayCPUSecond). Set by
	// the caller; never written.
	RelayPID int `json:"-" yaml:"-"`
	// RelayPIDs are further relay processes whose CPU adds to RelayPID's
	// (the two forwarders of calls spanning them over the trunk). Set by
	// the caller; never written.
	RelayPIDs []int `json:"-" yaml:"-"`

	// Transports puts a share of the devices on TCP and TLS (transport.go).
	Transports Transports `json:"transports,omitzero" yaml:"transports,omitempty"`

	// Cities are where the devices are (geo.go): a share of them each,
	// their coarse region and the access-latency model their datagrams go
	// through. Full engine, UDP devices. Regions say which forwarders are
	// in which region; Locator, when set, is a locator's base URL
	// (`callrelay locate`) asked for each city region's candidates
	// instead of Regions' order.
	Cities  []City   `json:"cities,omitempty" yaml:"cities,omitempty"`
	Regions []Region `json:"regions,omitempty" yaml:"regions,omitempty"`
	Locator string   `json:"locator,omitempty" yaml:"locator,omitempty"`

	// share is the part of the arrivals this process runs (agents).
	share share
}

// Fast is the fast engine's part of a plan.
type Fast struct {
	// Target is what the generator talks to: "forwarder" (the default:
	// STUN joins with tokens) or "reflector" (callrelay reflector: a
	// registration per device, internal/reflector).
	Target string `json:"target,omitempty" yaml:"target,omitempty"`
	// Sockets is how many sockets (and reader goroutines) the devices
	// share. Default 2.
	Sockets int `json:"sockets,omitempty" yaml:"sockets,omitempty"`
	// ProbeEvery makes every ProbeEvery-th call a probe call (full SRTP
	// and byte checks). Default 20; 1: every call.
	ProbeEvery int `json:"probe_every,omitempty" yaml:"probe_every,omitempty"`
	// BaselinePairs is how many pairs of probe devices send to each other
	// directly, for the no-relay delay baseline. Default 4; negative:
	// none.
	BaselinePairs int `json:"baseline_pairs,omitempty" yaml:"baseline_pairs,omitempty"`
	// Spread puts the members of a call on different forwarders (member i
	// on Forwarders[(call + i) % n]) instead of one forwarder per call:
	// calls that span forwarders over the trunk.
	Spread bool `json:"spread,omitempty" yaml:"spread,omitempty"`
	// Forwarded > 0: group audio under a conductor that forwards at most
	// this many members' audio per call (its --max-forwarded); loss is
	// then counted per stream, and against the reflector members 0 ..
	// Forwarded-1 of a call are the ones fanned out (fast_select.go). 0:
	// every member's audio is forwarded.
	Forwarded int `json:"forwarded,omitempty" yaml:"forwarded,omitempty"`
	// VideoLayers > 0: every member also sends simulcast video in this
	// many layers (1..3), one packet per layer per 20 ms, and receivers
	// get the lowest layer (fast_video.go).
	VideoLayers int `json:"video_layers,omitempty" yaml:"video_layers,omitempty"`
	// IO is how the generator moves frames: "socket" (the default: UDP
	// sockets over 127.0.0.0/8) or "packet" (raw frames on an AF_PACKET
	// socket on a veth pair, configured by Packet): fast_io.go.
	IO     string   `json:"io,omitempty" yaml:"io,omitempty"`
	Packet PacketIO `json:"packet,omitzero" yaml:"packet,omitempty"`
	// TURN is the credential of Target "turn" (fast_turn.go), from the
	// loadtest command's flags; never written out.
	TURN TURNAuth `json:"-" yaml:"-"`
}

// share selects arrivals with index % of == index (of <= 1: all).
type share struct{ index, of int }

func (s share) mine(i int) bool { return s.of <= 1 || i%s.of == s.index }

// Rejoin is what a device does when it loses its forwarder
// (client.Session's failover).
type Rejoin struct {
	// Off: a device never joins anew after losing its forwarder: its
	// session is lost (and its call dropped) at once, as with an app that
	// does not use the client's failover. A forwarder that forgot the
	// device may still take it back in place (Rejoin nudge).
	Off bool `json:"off,omitempty" yaml:"off,omitempty"`
	// Timeout bounds one re-join (client Config.RejoinTimeout): a device
	// no forwarder took back within it is lost. Default 30s (the client's).
	Timeout Duration `json:"timeout,omitzero" yaml:"timeout,omitempty"`
	// FailoverAfter is how long a device waits without keepalive answers
	// before giving its forwarder up (client Config.FailoverAfter).
	// Default: the client's, 3 keepalive intervals.
	FailoverAfter Duration `json:"failover_after,omitzero" yaml:"failover_after,omitempty"`
}

// LateJoin makes a share of each call's members join After the call
// started, as someone who arrives late to a meeting. Late joiners send
// audio and hear (and see) everyone; they send no camera. They must
// decrypt every member, whose streams may have rolled over by then.
type LateJoin struct {
	// Share is the probability, 0..1, that a member other than a call's
	// first joins late (drawn from the call's seed). Members of a call
	// not longer than After join on time.
	Share float64 `json:"share" yaml:"share"`
	// After is how long after its call started a late joiner joins.
	// Required with a share, at most 10m.
	After Duration `json:"after" yaml:"after"`
	// Rollover starts the on-time members' RTP sequence numbers so that
	// every audio stream rolls over (its SRTP rollover counter goes to 1)
	// half way to the late joins, and every video layer within its first
	// 100 packets, as in a call half an hour old: a late joiner decrypts
	// them only if it finds their rollover counters.
	Rollover bool `json:"rollover,omitempty" yaml:"rollover,omitempty"`
}

// maxLateJoinAfter bounds LateJoin.After: audio at 50 packets/s must not
// roll over twice before the late join.
const maxLateJoinAfter = 10 * time.Minute

// Mix is the share of one-to-one and group calls and the group sizes.
type Mix struct {
	// OneToOne is the fraction of calls that are one-to-one, 0..1; the
	// rest are group calls. Default 0.7 when the whole mix is left out;
	// with group sizes given, 0 means group calls only.
	OneToOne float64 `json:"one_to_one" yaml:"one_to_one"`
	// GroupMin and GroupMax bound a group call's size, drawn uniformly.
	// Defaults 3 and 6.
	GroupMin int `json:"group_min" yaml:"group_min"`
	GroupMax int `json:"group_max" yaml:"group_max"`
}

// Video is the video mix: which participants also send camera video.
type Video struct {
	// Share is the fraction of participants, 0..1, drawn at random per
	// participant, that send a synthetic camera (client.VideoSender: one
	// stream, or the simulcast layers and bitrates the relay asks for).
	// Every other member of their call subscribes to it. 0: audio only.
	Share float64 `json:"share" yaml:"share"`
}

// CallDuration is an exponential distribution with mean Mean, clamped to
// [Min, Max]. Defaults 60s, 5s, 5m.
type CallDuration struct {
	Mean Duration `json:"mean" yaml:"mean"`
	Min  Duration `json:"min" yaml:"min"`
	Max  Duration `json:"max" yaml:"max"`
}

// Profile is the arrival process: Poisson arrivals whose rate follows the
// kind's shape.
type Profile struct {
	// Kind is "steady", "spike" or "ramp". Default steady.
	Kind   string `json:"kind" yaml:"kind"`
	Steady Steady `json:"steady,omitzero" yaml:"steady,omitempty"`
	Spike  Spike  `json:"spike,omitzero" yaml:"spike,omitempty"`
	Ramp   Ramp   `json:"ramp,omitzero" yaml:"ramp,omitempty"`
}

// Steady is a constant arrival rate for a duration.
type Steady struct {
	Rate     float64  `json:"rate" yaml:"rate"`         // calls/s, default 1
	Duration Duration `json:"duration" yaml:"duration"` // default 30s
}

// Spike goes from Base to Peak: Base for Lead, a linear rise over RampUp
// (at most a minute), Peak for Hold, a linear fall back to Base over Decay,
// then Base for Tail.
type Spike struct {
	Base   float64  `json:"base" yaml:"base"`       // calls/s, default 0.5
	Peak   float64  `json:"peak" yaml:"peak"`       // calls/s, default 5
	Lead   Duration `json:"lead" yaml:"lead"`       // default 10s
	RampUp Duration `json:"ramp_up" yaml:"ramp_up"` // default 30s, at most 1m
	Hold   Duration `json:"hold" yaml:"hold"`       // default 30s
	Decay  Duration `json:"decay" yaml:"decay"`     // default 30s
	Tail   Duration `json:"tail" yaml:"tail"`       // default 10s
}

// Ramp raises the rate by Step every StepDuration from Start until a step
// breaks a target (or a bound is reached). StepDuration should be several
// mean call durations, so that a step reaches its steady concurrency.
type Ramp struct {
	Start        float64  `json:"start" yaml:"start"`                 // calls/s, default 1
	Step         float64  `json:"step" yaml:"step"`                   // calls/s, default 1
	StepDuration Duration `json:"step_duration" yaml:"step_duration"` // default 30s
	// MaxSteps bounds the ramp. Default 20.
	MaxSteps int `json:"max_steps" yaml:"max_steps"`
}

// Bounds stop the run whatever the profile says.
type Bounds struct {
	// MaxDuration ends the run (all calls closed). Default 2m.
	MaxDuration Duration `json:"max_duration" yaml:"max_duration"`
	// MaxConcurrentCalls: arrivals beyond it are skipped (and counted).
	// Default 50.
	MaxConcurrentCalls int `json:"max_concurrent_calls" yaml:"max_concurrent_calls"`
	// MaxCalls: no call is started after this many. Default 500.
	MaxCalls int `json:"max_calls" yaml:"max_calls"`
}

// Targets are the quality targets. Defaults: setups 99%, p95 setup 1s,
// loss 1%, p95 one-way delay 150ms (ITU-T G.114's comfortable bound, of
// which the relay should take a small part).
type Targets struct {
	SetupSuccessPct float64  `json:"setup_success_pct" yaml:"setup_success_pct"`
	SetupP95        Duration `json:"setup_p95" yaml:"setup_p95"`
	LossPct         float64  `json:"loss_pct" yaml:"loss_pct"`
	DelayP95        Duration `json:"delay_p95" yaml:"delay_p95"`
	// DroppedCallsPct, when set (0 included), bounds the calls dropped in
	// percent of the calls set up (Measures.DroppedCallsPct).
	DroppedCallsPct *float64 `json:"dropped_calls_pct,omitempty" yaml:"dropped_calls_pct,omitempty"`
	// RejoinSilenceP99, when set, bounds the p99 of the silence a device
	// hears while it re-joins (Measures.RejoinSilenceMs).
	RejoinSilenceP99 Duration `json:"rejoin_silence_p99,omitzero" yaml:"rejoin_silence_p99,omitempty"`
	// RelayAddedDelayP99, when set, bounds the delay the relay adds at the
	// p99: the fast engine's probe calls' p99 one-way delay minus that of
	// its baseline pairs, which send to each other directly in the same
	// run (Measures.RelayAddedDelayP99Ms).
	RelayAddedDelayP99 Duration `json:"relay_added_delay_p99,omitzero" yaml:"relay_added_delay_p99,omitempty"`
}

// ErrPlan is wrapped by every plan error.
var ErrPlan = errors.New("loadtest: invalid plan")

// maxRampUp is the longest spike rise the profile accepts.
const maxRampUp = time.Minute

func setF(v *float64, def float64) {
	if *v == 0 {
		*v = def
	}
}

func setD(v *Duration, def time.Duration) {
	if *v == 0 {
		*v = Duration(def)
	}
}

func setI(v *int, def int) {
	if *v == 0 {
		*v = def
	}
}

// WithDefaults returns p with every zero field set to its default.
func (p Plan) WithDefaults() Plan {
	if p.Mix == (Mix{}) {
		// Nothing said of the mix: the default one. A mix that names its
		// group sizes keeps one_to_one as given, 0 (all group calls)
		// included.
		p.Mix.OneToOne = 0.7
	}
	setI(&p.Mix.GroupMin, 3)
	setI(&p.Mix.GroupMax, 6)
	setD(&p.CallDuration.Mean, time.Minute)
	setD(&p.CallDuration.Min, 5*time.Second)
	setD(&p.CallDuration.Max, 5*time.Minute)
	if p.Profile.Kind == "" {
		p.Profile.Kind = ProfileSteady
	}
	s := &p.Profile.Steady
	setF(&s.Rate, 1)
	setD(&s.Duration, 30*time.Second)
	k := &p.Profile.Spike
	setF(&k.Base, 0.5)
	setF(&k.Peak, 5)
	setD(&k.Lead, 10*time.Second)
	setD(&k.RampUp, 30*time.Second)
	setD(&k.Hold, 30*time.Second)
	setD(&k.Decay, 30*time.Second)
	setD(&k.Tail, 10*time.Second)
	r := &p.Profile.Ramp
	setF(&r.Start, 1)
	setF(&r.Step, 1)
	setD(&r.StepDuration, 30*time.Second)
	setI(&r.MaxSteps, 20)
	setD(&p.Bounds.MaxDuration, 2*time.Minute)
	setI(&p.Bounds.MaxConcurrentCalls, 50)
	setI(&p.Bounds.MaxCalls, 500)
	setF(&p.Targets.SetupSuccessPct, 99)
	setD(&p.Targets.SetupP95, time.Second)
	setF(&p.Targets.LossPct, 1)
	setD(&p.Targets.DelayP95, 150*time.Millisecond)
	setD(&p.JoinTimeout, 5*time.Second)
	setD(&p.TokenLifetime, time.Hour)
	if p.Subject == "" {
		p.Subject = DefaultSubject
	}
	if p.Engine == "" {
		p.Engine = EngineFull
	}
	if p.Engine == EngineFast {
		p.Fast = p.Fast.withDefaults()
	}
	return p
}

// maxTokenLifetime bounds Plan.TokenLifetime.
const maxTokenLifetime = 7 * 24 * time.Hour

// DefaultSubject is the relay's default NATS subject prefix.
const DefaultSubject = "callrelay"

// Validate reports what is wrong with a plan (after WithDefaults).
func (p Plan) Validate() error { return p.validate(true) }

// validate checks the plan; a controller, which makes no calls itself,
// needs no signing key (needKey false).
func (p Plan) validate(needKey bool) error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrPlan}, a...)...))
	}
	if len(p.Forwarders) == 0 {
		bad("forwarders is empty: give the relay's forwarder addresses (host:port)")
	}
	for i, a := range p.Forwarders {
		if !a.IsValid() || a.Port() == 0 {
			bad("forwarders[%d] = %q is not an address with a port", i, a)
		}
	}
	if needKey && len(p.SigningKey) != ed25519.PrivateKeySize {
		bad("signing key has %d bytes, want an Ed25519 private key (%d)", len(p.SigningKey), ed25519.PrivateKeySize)
	}
	if p.Mix.OneToOne < 0 || p.Mix.OneToOne > 1 {
		bad("mix.one_to_one = %v, want 0..1", p.Mix.OneToOne)
	}
	if p.Mix.GroupMin < 3 || p.Mix.GroupMax < p.Mix.GroupMin || p.Mix.GroupMax > 100 {
		bad("mix group size %d..%d, want 3 <= group_min <= group_max <= 100", p.Mix.GroupMin, p.Mix.GroupMax)
	}
	if p.Video.Share < 0 || p.Video.Share > 1 {
		bad("video.share = %v, want 0..1 (the fraction of participants that send video)", p.Video.Share)
	}
	cd := p.CallDuration
	if cd.Min <= 0 || cd.Max < cd.Min || cd.Mean <= 0 {
		bad("call_duration mean %v min %v max %v: want 0 < min <= max and mean > 0", cd.Mean.D(), cd.Min.D(), cd.Max.D())
	}
	switch p.Profile.Kind {
	case ProfileSteady:
		if p.Profile.Steady.Rate < 0 || p.Profile.Steady.Duration <= 0 {
			bad("profile.steady: rate must be >= 0 and duration > 0")
		}
	case ProfileSpike:
		k := p.Profile.Spike
		if k.Base < 0 || k.Peak < k.Base {
			bad("profile.spike: want 0 <= base <= peak, have base %v peak %v", k.Base, k.Peak)
		}
		if k.RampUp.D() > maxRampUp {
			bad("profile.spike.ramp_up = %v, want at most %v (a spike reaches its peak within a minute)", k.RampUp.D(), maxRampUp)
		}
		if k.Lead < 0 || k.RampUp < 0 || k.Hold < 0 || k.Decay < 0 || k.Tail < 0 {
			bad("profile.spike: durations must not be negative")
		}
	case ProfileRamp:
		r := p.Profile.Ramp
		if r.Start < 0 || r.Step <= 0 || r.StepDuration <= 0 || r.MaxSteps < 1 {
			bad("profile.ramp: want start >= 0, step > 0, step_duration > 0, max_steps >= 1")
		}
		if r.StepDuration.D()%time.Second != 0 {
			bad("profile.ramp.step_duration = %v, want whole seconds (steps are measured per second)", r.StepDuration.D())
		}
	default:
		bad("profile.kind = %q, want steady, spike or ramp", p.Profile.Kind)
	}
	if p.Bounds.MaxDuration <= 0 || p.Bounds.MaxConcurrentCalls < 1 || p.Bounds.MaxCalls < 1 {
		bad("bounds: max_duration, max_concurrent_calls and max_calls must be positive")
	}
	if p.Targets.SetupSuccessPct < 0 || p.Targets.SetupSuccessPct > 100 || p.Targets.LossPct < 0 {
		bad("targets: setup_success_pct must be 0..100 and loss_pct >= 0")
	}
	if p.TokenLifetime.D() < 2*time.Second || p.TokenLifetime.D() > maxTokenLifetime {
		bad("token_lifetime = %v, want 2s..%v (expiries are whole seconds)", p.TokenLifetime.D(), maxTokenLifetime)
	}
	errs = append(errs, p.validateCalls()...)
	if p.NATS != nil && p.ClusterKey.IsZero() {
		bad("nats is set but the cluster key is not: it is needed to authenticate the forwarders' load reports")
	}
	if p.Subject != "" && !validSubjectPrefix(p.Subject) {
		bad("subject = %q: want a NATS subject without spaces or wildcards", p.Subject)
	}
	errs = append(errs, p.validateChaos(os.Getpid())...)
	errs = append(errs, p.validateTransports()...)
	errs = append(errs, p.validateGeo()...)
	if err := p.validateEngine(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validateCalls checks the late joins, the re-joins and their targets.
func (p Plan) validateCalls() []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrPlan}, a...)...))
	}
	if d := p.Targets.DroppedCallsPct; d != nil && (*d < 0 || *d > 100) {
		bad("targets.dropped_calls_pct = %v, want 0..100", *d)
	}
	if p.Targets.RejoinSilenceP99 < 0 || p.Targets.RelayAddedDelayP99 < 0 {
		bad("targets.rejoin_silence_p99 and relay_added_delay_p99 must not be negative")
	}
	l := p.LateJoin
	if l.Share < 0 || l.Share > 1 {
		bad("late_join.share = %v, want 0..1 (the fraction of members who join late)", l.Share)
	}
	if l.Share > 0 && (l.After <= 0 || l.After.D() > maxLateJoinAfter) {
		bad("late_join.after = %v, want 0 < after <= %v (how long after its call started a late joiner joins)", l.After.D(), maxLateJoinAfter)
	}
	if l.Share == 0 && (l.After != 0 || l.Rollover) {
		bad("late_join: after and rollover need a share > 0")
	}
	if p.Rejoin.Timeout < 0 || p.Rejoin.FailoverAfter < 0 {
		bad("rejoin: timeout and failover_after must not be negative")
	}
	if p.Rejoin.Off && p.Rejoin.Timeout != 0 {
		bad("rejoin: a timeout means nothing with off")
	}
	return errs
}

// validSubjectPrefix reports whether s is a usable literal NATS subject.
func validSubjectPrefix(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n*>") || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	return true
}

// ParsePlan reads a YAML (or JSON) plan strictly: unknown keys are errors.
// The signing key is not part of the file; set Plan.SigningKey.
func ParsePlan(b []byte) (Plan, error) {
	var p Plan
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return p, fmt.Errorf("%w: %w", ErrPlan, err)
	}
	return p, nil
}

// relayPIDs is RelayPID and RelayPIDs, the relay processes metered.
func (p Plan) relayPIDs() []int {
	var pids []int
	if p.RelayPID > 0 {
		pids = append(pids, p.RelayPID)
	}
	for _, pid := range p.RelayPIDs {
		if pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}
