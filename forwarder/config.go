package forwarder

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Config is what a forwarder needs. Start from Default() and override.
type Config struct {
	// Listen is the one UDP address the forwarder serves media on.
	Listen string
	// Verifier checks join tokens (the forwarder holds only public keys).
	Verifier *protocol.TokenVerifier
	// Readers is the number of reader goroutines, each on its own
	// SO_REUSEPORT socket bound to the same port (Linux). Default: one per core.
	Readers int
	// BatchWait is how long a reader whose packet rate is high waits after
	// a batch that was not full, so that its next read and write take many
	// packets at once (pace.go); a packet may lose up to this much to it.
	// 0 (the default): never wait. Off until a quiet-machine capacity run
	// shows it pays (docs/architecture.md, where a packet's time goes).
	BatchWait time.Duration
	// KeepaliveInterval is what devices are told to use.
	KeepaliveInterval time.Duration
	// IdleTimeout forgets a session that sent no authenticated keepalive for this long.
	IdleTimeout time.Duration
	// MaxSessions refuses new sessions beyond this with 508 (0: no limit).
	MaxSessions int
	// Alternate is where a draining forwarder sends new joins (300 Try Alternate).
	Alternate netip.AddrPort
	// STUNRate and STUNBurst bound the keepalives (and other requests) one
	// member's address may send per second before they are dropped unread.
	STUNRate  float64
	STUNBurst float64
	// JoinRate and JoinBurst bound the requests from addresses that are not
	// members, per IP address (all ports together). Higher than STUNRate:
	// one carrier-grade NAT address may carry many devices.
	JoinRate  float64
	JoinBurst float64
	// CookieRate and CookieBurst bound the address checks (401 with a
	// COOKIE) the whole forwarder answers per second, whatever their
	// sources: a flood from many spoofed addresses is answered by little.
	// Requests over it are dropped unanswered and counted; devices repeat
	// theirs.
	CookieRate  float64
	CookieBurst float64
	// AddrChangeBurst and AddrChangeEvery bound a session's address
	// changes: that many at once, then one per AddrChangeEvery. A change
	// over it is not answered (the device's next keepalive tries again)
	// and is counted.
	AddrChangeBurst int
	AddrChangeEvery time.Duration
	// DrainDeadline is how long a draining forwarder keeps serving sessions
	// it has told to move before it gives up on them.
	DrainDeadline time.Duration
	// TicketLifetime is how long a resumption ticket resumes its session
	// after it was issued (resume.go); sessions get a new one every fifth
	// of it. 10s..1h.
	TicketLifetime time.Duration

	// Audio tunes the audio forwarding gate and loud-onset fast path.
	Audio AudioConfig
	// Adapt tunes the NACK cache, bandwidth estimates and video routing.
	Adapt AdaptConfig
	// Police bounds what each member may send into its call (police.go).
	Police PoliceConfig

	// Load tunes the load signals and the throttle levels; LoadEvery is how
	// often the load is sampled. From level ShedVideoAt on, group calls
	// shed their video (admission.go).
	Load        LoadConfig
	LoadEvery   time.Duration
	ShedVideoAt ThrottleLevel

	// Cluster joins the forwarder to others through the state store, NATS
	// and the trunk. Zero: a forwarder on its own.
	Cluster Cluster

	// RequireDeviceTokens refuses version 1 join tokens (401): every
	// session must be bound to a device key (device.go). Off while devices
	// migrate to version 2 tokens.
	RequireDeviceTokens bool

	// Stream: TCP and TLS listeners (stream.go); off by default.
	Stream StreamConfig
	// Logger receives lifecycle and control-path events, never per-packet lines.
	Logger *zap.Logger
	// Now is the clock (tests may replace it).
	Now func() time.Time
}

// Default returns a Config with production defaults and no verifier.
func Default() Config {
	return Config{
		Listen:            "0.0.0.0:3478",
		Readers:           runtime.NumCPU(),
		KeepaliveInterval: time.Second,
		IdleTimeout:       10 * time.Second,
		STUNRate:          20,
		STUNBurst:         40,
		JoinRate:          200,
		JoinBurst:         400,
		CookieRate:        2000,
		CookieBurst:       4000,
		AddrChangeBurst:   4,
		AddrChangeEvery:   2 * time.Second,
		DrainDeadline:     30 * time.Second,
		TicketLifetime:    5 * time.Minute,
		Audio:             DefaultAudio(),
		Adapt:             DefaultAdapt(),
		Police:            DefaultPolice(),
		Load:              DefaultLoad(),
		LoadEvery:         250 * time.Millisecond,
		ShedVideoAt:       ThrottleGroupJoin,
		Cluster:           DefaultCluster(),
		Stream:            DefaultStream(),
		Logger:            zap.NewNop(),
		Now:               time.Now,
	}
}

