package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Every call has late joiners (all members but the first), who join 3 s
// into their call, after every on-time member's audio has rolled over
// (plan: late_join.rollover) and every camera layer too: they decrypt
// every member up when they came, each stream's first packet with a
// rollover counter of 1, and the members hear them.
func TestRunLateJoinersDecryptAfterRollover(t *testing.T) {
	addr, priv := startForwarder(t)
	plan := Plan{
		Forwarders:   []netip.AddrPort{addr},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 0.5, GroupMin: 3, GroupMax: 4},
		Video:        Video{Share: 0.5},
		LateJoin:     LateJoin{Share: 1, After: Duration(3 * time.Second), Rollover: true},
		CallDuration: CallDuration{Mean: Duration(5 * time.Second), Min: Duration(5 * time.Second), Max: Duration(5 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 2, Duration: Duration(9 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(20 * time.Second), MaxConcurrentCalls: 10, MaxCalls: 4},
		Seed:         11,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := Run(ctx, plan, &progress)
	require.NoError(t, err)
	t.Logf("progress:\n%s", progress.String())
	all := res.Totals.All
	l := all.LateJoin
	t.Logf("late joiners: %+v; calls %d failed %d", l, all.CallsStarted, all.CallsFailed)

	require.Equal(t, 4, all.CallsStarted)
	require.Zero(t, all.CallsFailed, "a call with one member on time goes on and waits for its late joiners")
	require.Equal(t, all.Setups.Attempted, all.Setups.Admitted)
	// Members 1..size-1 of every call were late.
	require.GreaterOrEqual(t, l.Joined, 4)
	require.Equal(t, all.Setups.Admitted-all.CallsStarted, l.Joined, "everyone but each call's first joined late")
	// Each late joiner expects at least the first member; it decrypts
	// every stream it expects, none fails, and every one of them had
	// rolled over (video layers too, which count in StreamsAfterRollover
	// but not in StreamsExpected).
	require.GreaterOrEqual(t, l.StreamsExpected, uint64(l.Joined))
	require.Equal(t, l.StreamsExpected, l.StreamsDecrypted)
	require.Zero(t, l.StreamsUndecryptable)
	require.Zero(t, l.DecryptFailures)
	require.GreaterOrEqual(t, l.StreamsAfterRollover, l.StreamsExpected)
	require.Zero(t, all.DecryptFailures)
	require.Zero(t, all.Video.DecryptFailures)
	require.Positive(t, all.Video.PacketsReceived)
	// Nobody lost a session; the late joiners were heard (the loss is
	// not a clock's: loopback delays, it does not drop).
	require.Zero(t, all.SessionsLost)
	require.Zero(t, all.CallsDropped)
	require.Less(t, all.LossPct, 5.0)
	require.Contains(t, progress.String(), "late joiners: ")

	b, err := json.Marshal(res)
	require.NoError(t, err)
	for _, key := range []string{`"late_join":{"share":1,"after":"3s","rollover":true}`, `"streams_after_rollover"`, `"calls_dropped"`, `"rejoin_silence_ms"`} {
		require.Contains(t, string(b), key)
	}
}

func TestLateJoinDraws(t *testing.T) {
	l := LateJoin{Share: 1, After: Duration(10 * time.Second)}
	require.Equal(t, []bool{false, true, true}, drawLate(1, 3, 11*time.Second, l), "all but the first")
	require.Nil(t, drawLate(1, 3, 10*time.Second, l), "a call not longer than After: everyone on time")
	require.Nil(t, drawLate(1, 3, time.Minute, LateJoin{}))
	half := LateJoin{Share: 0.5, After: Duration(time.Second)}
	require.Equal(t, drawLate(9, 6, time.Minute, half), drawLate(9, 6, time.Minute, half), "from the call's seed")

	// Rollover half way to the late join: 10 s at 50 packets/s is 500
	// packets, the stream rolls over after 250.
	l.Rollover = true
	require.Equal(t, uint16(65536-250), l.audioFirstSequence())
	require.Equal(t, uint16(65536-100), l.videoFirstSequence())
	require.Zero(t, LateJoin{Share: 1, After: Duration(time.Second)}.audioFirstSequence(), "random without rollover")
	tiny := LateJoin{Share: 1, After: Duration(time.Millisecond), Rollover: true}
	require.Equal(t, uint16(65535), tiny.audioFirstSequence())
	long := LateJoin{Share: 1, After: Duration(maxLateJoinAfter), Rollover: true}
	require.Equal(t, uint16(65536-15000), long.audioFirstSequence())
}

func TestPlanLateJoinAndRejoin(t *testing.T) {
	p, err := ParsePlan([]byte(`
forwarders: ["127.0.0.1:3478"]
late_join: {share: 0.25, after: 30s, rollover: true}
rejoin: {timeout: 10s, failover_after: 500ms}
targets: {dropped_calls_pct: 0, rejoin_silence_p99: 2s}
`))
	require.NoError(t, err)
	require.Equal(t, LateJoin{Share: 0.25, After: Duration(30 * time.Second), Rollover: true}, p.LateJoin)
	require.Equal(t, Rejoin{Timeout: Duration(10 * time.Second), FailoverAfter: Duration(500 * time.Millisecond)}, p.Rejoin)
	require.NotNil(t, p.Targets.DroppedCallsPct)
	require.Zero(t, *p.Targets.DroppedCallsPct)
	p.SigningKey = make([]byte, 64)
	require.NoError(t, p.WithDefaults().Validate())
	require.Equal(t, 10*time.Second, p.Rejoin.timeout())
	require.Equal(t, time.Nanosecond, Rejoin{Off: true}.timeout())

	for _, tc := range []struct {
		yaml, says string
	}{
		{`late_join: {share: 1.5, after: 1s}`, "late_join.share"},
		{`late_join: {share: 0.5}`, "late_join.after"},
		{`late_join: {share: 0.5, after: 11m}`, "late_join.after"},
		{`late_join: {after: 1s}`, "need a share"},
		{`rejoin: {off: true, timeout: 1s}`, "off"},
		{`rejoin: {timeout: -1s}`, "must not be negative"},
		{`targets: {dropped_calls_pct: 101}`, "dropped_calls_pct"},
	} {
		p, err := ParsePlan([]byte("forwarders: [\"127.0.0.1:3478\"]\n" + tc.yaml))
		require.NoError(t, err, tc.yaml)
		p.SigningKey = make([]byte, 64)
		err = p.WithDefaults().Validate()
		require.ErrorIs(t, err, ErrPlan, tc.yaml)
		require.Contains(t, err.Error(), tc.says, tc.yaml)
	}
}
