package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/rtcp"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Session is a participant's place in a call that outlives any one
// forwarder. It holds one Conn at a time and replaces it when the forwarder
// dies, loses the session or asks the device to move:
//
//   - Failover: the Conn ended (ErrSessionLost), went FailoverAfter without
//     an authenticated keepalive answer, or its socket reported port
//     unreachable (the forwarder process died on a live host). The Session
//     joins again through multi-connect on every configured forwarder, the
//     old one last (left out after port unreachable, unless it is the only
//     one), retrying with jittered backoff for up to RejoinTimeout. Media
//     written meanwhile is dropped and counted, not queued: it would be
//     stale by the time it could go out.
//   - Rejoin nudge: the forwarder says it does not know the device at this
//     address (it restarted, or a load balancer moved the flow to a peer
//     behind the same address). The Conn at once re-sends its join from the
//     same socket, as the protocol asks; if no authenticated answer comes
//     within a few round trips (at least 250ms), the Session joins anew, the
//     current forwarder first, then the configured ones: never an address a
//     nudge could bring in (it names none). Nudges are not authenticated: a
//     forged one costs one keepalive to the current forwarder, and at most
//     one a second is acted upon.
//   - MigrateTo: make-before-break. The Session joins the named forwarder
//     (only it; if it does not take the device, the configured forwarders
//     but the draining one) while media keeps flowing on the old Conn, then
//     switches and closes the old Conn, which sends the leave. The join
//     sends the token to the named address, so only an authenticated
//     MigrateTo gets here (the Conn drops the others: it must echo one of
//     the Conn's recent requests and carry a MAC under that request's token
//     key, protocol/README.md 5.7); a forwarder names only a forwarder of
//     its cluster it hears as alive, or its configured alternate. One whose
//     target does not take the device costs one failed join (bounded by
//     JoinTimeout, or half the deadline), then the fallback (a
//     make-before-break move to another configured forwarder, if there is
//     one); with no other forwarder configured, the old Conn simply goes
//     on.
//
// Every join and keepalive carries the latest token and the latest
// resumption ticket the forwarders gave the session for it (protocol/README.md
// 2.1), so all of the above works after the token has expired: any forwarder
// of the cluster takes the participant back on its ticket. With
// Config.TokenSource the Session also renews its token before it expires.
// A re-join refused 401 (the token and ticket no good) asks the TokenSource
// for a fresh token once; refused again, or with no TokenSource, the Session
// ends at once with ErrUnauthorized (wrapped in ErrSessionLost), not after
// RejoinTimeout.
//
// During a switch, packets from the old and the new Conn both arrive on
// Media. The methods are safe for concurrent use.
type Session struct {
	cfg Config
	log *zap.Logger

	media   chan *Packet
	events  chan SessionEvent
	closing chan struct{}
	done    chan struct{}
	ctx     context.Context // cancelled when the Session ends: attempts stop
	cancel  context.CancelFunc

	mu        sync.Mutex // guards the fields below; never held while blocking
	conn      *Conn      // the current Conn; replaced only by run
	rejoining bool       // conn is given up and a replacement is being joined
	err       error
	lastGap   time.Duration

	failovers, rejoins, migrations, migrationsFailed atomic.Uint64
	nudges, ignored, droppedRejoining                atomic.Uint64
	mediaDropped, eventsDropped                      atomic.Uint64
	tokenRefreshes, tokenErrors                      atomic.Uint64
	transportMoves, spares, sparesClosed, probes     atomic.Uint64
	refreshMu                                        sync.Mutex // one TokenSource call at a time (refresh.go)

	// Supervisor state, touched only by run.
	att         *attempt  // the re-join or migration in flight
	watch       bool      // conn is still watched (not given up)
	nudge       time.Time // an unconfirmed in-place rejoin: when its keepalive went
	confirmed   time.Time // the last in-place rejoin confirmed
	lastMigrate time.Time
	udpRetry    time.Time // on TCP or TLS: when to try UDP again (transport_session.go)
	probe       time.Time // on UDP: the last probe keepalive sent after media stopped
	spareFor    time.Time // on UDP: the last answer before the last spare leg opened

	closeOnce sync.Once
	wg        sync.WaitGroup // attempts and retiring Conns
	pumps     sync.WaitGroup // one per Conn, copying its Media
}

// EventKind says what a SessionEvent reports.
type EventKind uint8