// Validate says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if c.Verifier == nil {
		errs = append(errs, errors.New("forwarder: no token verifier: give the signing service's public key (--public-key or CALLRELAY_PUBLIC_KEY)"))
	}
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("forwarder: listen address %q: want ip:port, e.g. 0.0.0.0:3478", c.Listen))
	}
	if c.Readers < 1 || c.Readers > controlTrunkStream {
		errs = append(errs, fmt.Errorf("forwarder: readers = %d, want 1..%d", c.Readers, controlTrunkStream))
	}
	if c.BatchWait < 0 || c.BatchWait > 2*time.Millisecond {
		errs = append(errs, fmt.Errorf("forwarder: batch wait %s, want 0..2ms", c.BatchWait))
	}
	if c.KeepaliveInterval <= 0 || c.IdleTimeout < 2*c.KeepaliveInterval {
		errs = append(errs, fmt.Errorf("forwarder: idle timeout %s must be at least twice the keepalive interval %s", c.IdleTimeout, c.KeepaliveInterval))
	}
	if c.MaxSessions < 0 {
		errs = append(errs, fmt.Errorf("forwarder: max sessions = %d, want >= 0", c.MaxSessions))
	}
	if c.STUNRate <= 0 || c.STUNBurst < 1 || c.JoinRate <= 0 || c.JoinBurst < 1 {
		errs = append(errs, fmt.Errorf("forwarder: STUN rate %.1f/s burst %.1f, join rate %.1f/s burst %.1f: all must be positive",
			c.STUNRate, c.STUNBurst, c.JoinRate, c.JoinBurst))
	}
	if c.CookieRate <= 0 || c.CookieBurst < 1 {
		errs = append(errs, fmt.Errorf("forwarder: address check answers %.1f/s burst %.1f: both must be positive", c.CookieRate, c.CookieBurst))
	}
	if c.AddrChangeBurst < 1 || c.AddrChangeEvery <= 0 {
		errs = append(errs, fmt.Errorf("forwarder: address changes %d at once then one per %s: want at least 1, and a positive interval", c.AddrChangeBurst, c.AddrChangeEvery))
	}
	if c.DrainDeadline <= 0 {
		errs = append(errs, fmt.Errorf("forwarder: drain deadline %s must be positive", c.DrainDeadline))
	}
	if c.TicketLifetime < 10*time.Second || c.TicketLifetime > protocol.MaxTicketLifetime {
		errs = append(errs, fmt.Errorf("forwarder: resumption ticket lifetime %s, want 10s..1h", c.TicketLifetime))
	}
	errs = append(errs, c.Audio.validate(), c.Adapt.validate(), c.Police.validate(), c.Load.validate(), c.Cluster.validate(), c.Stream.validate())
	if c.LoadEvery < 10*time.Millisecond || c.LoadEvery > 10*time.Second {
		errs = append(errs, fmt.Errorf("forwarder: load sample interval %s, want 10ms..10s", c.LoadEvery))
	}
	if c.ShedVideoAt < ThrottleNewGroup || c.ShedVideoAt > ThrottleSecondParty+1 {
		errs = append(errs, fmt.Errorf("forwarder: shed group video at level %d, want 1..5 (5: never)", c.ShedVideoAt))
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return errors.Join(errs...)
}

// AudioConfig is how the forwarder reads audio levels and when a muted
// member's audio is let through at once (audio.go).
type AudioConfig struct {
	// ExtensionID is the RFC 8285 id of the RFC 6464 audio level element
	// (protocol.DefaultAudioLevelExtensionID unless the application
	// negotiates another).
	ExtensionID uint8
	// OnsetLevel: a packet is loud at this level or louder (-dBov, lower
	// is louder), with the VAD flag set.
	OnsetLevel uint8
	// OnsetMinPayload: a loud packet carries at least this many payload
	// bytes (comfort noise and DTX frames are a few bytes; speech is tens).
	OnsetMinPayload int
	// OnsetHold is how long a loud onset opens a muted member's audio.
	OnsetHold time.Duration
	// DecisionTimeout bounds fail-static: a call whose conductor sent no
	// fresh decision (a new one, or a repeat: conductors repeat theirs
	// every second) for this long goes back to the default policy, every
	// member's audio forwarded, until one comes (decisions.go). Longer than
	// a conductor takeover (lease TTL, plus the repeat interval, plus the
	// successor's first decision), so a takeover does not reach it.
	DecisionTimeout time.Duration
}

