package systemtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// redisOutage is how long Redis is away in the outage tests.
const redisOutage = 30 * time.Second

// rotation is a group conversation whose talkers keep changing: the floor
// passes every 3 s to the next of n members (2.5 s of speech, then a
// pause), and 1.2 s into every turn the member two places on interjects
// for 0.4 s. Each member holds the floor every 3n seconds, long after it
// last spoke, so a forwarding set that stopped following the talkers
// would cut most of each turn.
func rotation(n int) func(i int, at time.Duration) bool {
	const turn = 3 * time.Second
	return func(i int, at time.Duration) bool {
		k, in := int(at/turn), at%turn
		return i == k%n && in < 2500*time.Millisecond || i == (k+2)%n && in >= 1200*time.Millisecond && in < 1600*time.Millisecond
	}
}

// speechTally is, at one moment, what every member had spoken and heard.
type speechTally struct {
	spoken []int
	heard  [][]int // heard[listener][talker]
}

func tally(ms []*calltest.Member) speechTally {
	s := speechTally{spoken: make([]int, len(ms)), heard: make([][]int, len(ms))}
	for i, m := range ms {
		s.spoken[i] = m.Spoken()
		s.heard[i] = make([]int, len(ms))
		for j, tx := range ms {
			s.heard[i][j], _ = m.SpeechFrom(tx.SSRC)
		}
	}
	return s
}

// speechLoss is the share of the speech spoken between a and b that its
// listeners did not hear: per talker, and for the whole group.
func speechLoss(t *testing.T, a, b speechTally) (perTalker []float64, group float64) {
	t.Helper()
	var spokenAll, heardAll int
	for j := range a.spoken {
		spoken := b.spoken[j] - a.spoken[j]
		heard := 0
		for i := range a.spoken {
			if i != j {
				heard += b.heard[i][j] - a.heard[i][j]
			}
		}
		listeners := len(a.spoken) - 1
		loss := 0.0
		if spoken > 0 {
			loss = 1 - float64(heard)/float64(spoken*listeners)
		}
		perTalker = append(perTalker, loss)
		spokenAll += spoken * listeners
		heardAll += heard
	}
	require.NotZero(t, spokenAll)
	t.Logf("speech packets: %d to hear, %d heard", spokenAll, heardAll)
	return perTalker, 1 - float64(heardAll)/float64(spokenAll)
}

// outageCall is a six-person call across fwd-a and fwd-b, with fwd-c up
// but serving none of it, and conductors with the production settings.
type outageCall struct {
	e     *env
	fwds  map[string]*forwarder.Forwarder
	call  protocol.ID
	ms    []*calltest.Member
	start time.Time // of the conversation
	stop  chan struct{}
}

func newOutageCall(t *testing.T, e *env, grace time.Duration) *outageCall {
	t.Helper()
	oc := &outageCall{e: e, fwds: map[string]*forwarder.Forwarder{}, call: protocol.NewID(), stop: make(chan struct{})}
	for _, id := range []string{"fwd-a", "fwd-b", "fwd-c"} {
		oc.fwds[id] = e.outageForwarder(t, id)
	}
	production := func(c *conductor.Config) {
		d := conductor.Default()
		c.LeaseTTL, c.AcquireEvery, c.StoreGrace = d.LeaseTTL, d.AcquireEvery, grace
	}
	e.conductor(t, "cond-1", production)
	e.conductor(t, "cond-2", production)
	for i := range 6 {
		fwd := oc.fwds["fwd-a"]
		if i >= 3 {
			fwd = oc.fwds["fwd-b"]
		}
		oc.ms = append(oc.ms, e.join(t, oc.call, uint32(100+i), fwd.Addr()))
	}
	t.Cleanup(func() { close(oc.stop) })
	oc.start = calltest.Speak(t, oc.ms, rotation(len(oc.ms)), oc.stop)
	// Every member has heard a decision (the dominant speaker), and every
	// talker so far has been heard by everyone.
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for i, m := range oc.ms {
			if len(m.Speakers()) == 0 {
				return fmt.Errorf("member %d has no dominant speaker yet", i)
			}
		}
		return nil
	})
	return oc
}

