package forwarder

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// The order of member notices (README 7.1): per participant and forwarder,
// only a later at applies; a left wins a tie with a placed; a placement
// read from the store counts as a placed at its join time.
func TestNoticeOrder(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := remoteKey{protocol.NewID(), "fwd-b"}
	other := remoteKey{k.participant, "fwd-c"}
	var cn callNotices
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }

	require.True(t, cn.newer(k, ms(0), false, now), "the first notice of a pair applies")
	require.False(t, cn.newer(k, ms(0), false, now), "a duplicate does not")
	require.False(t, cn.newer(k, ms(-time.Second), true, now), "an older left (a replay, or overtaken) does not")
	require.True(t, cn.newer(other, ms(-time.Second), true, now), "pairs are independent")
	require.True(t, cn.newer(k, ms(0), true, now), "a left wins a tie with a placed")
	require.False(t, cn.newer(k, ms(0), false, now), "a placed does not win a tie with a left")
	require.False(t, cn.newer(k, ms(0), true, now), "nor does a second left")
	require.True(t, cn.newer(k, ms(time.Millisecond), false, now), "a later placed applies: the participant came back")

	// The store: a record read after a later notice said the participant
	// left that forwarder predates the removal.
	require.True(t, cn.newer(k, ms(time.Second), true, now))
	require.False(t, cn.stored(k, now.Add(500*time.Millisecond), now), "the record is older than the left")
	require.True(t, cn.stored(k, now.Add(2*time.Second), now), "a join after the left")
	require.False(t, cn.newer(k, ms(1500*time.Millisecond), true, now), "a left older than that join is a replay")
	fresh := remoteKey{protocol.NewID(), "fwd-b"}
	require.True(t, cn.stored(fresh, now, now), "a placement never heard of")
	require.False(t, cn.newer(fresh, ms(-time.Minute), true, now), "a left older than the stored join")

	// Marks outlive their placement by markKeep, no more.
	remote := map[remoteKey]*remotePlacement{fresh: {}}
	cn.prune(remote, now.Add(markKeep))
	require.Len(t, cn.marks, 3, "none is old enough yet")
	cn.prune(remote, now.Add(markKeep+time.Second))
	require.Len(t, cn.marks, 1, "only the placed pair keeps its mark")
	require.Contains(t, cn.marks, fresh)
}
