package forwarder

import (
	"net"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// TestFeedbackTickSendsInBatches: a feedback tick's REMBs (150 senders,
// more than two write batches) and PLIs reach each sender byte-exact as
// pion marshals them, over a real loopback socket, and the REMBs allocate
// nothing.
func TestFeedbackTickSendsInBatches(t *testing.T) {
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer sink.Close()
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer out.Close()
	f := &Forwarder{cfg: Default(), conns: []*net.UDPConn{out}}
	c := &control{f: f, calls: map[protocol.ID]*call{}}
	want := map[string]int{}
	for i := 0; i < 75; i++ {
		cl := &call{id: protocol.NewID(), class: protocol.ClassOneToOne, members: map[protocol.ID]*session{}}
		for j := 0; j < 2; j++ {
			k := uint32(2*i + j + 1)
			m := new(mediaInfo)
			m.note(k)
			m.note(k + 1000)
			m.rtpSeen.Store(true)
			m.up.bps.Store(uint64(50_000 + k))
			id := protocol.NewID()
			cl.members[id] = &session{call: cl, participant: id, addr: sink.LocalAddr().(*net.UDPAddr).AddrPort(), media: m}
			b, err := (&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: float32(50_000 + k), SSRCs: []uint32{k, k + 1000}}).Marshal()
			require.NoError(t, err)
			want[string(b)]++
			if k%50 == 0 {
				m.keyWanted.Store(1 << 1)
				b, err := (&rtcp.PictureLossIndication{MediaSSRC: k + 1000}).Marshal()
				require.NoError(t, err)
				want[string(b)]++
			}
		}
		c.calls[cl.id] = cl
	}
	require.Len(t, want, 153)
	c.feedbackTick(time.Now())

	buf := make([]byte, 2048)
	require.NoError(t, sink.SetReadDeadline(time.Now().Add(5*time.Second)))
	for n := 0; n < 153; n++ {
		k, err := sink.Read(buf)
		require.NoError(t, err, "after %d datagrams", n)
		require.Positive(t, want[string(buf[:k])], "unexpected datagram % x", buf[:k])
		want[string(buf[:k])]--
	}
	require.Equal(t, uint64(153), f.targetsSent.Load())

	// The next ticks within rembEvery send nothing; the one after sends
	// every REMB again, without allocating.
	now := time.Now()
	allocs := testing.AllocsPerRun(5, func() {
		now = now.Add(rembEvery)
		c.feedbackTick(now)
	})
	require.Zero(t, allocs)
}
