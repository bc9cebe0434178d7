package loadtest

import (
	"context"
	"io"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/reflector"
	"github.com/callrelay/callrelay/protocol"
)

// fastPlan is a short fast-engine run: one-to-one and group calls, every
// other call a probe call, two baseline pairs.
func fastPlan(target netip.AddrPort, key []byte) Plan {
	return Plan{
		Forwarders:   []netip.AddrPort{target},
		SigningKey:   key,
		Engine:       EngineFast,
		Fast:         Fast{ProbeEvery: 2, BaselinePairs: 2},
		Mix:          Mix{OneToOne: 0.5, GroupMin: 3, GroupMax: 4},
		CallDuration: CallDuration{Mean: Duration(2 * time.Second), Min: Duration(1500 * time.Millisecond), Max: Duration(3 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 10, Duration: Duration(3 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(20 * time.Second), MaxConcurrentCalls: 100, MaxCalls: 40},
		Targets:      Targets{LossPct: 1, DelayP95: Duration(time.Second), SetupP95: Duration(5 * time.Second)},
		JoinTimeout:  Duration(10 * time.Second),
		Seed:         7,
	}
}

func skipOffLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the fast engine's batched I/O with per-device addresses is Linux only (internal/mmsg)")
	}
}

// checkFastTotals holds a fast run to what it must show on any machine:
// every join admitted, every frame sent to an admitted member expected
// and received (nearly all: see the bound), every probe frame decrypted
// and byte-exact, probe and baseline delays measured.
func checkFastTotals(t *testing.T, res *Result) {
	t.Helper()
	all := res.Totals.All
	require.Greater(t, all.CallsStarted, 5)
	require.Zero(t, all.CallsFailed)
	require.Equal(t, all.Setups.Attempted, all.Setups.Admitted, "refused: %+v", all.Setups.Refused)
	require.Equal(t, uint64(all.Setups.Admitted), all.SetupMs.Count)
	require.Greater(t, all.PacketsSent, uint64(200))
	require.Greater(t, all.PacketsExpected, all.PacketsSent/4, "frames in flight at the end and before a member counts are left out")
	t.Logf("generator %+v; received %d, expected %d", res.Generator, all.PacketsReceived, all.PacketsExpected)
	// Loopback loses nothing by itself, but a relay and generators under
	// the race detector on a loaded 2-core machine fall behind now and
	// then: the bound catches loss accounting gone wrong, not a slow run.
	require.LessOrEqual(t, all.LossPct, 5.0, "lost %d of %d", all.PacketsLost, all.PacketsExpected)
	require.Zero(t, all.DecryptFailures, "probe frames arrive byte for byte")
	require.Greater(t, all.ProbeDelayMs.Count, uint64(100))
	require.Greater(t, all.BaselineDelayMs.Count, uint64(100))
	require.Greater(t, all.DelayMs.Count, all.ProbeDelayMs.Count)
	require.Greater(t, res.Totals.Group.PacketsReceived, uint64(0))
	require.Greater(t, res.Totals.OneToOne.PacketsReceived, uint64(0))
	g := res.Generator
	require.Equal(t, EngineFast, g.Engine)
	require.Greater(t, g.PacketsPerCPUSecond, 0.0)
	// Arrival times are the kernel's (SO_TIMESTAMPNS): the readers' lag
	// behind them is measured, so it is kept out of every delay.
	require.Greater(t, g.ReceiveLagMs.Count, all.PacketsReceived/2, "datagrams stamped by the kernel")
}

func TestFastThroughForwarder(t *testing.T) {
	skipOffLinux(t)
	addr, priv := startForwarder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Run(ctx, fastPlan(addr, priv), io.Discard)
	require.NoError(t, err)
	require.Equal(t, "profile_done", res.Stopped)
	checkFastTotals(t, res)
}

// serveReflector runs ref for the test (at most 60 s) and returns the
// context the test's plan runs in.
func serveReflector(t *testing.T, ref *reflector.Reflector) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = ref.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ctx
}

func TestFastThroughReflector(t *testing.T) {
	skipOffLinux(t)
	ref, err := reflector.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	require.NoError(t, err)
	ctx := serveReflector(t, ref)
	p := fastPlan(ref.Addr(), nil)
	_, p.SigningKey = mustKey(t)
	p.Fast.Target = TargetReflector
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	checkFastTotals(t, res)
	st := ref.Stats()
	// Joins still under way when the run ended count neither way.
	require.GreaterOrEqual(t, st.Registered, uint64(res.Totals.All.Setups.Admitted))
	require.Zero(t, st.Dropped)
}

func mustKey(t *testing.T) ([]byte, []byte) {
	t.Helper()
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	return pub, priv
}

// Two agents' shares of one fast plan, run at once on one host (their
// devices' addresses interleave), merge into one result with every
// counter and sketch the sum of theirs.
func TestFastSharesMerge(t *testing.T) {
	skipOffLinux(t)
	addr, priv := startForwarder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	parts := make([]*Partial, 2)
	results := make([]*Result, 2)
	var wg sync.WaitGroup
	for i := range parts {
		p := fastPlan(addr, priv).WithDefaults()
		p.share = share{index: i, of: 2}
		require.NoError(t, p.Validate())
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, r, err := run(ctx, &runner{p: p, members: make(map[*member]int), keep: true, noStop: true}, io.Discard)
			if assert.NoError(t, err) {
				results[i], parts[i] = res, partialOf(res, r)
			}
		}()
	}
	wg.Wait()
	for _, res := range results {
		require.NotNil(t, res)
		checkFastTotals(t, res)
	}
	m := Merge(parts...)
	var sent, expected, rcvd, probes, base uint64
	var setups int
	for _, p := range parts {
		for _, s := range append(p.Seconds, PartialSecond{OneToOne: p.Tail.OneToOne, Group: p.Tail.Group}) {
			for _, w := range []WindowData{s.OneToOne, s.Group} {
				sent += w.Sent
				expected += w.Expected
				rcvd += w.SpeechReceived
				probes += w.ProbeDelay.Count()
				base += w.BaselineDelay.Count()
				setups += w.Setups.Admitted
			}
		}
	}
	all := m.Totals.All
	require.Equal(t, sent, all.PacketsSent)
	require.Equal(t, expected, all.PacketsExpected)
	require.Equal(t, setups, all.Setups.Admitted)
	require.Equal(t, probes, all.ProbeDelayMs.Count)
	require.Equal(t, base, all.BaselineDelayMs.Count)
	require.Greater(t, rcvd, uint64(0))
	require.Equal(t, parts[0].Seconds[0].OneToOne.Setups.Admitted+parts[1].Seconds[0].OneToOne.Setups.Admitted,
		m.Seconds[0].OneToOne.Setups.Admitted)
	require.Len(t, m.Agents, 2)
}
