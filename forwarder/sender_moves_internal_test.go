package forwarder

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A sender's audio as the listeners' forwarder receives it, one packet
// every 20 ms of a fake clock, and what moveTrack makes of each path
// change. The same code runs on the media and trunk readers
// (TestSenderMoveGapMeasured drives it through real sockets).
func TestMoveTrack(t *testing.T) {
	const ms = int64(time.Millisecond)
	b, c := trunkPath(0xb0b), trunkPath(0xc0c)
	type pkt struct {
		at   int64 // ms
		path uint16
		seq  uint16
	}
	// stream is 20 ms audio from seq first at ms start, by path.
	stream := func(path uint16, start int64, first, n uint16) []pkt {
		var out []pkt
		for i := range n {
			out = append(out, pkt{start + int64(i)*20, path, first + i})
		}
		return out
	}
	cat := func(ps ...[]pkt) (out []pkt) {
		for _, p := range ps {
			out = append(out, p...)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		pkts    []pkt
		moves   [numMovePaths]uint64
		gap     time.Duration // the last gap measured; 0: none
		skipped uint64
		flaps   uint64
		quiet   uint64
	}{
		{name: "one path: no move", pkts: stream(pathDirect, 1000, 10, 100)},
		{name: "clean switch: gap one packet", pkts: cat(stream(pathDirect, 1000, 10, 50), stream(b, 2000, 60, 50)),
			moves: [numMovePaths]uint64{MoveDirectToTrunk: 1}, gap: 20 * time.Millisecond},
		{name: "a hole of 300 ms and 15 packets", pkts: cat(stream(b, 1000, 10, 50), stream(pathDirect, 2280, 75, 50)),
			moves: [numMovePaths]uint64{MoveTrunkToDirect: 1}, gap: 300 * time.Millisecond, skipped: 15},
		{name: "new path ahead of a slow old one: stragglers are no move back",
			// Sent every 20 ms, seq s at 20*s ms; b, the old path, is 150 ms
			// slow, c is not. c's first, 60, comes when b has delivered up to
			// 52; b's 53..59 arrive after it, and are no news.
			pkts: cat(stream(b, 350, 10, 43),
				[]pkt{{1200, c, 60}, {1210, b, 53}, {1220, c, 61}, {1230, b, 54}, {1240, c, 62}, {1250, b, 55}}),
			moves: [numMovePaths]uint64{MoveTrunkToTrunk: 1}, gap: 10 * time.Millisecond, skipped: 7},
		{name: "a sender quiet for 3 s: counted, not measured",
			pkts:  cat(stream(pathDirect, 1000, 10, 5), stream(b, 4080, 15, 5)),
			moves: [numMovePaths]uint64{MoveDirectToTrunk: 1}, quiet: 1},
		{name: "two paths at once, alternating winners: one move, then flaps",
			pkts: cat(stream(pathDirect, 1000, 10, 50),
				[]pkt{{2000, b, 60}, {2001, pathDirect, 60}, {2020, pathDirect, 61}, {2021, b, 61}, {2040, b, 62}, {2041, pathDirect, 62}}),
			moves: [numMovePaths]uint64{MoveDirectToTrunk: 1}, gap: 20 * time.Millisecond, flaps: 2},
		{name: "a new sequence space after a second of nothing newer",
			pkts:  cat(stream(pathDirect, 1000, 30000, 10), stream(b, 2500, 5, 10)),
			moves: [numMovePaths]uint64{MoveDirectToTrunk: 1}, gap: 1320 * time.Millisecond, skipped: 5 - 30009 - 1 + 65536},
		{name: "a straggler stamped before the last news (another reader's batch clock) is no news",
			pkts:  cat(stream(c, 1000, 10, 50), []pkt{{2000, b, 60}, {1995, c, 58}, {2020, b, 61}}),
			moves: [numMovePaths]uint64{MoveTrunkToTrunk: 1}, gap: 20 * time.Millisecond},
		{name: "sequence numbers wrap", pkts: cat(stream(pathDirect, 1000, 65530, 10), stream(b, 1200, 4, 10)),
			moves: [numMovePaths]uint64{MoveDirectToTrunk: 1}, gap: 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr moveTrack
			var st moveStats
			for _, p := range tc.pkts {
				tr.note(p.path, 0xa0d10, true, p.seq, 1_700_000_000_000*ms+p.at*ms, &st)
			}
			for i := range tc.moves {
				require.Equal(t, tc.moves[i], st.moves[i].Load(), "moves %s", movePathNames[i])
			}
			require.Equal(t, tc.flaps, st.flaps.Load(), "flaps")
			require.Equal(t, tc.quiet, st.quiet.Load(), "quiet")
			require.Equal(t, tc.skipped, st.skipped.Load(), "skipped")
			require.Equal(t, tc.gap, time.Duration(st.lastMS.Load())*time.Millisecond, "gap")
		})
	}
}

// The track's word costs no allocation on the hot path.
func TestMoveTrackAllocatesNothing(t *testing.T) {
	var tr moveTrack
	var st moveStats
	seq, now := uint16(0), int64(1_700_000_000_000_000_000)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		now += int64(20 * time.Millisecond)
		path := pathDirect
		if seq%100 == 0 {
			path = trunkPath(uint64(seq))
		}
		tr.note(path, 0xa0d10, true, seq, now, &st)
	})
	require.Zero(t, allocs)
	require.NotZero(t, st.moves[MoveDirectToTrunk].Load()+st.moves[MoveTrunkToDirect].Load())
}
