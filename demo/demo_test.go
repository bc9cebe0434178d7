package demo

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/protocol"
)

// Run must stop its forwarder and every participant before it returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runTimeout bounds a whole demo run: Duration plus joining and shutdown on a
// loaded machine.
const runTimeout = 30 * time.Second

func TestRunDecryptsEveryForwardedPacket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{
		Duration:  2 * time.Second,
		OneToOne:  2,
		Groups:    1,
		GroupSize: 5,
		Interval:  500 * time.Millisecond,
	}, &out)
	require.NoError(t, err)
	require.NoError(t, ctx.Err(), "Run must end by its Duration, not by the test's deadline")
	t.Logf("result: %+v", res)

	require.Equal(t, 2*2+1*5, res.Participants)
	require.NotZero(t, res.Sent)
	require.NotZero(t, res.Decrypted, "receivers must decrypt media")
	require.Zero(t, res.Failed, "no packet may fail to decrypt or differ")
	// As members leave at the end, trunk frames already on their way to a
	// forwarder whose last member of the call just left find no one; as
	// they join, a camera's first frames may reach another forwarder over
	// the trunk before it knows the sender: the only drops allowed.
	drops := res.Forwarder.Drops
	drops[forwarder.DropTrunkNoCall], drops[forwarder.DropUnsubscribed] = 0, 0
	require.Zero(t, drops, "drops: %v", res.Forwarder.Drops)
	require.NotZero(t, res.Forwarder.TrunkOut, "members of one call sit on different forwarders")

	// Each one-to-one packet goes to 1 other member and each group packet to
	// GroupSize-1 = 4, so the forwarder sends between 1 and 4 copies of every
	// packet it gets (audio or video), and resends what receivers NACKed;
	// every copy is a packet some receiver may decrypt. Result.Forwarder is
	// read after the forwarder stopped, so PacketsOut counts every copy
	// sent, and no receiver can have decrypted more. Only copies in flight
	// when the receivers stopped, and resent ones that arrived twice, go
	// undecrypted.
	require.GreaterOrEqual(t, res.Forwarder.PacketsIn, res.Sent+res.Video.PacketsSent, "every packet sent reached the forwarder")
	out1, resent := res.Forwarder.PacketsOut, res.Forwarder.NackOutcomes[0]
	require.LessOrEqual(t, out1, 4*(res.Sent+res.Video.PacketsSent)+resent, "fan-out is at most 4")
	// Silent members' audio is held back once the conductor decides.
	require.GreaterOrEqual(t, out1, (res.Sent-res.Forwarder.AudioMuted)*9/10, "fan-out is at least 1 of what was not held back (less what was in flight)")
	decrypted := res.Decrypted + res.Video.Decrypted
	require.LessOrEqual(t, decrypted, out1, "no receiver can decrypt a packet the forwarder did not send")
	require.GreaterOrEqual(t, float64(decrypted), 0.9*float64(out1-resent),
		"receivers must decrypt nearly all of the %d packets the forwarder sent", out1)

	// Video: the group call's first 3 members send it, the others
	// subscribe to it and decrypt it; every device sends feedback.
	require.Equal(t, 3, res.Video.Senders)
	require.Len(t, res.Video.Layers, 3)
	require.NotZero(t, res.Video.KeyFrames, "every camera starts with a key frame")
	require.NotZero(t, res.Video.Decrypted, "subscribers decrypt video")
	require.Zero(t, res.Video.Failed)
	require.NotZero(t, res.Feedback.Reports, "receivers send RR+REMB")
	require.GreaterOrEqual(t, res.Forwarder.Subscriptions, uint64(5), "every group member's subscription applied")
	require.Nil(t, res.Loss)

	text := out.String()
	require.Contains(t, text, "callrelay demo: 3 forwarders on 127.0.0.1:")
	require.Contains(t, text, "9 participants joined")
	require.Regexp(t, `(?m)^sessions 9  calls \d+ .* trunk .* decrypted \d+  failed 0$`, text, "a summary line per interval")
	require.Contains(t, text, "done: 9 participants")
	require.Contains(t, text, " 0 failed;")
	require.Regexp(t, `(?m)^video: 3 senders, layers [123]/[123]/[123], sent .* decrypted [1-9]\d*  failed 0$`, text)
	require.Regexp(t, `(?m)^feedback: [1-9]\d* RR\+REMB, `, text)
	require.Regexp(t, `(?m)^relay: resent \d+ of \d+ packets NACKed \(.*\), .* [1-9]\d* subscriptions applied`, text)
	require.Regexp(t, `\ndone: 9 participants, [^\n]* \d+ dropped\n$`, text, "the done line ends the output")
}