// lateJoin adds a member on fwd-c, new to the call, who speaks for 3 s at
// once; it returns when everyone heard its speech and it heard the call's
// speech, and how long after its join that took.
func (oc *outageCall) lateJoin(t *testing.T) (*calltest.Member, time.Duration) {
	t.Helper()
	m := oc.e.join(t, oc.call, 200, oc.fwds["fwd-c"].Addr())
	joined := time.Now()
	calltest.Speak(t, []*calltest.Member{m}, func(_ int, at time.Duration) bool { return at < 3*time.Second }, oc.stop)
	var took time.Duration
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, rx := range oc.ms {
			if _, at := rx.SpeechFrom(m.SSRC); !at.After(joined) {
				return fmt.Errorf("member %d has not heard the late joiner", i)
			}
		}
		heard := false
		for _, tx := range oc.ms {
			_, at := m.SpeechFrom(tx.SSRC)
			heard = heard || at.After(joined)
		}
		if !heard {
			return errors.New("the late joiner has heard nobody speak")
		}
		took = time.Since(joined)
		return nil
	})
	return m, took
}

// placedAsJoined waits until the call's record holds the six members on
// fwd-a and fwd-b and the late joiner on fwd-c.
func (oc *outageCall) placedAsJoined(t *testing.T) {
	t.Helper()
	testenv.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		rec, err := oc.e.store.Get(context.Background(), oc.call)
		if err != nil {
			return err
		}
		var got []string
		for _, m := range rec.Members {
			got = append(got, m.Forwarder)
		}
		slices.Sort(got)
		if want := "[fwd-a fwd-a fwd-a fwd-b fwd-b fwd-b fwd-c]"; fmt.Sprint(got) != want {
			return fmt.Errorf("members placed on %v, want %s", got, want)
		}
		return nil
	})
}

func (oc *outageCall) logStats(t *testing.T) {
	for _, id := range []string{"fwd-a", "fwd-b", "fwd-c"} {
		s := oc.fwds[id].Stats()
		t.Logf("%s: decisions applied %d, stale %d; lapses %d; audio held back %d, onsets %d; asks sent %d, answered %d (%d placements); notices ignored %d",
			id, s.Decisions, s.DecisionsStale, s.DecisionLapses, s.AudioMuted, s.Onsets, s.Notices.Asked, s.Notices.Answered, s.Notices.Answers, s.Notices.Ignored)
	}
}

