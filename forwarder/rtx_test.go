package forwarder

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// One receiver's NACKs cost only its own: a packet is resent to each
// receiver up to nackMaxResends times, a resend gap apart, however often
// another receiver had it resent; and the bytes resent to a receiver never
// exceed its share of the media sent to it, whatever its REMB says.
func TestRetransmissionIsAccountedPerReceiver(t *testing.T) {
	const gap = int64(100 * time.Millisecond)
	const share = 256 // a quarter, in 1024ths
	c := newNackCache(512<<10, nil)
	now := int64(1e9)
	for seq := range uint16(400) {
		c.put(cachedPacket(7, seq, 1000), 7, seq, now)
	}
	var flooder, victim downlink
	for _, d := range []*downlink{&flooder, &victim} {
		d.rtxAllow.Store(10e9) // its REMB claims 10 Gbit/s
		d.sent.Add(400 * 1000) // it was sent the 400 packets
	}
	dst := make([]byte, maxDatagram)
	resendTo := func(d *downlink, seq uint16, at int64) nackOutcome {
		if !d.rtx.mayResend(7, seq, at, gap) {
			return nackBounded
		}
		n, out := c.resend(dst, 7, seq, at, d, share)
		if out == nackSent {
			require.Equal(t, cachedPacket(7, seq, 1000), dst[:n])
			d.rtx.noteResent(7, seq, at)
			d.sent.Add(uint64(n))
			d.resent.Add(uint64(n))
		}
		return out
	}

	// The flooder NACKs every packet, again and again for a second.
	var outcomes [numNackOutcomes]int
	for round := range int64(10) {
		for seq := range uint16(400) {
			outcomes[resendTo(&flooder, seq, now+round*gap)]++
		}
	}
	t.Logf("flooder: %v (sent, miss, bounded, budget, share); %d bytes resent of %d sent", outcomes, flooder.resent.Load(), flooder.sent.Load())
	require.LessOrEqual(t, flooder.resent.Load(), uint64(400*1000/4), "a quarter of the media sent to it")
	require.GreaterOrEqual(t, flooder.resent.Load(), uint64(400*1000/4-1000), "and that quarter is its to use")
	require.Positive(t, outcomes[nackShare])

	// The victim lost packets 10 and 11: each is resent to it three times,
	// a gap apart, as if nobody else had asked.
	for _, seq := range []uint16{10, 11} {
		require.Equal(t, nackSent, resendTo(&victim, seq, now))
		require.Equal(t, nackBounded, resendTo(&victim, seq, now+gap/2), "a repeat within the gap")
		require.Equal(t, nackSent, resendTo(&victim, seq, now+gap))
		require.Equal(t, nackSent, resendTo(&victim, seq, now+2*gap))
		require.Equal(t, nackBounded, resendTo(&victim, seq, now+3*gap), "three resends to one receiver at most")
	}
	// Long after, the slot is forgotten (the packet left the cache long ago).
	require.True(t, victim.rtx.mayResend(7, 10, now+2*gap+rtxForgetNS+1, gap))
}

// The leg's own budget (what its estimate leaves over its media) still
// bounds it: the share never raises it.
func TestRetransmissionBudgetStillBoundsTheLeg(t *testing.T) {
	var d downlink
	d.sent.Add(10 << 20) // plenty of share
	d.rtxAllow.Store(80_000)
	now := int64(1e9)
	taken := 0
	for d.rtxTake(1000, now, 256) == nackSent {
		taken += 1000
		require.Less(t, taken, 1<<20)
	}
	require.Equal(t, 3*maxDatagram/1000*1000, taken, "the burst: 100 ms of 10 kB/s, at least three datagrams")
	require.Equal(t, nackBudget, d.rtxTake(1000, now+int64(40*time.Millisecond), 256), "500 + 400 bytes of budget after 40 ms")
	require.Equal(t, nackSent, d.rtxTake(1000, now+int64(100*time.Millisecond), 256), "1,500 after 100 ms")
}

func TestRetransmissionAccountingAllocatesNothing(t *testing.T) {
	var d downlink
	d.rtxAllow.Store(1e9)
	now := int64(1e9)
	seq := uint16(0)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		now += 1e6
		d.sent.Add(1000)
		if d.rtx.mayResend(9, seq, now, 1e8) && d.rtxTake(100, now, 256) == nackSent {
			d.rtx.noteResent(9, seq, now)
		}
	})
	require.Zero(t, allocs)
}