// Session event kinds.
const (
	// EventFailover: the forwarder died or went silent; the Session joined
	// again (elsewhere, or on the same forwarder from a new socket).
	EventFailover EventKind = iota + 1
	// EventRejoined: after a Rejoin nudge, the forwarder took the device
	// back, in place (From == To) or through a new join.
	EventRejoined
	// EventMigrated: after a MigrateTo, the Session moved, make-before-break.
	EventMigrated
	// EventMigrateFailed: after a MigrateTo, no forwarder took the device;
	// it stays on the old one (From). Err says why.
	EventMigrateFailed
	// EventLost: no forwarder took the session back within RejoinTimeout,
	// or the forwarder refused it for good; the Session has ended. Err says
	// why.
	EventLost
	// EventTransport: the Session moved to another transport of the same
	// forwarder, make-before-break (Transport says which): from UDP that
	// was failing to a spare TCP or TLS leg, or from TCP or TLS back to UDP
	// when UDP answered again (transport_session.go).
	EventTransport
)

func (k EventKind) String() string {
	switch k {
	case EventFailover:
		return "failover"
	case EventRejoined:
		return "rejoined"
	case EventMigrated:
		return "migrated"
	case EventMigrateFailed:
		return "migrate-failed"
	case EventLost:
		return "lost"
	case EventTransport:
		return "transport"
	default:
		return fmt.Sprintf("event-%d", uint8(k))
	}
}

// SessionEvent is one change of forwarder (or a failure to change).
type SessionEvent struct {
	Kind     EventKind
	From, To netip.AddrPort // the forwarder before and after (To is the target for EventMigrateFailed)
	// Took is the time from noticing the trouble (or receiving the Rejoin or
	// MigrateTo) to the new Conn being up, or to giving up.
	Took time.Duration
	Err  error // with EventMigrateFailed and EventLost
	// Transport is how the Session reaches To from now on: udp, tcp or tls
	// (transport.go).
	Transport Transport
}

// SessionStats are a Session's counters, and its current Conn's.
type SessionStats struct {
	Failovers        uint64 // EventFailover
	Rejoins          uint64 // EventRejoined
	Migrations       uint64 // EventMigrated
	MigrationsFailed uint64 // EventMigrateFailed
	// RejoinNudges counts Rejoin messages from the current forwarder;
	// ControlIgnored those Rejoin and MigrateTo messages not acted upon
	// (rate-limited, another re-join or migration in flight, a MigrateTo to
	// the current forwarder).
	RejoinNudges   uint64
	ControlIgnored uint64
	// DroppedWhileRejoining counts datagrams the application wrote while
	// the Session had no usable forwarder: dropped, not queued.
	DroppedWhileRejoining uint64
	// MediaDropped counts received packets dropped because the Session's
	// Media channel was full; EventsDropped events dropped because Events
	// was.
	MediaDropped  uint64
	EventsDropped uint64
	// LastGap is how long the last failover, rejoin or migration took from
	// noticing the trouble to the new Conn being up.
	LastGap time.Duration
	// TokenRefreshes counts fresh tokens taken from Config.TokenSource;
	// TokenErrors its failures (errors, or a token for another
	// participant or no later than the current one).
	TokenRefreshes uint64
	TokenErrors    uint64
	// HasTicket: the Session holds a resumption ticket, so it can come
	// back after its token expires: bound to its current token, or, until
	// a forwarder binds one to a refreshed token, to the token before it.
	HasTicket bool
	// TransportMoves counts EventTransport. SpareLegs counts TCP/TLS legs
	// opened beside a suspect UDP path, SpareLegsClosed those closed
	// because UDP answered again first, Probes the keepalives sent at once
	// because media stopped (transport_session.go).
	TransportMoves  uint64
	SpareLegs       uint64
	SpareLegsClosed uint64
	Probes          uint64
	// Conn is the current Conn's Stats (counted since its Dial).
	Conn Stats
}

// eventQueue is the capacity of Events; when full, events are dropped and
// counted.
const eventQueue = 16

// Re-join backoff between multi-connect rounds: doubling from the minimum
// to the maximum, each wait drawn from its upper half.
const (
	rejoinBackoffMin = 200 * time.Millisecond
	rejoinBackoffMax = 5 * time.Second
)

// Join dials through multi-connect (as Dial) and keeps the participant's
// place in the call from then on, across forwarders, until Close or until
// it is lost (Done, Err). ctx bounds the first join only.
func Join(ctx context.Context, cfg Config) (*Session, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	tok, _ := protocol.DecodeToken(cfg.Token) // checked by withDefaults
	sctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		cfg:     cfg,
		log:     cfg.Logger.With(zap.Stringer("call", tok.CallID), zap.Stringer("participant", tok.ParticipantID)),
		media:   make(chan *Packet, cfg.MediaQueue),
		events:  make(chan SessionEvent, eventQueue),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		ctx:     sctx,
		cancel:  cancel,
		conn:    c,
		watch:   true,
	}
	s.pumps.Add(1)
	go s.pump(c)
	if cfg.TokenSource != nil {
		s.wg.Add(1)
		go s.refreshLoop()
	}
	go s.run()
	return s, nil
}

