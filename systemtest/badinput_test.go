package systemtest

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Garbage and forged metadata, metadata for an unknown call or the wrong
// partition, garbage decisions and a fenced-off conductor's decision: each
// is rejected and counted, and the call in progress is not disturbed.
func TestBadMetadataAndStaleDecisions(t *testing.T) {
	e := newEnv(t)
	fa := e.forwarder(t, "fwd-a")
	call := protocol.NewID()
	ms := []*calltest.Member{e.join(t, call, 1, fa.Addr()), e.join(t, call, 2, fa.Addr())}
	watch := e.watchDecisions(t)
	stop := make(chan struct{})
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	defer close(stop)
	c1 := e.conductor(t, "cond-1", nil)
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if len(ms[1].Speakers()) == 0 {
			return fmt.Errorf("no dominant speaker yet")
		}
		return nil
	})
	nc := e.natsConn(t)
	defer nc.Close()
	part := protocol.PartitionOf(call, partitions)
	subject := fmt.Sprintf("callrelay.meta.%d", part)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	batch := func(call protocol.ID, p uint16, k protocol.ClusterKey) []byte {
		b := protocol.MetadataBatch{Forwarder: "intruder", Partition: p, Seq: 1, At: time.Now(), TickMillis: 100,
			Calls: []protocol.CallMetadata{{Call: call, Members: []protocol.MemberMetadata{
				{Participant: protocol.NewID(), Packets: 5, VoicePackets: 5, PayloadBytes: 500, MeanLevel: 10, MaxLevel: 5}}}}}
		raw, err := b.Marshal(nil, k)
		require.NoError(t, err)
		return raw
	}
	unknownCall := protocol.NewID()
	for protocol.PartitionOf(unknownCall, partitions) != part {
		unknownCall = protocol.NewID()
	}
	for _, raw := range [][]byte{
		[]byte("garbage"),
		batch(call, uint16(part), other),                    // the wrong key: a forgery
		batch(unknownCall, uint16(part), e.key),             // a call the store does not know
		batch(call, uint16((part+1)%partitions), e.key),     // says another partition
		append(batch(call, uint16(part), e.key)[:30], 0xff), // truncated
	} {
		require.NoError(t, nc.Publish(subject, raw))
	}
	require.NoError(t, nc.Flush())
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		for reason, want := range map[string]float64{"malformed": 3, "unknown_call": 1, "wrong_partition": 1} {
			if got := metric(t, c1.reg, "callrelay_conductor_metadata_rejected_total", reason); got < want {
				return fmt.Errorf("%s: %v rejected, want %v", reason, got, want)
			}
		}
		return nil
	})

	// The first conductor stops; a second one takes over with a higher
	// epoch. Then a decision of the first one's epoch shows up (a conductor
	// that lost its lease without noticing): it would mute the speaker, and
	// the forwarder must ignore it.
	old, _ := watch.snapshot()
	require.NotEmpty(t, old)
	stale := old[len(old)-1]
	c1.stop()
	e.conductor(t, "cond-2", nil)
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		all, _ := watch.snapshot()
		if last := all[len(all)-1]; last.Epoch <= stale.Epoch {
			return fmt.Errorf("no decision of a newer epoch yet")
		}
		return nil
	})
	before := fa.Stats()
	stale.Seq += 1000
	stale.Forward = []protocol.ID{ms[1].ID}
	raw, err := stale.Marshal(nil, e.key)
	require.NoError(t, err)
	require.NoError(t, nc.Publish("callrelay.call."+call.String(), raw))
	forged := append([]byte(nil), raw...)
	forged[len(forged)-1] ^= 1
	require.NoError(t, nc.Publish("callrelay.call."+call.String(), forged))
	require.NoError(t, nc.Publish("callrelay.call."+call.String(), []byte("CRLC\x01\x04garbage")))
	require.NoError(t, nc.Flush())
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		s := fa.Stats()
		if s.DecisionsStale == before.DecisionsStale || s.ClusterBad < before.ClusterBad+2 {
			return fmt.Errorf("stale %d, bad %d", s.DecisionsStale, s.ClusterBad)
		}
		return nil
	})
	heard := ms[1].Count(ms[0].SSRC)
	testenv.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
		if ms[1].Count(ms[0].SSRC) < heard+25 {
			return fmt.Errorf("the speaker is not heard")
		}
		return nil
	})
	require.Equal(t, []protocol.ID{ms[0].ID}, ids(ms[1].Speakers()))
	_ = nats.ErrConnectionClosed
}

// The conductor loses Redis: it cannot renew its lease (counted, logged
// once) but decides on under its epoch, well past the lease's validity
// (its store grace), so the forwarder follows fresh decisions throughout
// (the speaker is heard, the silent member muted, nothing lapses); when
// Redis returns empty, the conductor takes its partition again in place
// at a higher epoch. (With no grace, the forwarder's decision timeout takes
// over: TestRedisOutageWithoutConductorGrace.)
func TestConductorWithoutRedisDecidesOn(t *testing.T) {
	e := newEnv(t)
	fa := e.forwarder(t, "fwd-a")
	call := protocol.NewID()
	ms := []*calltest.Member{e.join(t, call, 1, fa.Addr()), e.join(t, call, 2, fa.Addr()), e.join(t, call, 3, fa.Addr())}
	watch := e.watchDecisions(t)
	stop := make(chan struct{})
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	defer close(stop)
	cd := e.conductor(t, "cond-1", nil) // lease TTL 1 s, store grace the default minute
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if len(ms[1].Speakers()) == 0 || len(ms[2].Speakers()) == 0 {
			return fmt.Errorf("no dominant speaker yet")
		}
		return nil
	})
	unheard(t, ms, 1, 2) // the silent members are muted before Redis goes
	before, _ := watch.snapshot()
	epoch := before[len(before)-1].Epoch
	e.redis.Stop()
	stopped := time.Now()
	testenv.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if metric(t, cd.reg, "callrelay_conductor_store_unreachable", "") != 1 {
			return fmt.Errorf("the conductor has not found Redis gone")
		}
		return nil
	})
	require.Positive(t, metric(t, cd.reg, "callrelay_conductor_lease_errors_total", ""))
	silent, heard := ms[1].Count(ms[2].SSRC), ms[1].Count(ms[0].SSRC)
	// Decisions go on, three lease TTLs past the stop.
	testenv.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		ds, at := watch.snapshot()
		if last := at[len(at)-1]; last.Sub(stopped) < 3*time.Second || ds[len(ds)-1].Epoch != epoch {
			return fmt.Errorf("no decision of epoch %d 3 s after Redis went yet", epoch)
		}
		return nil
	})
	require.Equal(t, float64(partitions), metric(t, cd.reg, "callrelay_conductor_partitions_owned", ""), "still holding its partitions")
	require.Greater(t, ms[1].Count(ms[0].SSRC), heard+50, "the speaker is heard")
	require.Equal(t, silent, ms[1].Count(ms[2].SSRC), "the silent member is muted")
	require.Zero(t, fa.Stats().DecisionLapses, "fresh decisions all along")

	require.NoError(t, e.redis.Restart())
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ds, _ := watch.snapshot()
		if d := ds[len(ds)-1]; d.Epoch <= epoch {
			return fmt.Errorf("no decision of a higher epoch than %d since Redis returned", epoch)
		}
		return nil
	})
	require.Equal(t, 0.0, metric(t, cd.reg, "callrelay_conductor_store_unreachable", ""))
	require.Equal(t, silent, ms[1].Count(ms[2].SSRC), "the silent member is still muted")
}
