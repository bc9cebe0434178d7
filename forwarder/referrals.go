package forwarder

import (
	"net/netip"
	"time"
)

// Referrals: the devices this forwarder sent to a peer (a throttled join's
// 300 Try Alternate, a drain's MigrateTo) are counted on that peer until
// it has admitted them, so that a burst is spread over the peers instead
// of all landing on the one that looked idlest at its last report.
//
// A heartbeat does not clear them: a report made before the referred
// devices arrived (they need a round trip to us and two to the peer)
// would say nothing of them, and with heartbeats every second a burst of
// a few hundred milliseconds would meet one. Instead each of the peer's
// load reports (sent with every heartbeat) settles as many of the oldest
// referrals as the peer admitted joins since its previous report:
// admissions, not the session count, which sessions that left would hold
// down. A referral older than referralWait is taken for a device that
// went elsewhere.
//
// The peer's admissions include devices that came by themselves or were
// sent by other forwarders; those settle our referrals too. When several
// forwarders throttle at once each therefore counts too few on a peer,
// never too many: a burst is spread less evenly, but no peer is taken for
// full because of devices that never came.
//
// A device is counted once per peer, and a pick leaves out its own
// referral: a drain repeats its MigrateTo every second to a device still
// on its way, and must name the same peer again, not flee the count the
// device itself put there.
type referrals struct {
	q    []referral // oldest first, from head on
	head int
	devs map[netip.AddrPort]struct{}
	// The admissions of the peer's process as of its last report.
	started  time.Time
	admitted uint32
}

type referral struct {
	dev netip.AddrPort
	at  time.Time
}

const (
	// referralWait is how long a referred device may take to reach the
	// peer and be admitted there: the client library's join timeout is
	// 5 s by default, after which the device has given up.
	referralWait = 5 * time.Second
	// maxReferrals bounds the memory of a burst: past it, the oldest
	// are forgotten (the peer is by then far above any other anyway).
	maxReferrals = 4096
)

// add counts device dev, sent to the peer at now, unless it is counted.
func (r *referrals) add(dev netip.AddrPort, now time.Time) {
	r.expire(now)
	if _, ok := r.devs[dev]; ok {
		return
	}
	if r.devs == nil {
		r.devs = make(map[netip.AddrPort]struct{})
	}
	if len(r.q)-r.head == maxReferrals {
		r.drop(1)
	}
	r.q = append(r.q, referral{dev, now})
	r.devs[dev] = struct{}{}
}

// count is how many devices sent to the peer it has not admitted yet, at
// now, dev's own referral left out.
func (r *referrals) count(dev netip.AddrPort, now time.Time) int {
	r.expire(now)
	n := len(r.q) - r.head
	if _, ok := r.devs[dev]; ok {
		n--
	}
	return n
}

// report takes the peer's load report, heard at now: its process start
// and its joins admitted since then (every class). The first report of a
// process only sets where its count starts. Expired referrals go first,
// so that admissions settle live ones.
func (r *referrals) report(started time.Time, admitted uint32, now time.Time) {
	r.expire(now)
	if !started.Equal(r.started) {
		r.started, r.admitted = started, admitted
		return
	}
	// Modulo 2^32 like the counter: a wrap is a gain; a step back (none
	// within one process) is no gain, not four billion.
	gained := int(int32(admitted - r.admitted))
	r.admitted = admitted
	r.drop(min(max(gained, 0), len(r.q)-r.head))
}

// expire forgets the referrals older than referralWait at now.
func (r *referrals) expire(now time.Time) {
	k := 0
	for r.head+k < len(r.q) && now.Sub(r.q[r.head+k].at) > referralWait {
		k++
	}
	r.drop(k)
}

// drop forgets the k oldest.
func (r *referrals) drop(k int) {
	for _, x := range r.q[r.head : r.head+k] {
		delete(r.devs, x.dev)
	}
	r.head += k
	switch {
	case r.head == len(r.q):
		r.q, r.head, r.devs = r.q[:0], 0, nil
	case r.head > len(r.q)/2:
		r.q, r.head = r.q[:copy(r.q, r.q[r.head:])], 0
	}
}
