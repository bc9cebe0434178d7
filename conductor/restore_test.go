package conductor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// A new holder restores a call from its checkpoint and decides it at once,
// but only if the checkpoint forwards someone. One older than RecentWindow,
// with only a quiet forwarder's metadata come yet, would forward nobody and
// shut the speaker off at every forwarder (for a whole takeover, when this
// holder died next: TestConductorSIGKILLTakeover saw 2 s of silence). Such
// a call waits a decision tick, as a call decided afresh does, and its
// first decision forwards the speaker whose forwarder reported meanwhile.
func TestRestoredCheckpointForwardingNobodyWaits(t *testing.T) {
	c, key := newOnePartitionConductor(t)

	for _, tc := range []struct {
		name      string
		lastSpoke time.Duration // before the takeover
		atOnce    bool
	}{
		{"checkpoint older than the recent window", -10 * time.Second, false},
		{"recent checkpoint", -time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPartition(c, 0, 1)
			now := time.Now()
			p.setValidUntil(now.Add(time.Hour))
			call, speaker, quiet := protocol.NewID(), protocol.NewID(), protocol.NewID()
			seq := uint64(0)
			meta := func(fwd string, at time.Time, m protocol.MemberMetadata) {
				seq++
				b := protocol.MetadataBatch{Forwarder: fwd, Seq: seq, At: at, TickMillis: 100,
					Calls: []protocol.CallMetadata{{Call: call, Members: []protocol.MemberMetadata{m}}}}
				raw, err := b.Marshal(nil, key)
				require.NoError(t, err)
				p.onMetadata(raw, at)
			}
			// The quiet member's forwarder reports first; the call's record
			// and checkpoint are read (here handed over directly).
			meta("fwd-b", now, protocol.MemberMetadata{Participant: quiet, MeanLevel: 127, MaxLevel: 127})
			cs := p.calls[call]
			require.NotNil(t, cs)
			ck := statestore.ConductorCheckpoint{Epoch: 1, Seq: 7, Speaker: statestore.SpeakerState{Dominant: speaker,
				Since: now.Add(-time.Minute), LastSpoke: map[protocol.ID]time.Time{speaker: now.Add(tc.lastSpoke)}}}
			raw, err := ck.MarshalBinary()
			require.NoError(t, err)
			p.onLoaded(loadResult{call: call, ckpt: raw}, now.Add(2*time.Millisecond))
			require.True(t, cs.ready)
			require.Equal(t, tc.atOnce, cs.decided, "decided at once")
			if tc.atOnce {
				require.Equal(t, []protocol.ID{speaker}, cs.forward)
				return
			}
			// The speaker's forwarder reports within the tick.
			meta("fwd-a", now.Add(50*time.Millisecond), protocol.MemberMetadata{Participant: speaker,
				Packets: 5, VoicePackets: 5, PayloadBytes: 450, MeanLevel: 30, MaxLevel: 25})
			p.decideAll(now.Add(60 * time.Millisecond))
			require.False(t, cs.decided, "within a tick of its first metadata the call waits")
			p.decideAll(now.Add(110 * time.Millisecond))
			require.True(t, cs.decided)
			require.Equal(t, speaker, cs.dominant)
			require.Equal(t, []protocol.ID{speaker}, cs.forward, "the first decision forwards the speaker")
		})
	}
}
