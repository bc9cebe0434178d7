package loadtest

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The silence of a re-join is the gap in the audio heard around the
// moment the device noticed the loss.
func TestSilenceAround(t *testing.T) {
	var arr [arrivalHistory]int64
	for i, at := range []int64{100, 120, 140, 160, 900, 920} { // 160..900: the forwarder was gone
		arr[i] = at
	}
	b, a := silenceAround(&arr, 500)
	require.Equal(t, []int64{160, 900}, []int64{b, a})
	// Noticed before the next packet came: the silence is still open.
	arr[4], arr[5] = 0, 0
	b, a = silenceAround(&arr, 500)
	require.Equal(t, []int64{160, 0}, []int64{b, a})
	// Nothing heard before: from the moment it noticed.
	var none [arrivalHistory]int64
	b, a = silenceAround(&none, 500)
	require.Equal(t, []int64{500, 0}, []int64{b, a})
	// The ring wrapped: only what it still holds counts.
	var ring [arrivalHistory]int64
	for i := range ring {
		ring[i] = 1000 + int64(i)*20
	}
	b, a = silenceAround(&ring, 990)
	require.Equal(t, []int64{990, 1000}, []int64{b, a})
}

// countMissed counts, once, the speech a lost session missed or would
// have sent, up to the sender's older mark; a re-join's unrevealed loss
// only at the end.
func TestCountMissed(t *testing.T) {
	lc := &liveCall{spec: &callSpec{size: 3}}
	for i := range 3 {
		lc.members = append(lc.members, newMember(i, 3))
	}
	a, b, c := lc.members[0], lc.members[1], lc.members[2]
	expected := func() []uint64 { return []uint64{a.win.expected, b.win.expected, c.win.expected} }
	for _, m := range lc.members {
		m.marks = [2]uint32{40, 50}
	}
	a.heard[1].Store(30) // a heard b up to 30, c up to 40
	a.heard[2].Store(40)
	b.heard[0].Store(40)
	c.heard[0].Store(40)
	c.heard[1].Store(30)

	lc.countMissed(false)
	require.Equal(t, []uint64{0, 0, 0}, expected(), "nobody lost: nothing")

	b.lost.Store(true) // b is gone since its 30th speech frame
	lc.countMissed(false)
	require.Equal(t, []uint64{10, 40, 10}, expected(), "a and c missed b's 31..40; b c's 1..40 (it had heard a's)")
	lc.countMissed(false)
	require.Equal(t, []uint64{10, 40, 10}, expected(), "counted once")

	for _, m := range lc.members {
		m.marks = [2]uint32{60, 70}
	}
	lc.countMissed(false)
	require.Equal(t, []uint64{10 + 20, 40 + 40, 10 + 20}, expected(), "and on, up to the older mark")

	// a re-joined and never heard c again after 40: counted at the end
	// only (a later frame of c would have shown the gap to observe).
	a.rejoined.Store(true)
	lc.countMissed(false)
	require.Equal(t, []uint64{30, 80, 30}, expected())
	lc.countMissed(true)
	require.Equal(t, []uint64{30 + 20, 80, 30 + 20}, expected(), "a missed c's 41..60, c a's")

	// A late joiner counts from what had been said when it came.
	d := newMember(2, 3)
	d.base = []uint32{55, 0, 0}
	d.lost.Store(true)
	lc.members = []*member{a, d}
	lc.countMissed(false)
	require.Equal(t, uint64(5), d.win.expected)
	require.Equal(t, 2, memberOf(d.ssrc))
	require.Equal(t, uint32(1), d.ssrc&1)
}
