package forwarder

import (
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
type referrals struct {
	at []time.Time // when each was made, oldest first
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

// add counts one device sent to the peer at now.
func (r *referrals) add(now time.Time) {
	if len(r.at) == maxReferrals {
		r.at = slices.Delete(r.at, 0, 1)
	}
	r.at = append(r.at, now)
}

// n is how many devices the peer's last heartbeat may not count.
func (r *referrals) n() int { return len(r.at) }

// settle takes a heartbeat heard at now that says the peer gained
// sessions since its previous one.
func (r *referrals) settle(gained int, now time.Time) {
	k := min(max(gained, 0), len(r.at))
	for k < len(r.at) && now.Sub(r.at[k]) > referralWait {
		k++
	}
	r.at = slices.Delete(r.at, 0, k)
}
