package client

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// keepaliveSlots outstanding keepalive transactions are remembered; an answer
// to an older one is stray. Each keepalive is a new transaction, so a
// replayed old success cannot fake liveness.
const keepaliveSlots = 8

type keepaliveTx struct {
	tid  [stun.TransactionIDSize]byte
	sent time.Time
	live bool
	sock *net.UDPConn // sent from: a cookie in the answer is for this socket only
	// token the keepalive carried and the key a MigrateTo echoing it is
	// signed with (the token's integrity key, or a v2 session's key; the
	// token changes when the Session refreshes it); tx checks its answer.
	token, key []byte
	tx         *transaction
}

// sessionKey is the v2 session key the next request is under, or nil
// when it must carry a proof (none yet, or the forwarder asked for the
// address check). c.mu must be held.
func (c *Conn) sessionKey() []byte {
	if c.needProof {
		return nil
	}
	return c.skey
}

// adoptKey takes the session key of a proof's success answer, unless a
// later proof's key was taken already; it returns the key.
func (c *Conn) adoptKey(resp protocol.JoinResponse, tx *transaction) {
	if resp.SessionKey == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if tx.counter >= c.skeyCounter {
		c.skey, c.skeyCounter, c.needProof = resp.SessionKey, tx.counter, false
	}
}

// readLoop is the Conn's only reader: it reads the current socket into
// pooled packets, passes media to the Media channel (dropping when full),
// answers its own STUN transactions and counts everything else.
func (c *Conn) readLoop() {
	defer c.wg.Done()
	defer close(c.control)
	defer close(c.media)
	p := getPacket()
	defer func() { p.Release() }()
	failures := 0
	for {
		sock := c.sock.Load()
		n, err := sock.Read(p.buf[:])
		if err != nil {
			if c.Err() != nil {
				return
			}
			if errors.Is(err, net.ErrClosed) && c.sock.Load() != sock {
				continue // Rebind moved us to a new socket
			}
			c.stats.readErrors.Add(1)
			c.refused(err)
			if failures++; failures < maxReadFailures && !errors.Is(err, net.ErrClosed) {
				continue // ICMP unreachable: transient, the idle timeout decides
			}
			c.finish(fmt.Errorf("%w: read: %w", ErrSessionLost, err))
			return
		}
		failures = 0
		if n > MaxPacketSize {
			c.stats.stray.Add(1)
			continue
		}
		switch kind := protocol.Classify(p.buf[:n]); kind {
		case protocol.KindRTP, protocol.KindRTCP:
			c.stats.packetsReceived.Add(1)
			c.stats.bytesReceived.Add(uint64(n))
			data := p.buf[:n]
			if kind == protocol.KindRTCP {
				if data = c.takeControl(data); len(data) == 0 {
					continue // only session control: nothing for Media
				}
			}
			p.Kind, p.Data, p.Received = kind, data, time.Now()
			if kind == protocol.KindRTP {
				c.lastMedia.Store(p.Received.UnixNano())
			}
			select {
			case c.media <- p:
				p = getPacket()
			default:
				c.stats.dropped.Add(1)
			}
		case protocol.KindSTUN:
			c.handleSTUN(p.buf[:n], sock)
		default:
			c.stats.stray.Add(1)
		}
	}
}

// handleSTUN acts on an answer, read from sock, to one of our keepalive or
// leave transactions, and only after its integrity checked.
func (c *Conn) handleSTUN(raw []byte, sock *net.UDPConn) {
	var tid [stun.TransactionIDSize]byte
	copy(tid[:], raw[8:20]) // Classify guaranteed the 20-byte header
	c.mu.Lock()
	slot := c.findKeepalive(tid)
	leaveCh := c.leaveCh
	isLeave := leaveCh != nil && tid == c.leaveTID
	var tx *transaction
	switch {
	case isLeave:
		tx = c.leaveTx
	case slot >= 0:
		tx = c.ka[slot].tx
	}
	c.mu.Unlock()
	if slot < 0 && !isLeave {
		c.stats.stray.Add(1)
		return
	}
	resp, err := tx.parse(raw)
	if err != nil {
		c.stats.countBadResponse(err)
		return
	}
	now := time.Now()
	if isLeave {
		if cookieChallenge(resp) {
			c.setCookie(sock, resp.Cookie)
		}
		select {
		case leaveCh <- resp:
		default:
		}
		return
	}
	c.mu.Lock()
	ka := c.ka[slot]
	c.ka[slot].live = false // count an answer once, however often it is retransmitted
	c.mu.Unlock()
	if ka.live && ka.tid == tid {
		if resp.OK {
			c.cfg.creds.keep(resp.Ticket, ka.token)
			c.adoptKey(resp, ka.tx)
			if resp.SessionKey != nil {
				c.mu.Lock()
				if c.ka[slot].tid == tid {
					c.ka[slot].key = resp.SessionKey
				}
				c.mu.Unlock()
			}
		}
		c.onKeepaliveAnswer(resp, now.Sub(ka.sent), ka.sock)
	}
}

// setCookie keeps a cookie the forwarder gave sock, if sock is still the
// current socket (a cookie is worth nothing from another address), and
// reports whether it was.
func (c *Conn) setCookie(sock *net.UDPConn, cookie []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sock.Load() != sock {
		return false
	}
	c.cookie = cookie
	return true
}

// remember puts a request that was answered success outside the keepalive
// loop (the join, a rebind) into the ring, not live, so that a MigrateTo
// may echo it (requestKey).
func (c *Conn) remember(tid [stun.TransactionIDSize]byte, token, key []byte, sock *net.UDPConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ka[c.kaNext] = keepaliveTx{tid: tid, sock: sock, token: token, key: key}
	c.kaNext = (c.kaNext + 1) % keepaliveSlots
}