// With one participant dropping 5% of what it receives (in its client,
// before its Feedback), its Feedback NACKs the gaps and the relay resends
// nearly everything from its cache; nothing fails to decrypt, duplicates
// included. The cameras obey the relay's instructions.
func TestRunLossyParticipantRecoversByNACK(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{
		Forwarders:   2,
		Duration:     4 * time.Second,
		OneToOne:     1,
		Groups:       1,
		GroupSize:    4,
		VideoSenders: 2,
		LossyPercent: 5,
		Interval:     time.Second,
	}, &out)
	require.NoError(t, err)
	require.NoError(t, ctx.Err())
	t.Logf("loss: %+v\nvideo: %+v\nfeedback: %+v\nrelay NACK outcomes (resent, not cached, bounded, over budget): %v\noutput:\n%s", res.Loss, res.Video, res.Feedback, res.Forwarder.NackOutcomes, out.String())

	require.Zero(t, res.Failed, "recovered and duplicate packets never fail")
	require.NotNil(t, res.Loss)
	require.Equal(t, uint32(6), res.Loss.Participant, "the last member of the group call")
	l := res.Loss
	require.NotZero(t, l.Dropped)
	require.Equal(t, l.Dropped, l.Recovered+l.Lost+l.Pending)
	// On a loaded machine the relay may refuse some resends (the leg's
	// budget: the loss lowers the device's REMB) or a stream may stop
	// right after a drop (nothing shows the gap); most still come back.
	require.GreaterOrEqual(t, float64(l.Recovered), 0.5*float64(l.Dropped-l.Pending), "NACK recovers most: %+v", l)
	require.NotZero(t, res.Feedback.NACKs)
	require.NotZero(t, res.Forwarder.Nacked)
	require.NotZero(t, res.Forwarder.NackOutcomes[0], "the relay resent from its cache")
	require.Equal(t, 2, res.Video.Senders)
	require.NotZero(t, res.Video.Decrypted)
	require.NotZero(t, res.Video.Instructions, "the cameras got the relay's REMB or targets")
	require.Contains(t, out.String(), "lossy: participant 6 drops 5.0% of the RTP it receives")
	require.Regexp(t, `(?m)^lossy: participant 6 dropped [1-9]\d* packets .* recovered [1-9]\d* by NACK`, out.String())
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, size := range []int{2, 65} {
		var out bytes.Buffer
		_, err := Run(context.Background(), Config{GroupSize: size, Duration: time.Second}, &out)
		require.ErrorContains(t, err, "want 3..64")
		require.Empty(t, out.String(), "nothing starts on a bad config")
	}
	var out bytes.Buffer
	_, err := Run(context.Background(), Config{LossyPercent: 60, Duration: time.Second}, &out)
	require.ErrorContains(t, err, "want 0..50")
	require.Empty(t, out.String())
}

// A participant whose session ends (forwarder gone, idle timeout) gets its
// Media channel closed; its receiver must return rather than dereference the
// nil packet a closed channel yields.
func TestReceiveReturnsWhenSessionEnds(t *testing.T) {
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	fcfg := forwarder.Default()
	fcfg.Listen, fcfg.Verifier = "127.0.0.1:0", v
	fwd, err := forwarder.New(fcfg)
	require.NoError(t, err)
	fctx, stopFwd := context.WithCancel(context.Background())
	fdone := make(chan struct{})
	go func() { defer close(fdone); _ = fwd.Run(fctx) }()
	t.Cleanup(func() { stopFwd(); <-fdone })

	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cfg := Config{}
	cfg.defaults()
	ms, err := joinCall(ctx, priv, []*forwarder.Forwarder{fwd}, protocol.ClassOneToOne, 2, 0, 1, 0, cfg, io.Discard)
	for _, m := range ms {
		t.Cleanup(m.close)
	}
	require.NoError(t, err)

	returned := make(chan struct{})
	go func() { defer close(returned); ms[0].receive(ctx) }()
	ms[0].close() // the session ends while ctx lives on
	select {
	case <-returned:
	case <-ctx.Done():
		t.Fatal("receive did not return after the session ended")
	}
	require.Zero(t, ms[0].failed.Load())
}
