package forwarder_test

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A member sending twenty times its share (issue 17): a forwarder of a
// cluster (real redis-server, embedded NATS), three members on the client
// library talking (audio every 20 ms), and a conductor's decision that
// gives member 0 an uplink target of 200 kbit/s: its cap is 300 kbit/s.
// Member 0 then sends 6.2 Mbit/s of video besides its audio. Its excess
// video is cut and counted; what is forwarded of it stays within its cap
// (and one second of burst); nobody's audio loses anything, its own
// included.
//
// The decision is sealed and published by the test over real NATS, on the
// subject and in the format a conductor uses: a real conductor would
// choose the target itself, and this test needs a known one.
func TestMemberOverItsShareIsCut(t *testing.T) {
	e := newClusterEnv(t)
	a := e.startWith(t, "fwd-a", func(cfg *forwarder.Config) {
		cfg.Police.MinBps = 100_000 // below the target: the target decides
	})
	call := protocol.NewID()
	var ms []*member
	var ids []protocol.ID
	for i := range 3 {
		tok, id := e.token(t, call, 8)
		ms = append(ms, calltest.Join(t, tok, uint32(1+i), a.f.Addr()))
		ids = append(ids, id)
	}
	flooder := legOfParticipant(t, a.f, ids[0]).Addr
	require.EqualValues(t, forwarder.DefaultPolice().GroupBps, a.f.PoliceCapBps(flooder), "before any target: its class's cap")

	// The conductor's decision: everyone's audio forwarded, member 0's
	// uplink target 200 kbit/s. Published until the forwarder applied it
	// (it hears the call's subject once the call is here).
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	const targetBps, capBps = 200_000, 300_000
	seq := uint32(0)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if a.f.PoliceCapBps(flooder) == capBps {
			return nil
		}
		seq++
		d := protocol.CallDecision{Call: call, Partition: uint16(protocol.PartitionOf(call, forwarder.DefaultPartitions)),
			Epoch: 1, Seq: seq, At: time.Now(), Forward: ids, Conductor: "test-conductor", Video: true,
			Senders: []protocol.SenderTarget{{Participant: ids[0], Layers: 1, TotalBps: targetBps, LayerBps: [3]uint32{targetBps}}}}
		b, err := d.Marshal(nil, e.key)
		require.NoError(t, err)
		require.NoError(t, nc.Publish(protocol.CallSubject("callrelay", call), b))
		return fmt.Errorf("cap %d bit/s, want %d (decisions applied %d)", a.f.PoliceCapBps(flooder), capBps, a.f.Stats().Decisions)
	})

	// 150 ticks of 20 ms: everyone's audio, and 13 video packets of 1,200
	// bytes from member 0 (6.24 Mbit/s, 20.8 times its cap).
	const videoSSRC, videoSize, perTick, ticks = 0x7e0, 1200, 13, 150
	video := make([]byte, videoSize)
	video[0], video[1] = 0x80, 96
	binary.BigEndian.PutUint32(video[8:], videoSSRC)
	before := a.f.Stats()
	var vseq uint16
	var videoSent atomic.Uint64
	start := time.Now()
	tk := time.NewTicker(20 * time.Millisecond)
	for range ticks {
		<-tk.C
		for _, m := range ms {
			m.SendAudio(true)
		}
		for range perTick {
			vseq++
			binary.BigEndian.PutUint16(video[2:], vseq)
			if ms[0].S.WriteRTP(video) == nil {
				videoSent.Add(1)
			}
		}
	}
	tk.Stop()
	elapsed := time.Since(start)

	// Everyone's audio arrives whole: wait for it (a deadline, then the
	// count says what was lost).
	heard := func() (missing int) {
		for i, rx := range ms {
			for j, tx := range ms {
				if i != j {
					missing += max(0, ticks-rx.Count(tx.SSRC))
				}
			}
		}
		return missing
	}
	pollUntil(10*time.Second, func() bool { return heard() == 0 })
	// Receivers get what was not cut, less only what the forwarder counted
	// dropped for another reason (on a loaded machine the kernel can drop a
	// burst from a full receive buffer, counted as receive_buffer): nothing
	// goes missing uncounted. A reader publishes its counters after sending
	// its batch, so they can lag what the receivers already have: read
	// both until they agree (or the deadline says what went missing).
	got := func() (uint64, uint64) { return uint64(ms[1].Count(videoSSRC)), uint64(ms[2].Count(videoSSRC)) }
	var after forwarder.Stats
	var cut, forwarded, other, got1, got2 uint64
	pollUntil(10*time.Second, func() bool {
		after = a.f.Stats()
		cut = after.Drops[forwarder.DropPolicedVideo] - before.Drops[forwarder.DropPolicedVideo]
		forwarded = videoSent.Load() - cut
		other = 0
		for reason := range after.Drops {
			if forwarder.DropReason(reason) != forwarder.DropPolicedVideo {
				other += after.Drops[reason] - before.Drops[reason]
			}
		}
		got1, got2 = got()
		return got1+other >= forwarded && got2+other >= forwarded
	})
	allowed := float64(capBps) / 8 * (elapsed.Seconds() + 1) // the cap for the time, and a second of burst
	t.Logf("member 0 sent %d video packets (%.2f Mbit/s over %s) besides its audio; cut %d, forwarded %d (%.0f kbit/s; cap %d kbit/s and a second of burst: %.0f bytes); received %d and %d",
		videoSent.Load(), float64(videoSent.Load()*videoSize)*8/elapsed.Seconds()/1e6, elapsed.Round(time.Millisecond), cut, forwarded,
		float64(forwarded*videoSize)*8/elapsed.Seconds()/1e3, capBps/1000, allowed, got1, got2)
	t.Logf("audio packets missing, all pairs: %d of %d", heard(), 6*ticks)

	require.Zero(t, heard(), "no member's audio lost anything, member 0's own included")
	require.Zero(t, after.Drops[forwarder.DropPolicedAudio]-before.Drops[forwarder.DropPolicedAudio])
	require.Positive(t, cut)
	require.LessOrEqual(t, float64(forwarded*videoSize), allowed, "what was forwarded of it stays within its cap")
	require.Greater(t, cut, videoSent.Load()*9/10, "at twenty times its share, most of it is cut")
	// Nothing missing uncounted, and nothing more than was let through.
	t.Logf("other drops counted meanwhile: %d", other)
	for _, g := range []uint64{got1, got2} {
		require.LessOrEqual(t, g, forwarded, "no receiver gets more than was not cut")
		require.GreaterOrEqual(t, g+other, forwarded, "receivers get what was not cut, but for drops counted")
	}
}

// pollUntil polls cond every 10 ms until it holds or d has passed: for
// what must arrive, when the test reports any shortfall itself.
func pollUntil(d time.Duration, cond func() bool) {
	for deadline := time.Now().Add(d); !cond() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

// legOfParticipant is the forwarder's view of participant id's session.
func legOfParticipant(t *testing.T, f *forwarder.Forwarder, id protocol.ID) forwarder.Leg {
	t.Helper()
	for _, l := range f.Legs() {
		if l.Participant == id {
			return l
		}
	}
	t.Fatalf("no session of %s", id)
	return forwarder.Leg{}
}
