package forwarder

import (
	"net/netip"
	"slices"
	"time"
)

// Referrals: the devices this forwarder sent to a peer (a throttled join's
// 300 Try Alternate, a drain's MigrateTo) are counted on that peer until
// its heartbeats count them, so that a burst is spread over the peers
// instead of all landing on the one that looked idlest at its last report.
//
// A heartbeat does not clear them: a report made before the referred
// devices arrived (they need a round trip to us and two to the peer)
// would say nothing of them, and with heartbeats every second a burst of
// a few hundred milliseconds would meet one. Instead each heartbeat
// settles as many of the oldest referrals as the peer gained sessions
// since its previous one; a referral older than referralWait is taken for
// a device that went elsewhere. Sessions the peer lost between two
// heartbeats hide arrivals: those referrals then stay until referralWait,
// which errs towards spreading more.
//
// A device is counted once per peer: a join retransmitted before its 300
// arrived, or a drain's MigrateTo repeated to a device still on its way,
// is referred again but is still one device.
type referrals struct {
	q    []referral // oldest first
	devs map[netip.AddrPort]struct{}
}

type referral struct {
	dev netip.AddrPort
	at  time.Time
}

const (
	// referralWait is how long a referred device may take to reach the
	// peer and be counted in its heartbeat: the client library's join
	// timeout is 5 s by default, after which the device has given up.
	referralWait = 5 * time.Second
	// maxReferrals bounds the memory of a burst: past it, the oldest
	// are forgotten (the peer is by then far above any other anyway).
	maxReferrals = 4096
)

// add counts device dev, sent to the peer at now, unless it is counted.
func (r *referrals) add(dev netip.AddrPort, now time.Time) {
	if _, ok := r.devs[dev]; ok {
		return
	}
	if r.devs == nil {
		r.devs = make(map[netip.AddrPort]struct{})
	}
	if len(r.q) == maxReferrals {
		r.drop(1)
	}
	r.q = append(r.q, referral{dev, now})
	r.devs[dev] = struct{}{}
}

// n is how many devices the peer's last heartbeat may not count.
func (r *referrals) n() int { return len(r.q) }

// settle takes a heartbeat heard at now that says the peer gained
// sessions since its previous one.
func (r *referrals) settle(gained int, now time.Time) {
	k := min(max(gained, 0), len(r.q))
	for k < len(r.q) && now.Sub(r.q[k].at) > referralWait {
		k++
	}
	r.drop(k)
}

// drop forgets the k oldest.
func (r *referrals) drop(k int) {
	for _, x := range r.q[:k] {
		delete(r.devs, x.dev)
	}
	r.q = slices.Delete(r.q, 0, k)
}
