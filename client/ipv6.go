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
// networks, one address per device. The hold is shared with the
// preference for a nearer forwarder (nearer.go).

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

// hold holds a success back while a better candidate may still accept:
// one over IPv6 for an IPv4 success (PreferIPv6Within), or a nearer one
// (PreferNearerWithin, nearer.go); it reports whether it did, until the
// longer of the two windows that apply. A success while one is held wins
// the hold if it is better than the held one (which is then sent a
// leave, and the newcomer may be held in turn); otherwise it is sent a
// leave at once.
func (d *dialer) hold(ev dialEvent) bool {
	if d.held != nil {
		if !d.better(ev.c, d.held.c) {
			d.leave(ev.c)
			return true
		}
		d.releaseHeld(ev.c)
	}
	var until time.Time
	if d.cfg.PreferIPv6Within > 0 && !isIPv6(ev.c.addr) && d.ipv6Pending() {
		until = ev.at.Add(d.cfg.PreferIPv6Within)
	}
	if d.cfg.PreferNearerWithin > 0 && d.nearerPending(ev.c) {
		if u := ev.at.Add(d.cfg.PreferNearerWithin); u.After(until) {
			until = u
		}
	}
	if until.IsZero() {
		return false
	}
	d.held, d.heldUntil = &ev, until
	ev.c.state = candHeld
	d.log.Debug("accepted first, waiting for a preferred forwarder (IPv6 or nearer)", zap.Stringer("forwarder", ev.c.addr),
		zap.Duration("for", until.Sub(ev.at)))
	return true
}

// better reports whether a success from a should replace one from b:
// IPv6 over IPv4 first (when preferred), then the nearer.
func (d *dialer) better(a, b *candidate) bool {
	if d.cfg.PreferIPv6Within > 0 && isIPv6(a.addr) != isIPv6(b.addr) {
		return isIPv6(a.addr)
	}
	return d.cfg.PreferNearerWithin > 0 && d.nearer(a, b)
}

// beatable reports whether a candidate that may still accept would beat
// the held success c.
func (d *dialer) beatable(c *candidate) bool {
	return (d.cfg.PreferIPv6Within > 0 && !isIPv6(c.addr) && d.ipv6Pending()) ||
		(d.cfg.PreferNearerWithin > 0 && d.nearerPending(c))
}

// heldWins ends a hold whose time is up or that no candidate can beat any
// more: the held success wins.
func (d *dialer) heldWins(now time.Time) bool {
	if d.held == nil || (now.Before(d.heldUntil) && d.beatable(d.held.c)) {
		return false
	}
	ev := *d.held
	d.held = nil
	ev.c.state = candPending
	d.win(ev)
	return true
}

// releaseHeld, when another candidate has won or beaten the held one,
// sends the held one a leave: it accepted, so it holds a session to free.
func (d *dialer) releaseHeld(winner *candidate) {
	if d.held == nil || d.held.c == winner {
		return
	}
	c := d.held.c
	d.held = nil
	d.log.Info("a preferred forwarder accepted in time: leaving the held one", zap.Stringer("held", c.addr), zap.Stringer("preferred", winner.addr))
	d.leave(c)
}
