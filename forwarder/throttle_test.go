package forwarder_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// sessionsOnly makes sessions the only load signal that can move (CPU and
// kernel drops of a shared test machine would make the levels random), with
// levels at 14, 16, 18 and 20 sessions, and a hold-down longer than the test.
func sessionsOnly(cfg *forwarder.Config) {
	cfg.Load.CapacitySessions = 20
	cfg.Load.CPUCores = 1e6
	cfg.Load.QueueDropsFull = 1e9
	cfg.Load.HoldDown = time.Minute
	cfg.LoadEvery = 50 * time.Millisecond
}

// steadyAdmission is sessionsOnly for a test about admission, not about
// liveness: the cluster tests' quick timers (keepalives every 100 ms, so a
// client fails over after 300 ms unanswered; sessions forgotten after 1 s
// idle; a peer dead after 500 ms silent) are what a starved test process
// misses, and each miss is a join the test did not make (a failover's
// rejoin, a session gone, a referral with no peer to name), which moves
// the counts and levels under test. Sessions and peers here live for the
// test; the peer still reports its load every 100 ms. Keepalives come at
// the product's 1 s: at 100 ms, twenty devices' keepalives were most of
// what a starved, race-built process had to do, and a join waited behind
// seconds of them.
func steadyAdmission(cfg *forwarder.Config) {
	sessionsOnly(cfg)
	cfg.KeepaliveInterval, cfg.IdleTimeout = time.Second, time.Minute
	cfg.Cluster.PeerTimeout, cfg.Cluster.OrphanAfter = time.Minute, time.Minute
}

type party struct {
	call, id protocol.ID
	token    []byte
	s        *client.Session
}

func (e *clusterEnv) party(t *testing.T, call protocol.ID, class protocol.CallClass) *party {
	t.Helper()
	p := &party{call: call, id: protocol.NewID()}
	size := uint16(8)
	if class == protocol.ClassOneToOne {
		size = 2
	}
	var err error
	p.token, err = protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p.id,
		Class: class, MaxSize: size, Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	return p
}

// join joins p through fwd alone (so a refusal's alternate is where it
// lands) and returns the forwarder that admitted it. The Session never
// fails over on its own (FailoverAfter a minute): the tests using it count
// joins, and a failover of a starved Session is one more.
func (p *party) join(t *testing.T, fwd netip.AddrPort) netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{fwd}, Token: p.token,
		LocalAddr: calltest.Loopback, JoinTimeout: 5 * time.Second, FailoverAfter: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	p.s = s
	return s.Forwarder()
}

