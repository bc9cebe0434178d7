package forwarder_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// noticeTap keeps the raw member notices published on one call's subject.
type noticeTap struct {
	mu  sync.Mutex
	raw [][]byte
	ops []protocol.MemberOp
}

func (e *clusterEnv) tapNotices(t *testing.T, call protocol.ID) (*noticeTap, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	tap := &noticeTap{}
	_, err = nc.Subscribe(protocol.CallSubject("callrelay", call), func(m *nats.Msg) {
		var n protocol.MemberNotice
		if typ, err := protocol.PeekClusterMsgType(m.Data); err != nil || typ != protocol.ClusterMsgMemberNotice || n.Unmarshal(m.Data, e.key) != nil {
			return
		}
		tap.mu.Lock()
		tap.raw, tap.ops = append(tap.raw, append([]byte(nil), m.Data...)), append(tap.ops, n.Op)
		tap.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return tap, nc
}

// first returns the first notice with op, or nil.
func (tap *noticeTap) first(op protocol.MemberOp) []byte {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	for i, o := range tap.ops {
		if o == op {
			return tap.raw[i]
		}
	}
	return nil
}

// Redis stopped (SIGSTOP: connections stay open, nothing answers): a
// member joins a forwarder new to the call. That forwarder cannot read
// the call's record, so it asks the call's subject who serves the call;
// the forwarder serving the others answers with their placements, and
// everyone hears everyone while Redis is still stopped. A replayed ask is
// not answered again. When Redis answers again, the record holds all three.
func TestClusterLateJoinerWhileStoreStopped(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	call := protocol.NewID()
	m1, m2 := e.join(t, call, 6, 1, a.f.Addr()), e.join(t, call, 6, 2, a.f.Addr())
	stop := make(chan struct{})
	defer close(stop)
	talk(t, []*member{m1, m2}, stop)
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
	tap, nc := e.tapNotices(t, call)

	require.NoError(t, e.redis.Signal(syscall.SIGSTOP))
	stopped := true
	defer func() {
		if stopped {
			_ = e.redis.Signal(syscall.SIGCONT)
		}
	}()
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if !a.f.Stats().StateDegraded {
			return errors.New("fwd-a has not found the store stopped yet")
		}
		return nil
	})

	joined := time.Now()
	m3 := e.join(t, call, 6, 3, b.f.Addr())
	talk(t, []*member{m3}, stop)
	allHearAll(t, []*member{m1, m2, m3}, joined, 10*time.Second)
	t.Logf("a late joiner on a forwarder new to the call, Redis stopped: everyone hears everyone %v after the join began",
		time.Since(joined).Round(time.Millisecond))
	sb, sa := b.f.Stats().Notices, a.f.Stats().Notices
	require.Equal(t, uint64(1), sb.Asked, "fwd-b asked who serves the call")
	require.Equal(t, uint64(1), sa.Answered, "fwd-a answered")
	require.Equal(t, uint64(2), sa.Answers, "with its two members")
	ask := tap.first(protocol.MemberAsk)
	require.NotNil(t, ask, "the ask went out on the call's subject")

	// A replay of the ask is ignored, not answered.
	ignored := sa.Ignored
	require.NoError(t, nc.Publish(protocol.CallSubject("callrelay", call), ask))
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := a.f.Stats().Notices; s.Ignored == ignored {
			return errors.New("the replayed ask has not been seen yet")
		}
		return nil
	})
	require.Equal(t, uint64(1), a.f.Stats().Notices.Answered, "a replayed ask is not answered")

	// Redis answers again: the record holds everyone where they are.
	require.NoError(t, e.redis.Signal(syscall.SIGCONT))
	stopped = false
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		rec, err := e.store.Get(context.Background(), call)
		if err != nil {
			return err
		}
		var got []string
		for _, m := range rec.Members {
			got = append(got, m.Forwarder)
		}
		sort.Strings(got)
		if fmt.Sprint(got) != "[fwd-a fwd-a fwd-b]" {
			return fmt.Errorf("members placed on %v", got)
		}
		return nil
	})
	allHearAll(t, []*member{m1, m2, m3}, time.Now(), 5*time.Second)
}

