package conductor

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

func TestNextStride(t *testing.T) {
	const period = 100 * time.Millisecond
	for _, tc := range []struct {
		stride      int
		took        time.Duration
		queued, cap int
		want        int
		why         string
	}{
		{1, 10 * time.Millisecond, 0, 100, 1, "cheap: every tick"},
		{1, 60 * time.Millisecond, 0, 100, 2, "slow tick: group calls every second tick"},
		{2, 60 * time.Millisecond, 0, 100, 4, "still slow: every fourth"},
		{4, 90 * time.Millisecond, 0, 100, 4, "never beyond every fourth"},
		{1, 10 * time.Millisecond, 60, 100, 2, "metadata piling up"},
		{4, 30 * time.Millisecond, 0, 100, 4, "in between: stays"},
		{4, 10 * time.Millisecond, 10, 100, 2, "cheap again: halves"},
		{2, 10 * time.Millisecond, 10, 100, 1, "and back to every tick"},
	} {
		require.Equal(t, tc.want, nextStride(tc.stride, tc.took, period, tc.queued, tc.cap), tc.why)
	}
}

// A conductor that is behind defers group calls, never one-to-one calls.
func TestBehindDefersGroupCallsOnly(t *testing.T) {
	store := statestore.NewMemory(statestore.Config{})
	cfg := Default()
	cfg.NATS, cfg.Store, cfg.Leases, cfg.Partitions = nil, store, store, 1
	cfg.Key, _ = protocol.NewClusterKey()
	c := &Conductor{cfg: cfg, m: newMetrics(nil)}
	p := &partition{c: c, calls: map[protocol.ID]*callState{}, unknown: map[protocol.ID]time.Time{}, stride: 2}
	now := time.Unix(1_800_000_000, 0)
	p.setValidUntil(now.Add(time.Hour))
	mk := func(n int) *callState {
		cs := &callState{id: protocol.NewID(), det: NewSpeakerDetector(cfg.Speaker), ready: true, lastSeen: now,
			decided: true, lastSent: now, members: map[protocol.ID]struct{}{}, spurts: map[protocol.ID]spurt{}}
		for range n {
			cs.members[protocol.NewID()] = struct{}{}
		}
		p.calls[cs.id] = cs
		return cs
	}
	one, group := mk(2), mk(6)
	require.False(t, one.group())
	require.True(t, group.group())
	// Nothing changes in these calls, so decide publishes nothing (no
	// NATS needed); the deferred counter tells which calls were skipped.
	p.tick = 0 // the next tick is 1: odd, group calls wait
	p.decideAll(now.Add(100 * time.Millisecond))
	require.Equal(t, 1.0, counterValue(t, c.m.deferred))
	p.stride = 2
	p.decideAll(now.Add(200 * time.Millisecond)) // tick 2: everyone
	require.Equal(t, 1.0, counterValue(t, c.m.deferred))
}

func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}
