package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Conn is a joined session on one forwarder. Its methods are safe for
// concurrent use.
//
// Media arrives on the channel Media (bounded; full means dropped and
// counted, never a blocked reader). The session ends when Close is called,
// when the forwarder refuses a keepalive for good (a *JoinError), or when no
// authenticated keepalive answer arrived within the idle timeout
// (ErrSessionLost): Done is then closed and Err says why. The relay's
// session-control messages (Rejoin, MigrateTo) arrive on Control, and ICMP
// port unreachable is reported on Unreachable. Failover to another forwarder
// is up to the caller: Session does it (Join), or Dial again.
type Conn struct {
	cfg    Config
	log    *zap.Logger
	fwd    netip.AddrPort
	stats  *counters
	dialer *dialer

	sock        atomic.Pointer[net.UDPConn] // swapped by Rebind
	lastMedia   atomic.Int64                // Unix ns of the last RTP received (transport_session.go)
	media       chan *Packet
	control     chan protocol.RelayMessage
	unreachable chan struct{} // capacity 1: a coalesced ECONNREFUSED hint
	answered    chan struct{} // capacity 1: a coalesced "a keepalive was answered"
	done        chan struct{}
	ctx         context.Context // cancelled when done closes
	stop        context.CancelFunc

	mu        sync.Mutex // guards the fields below; never held while blocking
	err       error
	mapped    netip.AddrPort
	params    protocol.SessionParams
	lastAlive time.Time
	nudgedAt  time.Time // the last keepalive sent because of a Rejoin
	// cookie is the forwarder's last address cookie for the current socket
	// (replaced, with the socket, by Rebind); every request carries it.
	// kaCookieRounds counts 401+cookie answers to keepalives since the last
	// success.
	cookie         []byte
	kaCookieRounds int
	ka             [keepaliveSlots]keepaliveTx
	kaNext         int
	// A v2 session's key (protocol/README.md 2.2), from the proof with
	// counter skeyCounter; needProof: the forwarder asked for the address
	// check, so requests carry a fresh proof until one is answered.
	skey        []byte
	skeyCounter uint64
	needProof   bool
	leaveTID    [stun.TransactionIDSize]byte
	leaveTx     *transaction               // leaveTID's, which checks its answer
	leaveCh     chan protocol.JoinResponse // the answer to leaveTID
	subs        *Subscriber                // made by the first Subscribe (subscribe.go)

	rebindMu sync.Mutex // one Rebind at a time; lock order: rebindMu, kaMu, mu
	// kaMu is held across a keepalive's check and write, so that none is
	// written after Close has begun (a keepalive that reached the forwarder
	// after the leave would join again). Lock order: kaMu, then mu.
	kaMu    sync.Mutex
	leaving bool // guarded by kaMu
	// closing is set when Close begins: from then on WriteRaw (media,
	// feedback, subscriptions) sends nothing, since a packet reaching the
	// forwarder after the leave finds no session there (it would be
	// counted as from an unknown source). Only the leave goes out.
	closing   atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup // reader and keepalive goroutines
}

func newConn(cfg Config, d *dialer, res dialResult) *Conn {
	win, resp := res.win, res.resp
	ctx, stop := context.WithCancel(context.Background())
	c := &Conn{
		cfg:         cfg,
		log:         d.log.With(zap.Stringer("forwarder", win.addr)),
		fwd:         forwarderOf(cfg, win.addr), // a bridge's address stands for its forwarder (transport.go)
		stats:       d.stats,
		dialer:      d,
		media:       make(chan *Packet, cfg.MediaQueue),
		control:     make(chan protocol.RelayMessage, controlQueue),
		unreachable: make(chan struct{}, 1),
		answered:    make(chan struct{}, 1),
		done:        make(chan struct{}),
		ctx:         ctx,
		stop:        stop,
		mapped:      resp.Mapped,
		params:      sanitize(resp.Params),
		lastAlive:   time.Now(),
		cookie:      res.cookie,
	}
	c.sock.Store(win.sock)
	c.skey = resp.SessionKey // a v2 session's key, from the join's proof
	if res.joinToken != nil {
		key := resp.SessionKey
		if key == nil {
			key = protocol.IntegrityKey(res.joinToken)
		}
		c.remember(res.joinTID, res.joinToken, key, win.sock)
	}
	// The first keepalive goes out at once, before Dial returns: it tells
	// the forwarder that it won the multi-connect race.
	c.sendKeepalive(time.Now())
	c.wg.Add(2)
	go c.readLoop()
	go c.keepaliveLoop()
	return c
}

