//go:build linux

package loadtest

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// startSleeper starts a harmless `sleep 30` child; wait returns how it
// ended. Cleanup kills it if the test did not.
func startSleeper(t *testing.T) (pid int, wait <-chan *os.ProcessState) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	ch := make(chan *os.ProcessState, 1)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); ch <- cmd.ProcessState; close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
	})
	return cmd.Process.Pid, ch
}

// procState returns the state letter of /proc/<pid>/stat ("S", "T", ...).
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

func signalled(t *testing.T, wait <-chan *os.ProcessState) syscall.Signal {
	t.Helper()
	select {
	case st := <-wait:
		ws := st.Sys().(syscall.WaitStatus)
		require.True(t, ws.Signaled(), "exit status %v", st)
		return ws.Signal()
	case <-time.After(5 * time.Second):
		t.Fatal("the child did not end")
		return 0
	}
}

// watchStates polls a process's state until it is gone and returns the
// states it went through, each once per stretch ("S", "T", "S", ...).
func watchStates(pid int) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var seen []string
		deadline := time.Now().Add(time.Minute) // a net: the process is killed long before
		for time.Now().Before(deadline) {
			s := procState(pid)
			if s == "" || s == "Z" {
				break
			}
			if len(seen) == 0 || seen[len(seen)-1] != s {
				seen = append(seen, s)
			}
			time.Sleep(time.Millisecond) // a polling interval, not a wait for an event
		}
		out <- seen
	}()
	return out
}

func TestChaosStopContKillTerm(t *testing.T) {
	victim, victimDone := startSleeper(t)
	drainer, drainerDone := startSleeper(t)
	plan := idlePlan(t, 4)
	plan.Processes = map[string]int{"fwd-a": victim, "fwd-b": drainer}
	plan.Chaos = []ChaosAction{
		{At: Duration(3500 * time.Millisecond), Kind: ChaosKill, Target: "fwd-a"},
		{At: Duration(300 * time.Millisecond), Kind: ChaosStop, Target: "fwd-a", For: Duration(1200 * time.Millisecond)},
		{At: Duration(500 * time.Millisecond), Kind: ChaosTerm, Target: "fwd-b"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Stopped from 0.3 s to 1.5 s, continued until killed at 3.5 s: a
	// poller sees both stretches (the windows are seconds wide, not a
	// guess of when to look).
	states := watchStates(victim)
	res, err := Run(ctx, plan, nil)
	require.NoError(t, err)
	require.Equal(t, syscall.SIGKILL, signalled(t, victimDone))
	seen := <-states
	stopped := slices.Index(seen, "T")
	require.GreaterOrEqual(t, stopped, 0, "SIGSTOPped: states %v", seen)
	require.Greater(t, len(seen), stopped+1, "SIGCONTinued before the kill: states %v", seen)
	require.Equal(t, syscall.SIGTERM, signalled(t, drainerDone))

	require.Len(t, res.Events, 4)
	want := []struct {
		kind, target string
		pid          int
		atMs         float64
	}{{ChaosStop, "fwd-a", victim, 300}, {ChaosTerm, "fwd-b", drainer, 500}, {ChaosCont, "fwd-a", victim, 1500}, {ChaosKill, "fwd-a", victim, 3500}}
	for i, w := range want {
		e := res.Events[i]
		require.Equal(t, w.kind, e.Kind, i)
		require.Equal(t, w.target, e.Target, i)
		require.Equal(t, w.pid, e.PID, i)
		require.Empty(t, e.Err, i)
		// Never early (a timer does not fire early); how late is the
		// machine's business, and the order above is the schedule's.
		require.GreaterOrEqual(t, e.AtMs, w.atMs, i)
	}
	require.InDelta(t, res.Events[1].AtMs/1000, res.Events[0].WindowEndS, 0.001)
	require.InDelta(t, res.DurationMs/1000, res.Events[3].WindowEndS, 0.001)
	// The plan echo keeps the chaos list but never the pids.
	require.Len(t, res.Plan.Chaos, 3)
}

// A stop that outlasts the run is continued when the run ends: no process
// is left stopped.
func TestChaosStopEndsWithRun(t *testing.T) {
	pid, _ := startSleeper(t)
	plan := idlePlan(t, 1)
	plan.Processes = map[string]int{"redis": pid}
	plan.Chaos = []ChaosAction{{At: Duration(200 * time.Millisecond), Kind: ChaosStop, Target: "redis", For: Duration(time.Hour)}}
	res, err := Run(context.Background(), plan, nil)
	require.NoError(t, err)
	require.Len(t, res.Events, 2)
	require.Equal(t, ChaosCont, res.Events[1].Kind)
	require.LessOrEqual(t, res.Events[1].AtMs, res.DurationMs, "continued by the run's end, not the stop's")
	require.NotEqual(t, "T", procState(pid))
}

// A signal that cannot be sent (the process is gone) is recorded with
// its error; the run goes on.
func TestChaosSignalError(t *testing.T) {
	pid, done := startSleeper(t)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	signalled(t, done)
	plan := idlePlan(t, 1)
	plan.Processes = map[string]int{"conductor": pid}
	plan.Chaos = []ChaosAction{{At: Duration(100 * time.Millisecond), Kind: ChaosTerm, Target: "conductor"}}
	res, err := Run(context.Background(), plan, nil)
	require.NoError(t, err)
	require.Len(t, res.Events, 1)
	require.Contains(t, res.Events[0].Err, "no such process")
}

// With media flowing, every event gets the longest gap of its window.
func TestChaosGapsAfterEventsWithMedia(t *testing.T) {
	addr, priv := startForwarder(t)
	pid, _ := startSleeper(t)
	plan := Plan{
		Forwarders:   []netip.AddrPort{addr},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 1},
		CallDuration: CallDuration{Mean: Duration(3 * time.Second), Min: Duration(3 * time.Second), Max: Duration(3 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 3, Duration: Duration(3 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(8 * time.Second), MaxConcurrentCalls: 10, MaxCalls: 10},
		Seed:         3,
		Processes:    map[string]int{"fwd-x": pid},
		Chaos:        []ChaosAction{{At: Duration(1500 * time.Millisecond), Kind: ChaosStop, Target: "fwd-x", For: Duration(500 * time.Millisecond)}},
	}
	res, err := Run(context.Background(), plan, nil)
	require.NoError(t, err)
	require.Len(t, res.Events, 2)
	for _, e := range res.Events {
		require.Greater(t, e.MaxGapAfterMs, 0.0, "media flowed after %s", e.Kind)
	}
}

func TestGapsAfterEvents(t *testing.T) {
	secs := make([]Second, 10)
	for i := range secs {
		secs[i].T = i
		secs[i].All.MaxGapMs = 20
	}
	secs[1].All.MaxGapMs = 900 // before any event: belongs to nobody
	secs[4].All.MaxGapMs = 700 // after the kill at 3.2 s
	secs[8].All.MaxGapMs = 300 // after the cont at 7.5 s
	ev := []Event{{AtMs: 3200, Kind: ChaosKill}, {AtMs: 5100, Kind: ChaosStop}, {AtMs: 7500, Kind: ChaosCont}}
	gapsAfterEvents(ev, secs, 9800)
	require.Equal(t, 700.0, ev[0].MaxGapAfterMs)
	require.Equal(t, 5.1, ev[0].WindowEndS)
	require.Equal(t, 20.0, ev[1].MaxGapAfterMs)
	require.Equal(t, 300.0, ev[2].MaxGapAfterMs)
	require.Equal(t, 9.8, ev[2].WindowEndS)
}
