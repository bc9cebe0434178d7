package conductor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// videoMeta is one member's metadata with a video section.
func videoMeta(id protocol.ID, up, down uint32, layers uint8, subs ...protocol.ID) protocol.MemberMetadata {
	mm := protocol.MemberMetadata{Participant: id, MeanLevel: 127, MaxLevel: 127, Flags: protocol.MetaVideo}
	mm.Video.UplinkEstBps, mm.Video.DownlinkEstBps, mm.Video.Layers = up, down, layers
	for _, s := range subs {
		mm.Video.Subs[mm.Video.NumSubs] = protocol.VideoSub{Participant: s}
		mm.Video.NumSubs++
	}
	return mm
}

func TestCallVideoFromMetadataToDecision(t *testing.T) {
	cs := &callState{id: protocol.NewID()}
	cam, fast, slow := protocol.NewID(), protocol.NewID(), protocol.NewID()
	now := time.Unix(1_800_000_000, 0)
	ladder := DefaultVideoLadder()
	observe := func(slowDown uint32) {
		for _, mm := range []protocol.MemberMetadata{
			videoMeta(cam, 3_000_000, 3_000_000, 1),
			videoMeta(fast, 3_000_000, 3_000_000, 0, cam),
			videoMeta(slow, 3_000_000, slowDown, 0, cam),
		} {
			cs.observeVideo(&mm, now, ladder)
		}
	}
	observe(3_000_000)
	require.True(t, cs.allocateVideo(now, cam, []protocol.ID{cam}, nil), "the first allocation is news")
	require.Len(t, cs.video.layers, 2)
	for _, l := range cs.video.layers {
		require.Equal(t, uint8(2), l.Rank)
	}
	require.Equal(t, uint8(1), senderTarget(t, cs, cam).Layers)

	// The same input again, and an estimate that moves a little: no news.
	now = now.Add(100 * time.Millisecond)
	observe(2_900_000)
	require.False(t, cs.allocateVideo(now, cam, []protocol.ID{cam}, nil))

	// A downlink estimate counts once it has been reported for
	// downlinkSettle: before, a start-up estimate of 300 kbit/s changes
	// nothing (the receiver's downlink is unknown: the default budget).
	now = now.Add(100 * time.Millisecond)
	observe(300_000)
	require.False(t, cs.allocateVideo(now, cam, []protocol.ID{cam}, nil), "not settled yet")

	// Settled, the slow receiver's downlink is 300 kbit/s: split, low for it.
	now = now.Add(downlinkSettle)
	observe(300_000)
	require.True(t, cs.allocateVideo(now, cam, []protocol.ID{cam}, nil))
	st := senderTarget(t, cs, cam)
	require.Equal(t, uint8(2), st.Layers)
	require.Equal(t, uint32(ladder.LowBps), st.LayerBps[0])
	for _, l := range cs.video.layers {
		want := uint8(2)
		if l.Receiver == slow {
			want = 1
		}
		require.Equal(t, want, l.Rank)
	}

	// A member that stops reporting is dropped after videoStale; one that
	// leaves is forgotten at once.
	cs.forgetVideo(slow)
	now = now.Add(100 * time.Millisecond)
	cs.allocateVideo(now, cam, []protocol.ID{cam}, nil)
	require.Len(t, cs.video.layers, 1)
	now = now.Add(videoStale + time.Second)
	cs.allocateVideo(now, cam, []protocol.ID{cam}, nil)
	require.Empty(t, cs.video.members)
}

func senderTarget(t *testing.T, cs *callState, id protocol.ID) protocol.SenderTarget {
	t.Helper()
	for _, s := range cs.video.senders {
		if s.Participant == id {
			return s
		}
	}
	t.Fatalf("no target for %s", id)
	return protocol.SenderTarget{}
}

func TestSimilarTargets(t *testing.T) {
	a := protocol.SenderTarget{Layers: 2, TotalBps: 1_000_000, LayerBps: [3]uint32{100_000, 860_000}}
	b := a
	b.TotalBps, b.LayerBps[1] = 1_100_000, 950_000
	require.True(t, similarTarget(a, b), "within 15%")
	b.LayerBps[0] = 0
	require.False(t, similarTarget(a, b), "a layer turned off is news")
	b = a
	b.Layers = 1
	require.False(t, similarTarget(a, b))
}
