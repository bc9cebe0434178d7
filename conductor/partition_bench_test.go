package conductor

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// BenchmarkPartition10kCalls is the conductor's decision loop for 10,000
// calls of mixed sizes (2 to 8 members) in one partition, through its real
// code path: authenticate and decode the forwarders' metadata batches, run
// dominant-speaker detection for every call, and encode, sign and publish
// (to a real embedded NATS server) the decisions that changed or are due
// for a repeat. One op is one 100 ms tick for all 10,000 calls; calls/s is
// the decisions evaluated per second of one core.
func BenchmarkPartition10kCalls(b *testing.B) {
	const calls = 10000
	ns := testenv.NATS(b)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(b, err)
	defer nc.Close()
	key, err := protocol.NewClusterKey()
	require.NoError(b, err)
	store := statestore.NewMemory(statestore.Config{})
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Partitions = nc, key, store, store, 1
	c, err := New(cfg)
	require.NoError(b, err)
	p := newPartition(c, 0, 1)
	p.setValidUntil(time.Now().Add(time.Hour))

	ids := make([]protocol.ID, calls)
	members := make([][]protocol.ID, calls)
	for i := range calls {
		ids[i] = protocol.NewID()
		for range 2 + i%7 {
			members[i] = append(members[i], protocol.NewID())
		}
		cs := &callState{id: ids[i], subject: protocol.CallSubject(cfg.Subject, ids[i]), det: NewSpeakerDetector(cfg.Speaker), ready: true, spurts: map[protocol.ID]spurt{}, members: map[protocol.ID]struct{}{}}
		p.calls[ids[i]] = cs
	}
	// One batch per group of calls that fits a message; in each call one
	// member speaks (the speaker changes every 5 s) and the others are
	// silent (forwarders leave them out).
	now := time.Now()
	var seq uint64
	encode := func(tick int, at time.Time) [][]byte {
		var out [][]byte
		batch := protocol.MetadataBatch{Forwarder: "bench", Partition: 0, TickMillis: 100, At: at}
		flush := func() {
			seq++
			batch.Seq = seq
			raw, err := batch.Marshal(nil, key)
			require.NoError(b, err)
			out = append(out, raw)
			batch.Calls = batch.Calls[:0]
		}
		for i := range calls {
			speaker := members[i][(tick/50)%len(members[i])]
			batch.Calls = append(batch.Calls, protocol.CallMetadata{Call: ids[i], Members: []protocol.MemberMetadata{
				{Participant: speaker, Packets: 5, VoicePackets: 5, PayloadBytes: 450, MeanLevel: 30, MaxLevel: 25}}})
			if len(batch.Calls) == 250 {
				flush()
			}
		}
		if len(batch.Calls) > 0 {
			flush()
		}
		return out
	}
	// Each tick's batches are encoded with the timer stopped (that is the
	// forwarders' work), stamped with the tick's time and sequence: the
	// partition takes only newer batches (metafresh.go).
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(100 * time.Millisecond)
		b.StopTimer()
		raws := encode(i, now)
		b.StartTimer()
		for _, raw := range raws {
			p.onMetadata(raw, now)
		}
		p.decideAll(now)
	}
	b.StopTimer()
	require.NoError(b, nc.Flush())
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(calls*b.N)/secs, "calls/s")
}
