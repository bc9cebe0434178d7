package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/protocol"
)

// startForwarder runs a lone forwarder (no Redis, no NATS) on loopback that
// trusts the returned signing key.
func startForwarder(t *testing.T) (netip.AddrPort, []byte) {
	t.Helper()
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Verifier = v
	cfg.Readers = 2
	cfg.Logger = zap.NewNop()
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f.Addr(), priv
}

func TestRunSteadyAgainstForwarder(t *testing.T) {
	addr, priv := startForwarder(t)
	plan := Plan{
		Forwarders:   []netip.AddrPort{addr},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 0.5, GroupMin: 3, GroupMax: 4},
		CallDuration: CallDuration{Mean: Duration(2 * time.Second), Min: Duration(time.Second), Max: Duration(3 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 2, Duration: Duration(4 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(10 * time.Second), MaxConcurrentCalls: 10, MaxCalls: 12},
		Targets:      Targets{LossPct: 5, DelayP95: Duration(200 * time.Millisecond)},
		RelayCores:   2,
		Seed:         42,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var progress bytes.Buffer
	res, err := Run(ctx, plan, &progress)
	require.NoError(t, err)
	t.Logf("progress:\n%s", progress.String())

	// The run ended by itself when the profile did: not by MaxDuration,
	// not by the context (what a wall-clock bound here used to say).
	require.Equal(t, "profile_done", res.Stopped)
	require.NoError(t, ctx.Err())
	require.Len(t, res.Seconds, 4)
	require.Equal(t, "steady", res.Seconds[0].Phase)
	all := res.Totals.All
	require.Greater(t, all.CallsStarted, 0)
	require.Greater(t, all.Setups.Admitted, 0)
	require.Equal(t, all.Setups.Attempted, all.Setups.Admitted+all.Setups.Refused.Total())
	require.Equal(t, all.Setups.Admitted+all.Setups.Refused.Total(), res.Totals.OneToOne.Setups.Attempted+res.Totals.Group.Setups.Attempted)
	require.Greater(t, all.SetupMs.Count, uint64(0))
	require.Greater(t, all.PacketsSent, uint64(0))
	require.Greater(t, all.PacketsReceived, uint64(0))
	require.Greater(t, all.DelayMs.Count, uint64(0))
	require.Greater(t, all.DelayMs.P50, 0.0)
	// The delay is this machine's (a loaded one delays packets by any
	// amount): the test checks that it is measured and judged, not how
	// small it is.
	require.LessOrEqual(t, all.DelayMs.P50, all.DelayMs.P95)
	delay := checkOf(t, res.Verdict, "delay_p95_ms")
	require.Equal(t, all.DelayMs.P95, delay.Measured)
	require.Equal(t, 200.0, delay.Limit)
	require.Equal(t, all.DelayMs.P95 <= 200, delay.Pass)
	require.Greater(t, all.FirstAudioMs.Count, uint64(0))
	// Loss is not the clock's: a slow machine delays packets on loopback,
	// it does not lose them (the forwarder's 4 MB buffers, the clients'
	// media queues).
	require.Less(t, all.LossPct, 5.0)
	require.Zero(t, all.DecryptFailures)
	require.Greater(t, all.MaxGapMs, 0.0)
	require.Greater(t, all.RelayPacketsPerSec, 0.0)
	require.Greater(t, res.Totals.OneToOne.CallsStarted+res.Totals.Group.CallsStarted, 0)
	require.Equal(t, all.CallsStarted, res.Totals.OneToOne.CallsStarted+res.Totals.Group.CallsStarted)
	up := 0
	for _, s := range res.Seconds {
		up = max(up, s.CallsUp)
	}
	require.Greater(t, up, 0)
	require.Greater(t, res.Generator.GOMAXPROCS, 0)
	require.Len(t, res.Verdict.Checks, 4)
	require.Nil(t, res.Knee)
	require.Contains(t, progress.String(), "calls up")
	require.Contains(t, progress.String(), "done (profile_done)")
	require.False(t, strings.Contains(progress.String(), "\r"), "a buffer is not a terminal")

	// JSON round trip; the signing key never appears.
	b, err := json.Marshal(res)
	require.NoError(t, err)
	var back Result
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, res.Totals, back.Totals)
	require.Equal(t, res.Seconds, back.Seconds)
	require.Equal(t, res.Verdict, back.Verdict)
	require.Equal(t, res.Plan.Profile, back.Plan.Profile)
	require.Equal(t, res.Plan.Forwarders, back.Plan.Forwarders)
	require.Nil(t, back.Plan.SigningKey)
	require.True(t, res.Start.Equal(back.Start))
	for _, key := range []string{`"seconds"`, `"totals"`, `"one_to_one"`, `"group"`, `"delay_ms"`, `"setup_ms"`, `"verdict"`, `"generator"`, `"capacity_508"`} {
		require.Contains(t, string(b), key)
	}
}

func checkOf(t *testing.T, v Verdict, target string) Check {
	t.Helper()
	for _, c := range v.Checks {
		if c.Target == target {
			return c
		}
	}
	t.Fatalf("no %s check in %+v", target, v.Checks)
	return Check{}
}

func TestRunRejectsBadPlan(t *testing.T) {
	_, err := Run(context.Background(), Plan{}, nil)
	require.ErrorIs(t, err, ErrPlan)
	require.Contains(t, err.Error(), "forwarders is empty")
	require.Contains(t, err.Error(), "signing key")
}

func rampPlan(addr netip.AddrPort, priv []byte, tg Targets) Plan {
	return Plan{
		Forwarders:   []netip.AddrPort{addr},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 1},
		CallDuration: CallDuration{Mean: Duration(time.Second), Min: Duration(time.Second), Max: Duration(2 * time.Second)},
		Profile: Profile{Kind: ProfileRamp, Ramp: Ramp{Start: 2, Step: 2,
			StepDuration: Duration(time.Second), MaxSteps: 3}},
		Bounds:  Bounds{MaxDuration: Duration(10 * time.Second), MaxConcurrentCalls: 10, MaxCalls: 30},
		Targets: tg,
		Seed:    7,
	}
}