// Keepalive bounds: a forwarder's parameters are authenticated, but a zero or
// tiny interval would still spin.
const (
	minKeepalive     = 10 * time.Millisecond
	defaultKeepalive = 5 * time.Second
)

// sanitize fills in missing session parameters: an idle timeout not longer
// than the interval would lose every session, so it becomes 3 intervals.
func sanitize(p protocol.SessionParams) protocol.SessionParams {
	if p.KeepaliveInterval <= 0 {
		p.KeepaliveInterval = defaultKeepalive
	}
	p.KeepaliveInterval = max(p.KeepaliveInterval, minKeepalive)
	if p.IdleTimeout <= p.KeepaliveInterval {
		p.IdleTimeout = 3 * p.KeepaliveInterval
	}
	return p
}

// Media returns the channel of received RTP and RTCP packets, in arrival
// order. It holds at most Config.MediaQueue packets; when the consumer falls
// behind, newer packets are dropped (Stats.MediaDropped). It is closed after
// the session ends. Release each Packet when done with it.
func (c *Conn) Media() <-chan *Packet { return c.media }

// Done is closed when the session has ended; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the session lives, then ErrClosed after Close, an error
// wrapping ErrSessionLost, or the forwarder's *JoinError.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Forwarder is the address of the forwarder serving the session.
func (c *Conn) Forwarder() netip.AddrPort { return c.fwd }

// LocalAddr is the current socket's local address (it changes on Rebind).
func (c *Conn) LocalAddr() netip.AddrPort {
	if a, ok := c.sock.Load().LocalAddr().(*net.UDPAddr); ok {
		return unmap(a.AddrPort())
	}
	return netip.AddrPort{}
}

// MappedAddr is the device's address as the forwarder last saw it
// (XOR-MAPPED-ADDRESS): behind a NAT, the public one.
func (c *Conn) MappedAddr() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mapped
}

// Params are the session parameters the forwarder last gave.
func (c *Conn) Params() protocol.SessionParams {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.params
}

// Stats returns the counters since Dial began.
func (c *Conn) Stats() Stats { return c.stats.snapshot() }

// WriteRTP sends one RTP packet (as built by Sender.Seal) to the forwarder,
// which relays it byte-exact to the other members of the call.
func (c *Conn) WriteRTP(pkt []byte) error {
	if protocol.Classify(pkt) != protocol.KindRTP {
		return fmt.Errorf("%w (%d bytes)", ErrNotMedia, len(pkt))
	}
	return c.WriteRaw(pkt)
}

// WriteRaw sends b as one datagram, unchecked: for tests and for the load
// tester's bad-input cases.
func (c *Conn) WriteRaw(b []byte) error {
	if c.closing.Load() {
		return ErrClosed
	}
	if err := c.send(b); err != nil {
		return err
	}
	c.stats.packetsSent.Add(1)
	c.stats.bytesSent.Add(uint64(len(b)))
	return nil
}

// WriteRTCP sends a compound RTCP packet (feedback to the relay and the other
// members: receiver reports, NACK, PLI, REMB, relay APP packets). RTCP is not
// end-to-end encrypted: the relay reads it.
func (c *Conn) WriteRTCP(pkts ...rtcp.Packet) error {
	b, err := rtcp.Marshal(pkts)
	if err != nil {
		return fmt.Errorf("client: marshal RTCP: %w", err)
	}
	return c.WriteRaw(b)
}