// Redis goes away for 30 s under a six-person call whose talkers keep
// changing, with the production settings of forwarders and conductors;
// 10 s into the outage a member joins a forwarder new to the call. The
// lease holder decides on through the outage (its grace), so the audio
// forwarding set follows the talkers; the late joiner's forwarder learns
// the call from the others (an ask answered with their placements). Group
// speech loss over the outage and the recovery stays under 5 %, the late
// joiner is heard and hears the call within 2 s of its join, no decision
// lapses, and once Redis is back the record holds everyone where they are.
// Redis is SIGSTOPped and continued (a hung server), or SIGKILLed and
// restarted empty on the same port.
func TestRedisOutageTalkersChanging(t *testing.T) {
	for _, mode := range []struct {
		name         string
		halt, resume func(t *testing.T, e *env)
	}{
		{"sigstop", func(t *testing.T, e *env) { require.NoError(t, e.redis.Signal(syscall.SIGSTOP)) },
			func(t *testing.T, e *env) { require.NoError(t, e.redis.Signal(syscall.SIGCONT)) }},
		{"sigkill-restart-empty", func(t *testing.T, e *env) { e.redis.Kill() },
			func(t *testing.T, e *env) { require.NoError(t, e.redis.Restart()) }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t)
			oc := newOutageCall(t, e, conductor.Default().StoreGrace)
			before := tally(oc.ms)
			mode.halt(t, e)
			halted := time.Now()
			resumed := false
			defer func() {
				if !resumed {
					mode.resume(t, e)
				}
			}()
			<-time.After(redisOutage / 3) // the scenario: the late joiner comes 10 s in
			_, took := oc.lateJoin(t)
			t.Logf("late joiner on fwd-c, new to the call, %v into the outage: heard by all and hearing the call %v after its join",
				time.Since(halted).Round(time.Second), took.Round(time.Millisecond))
			<-time.After(time.Until(halted.Add(redisOutage)))
			mode.resume(t, e)
			resumed = true
			<-time.After(3 * time.Second) // the recovery is part of the measured window
			after := tally(oc.ms)
			per, group := speechLoss(t, before, after)
			t.Logf("Redis %s for %v with talkers changing: group speech loss %.2f %%, per talker %.2f %%",
				mode.name, redisOutage, 100*group, percent(per))
			oc.logStats(t)
			require.Less(t, group, 0.05, "group speech loss")
			for j, loss := range per {
				// Not a brief cut either: the trunk between forwarders
				// kept while Redis came back empty lacked their members.
				require.Less(t, loss, 0.01, "speech loss of talker %d", j)
			}
			require.Less(t, took, 2*time.Second, "the late joiner heard, and hearing the call, within 2 s of joining")
			for id, f := range oc.fwds {
				require.Zero(t, f.Stats().DecisionLapses, "%s: the conductor decided throughout", id)
			}
			require.Equal(t, uint64(1), oc.fwds["fwd-c"].Stats().Notices.Asked, "fwd-c asked who serves the call")
			oc.placedAsJoined(t)
		})
	}
}

// The same outage with a conductor that stops deciding when it cannot
// renew its lease (store grace 0): decisions stop, the forwarders notice
// by their absence (not by Redis) and after their decision timeout forward
// every voice, so from then on no speech is lost; the loss before is the
// bounded cost of fail-static.
func TestRedisOutageWithoutConductorGrace(t *testing.T) {
	e := newEnv(t)
	oc := newOutageCall(t, e, 0)
	before := tally(oc.ms)
	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	halted := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			_ = e.redis.Signal(syscall.SIGCONT)
		}
	}()
	var lapsed time.Time
	testenv.CheckFor(t, redisOutage, 20*time.Millisecond, func() error {
		for _, id := range []string{"fwd-a", "fwd-b"} {
			if s := oc.fwds[id].Stats(); s.CallsLapsed != 1 {
				return fmt.Errorf("%s: %d calls without a decision", id, s.CallsLapsed)
			}
		}
		lapsed = time.Now()
		return nil
	})
	t.Logf("both forwarders forward every voice %v after Redis stopped", lapsed.Sub(halted).Round(time.Millisecond))
	atLapse := tally(oc.ms)
	<-time.After(time.Until(halted.Add(redisOutage)))
	atEnd := tally(oc.ms)
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	resumed = true
	_, whole := speechLoss(t, before, atEnd)
	per, sinceLapse := speechLoss(t, atLapse, atEnd)
	t.Logf("Redis stopped %v, conductor without grace: group speech loss %.2f %% over the outage, %.2f %% from the lapse on (per talker %.2f %%)",
		redisOutage, 100*whole, 100*sinceLapse, percent(per))
	oc.logStats(t)
	require.Less(t, sinceLapse, 0.01, "every voice forwarded from the lapse on")
	// Redis is back: a conductor takes the partition again, and the
	// forwarders follow its decisions again.
	testenv.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, id := range []string{"fwd-a", "fwd-b"} {
			if s := oc.fwds[id].Stats(); s.CallsLapsed != 0 {
				return fmt.Errorf("%s: %d calls still without a decision", id, s.CallsLapsed)
			}
		}
		return nil
	})
}

// percent formats shares as percentages.
func percent(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(int(10000*x+0.5)) / 100
	}
	return out
}