// decide publishes a decision for call as the test's conductor would.
func decide(t *testing.T, nc *nats.Conn, key protocol.ClusterKey, d protocol.CallDecision) []byte {
	t.Helper()
	b, err := d.Marshal(nil, key)
	require.NoError(t, err)
	require.NoError(t, nc.Publish(protocol.CallSubject("callrelay", d.Call), b))
	require.NoError(t, nc.Flush())
	return b
}

// Fail-static is bounded: a call keeps its decision while the conductor
// repeats it; once no fresh decision came for the decision timeout, every
// voice is forwarded again (counted), a replayed old decision does not
// bring the stale one back, and a fresh repeat does.
func TestDecisionLapsesToEveryVoice(t *testing.T) {
	e := newClusterEnv(t)
	const timeout = time.Second
	a := e.startWith(t, "fwd-a", func(c *forwarder.Config) { c.Audio.DecisionTimeout = timeout })
	call := protocol.NewID()
	var ms []*member
	var ids []protocol.ID
	for i := range 3 {
		tok, p := e.token(t, call, 6)
		ms = append(ms, calltest.Join(t, tok, uint32(i+1), a.f.Addr()))
		ids = append(ids, p)
	}
	stop := make(chan struct{})
	defer close(stop)
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	allHearAll(t, ms, time.Now(), 5*time.Second) // no decision yet: every voice

	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	d := protocol.CallDecision{Call: call, Epoch: 5, Seq: 1, At: time.Now(), Dominant: ids[0], Forward: ids[:1], Conductor: "test"}
	decide(t, nc, e.key, d)
	muted := func() error {
		before := ms[2].Count(ms[1].SSRC)
		testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if a.f.Stats().CallsLapsed != 0 {
				return errors.New("the call is still on the default policy")
			}
			return nil
		})
		m0 := a.f.Stats().AudioMuted
		testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if a.f.Stats().AudioMuted < m0+10 {
				return errors.New("the silent member is not muted yet")
			}
			return nil
		})
		if n := ms[2].Count(ms[1].SSRC); n > before+10 {
			return fmt.Errorf("the silent member was heard %d more times", n-before)
		}
		return nil
	}
	require.NoError(t, muted())

	// The conductor repeats its decision (at most every second, here every
	// 200 ms) for three timeouts: the call stays on it.
	var last []byte
	for end := time.Now().Add(3 * timeout); time.Now().Before(end); {
		d.At = time.Now()
		last = decide(t, nc, e.key, d)
		<-time.After(200 * time.Millisecond) // the conductor's cadence, not a synchronisation
	}
	require.Zero(t, a.f.Stats().DecisionLapses, "repeats keep the decision fresh")

	// The conductor falls silent: after the timeout every voice is heard.
	testenv.CheckFor(t, 5*timeout, 20*time.Millisecond, func() error {
		if s := a.f.Stats(); s.DecisionLapses != 1 || s.CallsLapsed != 1 {
			return fmt.Errorf("lapses %d, calls without decision %d", s.DecisionLapses, s.CallsLapsed)
		}
		return nil
	})
	lapsed := time.Now()
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !ms[2].LastFrom(ms[1].SSRC).After(lapsed) {
			return errors.New("the silent member is not heard after the lapse")
		}
		return nil
	})

	// A replay of the last repeat is not fresh; an older epoch after it
	// (stale, counted) fences it: the replay was handled before.
	stale := a.f.Stats().DecisionsStale
	require.NoError(t, nc.Publish(protocol.CallSubject("callrelay", call), last))
	old := d
	old.Epoch, old.At = 4, time.Now()
	decide(t, nc, e.key, old)
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if a.f.Stats().DecisionsStale == stale {
			return errors.New("the older epoch has not been seen")
		}
		return nil
	})
	require.Equal(t, 1, a.f.Stats().CallsLapsed, "a replayed decision does not bring the stale one back")

	// A fresh repeat does.
	d.At = time.Now()
	decide(t, nc, e.key, d)
	require.NoError(t, muted())
	require.Equal(t, uint64(1), a.f.Stats().DecisionLapses)
}