// Media returns the channel of RTP and RTCP packets received from whichever
// forwarder serves the Session, across switches. It holds at most
// Config.MediaQueue packets; when full, packets are dropped and counted
// (SessionStats.MediaDropped). It is closed after the Session ends. Release
// each Packet when done with it.
func (s *Session) Media() <-chan *Packet { return s.media }

// Events returns the channel of failovers, rejoins and migrations. It holds
// at most 16 events (when full, newer ones are dropped and counted) and is
// closed after the Session ends.
func (s *Session) Events() <-chan SessionEvent { return s.events }

// Done is closed when the Session has ended; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is nil while the Session lives, then ErrClosed after Close, or an
// error wrapping ErrSessionLost (no forwarder took it back within
// RejoinTimeout) or the forwarder's *JoinError (refused for good).
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Forwarder is the address of the forwarder serving the Session now.
func (s *Session) Forwarder() netip.AddrPort { return s.current().Forwarder() }

// LocalAddr is the local address of the current Conn's socket.
func (s *Session) LocalAddr() netip.AddrPort { return s.current().LocalAddr() }

func (s *Session) current() *Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// Stats returns the Session's counters and its current Conn's.
func (s *Session) Stats() SessionStats {
	s.mu.Lock()
	c, gap := s.conn, s.lastGap
	s.mu.Unlock()
	return SessionStats{
		Failovers:             s.failovers.Load(),
		Rejoins:               s.rejoins.Load(),
		Migrations:            s.migrations.Load(),
		MigrationsFailed:      s.migrationsFailed.Load(),
		RejoinNudges:          s.nudges.Load(),
		ControlIgnored:        s.ignored.Load(),
		DroppedWhileRejoining: s.droppedRejoining.Load(),
		MediaDropped:          s.mediaDropped.Load(),
		EventsDropped:         s.eventsDropped.Load(),
		LastGap:               gap,
		TokenRefreshes:        s.tokenRefreshes.Load(),
		TokenErrors:           s.tokenErrors.Load(),
		HasTicket:             s.cfg.creds.hasTicket(),
		TransportMoves:        s.transportMoves.Load(),
		SpareLegs:             s.spares.Load(),
		SpareLegsClosed:       s.sparesClosed.Load(),
		Probes:                s.probes.Load(),
		Conn:                  c.Stats(),
	}
}

// WriteRTP sends one RTP packet to the current forwarder. While the Session
// is re-joining, the packet is dropped and counted
// (SessionStats.DroppedWhileRejoining) and WriteRTP returns nil; during a
// migration it goes to the old forwarder until the new one is joined.
func (s *Session) WriteRTP(pkt []byte) error {
	if protocol.Classify(pkt) != protocol.KindRTP {
		return fmt.Errorf("%w (%d bytes)", ErrNotMedia, len(pkt))
	}
	return s.WriteRaw(pkt)
}

// WriteRTCP sends a compound RTCP packet to the current forwarder, as
// Conn.WriteRTCP, dropped like WriteRTP while re-joining.
func (s *Session) WriteRTCP(pkts ...rtcp.Packet) error {
	b, err := rtcp.Marshal(pkts)
	if err != nil {
		return fmt.Errorf("client: marshal RTCP: %w", err)
	}
	return s.WriteRaw(b)
}

// WriteRaw sends b as one datagram, unchecked, to the current forwarder,
// dropped like WriteRTP while re-joining.
func (s *Session) WriteRaw(b []byte) error {
	s.mu.Lock()
	c, rejoining, err := s.conn, s.rejoining, s.err
	s.mu.Unlock()
	switch {
	case err != nil:
		return err
	case rejoining:
		s.droppedRejoining.Add(1)
		return nil
	}
	if err := c.WriteRaw(b); err != nil {
		if c.Err() != nil || errors.Is(err, syscall.ECONNREFUSED) {
			// The Conn ended or its forwarder is unreachable: the supervisor
			// is re-joining, or has just switched.
			s.droppedRejoining.Add(1)
			return nil
		}
		return err
	}
	return nil
}

// Close ends the Session: it stops any re-join or migration in flight,
// leaves the current forwarder (Conn.Close: bounded by LeaveTimeout), waits
// for the Session's goroutines, and closes Media and Events. It is
// idempotent and always returns nil.
func (s *Session) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	<-s.done
	return nil
}

// pump copies c's media to the Session's channel until c ends.
func (s *Session) pump(c *Conn) {
	defer s.pumps.Done()
	for p := range c.Media() {
		select {
		case s.media <- p:
		default:
			s.mediaDropped.Add(1)
			p.Release()
		}
	}
}