// The admission order of DESIGN.md on a forwarder pushed level by level
// past a small capacity: at every level the classes refused are exactly the
// first ones of the order, a refused device lands on the less loaded peer
// (300 Try Alternate), and a participant rejoining its own call is admitted
// even past capacity. Both forwarders' loads are their sessions alone: with
// the default signals, fwd-b's CPU load is this test process's (both
// forwarders, the devices, the race detector), which decides whether fwd-a
// may refer a join to it.
func TestThrottleAdmissionOrder(t *testing.T) {
	e := newClusterEnv(t)
	a := e.startWith(t, "fwd-a", steadyAdmission)
	b := e.startWith(t, "fwd-b", steadyAdmission)
	A, B := a.f.Addr(), b.f.Addr()
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if a.f.Stats().Peers < 1 {
			return fmt.Errorf("fwd-a has not heard fwd-b yet")
		}
		return nil
	})
	level := func() forwarder.ThrottleLevel { return a.f.Stats().ThrottleLevel }

	// Ongoing: a group call of 3, five one-to-one calls, and two
	// one-to-one calls whose second party has not joined yet: 15 sessions.
	group := protocol.NewID()
	for range 3 {
		require.Equal(t, A, e.party(t, group, protocol.ClassGroup).join(t, A))
	}
	for range 5 {
		call := protocol.NewID()
		require.Equal(t, A, e.party(t, call, protocol.ClassOneToOne).join(t, A))
		require.Equal(t, A, e.party(t, call, protocol.ClassOneToOne).join(t, A))
	}
	halfOpen := []protocol.ID{protocol.NewID(), protocol.NewID()}
	for _, call := range halfOpen {
		require.Equal(t, A, e.party(t, call, protocol.ClassOneToOne).join(t, A))
	}
	require.Equal(t, 15, a.f.Stats().Sessions)
	require.Equal(t, forwarder.ThrottleNewGroup, level(), "14 of 20 sessions: level 1 at once")

	// Level 1: a new group call goes to the peer; a new one-to-one call is
	// admitted (16 sessions: level 2 at once).
	require.Equal(t, B, e.party(t, protocol.NewID(), protocol.ClassGroup).join(t, A), "new group call refused to the alternate")
	require.Equal(t, A, e.party(t, protocol.NewID(), protocol.ClassOneToOne).join(t, A))
	require.Equal(t, forwarder.ThrottleNewOneToOne, level())

	// Level 2: new one-to-one calls go too; group members still come in
	// (17, then 18 sessions: level 3).
	require.Equal(t, B, e.party(t, protocol.NewID(), protocol.ClassOneToOne).join(t, A), "new one-to-one call refused")
	require.Equal(t, A, e.party(t, group, protocol.ClassGroup).join(t, A))
	require.Equal(t, A, e.party(t, group, protocol.ClassGroup).join(t, A))
	require.Equal(t, forwarder.ThrottleGroupJoin, level())

	// Level 3: a new group member goes to the peer (and sits there); the
	// second party of a one-to-one call is admitted (19).
	movedToB := e.party(t, group, protocol.ClassGroup)
	require.Equal(t, B, movedToB.join(t, A), "group member refused")
	require.Equal(t, A, e.party(t, halfOpen[0], protocol.ClassOneToOne).join(t, A))
	require.Equal(t, forwarder.ThrottleGroupJoin, level())

	// A participant of the group call placed on fwd-b rejoins through
	// fwd-a (migrating, or its path to fwd-b failed; its session there is
	// still up): admitted, 20 sessions, level 4.
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		rec, err := e.store.Get(context.Background(), group)
		if err != nil || rec.Members[movedToB.id].Forwarder != "fwd-b" {
			return fmt.Errorf("fwd-b's placement not stored yet (%v)", err)
		}
		return nil
	})
	rejoin := &party{call: group, id: movedToB.id, token: movedToB.token}
	require.Equal(t, A, rejoin.join(t, A), "a rejoin is admitted")
	require.Equal(t, forwarder.ThrottleSecondParty, level())

	// Level 4: even second parties go to the peer.
	require.Equal(t, B, e.party(t, halfOpen[1], protocol.ClassOneToOne).join(t, A), "second party refused at level 4")

	s := a.f.Stats()
	for class, want := range map[forwarder.JoinClass]uint64{
		forwarder.JoinNewGroup: 1, forwarder.JoinNewOneToOne: 1, forwarder.JoinGroupMember: 1,
		forwarder.JoinSecondParty: 1, forwarder.JoinRejoin: 0,
	} {
		require.Equal(t, want, s.RefusedThrottled(class), "refusals of %s", class)
	}
	require.Equal(t, uint64(1), s.Admissions[forwarder.JoinRejoin])
	require.Equal(t, uint64(1), s.LevelChanges[forwarder.ThrottleSecondParty])
	t.Logf("fwd-a: %d sessions, level %s, load %.2f (%s); admitted by class %v; store lookups failed %d",
		s.Sessions, s.ThrottleLevel, s.Load.Max(), s.Load.Worst(), s.Admissions, s.LookupsFailed)
}

