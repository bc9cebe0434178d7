package forwarder

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A heartbeat settles only the referrals its sessions grew by, oldest
// first; one made before the devices arrived settles none of them.
func TestReferralsSettleOnArrivalsNotReports(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	var r referrals
	for i := range 6 {
		r.add(dev(i), t0.Add(time.Duration(i)*10*time.Millisecond))
	}
	r.settle(0, t0.Add(100*time.Millisecond))
	require.Equal(t, 6, r.n(), "a report with no new sessions settles nothing")
	r.settle(4, t0.Add(200*time.Millisecond))
	require.Equal(t, 2, r.n(), "four arrived")
	require.Equal(t, referral{dev(4), t0.Add(40 * time.Millisecond)}, r.q[0], "the oldest settle first")
	r.settle(-3, t0.Add(300*time.Millisecond))
	require.Equal(t, 2, r.n(), "sessions that left hide nothing of ours")
	r.settle(9, t0.Add(400*time.Millisecond))
	require.Zero(t, r.n(), "more arrivals than referrals: the others came by themselves")
}

// A referred device that never arrives stops counting after
// referralWait; a burst is bounded in memory.
func TestReferralsExpireAndAreBounded(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	var r referrals
	r.add(dev(0), t0)
	r.add(dev(1), t0.Add(time.Second))
	r.settle(0, t0.Add(referralWait))
	require.Equal(t, 2, r.n(), "not yet past the wait")
	r.settle(0, t0.Add(referralWait+time.Millisecond))
	require.Equal(t, 1, r.n(), "the first gave up")
	for i := range maxReferrals + 10 {
		r.add(dev(2+i), t0.Add(2*time.Second))
	}
	require.Equal(t, maxReferrals, r.n())
	require.Len(t, r.devs, maxReferrals)
	require.Equal(t, dev(12), r.q[0].dev, "the oldest forgotten first")
	r.add(dev(1), t0.Add(3*time.Second))
	require.Equal(t, dev(13), r.q[0].dev, "a forgotten device counts again")
}

// A join retransmitted before its 300 arrived, or a MigrateTo repeated,
// refers the same device again: it is counted once.
func TestReferralsCountADeviceOnce(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	var r referrals
	r.add(dev(1), t0)
	r.add(dev(1), t0.Add(100*time.Millisecond))
	r.add(dev(2), t0.Add(200*time.Millisecond))
	require.Equal(t, 2, r.n())
	r.settle(1, t0.Add(time.Second))
	require.Equal(t, []referral{{dev(2), t0.Add(200 * time.Millisecond)}}, r.q)
	r.add(dev(1), t0.Add(2*time.Second))
	require.Equal(t, 2, r.n(), "settled, then referred again: a new referral")
}

func dev(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i >> 8)}), uint16(1024+i))
}
