package conductor

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// A call's records in a real Redis go through the conductor's read path
// (the io queue's load, then onLoaded): a good checkpoint is restored, a
// malformed one is counted by record and the call is decided afresh.
func TestCheckpointReadPath(t *testing.T) {
	store, err := statestore.OpenRedis(testenv.Redis(t).URL(), statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	ctx := context.Background()
	cfg := Default()
	cfg.Store, cfg.Leases, cfg.Partitions = store, store, 1
	c := &Conductor{cfg: cfg, m: newMetrics(nil), log: zap.NewNop()}
	q := newIOQueue(store, c.m, c.log)
	p := &partition{c: c, calls: map[protocol.ID]*callState{}, unknown: map[protocol.ID]time.Time{}, stride: 1}
	now := time.Unix(1_800_000_000, 0)

	load := func(call protocol.ID) *callState {
		t.Helper()
		cs := &callState{id: call, det: NewSpeakerDetector(cfg.Speaker), members: map[protocol.ID]struct{}{},
			spurts: map[protocol.ID]spurt{}}
		p.calls[call] = cs
		out := make(chan loadResult, 1)
		require.True(t, q.load(call, out))
		job := <-q.jobs // run the queued job here, as a worker would
		job(ctx)
		p.onLoaded(<-out, now)
		require.True(t, cs.ready)
		return cs
	}
	newCall := func() protocol.ID {
		id, who := protocol.NewID(), protocol.NewID()
		_, err := store.AddMember(ctx, id, protocol.ClassGroup, 8, who, statestore.Member{Forwarder: "fwd-a",
			Addr: netip.MustParseAddrPort("198.51.100.1:5000"), JoinedAt: now})
		require.NoError(t, err)
		return id
	}

	// A good checkpoint: the dominant speaker and sequence come back.
	good, dom := newCall(), protocol.NewID()
	ck := statestore.ConductorCheckpoint{Epoch: 4, Seq: 99, Speaker: statestore.SpeakerState{Dominant: dom, Since: now,
		LastSpoke: map[protocol.ID]time.Time{dom: now}}}
	b, err := ck.MarshalBinary()
	require.NoError(t, err)
	require.NoError(t, store.SaveCheckpoint(ctx, good, statestore.ConductorCheckpointKind, b, time.Minute))
	cs := load(good)
	require.Equal(t, dom, cs.det.Dominant())
	require.EqualValues(t, 99, cs.seq)
	require.Equal(t, 1.0, counterValue(t, c.m.restored))

	// Garbage under the conductor's kind: counted, nothing restored.
	bad := newCall()
	require.NoError(t, store.SaveCheckpoint(ctx, bad, statestore.ConductorCheckpointKind, []byte{2, 0, 0}, time.Minute))
	cs = load(bad)
	require.True(t, cs.det.Dominant().IsZero())
	require.Zero(t, cs.seq)
	require.Equal(t, 1.0, counterValue(t, c.m.malformed.WithLabelValues("checkpoint")))
	require.Equal(t, 1.0, counterValue(t, c.m.restored), "nothing restored from garbage")
	require.Equal(t, 0.0, counterValue(t, c.m.storeErrors), "a malformed record is not an unreachable store")

	// No checkpoint at all is neither.
	cs = load(newCall())
	require.True(t, cs.det.Dominant().IsZero())
	require.Equal(t, 1.0, counterValue(t, c.m.malformed.WithLabelValues("checkpoint")))
}
