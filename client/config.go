package client

import (
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Config configures Dial and Join. Zero values take the defaults listed per field.
type Config struct {
	// Forwarders are the candidate forwarder addresses; the join goes to all
	// of them at once and the first to accept wins. Required.
	Forwarders []netip.AddrPort
	// Streams are forwarders' TCP and TLS listeners, by the forwarder's
	// address in Forwarders (transport.go): tried when no UDP join
	// succeeded within UDPHeadStart (default 250ms), in parallel; TLSConfig
	// checks the TLS listeners' certificates (nil: the system's roots). A
	// Session on TCP or TLS tries UDP again every UDPRetryEvery (default
	// 5s). Empty: UDP only.
	Streams       map[netip.AddrPort]StreamEndpoints
	TLSConfig     *tls.Config
	UDPHeadStart  time.Duration
	UDPRetryEvery time.Duration
	// SuspectAfter: a Session on UDP to a forwarder listed in Streams
	// suspects its UDP path when no RTP arrived for this long (it then
	// sends a keepalive at once) and that keepalive, or a regular one, went
	// unanswered for half of it; it then joins the same forwarder over TCP
	// and TLS beside UDP and switches when that join is answered
	// (make-before-break, transport_session.go). Default a quarter of
	// FailoverAfter; negative: no spare legs (UDP trouble is a failover).
	SuspectAfter time.Duration
	bridge       *bridge // set on a Dial through a stream transport
	// Token is the signed join token from the application's signalling
	// service (protocol.SignToken). Required.
	Token []byte
	// TokenSource, if set, gets a fresh token for the same call and
	// participant from the application. A Session (Join) calls it three
	// quarters of the way to the current token's expiry, retrying with
	// backoff on failure, and at once when a re-join is refused 401; its
	// requests carry the fresh token from then on. Without it, a Session
	// outlives its token on resumption tickets alone (protocol/README.md
	// 2.1): the forwarders vouch for a participant they admitted for a few
	// minutes at a time, renewed while its session lives. Dial alone never
	// calls it.
	TokenSource TokenSource
	// DeviceKey is the device's Ed25519 private key (GenerateDeviceKey),
	// kept by the device and never sent. It is required with a version 2
	// (device-bound) token, which must name its public key: every join,
	// address change and resumption then carries a proof signed with it,
	// and the session's key is one an observer of the token cannot compute
	// (protocol/README.md 2.2). A TokenSource must then give tokens for the
	// same key. Unused with a version 1 token.
	DeviceKey ed25519.PrivateKey
	// LocalAddr is the local address to bind sockets to. The zero Addr (the
	// default) lets the system choose (the unspecified address); tests use
	// 127.0.0.1.
	LocalAddr netip.Addr
	// Route, for tests and emulation only: the address a UDP socket to a
	// forwarder is connected to instead of the forwarder's own (a link
	// emulator in front of it, as the load test's access links). The
	// forwarder is still known by its own address everywhere else: in
	// Forwarder, in the RTT reports, as a MigrateTo target (which is routed
	// too). Nil: sockets go to the forwarder.
	Route func(forwarder netip.AddrPort) netip.AddrPort
	// PreferIPv6Within: when an IPv4 forwarder accepts the join first while
	// an IPv6 one has not answered yet, Dial waits this long for the IPv6
	// one, which then wins (the IPv4 one is left). List a dual-stack
	// forwarder at both its addresses to be reached over IPv6 when both
	// families answer within a few ms of each other. Default 10ms;
	// negative: the first answer wins, whatever its family.
	PreferIPv6Within time.Duration
	// PreferNearerWithin: when a forwarder accepts the join first while
	// one that answered its address check clearly faster (RTT shorter by
	// a quarter and 5ms) has not answered yet, Dial waits this long for
	// the nearer one, which then wins (the first is left), so that a
	// locator's neighbouring regions do not win the race by the store's
	// or a forwarder's hiccup (nearer.go). Default 100ms; negative: the
	// first answer wins, however far.
	PreferNearerWithin time.Duration

	// JoinTimeout bounds Dial when ctx has no earlier deadline. Default 5s.
	JoinTimeout time.Duration
	// RetransmitInitial is the first retransmission interval of a join; it
	// doubles after each retransmission up to RetransmitMax. Defaults 100ms
	// and 1.6s.
	RetransmitInitial time.Duration
	RetransmitMax     time.Duration
	// MaxAlternates bounds how many 300 Try Alternate addresses one Dial
	// follows in total. Default 4; negative follows none.
	MaxAlternates int
	// MaxRetryAfter caps a forwarder's 508 retry-after. Default 10s.
	MaxRetryAfter time.Duration
	// LoserGrace is how long, after a winner, Dial keeps listening on the
	// other candidates whose join is unanswered, so that one that accepts
	// late is sent a leave. Default 500ms. It runs in the background; Close
	// cuts it short.
	LoserGrace time.Duration
	// LeaveTimeout is how long Close waits for the forwarder to answer the
	// leave (a losing forwarder's leave gets as long). Default 300ms.
	LeaveTimeout time.Duration
	// MediaQueue is the capacity of the Media channel; when it is full,
	// incoming packets are dropped and counted. Default 512.
	MediaQueue int

	// FailoverAfter is how long a Session lets its Conn go without an
	// authenticated keepalive answer before giving it up and re-joining.
	// Zero (the default) means 3 keepalive intervals, as the forwarder set
	// them in the session parameters (3s with the forwarder's default 1s).
	// Port unreachable and a Conn that ends re-join at once, without
	// waiting for this.
	FailoverAfter time.Duration
	// RejoinTimeout bounds one re-join of a Session, from the moment it
	// noticed the trouble: it retries the join (multi-connect across all
	// Forwarders, jittered backoff between rounds) until then, and ends
	// with ErrSessionLost if no forwarder took it back. Default 30s.
	RejoinTimeout time.Duration

	// Logger receives join, rebind and session events, never per-packet
	// lines. Default zap.NewNop().
	Logger *zap.Logger

	// creds are the token and ticket requests carry: a Session's, shared
	// by its Conns, or Dial's own.
	creds *credentials
}

// withDefaults returns a copy with every zero knob set to its default, and
// checks what cannot be defaulted.
func (c Config) withDefaults() (Config, error) {
	if len(c.Forwarders) == 0 {
		return c, fmt.Errorf("%w: Forwarders is empty; give at least one forwarder address", ErrConfig)
	}
	seen := make(map[netip.AddrPort]bool, len(c.Forwarders))
	fwd := make([]netip.AddrPort, 0, len(c.Forwarders))
	for i, a := range c.Forwarders {
		if !a.IsValid() || a.Port() == 0 {
			return c, fmt.Errorf("%w: Forwarders[%d] = %q is not an address with a port", ErrConfig, i, a)
		}
		a = unmap(a)
		if !seen[a] {
			seen[a] = true
			fwd = append(fwd, a)
		}
	}
	c.Forwarders = fwd
	tok, err := protocol.DecodeToken(c.Token)
	if err != nil {
		return c, fmt.Errorf("%w: Token: %w", ErrConfig, err)
	}
	if err := checkDeviceKey(tok, c.DeviceKey); err != nil {
		return c, err
	}
	if c.creds == nil {
		c.creds = newCredentials(c.Token, time.Now())
		c.creds.device = c.DeviceKey
	}
	c.LocalAddr = c.LocalAddr.Unmap()
	setDefault(&c.JoinTimeout, 5*time.Second)
	setDefault(&c.RetransmitInitial, 100*time.Millisecond)
	setDefault(&c.RetransmitMax, 1600*time.Millisecond)
	setDefault(&c.MaxRetryAfter, 10*time.Second)
	setDefault(&c.LoserGrace, 500*time.Millisecond)
	setDefault(&c.LeaveTimeout, 300*time.Millisecond)
	setDefault(&c.UDPHeadStart, defaultUDPHeadStart)
	setDefault(&c.UDPRetryEvery, defaultUDPRetryEvery)
	if c.PreferIPv6Within == 0 {
		c.PreferIPv6Within = defaultPreferIPv6Within
	}
	if c.PreferNearerWithin == 0 {
		c.PreferNearerWithin = defaultPreferNearerWithin
	}
	if c.MaxAlternates == 0 {
		c.MaxAlternates = 4 // negative stays: defaulting twice (Join, then Dial) must not turn "none" into 4
	}
	setDefault(&c.MediaQueue, 512)
	setDefault(&c.RejoinTimeout, 30*time.Second)
	if c.FailoverAfter < 0 {
		c.FailoverAfter = 0
	}
	if c.RetransmitMax < c.RetransmitInitial {
		c.RetransmitMax = c.RetransmitInitial
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c, nil
}

func setDefault[T time.Duration | int](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// unmap turns an IPv4-mapped IPv6 address into plain IPv4, so addresses
// compare equal however the socket reported them.
func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
