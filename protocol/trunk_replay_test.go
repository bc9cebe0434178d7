package protocol

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testStarted is a forwarder process's start (1800000000000 ms).
var testStarted = time.UnixMilli(1800000000000)

func TestTrunkReplayWindow(t *testing.T) {
	var w TrunkReplay
	base := TrunkSeqStart(testStarted)
	require.False(t, w.Accept(0), "sequence 0 is never sent")
	require.True(t, w.Accept(base))
	require.False(t, w.Accept(base), "a replay")
	require.True(t, w.Accept(base+5))
	require.True(t, w.Accept(base+2), "late but within the window")
	require.False(t, w.Accept(base+2))
	require.True(t, w.Accept(base+1000))
	require.False(t, w.Accept(base+1000-TrunkReplayWindow), "as old as the window")
	require.True(t, w.Accept(base+1001-TrunkReplayWindow), "the oldest the window keeps, never seen")
	require.False(t, w.Accept(base+5), "seen, and now out of the window")
	// A restarted sender's stream starts above anything its previous
	// process could have sent, so the window lets it in.
	require.True(t, w.Accept(TrunkSeqStart(testStarted.Add(time.Millisecond))))
	require.False(t, w.Accept(base+1001), "the previous process is now old")
	require.False(t, w.Accept(^uint64(0)-3), "a sequence whose window wraps")
}

// Every sequence seen once, replayed several times from several goroutines:
// each is accepted exactly once.
func TestTrunkReplayWindowConcurrent(t *testing.T) {
	var w TrunkReplay
	base := TrunkSeqStart(testStarted)
	const n, goroutines = 20000, 4
	var accepted [n]atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); i < n; i++ {
				if w.Accept(base + i) {
					accepted[i].Add(1)
				}
			}
		}()
	}
	wg.Wait()
	for i := uint64(0); i < n; i++ {
		require.LessOrEqual(t, accepted[i].Load(), int32(1), "sequence %d accepted twice", i)
		require.False(t, w.Accept(base+i), "sequence %d accepted again", i)
	}
}

func TestTrunkReplayAllocatesNothing(t *testing.T) {
	var w TrunkReplay
	s := TrunkSeqStart(testStarted)
	require.Zero(t, testing.AllocsPerRun(1000, func() { s++; w.Accept(s) }))
}
