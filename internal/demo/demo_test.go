package demo

import (
	"bytes"
	"context"
	"io"
	"strings"
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
	// forwarder whose last member of the call just left find no one: the
	// only drops allowed.
	drops := res.Forwarder.Drops
	drops[forwarder.DropTrunkNoCall] = 0
	require.Zero(t, drops, "drops: %v", res.Forwarder.Drops)
	require.NotZero(t, res.Forwarder.TrunkOut, "members of one call sit on different forwarders")

	// Each one-to-one packet goes to 1 other member and each group packet to
	// GroupSize-1 = 4, so the forwarder sends between 1 and 4 copies of every
	// packet it gets; every copy is a packet some receiver may decrypt.
	// Result.Forwarder is read after the forwarder stopped, so PacketsOut
	// counts every copy sent, and no receiver can have decrypted more. Only
	// copies in flight when the receivers stopped go undecrypted.
	require.GreaterOrEqual(t, res.Forwarder.PacketsIn, res.Sent, "every packet sent reached the forwarder")
	out1 := res.Forwarder.PacketsOut
	require.LessOrEqual(t, out1, 4*res.Sent, "fan-out is at most 4")
	// Silent members' audio is held back once the conductor decides.
	require.GreaterOrEqual(t, out1, (res.Sent-res.Forwarder.AudioMuted)*9/10, "fan-out is at least 1 of what was not held back (less what was in flight)")
	require.LessOrEqual(t, res.Decrypted, out1, "no receiver can decrypt a packet the forwarder did not send")
	require.GreaterOrEqual(t, float64(res.Decrypted), 0.9*float64(out1),
		"receivers must decrypt nearly all of the %d packets the forwarder sent", out1)

	text := out.String()
	require.Contains(t, text, "callrelay demo: 3 forwarders on 127.0.0.1:")
	require.Contains(t, text, "9 participants joined")
	require.Regexp(t, `(?m)^sessions 9  calls \d+ .* trunk .* decrypted \d+  failed 0$`, text, "a summary line per interval")
	require.Contains(t, text, "done: 9 participants")
	require.Contains(t, text, " 0 failed;")
	require.True(t, strings.HasSuffix(text, "0 dropped\n"), "the done line ends the output:\n%s", text)
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, size := range []int{2, 65} {
		var out bytes.Buffer
		_, err := Run(context.Background(), Config{GroupSize: size, Duration: time.Second}, &out)
		require.ErrorContains(t, err, "want 3..64")
		require.Empty(t, out.String(), "nothing starts on a bad config")
	}
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
	ms, err := joinCall(ctx, priv, []*forwarder.Forwarder{fwd}, protocol.ClassOneToOne, 2, 0, 1, cfg, io.Discard)
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
