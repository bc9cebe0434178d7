package forwarder_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Devices refused by a throttled forwarder do not arrive at once at the
// peer it names: a mobile device needs a round trip back to it and two to
// the peer. Heartbeats made meanwhile do not count them, so they must not
// make the referrals forgotten: here fwd-b reports twice between every
// two refusals while none of the referred devices has arrived, and fwd-c
// does not report at all; the six referrals are still split evenly. (A
// forwarder that cleared its referrals on each heartbeat sent all six to
// fwd-b, which looked empty after every report.)
func TestThrottleReferralsOutliveReportsMadeBeforeArrival(t *testing.T) {
	e, bReports, a, b, c := referralCluster(t)
	sent := map[netip.AddrPort]int{}
	for i := range 6 {
		p := e.party(t, protocol.NewID(), protocol.ClassGroup)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{a.f.Addr()}, Token: p.token,
			LocalAddr: calltest.Loopback, JoinTimeout: 5 * time.Second, MaxAlternates: -1})
		cancel()
		var je *client.JoinError
		require.True(t, errors.As(err, &je), "refusal %d: %v %v", i, err, s)
		require.Equal(t, protocol.CodeTryAlternate, je.Code, "refusal %d: %v", i, je)
		sent[je.Alternate]++
		bReports.twoMore(t)
	}
	// 3/3 as a rule; 4/2 if this loop outlasted referralWait (5 s) on a
	// loaded machine and the first referral expired.
	require.GreaterOrEqual(t, sent[b.f.Addr()], 2, "fwd-b: %v", sent)
	require.GreaterOrEqual(t, sent[c.f.Addr()], 2, "fwd-c: %v", sent)
	t.Logf("six refused devices held back: b %d, c %d", sent[b.f.Addr()], sent[c.f.Addr()])
}

// A peer that has reported no sessions yet is not taken for cheaper than
// one that has: a device referred there is counted at our own cost per
// session. Here each referred device arrives before the next refusal and
// fwd-b reports it, while fwd-c (reporting once a minute) does not: both
// are charged the same per device, so the six alternate. (Charged a fixed
// 1 % per device, fwd-c looked five times cheaper than fwd-b's reported
// 5 % per session and took five of the six.)
func TestThrottleReferralsCostAnEmptyPeerLikeUs(t *testing.T) {
	e, bReports, a, b, c := referralCluster(t)
	landed := map[netip.AddrPort]int{}
	for range 6 {
		at := e.party(t, protocol.NewID(), protocol.ClassGroup).join(t, a.f.Addr())
		landed[at]++
		bReports.twoMore(t)
	}
	require.Zero(t, landed[a.f.Addr()], "fwd-a is at level 1: new group calls go elsewhere")
	require.GreaterOrEqual(t, landed[b.f.Addr()], 2, "fwd-b: %v", landed)
	require.GreaterOrEqual(t, landed[c.f.Addr()], 2, "fwd-c: %v", landed)
	t.Logf("six new group calls referred one at a time: b %d, c %d", landed[b.f.Addr()], landed[c.f.Addr()])
}

// referralCluster starts fwd-a, fwd-b (heartbeats every 100 ms) and
// fwd-c (every minute), all three counting sessions as their only load,
// and brings fwd-a to level 1 (14 sessions of 20): new group calls are
// referred from then on.
func referralCluster(t *testing.T) (*clusterEnv, *reportTap, *clusterNode, *clusterNode, *clusterNode) {
	t.Helper()
	e := newClusterEnv(t)
	bReports := e.loadReports(t, "fwd-b")
	a := e.startWith(t, "fwd-a", steadyAdmission)
	b := e.startWith(t, "fwd-b", steadyAdmission)
	c := e.startWith(t, "fwd-c", func(cfg *forwarder.Config) {
		steadyAdmission(cfg)
		cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout, cfg.Cluster.OrphanAfter = time.Minute, 5*time.Minute, 10*time.Minute
	})
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if a.f.Stats().Peers < 2 {
			return fmt.Errorf("fwd-a has not heard both peers yet")
		}
		return nil
	})
	for range 13 { // 13 of 20: one below level 1
		require.Equal(t, a.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassOneToOne).join(t, a.f.Addr()))
	}
	require.Equal(t, a.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassGroup).join(t, a.f.Addr()), "the 14th: level 1 from here")
	return e, bReports, a, b, c
}

// twoMore waits for two more of the tapped forwarder's load reports
// (each sent with its heartbeat): the first of them was made after
// anything done before the call, and has reached every peer by the time
// the second reaches the test.
func (p *reportTap) twoMore(t *testing.T) {
	t.Helper()
	seq := func() uint64 {
		if r := p.last(); r != nil {
			return r.Seq
		}
		return 0
	}
	before := seq()
	testenv.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := seq(); n < before+2 {
			return fmt.Errorf("%d load reports since, want 2", n-before)
		}
		return nil
	})
}

// A refused join's retransmission (its 300 crossed it on the way) is
// answered the same way, naming the same peer, and refers the device no
// second time: the next device is sent to the other peer. (Answered with
// a new pick, the retransmission named fwd-c and counted the device there
// too.)
func TestThrottleRetransmittedRefusalNamesTheSamePeer(t *testing.T) {
	e, _, a, b, c := referralCluster(t)
	refusals := func() (n uint64) {
		for _, byReason := range a.f.Stats().Refusals {
			for _, k := range byReason {
				n += k
			}
		}
		return n
	}
	before := refusals()
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer sock.Close()
	tok := e.party(t, protocol.NewID(), protocol.ClassGroup).token
	ask := func(m *stun.Message) protocol.JoinResponse {
		_, err := sock.WriteToUDPAddrPort(m.Raw, a.f.Addr())
		require.NoError(t, err)
		buf := make([]byte, 2048)
		for {
			require.NoError(t, sock.SetReadDeadline(time.Now().Add(5*time.Second)))
			n, err := sock.Read(buf)
			require.NoError(t, err, "an answer to the join")
			if resp, err := protocol.ParseJoinResponse(buf[:n], m.TransactionID, protocol.IntegrityKey(tok)); err == nil {
				return resp
			}
		}
	}
	m, err := protocol.BuildJoinRequest(tok, protocol.JoinOptions{})
	require.NoError(t, err)
	check := ask(m)
	require.NotEmpty(t, check.Cookie, "the address check")
	m, err = protocol.BuildJoinRequest(tok, protocol.JoinOptions{Cookie: check.Cookie})
	require.NoError(t, err)
	for i := range 4 {
		resp := ask(m) // the same bytes, the same transaction
		require.Equal(t, protocol.CodeTryAlternate, resp.Code, "answer %d: %d %s", i, resp.Code, resp.Reason)
		require.Equal(t, b.f.Addr(), resp.Alternate, "answer %d names the first pick (fwd-b: a tie, the lower id)", i)
	}
	require.Equal(t, before+1, refusals(), "one refusal, however many retransmissions")
	p := e.party(t, protocol.NewID(), protocol.ClassGroup)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{a.f.Addr()}, Token: p.token,
		LocalAddr: calltest.Loopback, JoinTimeout: 5 * time.Second, MaxAlternates: -1})
	var je *client.JoinError
	require.True(t, errors.As(err, &je), "%v", err)
	require.Equal(t, c.f.Addr(), je.Alternate, "the next device goes to the peer not yet counted")
}