// A forwarder driven past its packet-rate capacity by one member's flood:
// the level rises at once, group video is shed while every audio stream
// still flows (the ongoing call's audio loss stays within a point of what
// it was), and when the flood ends the level steps down one level per
// hold-down to none, never up again.
func TestThrottleOverloadShedsVideoAndRecovers(t *testing.T) {
	e := newClusterEnv(t)
	a := e.startWith(t, "fwd-a", func(cfg *forwarder.Config) {
		cfg.Load.CapacityPPS = 1500
		cfg.Load.CPUCores = 1e6
		cfg.Load.QueueDropsFull = 1e9
		cfg.Load.HoldDown = 300 * time.Millisecond
		// The production sampling interval: the packet rate over 250 ms.
		// Over 50 ms, a loaded machine's scheduling bunches packets enough
		// to fake a rate 1.75 times the real one (level 1 at baseline, a
		// step up during recovery).
		cfg.LoadEvery = 250 * time.Millisecond
	})
	call := protocol.NewID()
	var ms []*calltest.Member
	for i := range 3 {
		ms = append(ms, e.join(t, call, 8, uint32(1+i), a.f.Addr()))
	}
	const videoSSRC = 99
	stop := make(chan struct{})
	var sent [2]atomic.Int64 // m1's audio packets, sent in the baseline and overload windows
	var window atomic.Int32
	flood := make(chan bool, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		var vseq uint16
		flooding := false
		for {
			select {
			case <-stop:
				return
			case f := <-flood:
				flooding = f
			case <-tk.C:
				for _, m := range ms {
					m.SendAudio(true)
				}
				sent[window.Load()].Add(1)
				vseq++
				_ = ms[0].S.WriteRTP(calltest.RTP(videoSSRC, vseq))
				for range 8 * btoi(flooding) { // 400 packets/s more from member 2
					ms[1].SendAudio(true)
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	level := func() forwarder.ThrottleLevel { return a.f.Stats().ThrottleLevel }

	// Baseline: 4 streams in, 8 out, 600 packets/s of 1500: no throttling.
	// The window is counted in ticks of the sender (50 of 20 ms), not timed.
	testenv.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := sent[0].Load(); n < 50 || ms[2].Count(videoSSRC) == 0 {
			return fmt.Errorf("baseline: %d ticks sent, %d video packets heard", n, ms[2].Count(videoSSRC))
		}
		return nil
	})
	require.Equal(t, forwarder.ThrottleNone, level())
	audio0, video0 := ms[2].Count(ms[0].SSRC), ms[2].Count(videoSSRC)
	require.Positive(t, video0)
	baseSent := sent[0].Load()
	baseLoss := 1 - float64(audio0)/float64(baseSent)

	flood <- true
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if level() < forwarder.ThrottleGroupJoin {
			return fmt.Errorf("level %s", level())
		}
		return nil
	})
	window.Store(1)
	audio1, video1 := ms[2].Count(ms[0].SSRC), ms[2].Count(videoSSRC)
	testenv.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error { // 50 ticks of overload
		if n := sent[1].Load(); n < 50 {
			return fmt.Errorf("overload: %d ticks sent", n)
		}
		return nil
	})
	overSent := sent[1].Load()
	audio2, video2 := ms[2].Count(ms[0].SSRC), ms[2].Count(videoSSRC)
	overLoss := 1 - float64(audio2-audio1)/float64(overSent)
	require.Less(t, video2-video1, 5, "group video shed (a packet or two in flight)")
	require.LessOrEqual(t, overLoss, max(baseLoss, 0)+0.01+2.0/float64(overSent), "audio loss raised by more than a point: base %.3f, over %.3f", baseLoss, overLoss)
	require.Positive(t, a.f.Stats().Drops[forwarder.DropShedVideo])
	peak := level()

	flood <- false
	var seen []forwarder.ThrottleLevel
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		l := level()
		if len(seen) == 0 || seen[len(seen)-1] != l {
			seen = append(seen, l)
		}
		if l != forwarder.ThrottleNone {
			return fmt.Errorf("level %s", l)
		}
		return nil
	})
	for i := 1; i < len(seen); i++ {
		require.Equal(t, seen[i-1]-1, seen[i], "recovery steps down one level at a time, never up: %v", seen)
	}
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := ms[2].Count(videoSSRC); n <= video2 {
			return fmt.Errorf("video flows again: %d heard, %d before", n, video2)
		}
		return nil
	})
	s := a.f.Stats()
	var changes uint64
	for _, n := range s.LevelChanges {
		changes += n
	}
	require.LessOrEqual(t, changes, uint64(peak)+uint64(peak), "no flapping: up to the peak, then down once per level")
	t.Logf("peak %s; recovery %v; audio loss base %.3f over %.3f (%d sent); level changes %v; video shed %d",
		peak, seen, baseLoss, overLoss, overSent, s.LevelChanges, s.Drops[forwarder.DropShedVideo])
	_ = audio0
	_ = video1
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A burst of new calls arriving at a forwarder that is about to be full:
// it admits only up to its level, and sends the rest to both idle peers,
// not all to one. Each referral counts on its peer until the peer's
// heartbeats count the device (referrals.go); the peers report every
// 100 ms here, so several reports fall inside the burst, made before the
// devices referred last had arrived. Clearing the referrals on every
// report, as the forwarder once did, split such a burst unevenly (8/3 in
// a clean-clone run at load ~2).
func TestThrottleBurstSpreadsOverPeers(t *testing.T) {
	e := newClusterEnv(t)
	a := e.startWith(t, "fwd-a", steadyAdmission)
	b := e.startWith(t, "fwd-b", steadyAdmission)
	c := e.startWith(t, "fwd-c", steadyAdmission)
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, f := range []*clusterNode{a, b, c} {
			if f.f.Stats().Peers < 2 {
				return fmt.Errorf("a forwarder has not heard both peers yet")
			}
		}
		return nil
	})
	for range 13 { // 13 of 20: one below level 1
		require.Equal(t, a.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassOneToOne).join(t, a.f.Addr()))
	}
	landed := map[netip.AddrPort]int{}
	results := make(chan netip.AddrPort, 12)
	for range 12 {
		p := e.party(t, protocol.NewID(), protocol.ClassGroup)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{a.f.Addr()}, Token: p.token,
				LocalAddr: calltest.Loopback, JoinTimeout: 5 * time.Second, FailoverAfter: time.Minute})
			if err != nil {
				results <- netip.AddrPort{}
				return
			}
			t.Cleanup(func() { _ = s.Close() })
			results <- s.Forwarder()
		}()
	}
	for range 12 {
		landed[<-results]++
	}
	require.Zero(t, landed[netip.AddrPort{}], "every new call was placed somewhere")
	require.Equal(t, 1, landed[a.f.Addr()], "fwd-a takes one (14 of 20: level 1), then refuses new group calls")
	require.GreaterOrEqual(t, landed[b.f.Addr()], 4, "spread: %v", landed)
	require.GreaterOrEqual(t, landed[c.f.Addr()], 4, "spread: %v", landed)
	t.Logf("burst of 12 new group calls at fwd-a: a %d, b %d, c %d", landed[a.f.Addr()], landed[b.f.Addr()], landed[c.f.Addr()])
}
