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
// Binding. On failure the session stays on the old socket.
//
// The old socket is closed at the switch; packets still in flight to it are
// lost. Rebind is bounded by ctx and Config.JoinTimeout; a refusal is
// returned as a *JoinError.
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
	resp, err := c.exchange(ctx, sock)
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
	c.mapped, c.params, c.lastAlive = resp.Mapped, sanitize(resp.Params), time.Now()
	c.mu.Unlock()
	_ = old.Close() // the reader moves on to the new socket
	c.log.Info("rebound", zap.Stringer("local", c.LocalAddr()), zap.Stringer("mapped", resp.Mapped))
	return nil
}

// exchange runs one join transaction on sock, which no reader uses yet:
// send, retransmit with backoff, until an authenticated answer.
func (c *Conn) exchange(ctx context.Context, sock *net.UDPConn) (protocol.JoinResponse, error) {
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

	tx, err := newTransaction(c.cfg.Token, false)
	if err != nil {
		return protocol.JoinResponse{}, err
	}
	buf := make([]byte, MaxPacketSize+1)
	rto, failures := c.cfg.RetransmitInitial, 0
	_, _ = sock.Write(tx.raw)
	setDeadline(time.Now().Add(rto))
	for {
		n, err := sock.Read(buf)
		switch {
		case ctx.Err() != nil:
			if e := c.Err(); e != nil {
				return protocol.JoinResponse{}, e
			}
			return protocol.JoinResponse{}, fmt.Errorf("%w (%w)", ErrJoinTimeout, ctx.Err())
		case errors.Is(err, os.ErrDeadlineExceeded):
			rto = min(2*rto, c.cfg.RetransmitMax)
			_, _ = sock.Write(tx.raw)
			setDeadline(time.Now().Add(rto))
			continue
		case err != nil:
			c.stats.readErrors.Add(1)
			if failures++; failures >= maxReadFailures || errors.Is(err, net.ErrClosed) {
				return protocol.JoinResponse{}, err
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
		if !resp.OK {
			return resp, &JoinError{Forwarder: c.fwd, Code: resp.Code, Reason: resp.Reason, Alternate: resp.Alternate, RetryAfter: resp.RetryAfter}
		}
		return resp, nil
	}
}
