package client

import (
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// IPv6 preference (happy eyeballs the other way round). Dial sends its join
// to every candidate at once; when an IPv4 candidate accepts first while an
// IPv6 candidate is still unanswered, the IPv4 success is held for up to
// Config.PreferIPv6Within: an IPv6 success within that time wins (the IPv4
// one is sent a leave, as any loser), otherwise the IPv4 one wins when the
// time is up or once no IPv6 candidate is left. A dual-stack forwarder
// listed at both its addresses is then reached over IPv6 when both families
// answer within a few milliseconds of each other: no NAT on the way in most
// networks, one address per device.

// defaultPreferIPv6Within is Config.PreferIPv6Within's default.
const defaultPreferIPv6Within = 10 * time.Millisecond

func isIPv6(a netip.AddrPort) bool { return !a.Addr().Unmap().Is4() }

// ipv6Pending reports whether an IPv6 candidate may still accept.
func (d *dialer) ipv6Pending() bool {
	for _, c := range d.cands {
		if isIPv6(c.addr) && (c.state == candPending || c.state == candWaiting) {
			return true
		}
	}
	return false
}

// holdForIPv6 holds an IPv4 success back while an IPv6 candidate may still
// accept within PreferIPv6Within, and reports whether it did. An IPv4
// success while one is already held loses at once (it is sent a leave).
func (d *dialer) holdForIPv6(ev dialEvent) bool {
	if d.cfg.PreferIPv6Within <= 0 || isIPv6(ev.c.addr) {
		return false
	}
	if d.held != nil {
		d.leave(ev.c)
		return true
	}
	if !d.ipv6Pending() {
		return false
	}
	d.held, d.heldUntil = &ev, ev.at.Add(d.cfg.PreferIPv6Within)
	ev.c.state = candHeld
	d.log.Debug("IPv4 accepted first, waiting for IPv6", zap.Stringer("forwarder", ev.c.addr),
		zap.Duration("for", d.cfg.PreferIPv6Within))
	return true
}

// heldWins ends a hold whose time is up or that no IPv6 candidate can beat
// any more: the held IPv4 success wins.
func (d *dialer) heldWins(now time.Time) bool {
	if d.held == nil || (now.Before(d.heldUntil) && d.ipv6Pending()) {
		return false
	}
	ev := *d.held
	d.held = nil
	ev.c.state = candPending
	d.win(ev)
	return true
}

// releaseHeld, when another candidate has won, sends the held IPv4 one a
// leave: it accepted, so it holds a session to free.
func (d *dialer) releaseHeld(winner *candidate) {
	if d.held == nil || d.held.c == winner {
		return
	}
	c := d.held.c
	d.held = nil
	d.log.Info("IPv6 answered in time: leaving the IPv4 forwarder", zap.Stringer("ipv4", c.addr), zap.Stringer("ipv6", winner.addr))
	d.leave(c)
}
