package client

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var testPolicy = nackPolicy{wait: 15 * time.Millisecond, interval: 100 * time.Millisecond, tries: 3, giveUp: time.Second}

var t0 = time.Unix(1_700_000_000, 0)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

func pushAll(s *seqTracker, at time.Time, seqs ...uint16) []seqVerdict {
	var out []seqVerdict
	for _, q := range seqs {
		out = append(out, s.push(q, at, &testPolicy, false))
	}
	return out
}

func TestSeqTrackerInOrderNeedsNoNACK(t *testing.T) {
	var s seqTracker
	for i := range 100 {
		require.Equal(t, seqNew, s.push(uint16(65500+i), ms(i*10), &testPolicy, false)) //nolint:gosec // wraps on purpose
	}
	seqs, gaveUp, next := s.due(ms(2000), &testPolicy, nil)
	require.Empty(t, seqs)
	require.Zero(t, gaveUp)
	require.True(t, next.IsZero())
	require.Zero(t, s.lost())
	frac, lost, highest := s.report()
	require.Zero(t, frac)
	require.Zero(t, lost)
	require.Equal(t, uint32(1<<16+65500+99-65536), highest, "one wrap in the extended number")
}

// A gap is NACKed after the reordering wait, then every interval, three
// times in all, and given up after a second.
func TestSeqTrackerNACKSchedule(t *testing.T) {
	var s seqTracker
	require.Equal(t, []seqVerdict{seqNew, seqNew, seqNew}, pushAll(&s, ms(0), 1, 2, 5))
	require.Equal(t, uint64(2), s.missed)

	seqs, _, next := s.due(ms(10), &testPolicy, nil)
	require.Empty(t, seqs, "still within the reordering wait")
	require.Equal(t, ms(15), next)

	for i, at := range []int{15, 115, 215} {
		seqs, _, next = s.due(ms(at), &testPolicy, nil)
		require.Equal(t, []uint16{3, 4}, seqs, "try %d", i+1)
		if i < 2 {
			require.Equal(t, ms(at+100), next)
		}
	}
	require.Equal(t, ms(1000), next, "no more tries: the give-up is next")
	seqs, gaveUp, _ := s.due(ms(500), &testPolicy, nil)
	require.Empty(t, seqs)
	require.Zero(t, gaveUp)
	seqs, gaveUp, next = s.due(ms(1000), &testPolicy, nil)
	require.Empty(t, seqs)
	require.Equal(t, 2, gaveUp)
	require.True(t, next.IsZero())
	require.Equal(t, uint64(2), s.unrecovered)
	require.Equal(t, uint64(6), s.nacked)
	require.Equal(t, uint64(2), s.lost())

	// Too late: a given-up packet that turns up is late, not a duplicate.
	require.Equal(t, seqLate, s.push(3, ms(1100), &testPolicy, false))
	require.Equal(t, seqDuplicate, s.push(3, ms(1100), &testPolicy, false))
}

func TestSeqTrackerRecoveredReorderedDuplicate(t *testing.T) {
	var s seqTracker
	pushAll(&s, ms(0), 10, 11, 15) // 12, 13, 14 missing
	require.Equal(t, seqFilled, s.push(13, ms(5), &testPolicy, false), "reordered: before any NACK")
	seqs, _, _ := s.due(ms(15), &testPolicy, nil)
	require.Equal(t, []uint16{12, 14}, seqs)
	require.Equal(t, seqFilled, s.push(14, ms(60), &testPolicy, false), "recovered by the NACK")
	require.Equal(t, seqDuplicate, s.push(14, ms(61), &testPolicy, false))
	require.Equal(t, seqDuplicate, s.push(15, ms(62), &testPolicy, false))
	require.Equal(t, seqDuplicate, s.push(10, ms(63), &testPolicy, false))
	require.Equal(t, uint64(1), s.reordered)
	require.Equal(t, uint64(1), s.recovered)
	require.Equal(t, uint64(3), s.duplicates)
	require.Len(t, s.pending, 1)
	require.Equal(t, uint64(1), s.lost(), "12 is still missing")

	frac, lost, _ := s.report()
	require.Equal(t, uint8(256/6), frac, "1 of 6 expected")
	require.Equal(t, uint32(1), lost)
	frac, _, _ = s.report()
	require.Zero(t, frac, "nothing new since")
}

func TestSeqTrackerGapAcrossWrap(t *testing.T) {
	var s seqTracker
	pushAll(&s, ms(0), 65533, 65534, 1)
	seqs, _, _ := s.due(ms(20), &testPolicy, nil)
	require.Equal(t, []uint16{65535, 0}, seqs)
	require.Equal(t, seqFilled, s.push(0, ms(30), &testPolicy, false))
	require.Equal(t, seqFilled, s.push(65535, ms(30), &testPolicy, false))
	require.Empty(t, s.pending)
}

// A huge gap is bounded: the oldest numbers beyond maxPending are given up
// at once, the rest NACKed.
func TestSeqTrackerBoundsPending(t *testing.T) {
	var s seqTracker
	pushAll(&s, ms(0), 0, 2001)
	require.Len(t, s.pending, maxPending)
	require.Equal(t, uint64(2000), s.missed)
	require.Equal(t, uint64(2000-maxPending), s.unrecovered)
	require.Equal(t, int64(2001-maxPending), s.pending[0].ext)
	seqs, _, _ := s.due(ms(20), &testPolicy, nil)
	require.Len(t, seqs, maxPending)
}

// A jump beyond maxDropout is taken as a restart only when the next packet
// follows it.
func TestSeqTrackerRestart(t *testing.T) {
	var s seqTracker
	pushAll(&s, ms(0), 100, 101)
	require.Equal(t, seqLate, s.push(40000, ms(1), &testPolicy, false), "a stray")
	require.Equal(t, seqNew, s.push(102, ms(2), &testPolicy, false))
	require.Equal(t, seqLate, s.push(40000, ms(3), &testPolicy, false))
	require.Equal(t, seqNew, s.push(40001, ms(4), &testPolicy, false), "restart confirmed")
	require.Equal(t, uint64(1), s.restarts)
	require.Empty(t, s.pending)
	require.Zero(t, s.lost())
	require.Equal(t, seqNew, s.push(40002, ms(5), &testPolicy, false))
}
