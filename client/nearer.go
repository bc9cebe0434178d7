package client

import "time"

// Nearer preference. A locator's candidates are the forwarders of the
// device's region and of its neighbours (locate.go), and Dial races them
// all: every one that passes the address check admits the device, each
// writing the call's record, so which admission is answered first is as
// much the store's contention and the forwarders' scheduling as the
// network. Left at that, a device near one region lands now and then on
// its neighbour, whose forwarder answered a few ms sooner though its path
// is tens of ms longer; and the call's first member places the call
// there. So Dial remembers the least RTT each candidate answered in
// during this Dial (its cookie challenge, sent once: Karn), and a success
// from a candidate while one clearly nearer (by more than a quarter of
// the farther one's RTT, and at least nearerMargin) may still accept is
// held for up to Config.PreferNearerWithin, in the same hold as the IPv6
// preference (ipv6.go): a nearer success within that time wins, the held
// one is sent a leave; otherwise the held one wins when the time is up or
// once no nearer candidate is left. A candidate that never answered (a
// dead forwarder, as after a region's loss) has no RTT and holds nothing
// up, so failover does not wait for it; nor does one whose answers came
// only to retransmissions (RTT beyond RetransmitInitial, or a first
// request lost), which is compared with no other.

// defaultPreferNearerWithin is Config.PreferNearerWithin's default.
const defaultPreferNearerWithin = 100 * time.Millisecond

// nearerMargin is the least RTT difference that makes a candidate nearer.
const nearerMargin = 5 * time.Millisecond

// saw keeps rtt as c's RTT in this Dial if it is its least so far.
func (d *dialer) saw(c *candidate, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	if d.rttSeen == nil {
		d.rttSeen = make(map[*candidate]time.Duration, len(d.cands))
	}
	if old, ok := d.rttSeen[c]; !ok || rtt < old {
		d.rttSeen[c] = rtt
	}
}

// nearer reports whether a answered in this Dial clearly faster than b.
func (d *dialer) nearer(a, b *candidate) bool {
	ra, okA := d.rttSeen[a]
	rb, okB := d.rttSeen[b]
	return okA && okB && ra < rb-max(rb/4, nearerMargin)
}

// nearerPending reports whether a candidate nearer than c may still
// accept.
func (d *dialer) nearerPending(c *candidate) bool {
	for _, p := range d.cands {
		if p != c && p.state == candPending && d.nearer(p, c) {
			return true
		}
	}
	return false
}
