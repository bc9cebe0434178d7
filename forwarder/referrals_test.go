package forwarder

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

var (
	refT0      = time.Unix(1_800_000_000, 0)
	refStarted = refT0.Add(-time.Hour)
	nobody     = netip.AddrPort{}
)

// A load report settles only as many referrals as the peer admitted since
// its previous report, oldest first; one made before the devices arrived
// settles none of them, and sessions that left hide nothing.
func TestReferralsSettleOnAdmissionsNotReports(t *testing.T) {
	var r referrals
	r.report(refStarted, 40, refT0) // the first report of a process: where its count starts
	for i := range 6 {
		r.add(dev(i), refT0.Add(time.Duration(i)*10*time.Millisecond))
	}
	now := refT0.Add(time.Second)
	r.report(refStarted, 40, now)
	require.Equal(t, 6, r.count(nobody, now), "a report with no new admissions settles nothing")
	r.report(refStarted, 44, now)
	require.Equal(t, 2, r.count(nobody, now), "four admitted")
	require.Equal(t, referral{dev(4), refT0.Add(40 * time.Millisecond)}, r.q[r.head], "the oldest settle first")
	r.report(refStarted, 53, now)
	require.Zero(t, r.count(nobody, now), "more admissions than referrals: the others came by themselves")
	r.add(dev(7), now)
	r.report(refStarted.Add(time.Minute), 2, now)
	require.Equal(t, 1, r.count(nobody, now), "a restarted peer's first report only starts its count")
	r.report(refStarted.Add(time.Minute), 3, now)
	require.Zero(t, r.count(nobody, now))
}

// The admissions counter is 32 bits on the wire: its wrap is a gain.
func TestReferralsAdmissionsWrap(t *testing.T) {
	var r referrals
	r.report(refStarted, 1<<32-2, refT0)
	for i := range 5 {
		r.add(dev(i), refT0)
	}
	r.report(refStarted, 1, refT0) // 3 admissions, across the wrap
	require.Equal(t, 2, r.count(nobody, refT0))
	r.report(refStarted, 0, refT0) // a step back: no gain
	require.Equal(t, 2, r.count(nobody, refT0))
}

// Admissions settle live referrals, not ones already expired but still
// queued (nothing asked for a count since they expired).
func TestReferralsExpiredGoBeforeAdmissionsSettle(t *testing.T) {
	var r referrals
	r.report(refStarted, 0, refT0)
	r.add(dev(1), refT0)
	r.add(dev(2), refT0.Add(referralWait+time.Second))
	r.add(dev(3), refT0.Add(referralWait+time.Second))
	r.report(refStarted, 1, refT0.Add(referralWait+2*time.Second))
	require.Equal(t, []referral{{dev(3), refT0.Add(referralWait + time.Second)}}, r.q[r.head:],
		"dev(1) expired; the one admission settles dev(2)")
}

// A referred device that never arrives stops counting after
// referralWait, reports or not; a burst is bounded in memory.
func TestReferralsExpireAndAreBounded(t *testing.T) {
	var r referrals
	r.add(dev(0), refT0)
	r.add(dev(1), refT0.Add(time.Second))
	require.Equal(t, 2, r.count(nobody, refT0.Add(referralWait)), "not yet past the wait")
	require.Equal(t, 1, r.count(nobody, refT0.Add(referralWait+time.Millisecond)), "the first gave up")
	for i := range maxReferrals + 10 {
		r.add(dev(2+i), refT0.Add(2*time.Second))
	}
	require.Equal(t, maxReferrals, r.count(nobody, refT0.Add(2*time.Second)))
	require.Len(t, r.devs, maxReferrals)
	require.Equal(t, dev(12), r.q[r.head].dev, "the oldest forgotten first")
	r.add(dev(1), refT0.Add(3*time.Second))
	require.Equal(t, dev(13), r.q[r.head].dev, "a forgotten device counts again")
	require.LessOrEqual(t, len(r.q), 2*maxReferrals, "the queue is compacted")
	require.Zero(t, r.count(nobody, refT0.Add(time.Hour)))
	require.Nil(t, r.devs, "an empty queue keeps no map")
}

// A join retransmitted before its 300 arrived, or a MigrateTo repeated,
// refers the same device again: it is counted once, and its own referral
// is left out when it is placed again.
func TestReferralsCountADeviceOnce(t *testing.T) {
	var r referrals
	r.report(refStarted, 0, refT0)
	r.add(dev(1), refT0)
	r.add(dev(1), refT0.Add(100*time.Millisecond))
	r.add(dev(2), refT0.Add(200*time.Millisecond))
	now := refT0.Add(time.Second)
	require.Equal(t, 2, r.count(nobody, now))
	require.Equal(t, 1, r.count(dev(1), now), "placing dev(1) again: its own referral does not count against this peer")
	r.report(refStarted, 1, now)
	require.Equal(t, []referral{{dev(2), refT0.Add(200 * time.Millisecond)}}, r.q[r.head:])
	r.add(dev(1), refT0.Add(2*time.Second))
	require.Equal(t, 2, r.count(nobody, now), "settled, then referred again: a new referral")
}

func dev(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i >> 8)}), uint16(1024+i))
}

// A drain repeats its MigrateTo every second to a device that has not
// moved yet: each repeat names the peer the device was sent to first. (A
// device's own referral once counted against that peer, so the repeat
// named the other one, and every slow device ended up counted on every
// peer.) This drives pickAlternate as drainTick does, on a control with
// two idle peers and a fake clock: the drain itself is tested end to end
// with real forwarders in cluster_test.go.
func TestDrainRepeatNamesTheSamePeer(t *testing.T) {
	now := refT0
	c := &control{f: &Forwarder{cfg: Config{Now: func() time.Time { return now }}}, peers: map[string]*peer{}}
	c.f.cfg.Cluster.PeerTimeout = time.Minute
	for i, id := range []string{"fwd-b", "fwd-c"} {
		media := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(4000+i))
		c.peers[id] = &peer{last: protocol.ForwarderAnnounce{ID: id, Media: media}, heard: now}
	}
	devices := []netip.AddrPort{dev(1), dev(2), dev(3), dev(4)}
	first := map[netip.AddrPort]netip.AddrPort{}
	for tick := range 4 {
		for _, d := range devices {
			alt := c.pickAlternate(d)
			if tick == 0 {
				first[d] = alt
				continue
			}
			require.Equal(t, first[d], alt, "tick %d, device %s", tick, d)
		}
		now = now.Add(time.Second)
		for _, p := range c.peers {
			p.heard = now
		}
	}
	per := map[netip.AddrPort]int{}
	for _, alt := range first {
		per[alt]++
	}
	require.Equal(t, []int{2, 2}, []int{per[c.peers["fwd-b"].last.Media], per[c.peers["fwd-c"].last.Media]}, "spread")
}
