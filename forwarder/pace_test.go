package forwarder

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// feed gives p one batch of n packets every gapNS for a while, and returns
// what the last call said.
func feed(p *pacer, now *int64, n int, gapNS int64, batches int) int64 {
	var w int64
	for i := 0; i < batches; i++ {
		*now += gapNS
		w = p.after(n, *now)
	}
	return w
}

// A reader waits between reads only while its packets come fast enough
// that a wait gathers several of them, and never after a full batch.
func TestPacerWaitsOnlyWhenItGathers(t *testing.T) {
	wait := 250 * time.Microsecond
	p := newPacer(wait)
	now := int64(0)
	// 1,000 packets a second, one per read: a wait would gather a
	// quarter of a packet. Never wait.
	require.Zero(t, feed(&p, &now, 1, 1e6, 50))
	// 40,000 a second (one every 25 µs): a wait gathers 10. Wait.
	require.Equal(t, int64(wait), feed(&p, &now, 1, 25e3, 1000))
	// ...but not after a full batch: more is already waiting.
	require.Zero(t, p.after(readBatch, now+1))
	// Paced, the same rate arrives as batches of ~10 per wait: still on.
	require.Equal(t, int64(wait), feed(&p, &now, 10, int64(wait), 100))
	// The rate falls to 8,000 a second (2 per wait): off within a window.
	require.Zero(t, feed(&p, &now, 1, 125e3, 200))
	// BatchWait 0: never.
	off := newPacer(0)
	require.Zero(t, feed(&off, &now, 10, 1e3, 100))
}

func TestBatchWaitValidated(t *testing.T) {
	cfg := Default()
	cfg.BatchWait = 3 * time.Millisecond
	require.ErrorContains(t, cfg.Validate(), "batch wait")
	cfg.BatchWait = -1
	require.ErrorContains(t, cfg.Validate(), "batch wait")
	cfg.BatchWait = 0
	if err := cfg.Validate(); err != nil {
		require.NotContains(t, err.Error(), "batch wait")
	}
}
