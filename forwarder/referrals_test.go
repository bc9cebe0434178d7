package forwarder

import (
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
		r.add(t0.Add(time.Duration(i) * 10 * time.Millisecond))
	}
	r.settle(0, t0.Add(100*time.Millisecond))
	require.Equal(t, 6, r.n(), "a report with no new sessions settles nothing")
	r.settle(4, t0.Add(200*time.Millisecond))
	require.Equal(t, 2, r.n(), "four arrived")
	require.Equal(t, t0.Add(40*time.Millisecond), r.at[0], "the oldest settle first")
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
	r.add(t0)
	r.add(t0.Add(time.Second))
	r.settle(0, t0.Add(referralWait))
	require.Equal(t, 2, r.n(), "not yet past the wait")
	r.settle(0, t0.Add(referralWait+time.Millisecond))
	require.Equal(t, 1, r.n(), "the first gave up")
	for range maxReferrals + 10 {
		r.add(t0.Add(2 * time.Second))
	}
	require.Equal(t, maxReferrals, r.n())
	require.Equal(t, t0.Add(2*time.Second), r.at[0], "the oldest forgotten first")
}
