package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Rebind moves the session to a new local socket, bound to local (the zero
// Addr for the unspecified address), as when a device moves from WiFi to
// cellular. It sends the join from the new socket, retransmitting, and
// switches over only once the forwarder has answered with an authenticated
// success: the forwarder accepts a new source address only after that
// Binding, and only with an address cookie for the new socket (its first
// answer is a 401 with one; the join is repeated with it at once). On
// failure the session stays on the old socket.
//
// The old socket is closed at the switch; packets still in flight to it are
// lost. Right after the switch a keepalive goes out from the new socket, so
// that a keepalive still in flight from the old one cannot leave the
// forwarder pointing at the old address until the next interval. Rebind is
// bounded by ctx and Config.JoinTimeout; a refusal is returned as a
// *JoinError.
func (c *Conn) Rebind(ctx context.Context, local netip.Addr) error {
	c.rebindMu.Lock()
	defer c.rebindMu.Unlock()
	if err := c.Err(); err != nil {
		return err
	}
	sock, err := openSocket(local.Unmap(), c.cfg.route(c.fwd))
	if err != nil {
		return fmt.Errorf("client: rebind to %s: %w", local, err)
	}
	resp, cookie, err := c.exchange(ctx, sock)
	if err != nil {
		_ = sock.Close()
		return fmt.Errorf("client: rebind to %s: %w", local, err)
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		_ = sock.Close()
		return err
	}
	old := c.sock.Swap(sock)
	c.cookie, c.kaCookieRounds = cookie, 0 // the old socket's cookie is worth nothing here
	c.mapped, c.params, c.lastAlive = resp.Mapped, sanitize(resp.Params), time.Now()
	c.mu.Unlock()
	_ = old.Close() // the reader moves on to the new socket
	c.sendKeepalive(time.Now())
	c.log.Info("rebound", zap.Stringer("local", c.LocalAddr()), zap.Stringer("mapped", resp.Mapped))
	return nil
}

// exchange runs the join on sock, which no reader uses yet: send,
// retransmit with backoff, until an authenticated answer; after a 401 with a
// cookie, the same with a new transaction carrying it (at most
// maxCookieRounds times). It returns the answer and sock's cookie.
func (c *Conn) exchange(ctx context.Context, sock *net.UDPConn) (protocol.JoinResponse, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.JoinTimeout)
	defer cancel()
	stopOnDone := context.AfterFunc(c.ctx, cancel) // the session ended meanwhile
	defer stopOnDone()
	j := newSocketJoin(ctx, c, sock)
	defer j.release()

	var cookie []byte
	if err := j.send(protocol.JoinOptions{}); err != nil {
		return protocol.JoinResponse{}, nil, err
	}
	rounds := 0
	for {
		resp, err := j.answer(ctx)
		if err != nil {
			return protocol.JoinResponse{}, nil, err
		}
		switch {
		case cookieChallenge(resp) && rounds < maxCookieRounds:
			rounds++
			c.stats.cookieRetries.Add(1)
			cookie = resp.Cookie
			if err := j.send(protocol.JoinOptions{Cookie: cookie}); err != nil {
				return protocol.JoinResponse{}, nil, err
			}
		case cookieChallenge(resp):
			return resp, nil, cookieLoopError(c.fwd, resp)
		case !resp.OK:
			return resp, nil, &JoinError{Forwarder: c.fwd, Code: resp.Code, Reason: resp.Reason, Alternate: resp.Alternate, RetryAfter: resp.RetryAfter}
		default:
			return resp, cookie, nil
		}
	}
}

// socketJoin is Rebind's join transaction on a socket of its own: it sends
// the current transaction, retransmits it with backoff and reads until an
// authenticated answer to it.
type socketJoin struct {
	c    *Conn
	sock *net.UDPConn
	buf  []byte
	tx   *transaction
	rto  time.Duration

	// The context's end wakes the blocked read through its deadline;
	// mu and settled keep a retransmission from pushing that deadline
	// back out, and the wake-up from firing once the join has let go of
	// the socket.
	mu       sync.Mutex
	settled  bool
	stopWake func() bool
}

// newSocketJoin prepares a join on sock that ends with ctx.
func newSocketJoin(ctx context.Context, c *Conn, sock *net.UDPConn) *socketJoin {
	j := &socketJoin{c: c, sock: sock, buf: make([]byte, MaxPacketSize+1)}
	j.stopWake = context.AfterFunc(ctx, func() {
		j.mu.Lock()
		defer j.mu.Unlock()
		if !j.settled {
			j.settled = true
			_ = sock.SetReadDeadline(time.Now())
		}
	})
	return j
}

// release lets go of the socket: no wake-up any more and no read
// deadline, which would otherwise time the session's reader out once
// the socket is the session's.
func (j *socketJoin) release() {
	j.stopWake()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.settled = true
	_ = j.sock.SetReadDeadline(time.Time{})
}

// send starts a new transaction with o, from the initial retransmission
// timeout.
func (j *socketJoin) send(o protocol.JoinOptions) error {
	tx, err := newTransaction(j.c.cfg.creds, o, nil) // a new path: with a v2 token, a fresh proof
	if err != nil {
		return err
	}
	j.tx, j.rto = tx, j.c.cfg.RetransmitInitial
	j.transmit()
	return nil
}

// retransmit sends the transaction again after a doubled timeout.
func (j *socketJoin) retransmit() {
	j.rto = min(2*j.rto, j.c.cfg.RetransmitMax)
	j.transmit()
}

func (j *socketJoin) transmit() {
	_, _ = j.sock.Write(j.tx.raw)
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.settled {
		_ = j.sock.SetReadDeadline(time.Now().Add(j.rto))
	}
}

// answer reads until an authenticated answer to the transaction,
// retransmitting at each timeout. Anything else is counted and skipped;
// it fails when ctx ends (with the session's error if the session ended)
// or the socket keeps failing.
func (j *socketJoin) answer(ctx context.Context) (protocol.JoinResponse, error) {
	c := j.c
	failures := 0
	for {
		n, err := j.sock.Read(j.buf)
		switch {
		case ctx.Err() != nil:
			if e := c.Err(); e != nil {
				return protocol.JoinResponse{}, e
			}
			return protocol.JoinResponse{}, fmt.Errorf("%w (%w)", ErrJoinTimeout, ctx.Err())
		case errors.Is(err, os.ErrDeadlineExceeded):
			j.retransmit()
			continue
		case err != nil:
			c.stats.readErrors.Add(1)
			if failures++; failures >= maxReadFailures || errors.Is(err, net.ErrClosed) {
				return protocol.JoinResponse{}, err
			}
			continue // ICMP unreachable; the deadline bounds us
		}
		failures = 0
		if protocol.Classify(j.buf[:n]) != protocol.KindSTUN {
			c.stats.stray.Add(1)
			continue
		}
		resp, err := j.tx.parse(j.buf[:n])
		if err != nil {
			c.stats.countBadResponse(err)
			continue
		}
		if resp.OK {
			c.cfg.creds.keep(resp.Ticket, j.tx.token)
			c.adoptKey(resp, j.tx) // the forwarder re-keyed the session on this proof
			c.remember(j.tx.tid, j.tx.token, j.tx.macKey(resp), j.sock)
		}
		return resp, nil
	}
}
