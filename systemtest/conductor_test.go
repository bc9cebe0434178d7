package systemtest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// spurt is one scripted stretch of speech.
type spurt struct {
	who        int
	start, end time.Duration
}

func scripted(spurts []spurt) func(int, time.Duration) bool {
	return func(i int, at time.Duration) bool {
		for _, s := range spurts {
			if s.who == i && at >= s.start && at < s.end {
				return true
			}
		}
		return false
	}
}

// sixPersonCall is a group call of six devices, three on each forwarder.
func sixPersonCall(t *testing.T, e *env) (protocol.ID, []*calltest.Member) {
	t.Helper()
	a, b := e.forwarder(t, "fwd-a"), e.forwarder(t, "fwd-b")
	call := protocol.NewID()
	var ms []*calltest.Member
	for i := range 6 {
		fwd := a.Addr()
		if i >= 3 {
			fwd = b.Addr()
		}
		ms = append(ms, e.join(t, call, uint32(100+i), fwd))
	}
	return call, ms
}

// unheard waits until no member hears any of the silent ones over a whole
// polling interval: the decision that mutes them has reached every
// forwarder and what was in flight has landed. A loaded machine makes it
// wait longer, never pass early.
func unheard(t *testing.T, ms []*calltest.Member, silent ...int) {
	t.Helper()
	counts := func() []int {
		var out []int
		for _, m := range ms {
			for _, s := range silent {
				out = append(out, m.Count(ms[s].SSRC))
			}
		}
		return out
	}
	var prev []int
	testenv.CheckFor(t, 15*time.Second, 200*time.Millisecond, func() error {
		cur := counts()
		defer func() { prev = cur }()
		if prev == nil || !slices.Equal(cur, prev) {
			return fmt.Errorf("silent members still heard: %v", cur)
		}
		return nil
	})
}

// decisionsSeen waits until watch has seen n more decisions for call than
// it had when called.
func decisionsSeen(t *testing.T, watch *decisions, call protocol.ID, n int) {
	t.Helper()
	from := decisionsFor(watch, call)
	testenv.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if got := decisionsFor(watch, call) - from; got < n {
			return fmt.Errorf("%d of %d decisions", got, n)
		}
		return nil
	})
}

// A six-person call across two forwarders with one conductor: scripted
// speakers (turn-taking with an interjection and a cough) give the
// expected dominant-speaker sequence at every device, within a bounded
// latency, and the audio of a member who never speaks is not forwarded
// once the conductor has decided.
func TestDominantSpeakerAcrossForwarders(t *testing.T) {
	e := newEnv(t)
	_, ms := sixPersonCall(t, e)
	cd := e.conductor(t, "cond-1", nil)
	script := []spurt{
		{0, 500 * time.Millisecond, 3500 * time.Millisecond},  // on fwd-a
		{4, 3500 * time.Millisecond, 6500 * time.Millisecond}, // on fwd-b
		{3, 5000 * time.Millisecond, 5400 * time.Millisecond}, // an interjection over 4
		{2, 6500 * time.Millisecond, 9500 * time.Millisecond}, // on fwd-a
		{5, 8000 * time.Millisecond, 8100 * time.Millisecond}, // a cough over 2
	}
	stop := make(chan struct{})
	start := calltest.Speak(t, ms, scripted(script), stop)
	want := []protocol.ID{ms[0].ID, ms[4].ID, ms[2].ID}
	spurtStart := []time.Duration{500 * time.Millisecond, 3500 * time.Millisecond, 6500 * time.Millisecond}
	spurtLen := 3 * time.Second // each of the three dominant spurts'

	// Member 1 never speaks: once every device has its first decision, none
	// of its packets reaches anyone.
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		for i, m := range ms {
			if len(m.Speakers()) == 0 {
				return fmt.Errorf("member %d has no dominant speaker yet", i)
			}
		}
		return nil
	})
	unheard(t, ms, 1) // decisions in flight to the other forwarder's devices
	silentBefore := make([]int, len(ms))
	for i, m := range ms {
		silentBefore[i] = m.Count(ms[1].SSRC)
	}
	speakerBefore := ms[3].Count(ms[0].SSRC)

	testenv.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		for i, m := range ms {
			if got := ids(m.Speakers()); len(got) < len(want) {
				return fmt.Errorf("member %d saw %d speakers so far", i, len(got))
			}
		}
		return nil
	})
	// Past the script's end: no late false switch. The script runs on the
	// clock (calltest.Speak), so this window is the script's own second,
	// a window for what must not happen, not a wait for something.
	time.Sleep(time.Second)
	close(stop)
	var worst time.Duration
	for i, m := range ms {
		changes := m.Speakers()
		require.Equal(t, want, ids(changes), "member %d: dominant speaker sequence", i)
		for k, ch := range changes {
			lat := ch.At.Sub(start) - spurtStart[k]
			worst = max(worst, lat)
			// While that speaker still speaks: a switch after the spurt
			// would be a wrong decision, however fast. How fast is the
			// metric's and the scenario tests' business, not a bound
			// here (a shared, loaded machine).
			require.Less(t, lat, spurtLen, "member %d: switch %d came after its speaker's spurt", i, k)
		}
		if i != 1 {
			require.Equal(t, silentBefore[i], m.Count(ms[1].SSRC), "member %d heard the silent member after the decision", i)
		}
	}
	require.Greater(t, ms[3].Count(ms[0].SSRC)-speakerBefore, 50, "the speaker on the other forwarder was heard")
	t.Logf("worst switch latency seen by a device: %s", worst)
	require.Positive(t, metric(t, cd.reg, "callrelay_conductor_speaker_switch_latency_seconds", ""))
	require.Equal(t, 3.0, metric(t, cd.reg, "callrelay_conductor_speaker_switches_total", ""))
}

func ids(cs []calltest.SpeakerChange) []protocol.ID {
	var out []protocol.ID
	for _, c := range cs {
		out = append(out, c.Speaker)
	}
	return out
}