// requestKey returns the integrity key of the token that the request tid
// carried, if tid is one of the Conn's last keepaliveSlots requests
// (answered or not), else nil. c.mu must be held.
func (c *Conn) requestKey(tid [stun.TransactionIDSize]byte) []byte {
	for i := range c.ka {
		if c.ka[i].key != nil && c.ka[i].tid == tid {
			return c.ka[i].key
		}
	}
	return nil
}

// findKeepalive returns the ring slot of a live keepalive transaction, or -1.
// c.mu must be held.
func (c *Conn) findKeepalive(tid [stun.TransactionIDSize]byte) int {
	for i := range c.ka {
		if c.ka[i].live && c.ka[i].tid == tid {
			return i
		}
	}
	return -1
}

func (c *Conn) onKeepaliveAnswer(resp protocol.JoinResponse, rtt time.Duration, sock *net.UDPConn) {
	if cookieChallenge(resp) {
		// The forwarder wants the address check (it lost the session, or
		// sees us from a new address): never an end of the session. Resend
		// at once with the new cookie, at most maxCookieRounds times between
		// successes; beyond that keep to the interval, and the idle timeout
		// decides.
		c.mu.Lock()
		current := c.sock.Load() == sock
		if current {
			c.cookie = resp.Cookie
			c.kaCookieRounds++
			c.needProof = true // a v2 session proves itself on the new path
		}
		again := current && c.kaCookieRounds <= maxCookieRounds
		c.mu.Unlock()
		c.log.Debug("keepalive: address check", zap.Bool("resending", again))
		if again {
			c.stats.cookieRetries.Add(1)
			c.sendKeepalive(time.Now())
		}
		return
	}
	if !resp.OK {
		c.stats.kaErrs.Add(1)
		je := &JoinError{Forwarder: c.fwd, Code: resp.Code, Reason: resp.Reason, Alternate: resp.Alternate, RetryAfter: resp.RetryAfter}
		if je.fatal() {
			c.finish(je)
			return
		}
		// 300 (draining) or 508: the session still stands; failover is the
		// caller's decision.
		c.log.Debug("keepalive refused", zap.Error(je))
		return
	}
	c.stats.keepalivesAnswered.Add(1)
	c.stats.rtt.Store(int64(rtt))
	_ = c.cfg.creds.rtts.observe(c.fwd, rtt, time.Now()) // reported on the next keepalives (locate.go)
	c.mu.Lock()
	moved := resp.Mapped != c.mapped
	c.mapped, c.params, c.lastAlive = resp.Mapped, sanitize(resp.Params), time.Now()
	c.kaCookieRounds = 0
	c.mu.Unlock()
	select {
	case c.answered <- struct{}{}:
	default:
	}
	if moved {
		c.log.Info("mapped address changed", zap.Stringer("mapped", resp.Mapped))
	}
}

// keepaliveLoop re-sends the join every KeepaliveInterval and ends the
// session when no authenticated answer came for IdleTimeout. (newConn has
// sent the first one.)
func (c *Conn) keepaliveLoop() {
	defer c.wg.Done()
	lastSent := time.Now()
	timer := time.NewTimer(c.Params().KeepaliveInterval)
	defer timer.Stop()
	var measured <-chan struct{}
	if c.dialer != nil {
		measured = c.dialer.losersMeasured
	}
	for {
		select {
		case <-c.done:
			return
		case <-timer.C:
		case <-measured: // the race's losers answered: report their RTTs now
			measured = nil
			lastSent = time.Time{}
		}
		now := time.Now()
		c.mu.Lock()
		p, alive := c.params, c.lastAlive
		c.mu.Unlock()
		if silent := now.Sub(alive); silent >= p.IdleTimeout {
			c.finish(fmt.Errorf("%w: no answer from %s for %v (idle timeout %v)",
				ErrSessionLost, c.fwd, silent.Round(time.Millisecond), p.IdleTimeout))
			return
		}
		if now.Sub(lastSent) >= p.KeepaliveInterval {
			c.sendKeepalive(now)
			lastSent = now
		}
		next := min(lastSent.Add(p.KeepaliveInterval).Sub(now), alive.Add(p.IdleTimeout).Sub(now))
		timer.Reset(max(next, time.Millisecond))
	}
}

// sendKeepalive sends a keepalive from the current socket, with that
// socket's latest cookie. Should Rebind swap sockets meanwhile, it goes
// nowhere (the old socket is closed): Rebind sends its own. Once Close has
// begun, nothing is sent: a keepalive that reached the forwarder after the
// leave would join the call again.
func (c *Conn) sendKeepalive(now time.Time) {
	c.kaMu.Lock()
	defer c.kaMu.Unlock()
	if c.leaving {
		return
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	sock := c.sock.Load()
	tx, err := newTransaction(c.cfg.creds, protocol.JoinOptions{Cookie: c.cookie, RTTs: c.cfg.creds.rtts.report(c.fwd, now)}, c.sessionKey())
	if err != nil {
		c.mu.Unlock()
		return
	}
	c.ka[c.kaNext] = keepaliveTx{tid: tx.tid, sent: now, live: true, sock: sock, token: tx.token, key: tx.macKey(protocol.JoinResponse{}), tx: tx}
	c.kaNext = (c.kaNext + 1) % keepaliveSlots
	c.mu.Unlock()
	if _, err := sock.Write(tx.raw); err != nil {
		if !errors.Is(err, net.ErrClosed) {
			c.stats.sendErrors.Add(1)
			c.refused(err)
		}
		return
	}
	c.stats.keepalivesSent.Add(1)
}