func TestRunRamp(t *testing.T) {
	addr, priv := startForwarder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// Loose targets: every step meets them, however loaded the machine
	// (delays of a minute); the knee is the last step, a lower bound.
	res, err := Run(ctx, rampPlan(addr, priv, Targets{SetupSuccessPct: 50, LossPct: 50,
		SetupP95: Duration(time.Minute), DelayP95: Duration(time.Minute)}), nil)
	require.NoError(t, err)
	require.Equal(t, "profile_done", res.Stopped)
	require.Len(t, res.Steps, 3)
	require.Equal(t, []float64{2, 4, 6}, []float64{res.Steps[0].Rate, res.Steps[1].Rate, res.Steps[2].Rate})
	require.NotNil(t, res.Knee)
	require.True(t, res.Knee.Found)
	require.Equal(t, 2, res.Knee.Step)
	require.Equal(t, -1, res.Knee.BrokeAtStep)

	// An impossible delay target breaks the first step that carried
	// media: the ramp stops there.
	res, err = Run(ctx, rampPlan(addr, priv, Targets{DelayP95: Duration(time.Nanosecond)}), nil)
	require.NoError(t, err)
	require.Equal(t, "target_broken", res.Stopped)
	last := res.Steps[len(res.Steps)-1]
	require.False(t, last.Met)
	require.Contains(t, last.Broken, "delay_p95_ms")
	require.Equal(t, last.Index, res.Knee.BrokeAtStep)
	require.False(t, res.Verdict.Pass)
}

// A group call in which every member sends video: the cameras send, the
// subscribers decrypt every layer they get, the receivers' Feedback sends
// RR+REMB, and the figures reach the result, its JSON and the progress.
func TestRunVideoMix(t *testing.T) {
	addr, priv := startForwarder(t)
	plan := Plan{
		Forwarders:   []netip.AddrPort{addr},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 0, GroupMin: 3, GroupMax: 3},
		Video:        Video{Share: 1},
		CallDuration: CallDuration{Mean: Duration(3 * time.Second), Min: Duration(3 * time.Second), Max: Duration(3 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 1, Duration: Duration(4 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(10 * time.Second), MaxConcurrentCalls: 2, MaxCalls: 2},
		Seed:         3,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var progress bytes.Buffer
	res, err := Run(ctx, plan, &progress)
	require.NoError(t, err)
	t.Logf("progress:\n%s", progress.String())
	all := res.Totals.All
	v, f := all.Video, all.Feedback
	t.Logf("video %+v\nfeedback %+v", v, f)
	require.Positive(t, v.SenderSeconds)
	require.Equal(t, v.SenderSeconds, v.Layers[0]+v.Layers[1]+v.Layers[2])
	require.Positive(t, v.PacketsSent)
	require.Positive(t, v.KeyFrames, "every camera starts with a key frame")
	require.Positive(t, v.SentKbps)
	require.Positive(t, v.PacketsReceived, "subscribers decrypt the cameras")
	require.Equal(t, v.PacketsReceived, v.ReceivedByLayer[0]+v.ReceivedByLayer[1]+v.ReceivedByLayer[2])
	require.Positive(t, v.ReceivedKbps)
	require.Zero(t, v.DecryptFailures)
	require.Zero(t, all.DecryptFailures)
	require.Positive(t, f.Reports, "receivers send RR+REMB")
	require.LessOrEqual(t, all.LossPct, all.RawLossPct)
	require.Greater(t, all.RelayPacketsPerSec, float64(all.PacketsSent+all.PacketsReceived)/(res.DurationMs/1000), "video counts in the relay's packets")
	require.Contains(t, progress.String(), "video ")
	require.Contains(t, progress.String(), "\nfeedback: ")
	require.Contains(t, progress.String(), "\nvideo: ")

	b, err := json.Marshal(res)
	require.NoError(t, err)
	for _, key := range []string{`"video":{"share":1}`, `"raw_loss_pct"`, `"packets_recovered"`, `"feedback":{"reports":`, `"sent_kbps"`, `"received_by_layer"`} {
		require.Contains(t, string(b), key)
	}
}