// emit sends an event without blocking; run is the only sender.
func (s *Session) emit(ev SessionEvent) {
	select {
	case s.events <- ev:
	default:
		s.eventsDropped.Add(1)
	}
}

// failoverAfter is Config.FailoverAfter or 3 of c's keepalive intervals.
func (s *Session) failoverAfter(c *Conn) time.Duration {
	if s.cfg.FailoverAfter > 0 {
		return s.cfg.FailoverAfter
	}
	return 3 * c.Params().KeepaliveInterval
}

// nudgeWindow is how long an in-place rejoin may take before the Session
// joins anew: eight round trips (a cookie round and a lost packet's worth),
// between 250ms and 2s.
func nudgeWindow(c *Conn) time.Duration {
	return min(max(8*time.Duration(c.stats.rtt.Load()), 250*time.Millisecond), 2*time.Second)
}

// candidates lists the configured forwarders for a multi-connect: front
// first (if valid), back last (if valid), the rest in configured order.
// With omitBack, back is left out, unless nothing else would remain.
func (s *Session) candidates(front, back netip.AddrPort, omitBack bool) []netip.AddrPort {
	var out []netip.AddrPort
	if front.IsValid() {
		out = append(out, front)
	}
	for _, a := range s.cfg.Forwarders {
		if a != front && a != back {
			out = append(out, a)
		}
	}
	if back.IsValid() && back != front && (!omitBack || len(out) == 0) {
		out = append(out, back)
	}
	return out
}

// dial runs one multi-connect join on the given forwarders.
func (s *Session) dial(ctx context.Context, fwds []netip.AddrPort) (*Conn, error) {
	cfg := s.cfg
	cfg.Forwarders = fwds
	return Dial(ctx, cfg)
}

// rejoin joins through multi-connect on cands, then, round after round with
// jittered backoff, on every configured forwarder (old last), until one
// accepts or RejoinTimeout has passed since began.
func (s *Session) rejoin(ctx context.Context, began time.Time, cands []netip.AddrPort, old netip.AddrPort) (*Conn, error) {
	ctx, cancel := context.WithDeadline(ctx, began.Add(s.cfg.RejoinTimeout))
	defer cancel()
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	fresh := false // a fresh token was taken for this re-join
	for backoff := rejoinBackoffMin; ; backoff = min(2*backoff, rejoinBackoffMax) {
		sent, _, _ := s.cfg.creds.request()
		c, err := s.dial(ctx, cands)
		if err == nil {
			return c, nil
		}
		if credentialRefusal(err) && ctx.Err() == nil {
			// Refused for good unless a new token turns up: retrying the
			// same credentials until RejoinTimeout would change nothing.
			if final := s.renewAfterRefusal(ctx, sent, &fresh, err); final != nil {
				return nil, final
			}
			continue
		}
		s.log.Info("re-join failed, retrying", zap.Error(err))
		wait.Reset(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: no forwarder took the session back within %v: %w",
				ErrSessionLost, s.cfg.RejoinTimeout, err)
		case <-wait.C:
		}
		cands = s.candidates(netip.AddrPort{}, old, false)
	}
}

// migrate joins target alone; if it does not accept, every configured
// forwarder but old (the draining one) and target.
func (s *Session) migrate(ctx context.Context, target, old netip.AddrPort, deadline time.Duration) (*Conn, error) {
	tctx, cancel := context.WithTimeout(ctx, migrateTimeout(s.cfg.JoinTimeout, deadline))
	c, err := s.dial(tctx, []netip.AddrPort{target})
	cancel()
	if err == nil {
		return c, nil
	}
	var rest []netip.AddrPort
	for _, a := range s.cfg.Forwarders {
		if a != old && a != target {
			rest = append(rest, a)
		}
	}
	if len(rest) == 0 || ctx.Err() != nil {
		return nil, fmt.Errorf("client: migrate to %s: %w", target, err)
	}
	s.log.Info("migration target did not take the session; trying the other forwarders",
		zap.Stringer("target", target), zap.Error(err))
	c, err2 := s.dial(ctx, rest)
	if err2 != nil {
		return nil, fmt.Errorf("client: migrate to %s: %w", target, multiError{err, err2})
	}
	return c, nil
}

// migrateTimeout bounds the join on a MigrateTo's target: JoinTimeout, or
// half the old forwarder's deadline (at least 500ms) if that is shorter, so
// that the fallback still has time before the old forwarder lets go.
func migrateTimeout(join, deadline time.Duration) time.Duration {
	if deadline <= 0 {
		return join
	}
	return min(join, max(deadline/2, 500*time.Millisecond))
}
