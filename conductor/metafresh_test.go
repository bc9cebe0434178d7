package conductor

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// A captured metadata batch sent again (on the metadata subject, by anyone
// who can publish there) is stale: it is dropped and counted, and it does
// not bring back the speaker it named. One tick's calls split over several
// batches (same `at`, rising sequence) are all taken; a batch made over
// 10 s from the conductor's clock is dropped as skewed.
func TestReplayedMetadataIsStale(t *testing.T) {
	c, key := newOnePartitionConductor(t)
	cfg := c.cfg
	p := newPartition(c, 0, 1)
	start := time.Now()
	p.setValidUntil(start.Add(time.Hour))
	call, alice, bob := protocol.NewID(), protocol.NewID(), protocol.NewID()
	p.calls[call] = &callState{id: call, subject: protocol.CallSubject(cfg.Subject, call), det: NewSpeakerDetector(cfg.Speaker),
		ready: true, decided: true, since: start, spurts: map[protocol.ID]spurt{}, members: map[protocol.ID]struct{}{}}

	seal := func(fwd string, seq uint64, at time.Time, speaker protocol.ID) []byte {
		b := protocol.MetadataBatch{Forwarder: fwd, Seq: seq, At: at, TickMillis: 100,
			Calls: []protocol.CallMetadata{{Call: call, Members: []protocol.MemberMetadata{{Participant: speaker,
				Packets: 5, VoicePackets: 5, PayloadBytes: 450, MeanLevel: 30, MaxLevel: 25}}}}}
		raw, err := b.Marshal(nil, key)
		require.NoError(t, err)
		return raw
	}
	rejected := func(reason string) float64 { return testutil.ToFloat64(c.m.rejected.WithLabelValues(reason)) }
	taken := func() float64 { return testutil.ToFloat64(c.m.metadata) }

	// Bob speaks for 3 s, captured; then Alice for 3 s.
	now, seq := start, uint64(0)
	var bobs [][]byte
	for range 30 {
		now, seq = now.Add(100*time.Millisecond), seq+1
		raw := seal("fwd-a", seq, now, bob)
		bobs = append(bobs, raw)
		p.onMetadata(raw, now)
		p.decideAll(now)
	}
	require.Equal(t, bob, p.calls[call].dominant)
	for range 30 {
		now, seq = now.Add(100*time.Millisecond), seq+1
		p.onMetadata(seal("fwd-a", seq, now, alice), now)
		p.decideAll(now)
	}
	require.Equal(t, alice, p.calls[call].dominant)

	// Bob's 3 s sent again, tick by tick, while Alice goes quiet: stale.
	before := taken()
	for _, raw := range bobs {
		now = now.Add(100 * time.Millisecond)
		p.onMetadata(raw, now)
		p.decideAll(now)
	}
	require.Equal(t, alice, p.calls[call].dominant, "a replayed batch moved the dominant speaker")
	require.Equal(t, float64(len(bobs)), rejected("stale"))
	require.Equal(t, before, taken())

	// One tick split over two batches: both taken; the second again is stale.
	now = now.Add(100 * time.Millisecond)
	p.onMetadata(seal("fwd-a", seq+1, now, alice), now)
	second := seal("fwd-a", seq+2, now, alice)
	p.onMetadata(second, now)
	require.Equal(t, before+2, taken())
	p.onMetadata(second, now)
	require.Equal(t, float64(len(bobs)+1), rejected("stale"))

	// Another forwarder has its own order; a restarted one (sequence from
	// 1 again, later `at`) is taken.
	p.onMetadata(seal("fwd-b", 7, now, alice), now)
	now = now.Add(100 * time.Millisecond)
	p.onMetadata(seal("fwd-a", 1, now, alice), now)
	require.Equal(t, before+4, taken())

	// Made 11 s ago, or 11 s ahead, by a forwarder never heard from: skewed.
	p.onMetadata(seal("fwd-c", 1, now.Add(-11*time.Second), bob), now)
	p.onMetadata(seal("fwd-d", 1, now.Add(11*time.Second), bob), now)
	require.Equal(t, float64(2), rejected("skewed"))
	require.Equal(t, before+4, taken())
	require.Equal(t, alice, p.calls[call].dominant)

	// Forwarders silent for 20 s are forgotten (their old batches fail the
	// skew check anyway): the table stays bounded.
	now = now.Add(21 * time.Second)
	p.onMetadata(seal("fwd-e", 1, now, alice), now)
	require.Len(t, p.marks, 1)
}

// newOnePartitionConductor is a conductor of one partition on a real
// embedded NATS and an in-memory store, and its cluster key, for tests
// that drive a partition's methods directly.
func newOnePartitionConductor(t *testing.T) (*Conductor, protocol.ClusterKey) {
	t.Helper()
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	store := statestore.NewMemory(statestore.Config{})
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Partitions = nc, key, store, store, 1
	c, err := New(cfg)
	require.NoError(t, err)
	return c, key
}
