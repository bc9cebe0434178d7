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
	sock, err := openSocket(local.Unmap(), c.fwd)
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
	// Cancellation wakes the blocked read through its deadline; the mutex
	// keeps a retransmission from pushing that deadline back out.
	var mu sync.Mutex
	cancelled := false
	setDeadline := func(t time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if !cancelled {
			_ = sock.SetReadDeadline(t)
		}
	}
	stopWake := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		cancelled = true
		_ = sock.SetReadDeadline(time.Now())
	})
	defer stopWake()

	var cookie []byte
	tx, err := newTransaction(c.cfg.Token, protocol.JoinOptions{})
	if err != nil {
		return protocol.JoinResponse{}, nil, err
	}
	buf := make([]byte, MaxPacketSize+1)
	rto, failures, rounds := c.cfg.RetransmitInitial, 0, 0
	_, _ = sock.Write(tx.raw)
	setDeadline(time.Now().Add(rto))
	for {
		n, err := sock.Read(buf)
		switch {
		case ctx.Err() != nil:
			if e := c.Err(); e != nil {
				return protocol.JoinResponse{}, nil, e
			}
			return protocol.JoinResponse{}, nil, fmt.Errorf("%w (%w)", ErrJoinTimeout, ctx.Err())
		case errors.Is(err, os.ErrDeadlineExceeded):
			rto = min(2*rto, c.cfg.RetransmitMax)
			_, _ = sock.Write(tx.raw)
			setDeadline(time.Now().Add(rto))
			continue
		case err != nil:
			c.stats.readErrors.Add(1)
			if failures++; failures >= maxReadFailures || errors.Is(err, net.ErrClosed) {
				return protocol.JoinResponse{}, nil, err
			}
			continue // ICMP unreachable; the deadline bounds us
		}
		failures = 0
		if protocol.Classify(buf[:n]) != protocol.KindSTUN {
			c.stats.stray.Add(1)
			continue
		}
		resp, err := protocol.ParseJoinResponse(buf[:n], tx.tid, c.key)
		if err != nil {
			c.stats.countBadResponse(err)
			continue
		}
		switch {
		case cookieChallenge(resp) && rounds < maxCookieRounds:
			rounds++
			c.stats.cookieRetries.Add(1)
			cookie = resp.Cookie
			if tx, err = newTransaction(c.cfg.Token, protocol.JoinOptions{Cookie: cookie}); err != nil {
				return protocol.JoinResponse{}, nil, err
			}
			rto = c.cfg.RetransmitInitial
			_, _ = sock.Write(tx.raw)
			setDeadline(time.Now().Add(rto))
			continue
		case cookieChallenge(resp):
			return resp, nil, cookieLoopError(c.fwd, resp)
		case !resp.OK:
			return resp, nil, &JoinError{Forwarder: c.fwd, Code: resp.Code, Reason: resp.Reason, Alternate: resp.Alternate, RetryAfter: resp.RetryAfter}
		}
		return resp, cookie, nil
	}
}