// DefaultAudio returns the audio defaults.
func DefaultAudio() AudioConfig {
	return AudioConfig{
		ExtensionID:     protocol.DefaultAudioLevelExtensionID,
		OnsetLevel:      50,
		OnsetMinPayload: 30,
		OnsetHold:       time.Second,
		DecisionTimeout: 4 * time.Second,
	}
}

func (a *AudioConfig) validate() error {
	var errs []error
	if a.ExtensionID < 1 || a.ExtensionID > 14 {
		errs = append(errs, fmt.Errorf("forwarder: audio level extension id %d, want 1..14 (one-byte RFC 8285 ids)", a.ExtensionID))
	}
	if a.DecisionTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("forwarder: decision timeout %s, want at least 100ms (longer than the conductor's repeat interval, 1 s)", a.DecisionTimeout))
	}
	if a.OnsetLevel > 127 || a.OnsetMinPayload < 0 || a.OnsetHold <= 0 {
		errs = append(errs, fmt.Errorf("forwarder: onset level %d (0..127), minimum payload %d (>= 0), hold %s (> 0)",
			a.OnsetLevel, a.OnsetMinPayload, a.OnsetHold))
	}
	return errors.Join(errs...)
}

// AdaptConfig is how the forwarder adapts calls to their networks: the NACK
// cache, the per-leg bandwidth estimates and what senders are told
// (adapt.go, nack.go, leg.go, video.go).
type AdaptConfig struct {
	// VideoFrameExtensionID and AbsSendTimeExtensionID are the RFC 8285
	// ids of the video frame and abs-send-time elements (protocol/README.md
	// section 4).
	VideoFrameExtensionID  uint8
	AbsSendTimeExtensionID uint8
	// NackCacheBytes is each sender's retransmission cache: 512 KiB holds
	// about 4 s of a 1 Mbit/s sender.
	NackCacheBytes int
	// NackResendGap is the least time between two resends of one packet
	// (about a round trip: a repeated NACK within it is a duplicate).
	NackResendGap time.Duration
	// NackShare is what a receiver's NACKs may cost: at most this many
	// bytes of retransmission per byte of media sent to it (rtx.go),
	// whatever it claims its downlink is.
	NackShare float64
	// UnknownDownlinkBps bounds retransmissions to a receiver that has not
	// yet reported its downlink (REMB).
	UnknownDownlinkBps uint64
	// FeedbackEvery is how often senders are told their uplink estimate
	// (REMB) and key frames are requested.
	FeedbackEvery time.Duration
}

// DefaultAdapt returns the adaptation defaults.
func DefaultAdapt() AdaptConfig {
	return AdaptConfig{
		VideoFrameExtensionID:  protocol.DefaultVideoFrameExtensionID,
		AbsSendTimeExtensionID: protocol.DefaultAbsSendTimeExtensionID,
		NackCacheBytes:         512 << 10,
		NackResendGap:          100 * time.Millisecond,
		NackShare:              0.25,
		UnknownDownlinkBps:     1_000_000,
		FeedbackEvery:          50 * time.Millisecond,
	}
}

func (a *AdaptConfig) validate() error {
	var errs []error
	for _, id := range []uint8{a.VideoFrameExtensionID, a.AbsSendTimeExtensionID} {
		if id < 1 || id > 14 {
			errs = append(errs, fmt.Errorf("forwarder: header extension id %d, want 1..14 (one-byte RFC 8285 ids)", id))
		}
	}
	if a.NackCacheBytes < 64<<10 || a.NackCacheBytes > 64<<20 {
		errs = append(errs, fmt.Errorf("forwarder: NACK cache %d bytes, want 64 KiB..64 MiB", a.NackCacheBytes))
	}
	if !(a.NackShare >= 0.01 && a.NackShare <= 1) {
		errs = append(errs, fmt.Errorf("forwarder: NACK share %v, want 0.01..1 (bytes of retransmission per byte sent to a receiver)", a.NackShare))
	}
	if a.NackResendGap <= 0 || a.FeedbackEvery < 10*time.Millisecond || a.FeedbackEvery > time.Second {
		errs = append(errs, fmt.Errorf("forwarder: NACK resend gap %s (> 0), feedback interval %s (10ms..1s)", a.NackResendGap, a.FeedbackEvery))
	}
	return errors.Join(errs...)
}