// send writes one datagram on the current socket.
func (c *Conn) send(b []byte) error {
	select {
	case <-c.done:
		return c.Err()
	default:
	}
	sock := c.sock.Load()
	_, err := sock.Write(b)
	if err != nil && errors.Is(err, net.ErrClosed) {
		if now := c.sock.Load(); now != sock { // Rebind swapped sockets meanwhile
			_, err = now.Write(b)
		}
	}
	if err != nil {
		c.stats.sendErrors.Add(1)
		c.refused(err)
		if e := c.Err(); e != nil {
			return e
		}
		return fmt.Errorf("client: send to %s: %w", c.fwd, err)
	}
	return nil
}

// Close ends the session: it sends a leave (with the socket's address
// cookie, repeated at once with a new one if the forwarder asks) and waits up
// to Config.LeaveTimeout for the forwarder's answer (best effort), then
// closes the socket and waits for the Conn's goroutines. Close is idempotent
// and always returns nil.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		c.kaMu.Lock()
		c.leaving = true
		c.kaMu.Unlock()
		if c.Err() == nil {
			answered := c.leave()
			c.log.Debug("left the call", zap.Bool("answered", answered))
		}
		c.finish(ErrClosed)
		c.dialer.cancelGrace()
		c.wg.Wait()
	})
	return nil
}

// leave sends the leave request, retransmitting, until the forwarder answers
// (any authenticated answer but the address check's 401 with a cookie, which
// repeats the leave with that cookie at once, at most maxCookieRounds times),
// the session ends or LeaveTimeout passes. It reports whether the leave was
// answered.
func (c *Conn) leave() bool {
	c.mu.Lock()
	cookie, session := c.cookie, c.sessionKey()
	c.mu.Unlock()
	deadline := time.NewTimer(c.cfg.LeaveTimeout)
	defer deadline.Stop()
	retransmit := time.NewTimer(time.Hour)
	defer retransmit.Stop()
	for rounds := 0; ; rounds++ {
		tx, err := newTransaction(c.cfg.creds, protocol.JoinOptions{Leave: true, Cookie: cookie}, session)
		if err != nil {
			return false
		}
		// A channel per transaction: a late answer to the previous one
		// cannot be taken for this one's.
		answered := make(chan protocol.JoinResponse, 1)
		c.mu.Lock()
		c.leaveTID, c.leaveTx, c.leaveCh = tx.tid, tx, answered
		c.mu.Unlock()
		resp, ok := c.leaveRound(tx, answered, deadline.C, retransmit)
		switch {
		case !ok:
			return false
		case !cookieChallenge(resp):
			return true
		case rounds >= maxCookieRounds:
			c.log.Info("leave: address check still failing", zap.Error(cookieLoopError(c.fwd, resp)))
			return false
		}
		c.stats.cookieRetries.Add(1)
		cookie, session = resp.Cookie, nil // a v2 leave from a new path carries a proof
	}
}

// leaveRound sends one leave transaction, retransmitting, until its answer
// (ok), the session's end or the deadline (not ok).
func (c *Conn) leaveRound(tx *transaction, answered <-chan protocol.JoinResponse, deadline <-chan time.Time, retransmit *time.Timer) (protocol.JoinResponse, bool) {
	rto := c.cfg.RetransmitInitial
	retransmit.Reset(rto)
	for {
		_ = c.send(tx.raw)
		select {
		case resp := <-answered:
			return resp, true
		case <-c.done:
			return protocol.JoinResponse{}, false
		case <-deadline:
			return protocol.JoinResponse{}, false
		case <-retransmit.C:
			rto = min(2*rto, c.cfg.RetransmitMax)
			retransmit.Reset(rto)
		}
	}
}

// finish ends the session once: records why, closes Done and the socket
// (which stops the reader).
func (c *Conn) finish(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	c.stop()
	_ = c.sock.Load().Close()
	c.mu.Unlock()
	if !errors.Is(err, ErrClosed) {
		c.log.Warn("session ended", zap.Error(err))
	}
}
