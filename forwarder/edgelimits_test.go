package forwarder_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// 20,000 joins from 200 source addresses that never answer the address
// check (issue 17: spoofed sources; on loopback every 127/8 address is
// ours, so the test binds them and counts what comes back). Each address
// sends 100, within the per-address limit, so only the forwarder's cap on
// address checks (here 500/s, burst 200) stands between the flood and its
// answers: what is answered stays under the cap, what is not is dropped
// and counted, and a device joining in the middle of the flood is
// admitted.
func TestSpoofedJoinFloodGetsCappedAnswers(t *testing.T) {
	const rate, burst = 500, 200
	started := time.Now() // the cap's bucket is no older than this
	r := runRelay(t, func(c *forwarder.Config) { c.CookieRate, c.CookieBurst = rate, burst })
	call := protocol.NewID()
	token := r.mint(t, call, protocol.ClassGroup, 8)

	const sources, each = 200, 100
	var answers, challenges atomic.Uint64
	var wg sync.WaitGroup
	conns := make([]*net.UDPConn, sources)
	for i := range conns {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 2, byte(1+i))})
		require.NoError(t, err)
		conns[i] = c
		wg.Add(1)
		go func() { // count every answer until the socket closes
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, _, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				answers.Add(1)
				if isCookieChallenge(buf[:n]) {
					challenges.Add(1)
				}
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
		wg.Wait()
	})

	// The flood, with a device joining half way through it.
	joined := make(chan error, 1)
	var device *client.Conn
	for k := range each {
		if k == each/2 {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{r.f.Addr()},
					Token: r.mint(t, call, protocol.ClassGroup, 8), LocalAddr: loopback, JoinTimeout: time.Minute})
				device = c
				joined <- err
			}()
		}
		for _, c := range conns {
			m, err := protocol.BuildJoinRequest(token, protocol.JoinOptions{})
			require.NoError(t, err)
			_, err = c.WriteToUDPAddrPort(m.Raw, r.f.Addr())
			require.NoError(t, err)
		}
	}
	require.NoError(t, <-joined, "a device joining during the flood is admitted")
	t.Cleanup(func() { _ = device.Close() })

	// Every request taken, answered or dropped: the counters say so.
	var s forwarder.Stats
	testenv.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		s = r.f.Stats()
		taken := s.CookieChallenges + s.Drops[forwarder.DropCookieRateLimited] + s.Drops[forwarder.DropControlBusy] +
			s.Drops[forwarder.DropSTUNRateLimited]
		if taken < sources*each {
			return fmt.Errorf("%d of %d requests accounted for", taken, sources*each)
		}
		return nil
	})
	// The answers in flight arrive. UDP may lose a few on a loaded machine
	// (the spoofed sources' sockets are ordinary ones): up to 1 % is
	// allowed, and said.
	var last uint64
	var still time.Time // since when got has not changed
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got := challenges.Load() + device.Stats().CookieRetries
		if got > s.CookieChallenges {
			return fmt.Errorf("%d challenges received, more than the %d sent", got, s.CookieChallenges)
		}
		if got != last || still.IsZero() {
			last, still = got, time.Now()
		}
		if lost := s.CookieChallenges - got; lost > 0 {
			if 100*lost <= s.CookieChallenges && time.Since(still) > 200*time.Millisecond {
				t.Logf("%d of %d address checks lost on the way to the spoofed sources", lost, s.CookieChallenges)
				return nil
			}
			return fmt.Errorf("%d challenges received, and the device's, of %d sent", got, s.CookieChallenges)
		}
		return nil
	})
	elapsed := time.Since(started)
	bound := burst + rate*elapsed.Seconds()
	t.Logf("%d spoofed joins: %d address checks answered by the forwarder in %s (cap %d/s, burst %d: at most %.0f), %d received by the spoofed sources; dropped over the cap %d, control queue full %d, per-address limit %d",
		sources*each, s.CookieChallenges, elapsed.Round(time.Millisecond), rate, burst, bound, challenges.Load(),
		s.Drops[forwarder.DropCookieRateLimited], s.Drops[forwarder.DropControlBusy], s.Drops[forwarder.DropSTUNRateLimited])
	require.LessOrEqual(t, float64(s.CookieChallenges), bound, "answers within the cap")
	require.LessOrEqual(t, challenges.Load(), s.CookieChallenges)
	require.Equal(t, answers.Load(), challenges.Load(), "nothing but address checks was sent to the spoofed sources")
	require.Positive(t, s.Drops[forwarder.DropCookieRateLimited], "the rest dropped and counted")
	require.EqualValues(t, 1, s.Joins)
}

// isCookieChallenge: a STUN error answer 401 that carries a COOKIE.
func isCookieChallenge(b []byte) bool {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.Type != stun.BindingError {
		return false
	}
	var code stun.ErrorCodeAttribute
	if code.GetFrom(m) != nil || code.Code != stun.CodeUnauthorized {
		return false
	}
	_, err := m.Get(protocol.AttrCookie)
	return err == nil
}

// 2,000 address changes of one session (issue 17: each was a Redis write
// and a log line): from 2,000 sockets on as many loopback addresses, each
// passing the address check and then asking to move the session there.
// A few move it (the burst, then one every 2 s), the rest are not
// answered and are counted; a line is logged per move, and one for all
// the refusals. The session keeps working: the call goes on from where it
// was moved last, and its device moves it back home within the limit.
func TestAddressChangeStormIsLimited(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	started := time.Now()
	r := runRelay(t, func(c *forwarder.Config) { c.Logger = zap.New(core) })
	call := protocol.NewID()
	token := r.mint(t, call, protocol.ClassGroup, 8)
	home := newRawSock(t, loopback, token)
	require.True(t, home.bind(t, r.f.Addr()).OK)
	other := newRawSock(t, loopback, r.mint(t, call, protocol.ClassGroup, 8))
	require.True(t, other.bind(t, r.f.Addr()).OK)

	// 2,000 sockets, each with its address cookie (waves of 200: the
	// control queue takes 512).
	const storm, wave = 2000, 200
	socks := make([]*rawSock, storm)
	for i := range socks {
		socks[i] = newRawSock(t, netip.AddrFrom4([4]byte{127, 0, 3 + byte(i/250), byte(1 + i%250)}), token)
	}
	for w := 0; w < storm; w += wave {
		testenv.CheckFor(t, 30*time.Second, 0, func() error {
			missing := 0
			for _, s := range socks[w : w+wave] {
				if s.cookie == nil {
					s.request(t, r.f.Addr())
					missing++
				}
			}
			for _, s := range socks[w : w+wave] {
				if s.cookie == nil {
					s.answer(50 * time.Millisecond)
				}
			}
			if missing > 0 {
				return fmt.Errorf("%d sockets of the wave without a cookie", missing)
			}
			return nil
		})
	}
	// The moves, every socket once; then the counters say what became of
	// them. (The session's own device sends a keepalive first: the storm
	// must not outlast the idle timeout of a session nobody refreshes.)
	require.True(t, home.bind(t, r.f.Addr()).OK)
	require.True(t, other.bind(t, r.f.Addr()).OK)
	before := r.f.Stats()
	for w := 0; w < storm; w += wave {
		for _, s := range socks[w : w+wave] {
			s.request(t, r.f.Addr())
		}
		testenv.CheckFor(t, 30*time.Second, 5*time.Millisecond, func() error {
			s := r.f.Stats()
			done := (s.AddressChanges - before.AddressChanges) + (s.Drops[forwarder.DropAddrChangeLimited] - before.Drops[forwarder.DropAddrChangeLimited])
			if done < uint64(w+wave) {
				return fmt.Errorf("%d of %d moves taken", done, w+wave)
			}
			return nil
		})
	}
	s := r.f.Stats()
	elapsed := time.Since(started)
	moved := s.AddressChanges - before.AddressChanges
	limited := s.Drops[forwarder.DropAddrChangeLimited] - before.Drops[forwarder.DropAddrChangeLimited]
	cfg := forwarder.Default()
	bound := float64(cfg.AddrChangeBurst) + elapsed.Seconds()/cfg.AddrChangeEvery.Seconds()
	lines := logs.FilterMessage("address changed").Len()
	refusalLines := logs.FilterMessage("address changes over the limit, not answered").Len()
	t.Logf("%d moves asked in %s: %d made (limit %d at once then one per %s: at most %.1f), %d refused; log lines: %d moves, %d about refusals",
		storm, elapsed.Round(time.Millisecond), moved, cfg.AddrChangeBurst, cfg.AddrChangeEvery, bound, limited, lines, refusalLines)
	require.Equal(t, uint64(storm), moved+limited, "every move made or refused, and counted")
	require.LessOrEqual(t, float64(moved), bound)
	require.GreaterOrEqual(t, moved, uint64(cfg.AddrChangeBurst), "the burst is there for devices that need it")
	require.Equal(t, int(moved), lines, "a line per move made")
	require.Equal(t, 1, refusalLines, "one line for all the refusals (a minute apart)")

	// The call goes on where the session is now...
	var at netip.AddrPort
	for _, l := range r.f.Legs() {
		if l.Addr != other.addr() {
			at = l.Addr
		}
	}
	var now *rawSock
	for _, s := range socks {
		if s.addr() == at {
			now = s
		}
	}
	require.NotNil(t, now, "the session is at one of the storm's addresses")
	require.True(t, other.bind(t, r.f.Addr()).OK)
	exchange(t, r.f.Addr(), now, other, 1)
	// ...and its device moves it home as soon as the limit allows.
	testenv.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if resp, ok := home.try(t, r.f.Addr(), 100*time.Millisecond); !ok || !resp.OK {
			return fmt.Errorf("not moved home yet")
		}
		return nil
	})
	exchange(t, r.f.Addr(), home, other, 2)
	require.Equal(t, uint64(1), r.f.Stats().AddressChanges-s.AddressChanges)
}

// rawSock speaks the join protocol by hand from one socket: the
// forwarder's answers are read by the test, and not waited for when none
// must come.
type rawSock struct {
	conn   *net.UDPConn
	token  []byte
	cookie []byte
	tid    [stun.TransactionIDSize]byte
}

func newRawSock(t *testing.T, ip netip.Addr, token []byte) *rawSock {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &rawSock{conn: c, token: token}
}

func (s *rawSock) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// request sends a join (keepalive, move) with the socket's cookie, if any.
func (s *rawSock) request(t *testing.T, fwd netip.AddrPort) {
	t.Helper()
	m, err := protocol.BuildJoinRequest(s.token, protocol.JoinOptions{Cookie: s.cookie})
	require.NoError(t, err)
	s.tid = m.TransactionID
	_, err = s.conn.WriteToUDPAddrPort(m.Raw, fwd)
	require.NoError(t, err)
}

// answer reads the answer to the last request within wait, keeping a
// cookie it brings; ok is false when none came.
func (s *rawSock) answer(wait time.Duration) (protocol.JoinResponse, bool) {
	buf := make([]byte, 2048)
	deadline := time.Now().Add(wait)
	for {
		_ = s.conn.SetReadDeadline(deadline)
		n, _, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return protocol.JoinResponse{}, false
		}
		if !stun.IsMessage(buf[:n]) {
			continue // media
		}
		resp, err := protocol.ParseJoinResponse(buf[:n], s.tid, protocol.IntegrityKey(s.token))
		if err != nil {
			continue // an answer to an earlier request
		}
		if resp.Code == protocol.CodeUnauthorized && len(resp.Cookie) > 0 {
			s.cookie = resp.Cookie
		}
		return resp, true
	}
}

// try sends a request and reads its answer within wait.
func (s *rawSock) try(t *testing.T, fwd netip.AddrPort, wait time.Duration) (protocol.JoinResponse, bool) {
	t.Helper()
	s.request(t, fwd)
	return s.answer(wait)
}

// bind sends a request until it is answered other than by an address
// check (10 s at most) and returns that answer.
func (s *rawSock) bind(t *testing.T, fwd netip.AddrPort) protocol.JoinResponse {
	t.Helper()
	var resp protocol.JoinResponse
	testenv.CheckFor(t, 10*time.Second, 0, func() error {
		var ok bool
		if resp, ok = s.try(t, fwd, 500*time.Millisecond); !ok || (resp.Code == protocol.CodeUnauthorized && len(resp.Cookie) > 0) {
			return fmt.Errorf("no answer but an address check yet")
		}
		return nil
	})
	return resp
}

// exchange has a and b send each other one RTP packet through the
// forwarder, and waits for both to arrive.
func exchange(t *testing.T, fwd netip.AddrPort, a, b *rawSock, seq uint16) {
	t.Helper()
	for _, p := range [][2]*rawSock{{a, b}, {b, a}} {
		pkt := plainRTP(0xa11ce000|uint32(seq), seq)
		_, err := p[0].conn.WriteToUDPAddrPort(pkt, fwd)
		require.NoError(t, err)
		buf := make([]byte, 2048)
		_ = p[1].conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			n, _, err := p[1].conn.ReadFromUDPAddrPort(buf)
			require.NoError(t, err, "the packet from %s to %s through the forwarder", p[0].addr(), p[1].addr())
			if string(buf[:n]) == string(pkt) {
				break
			}
		}
	}
}

func plainRTP(ssrc uint32, seq uint16) []byte {
	b := make([]byte, 12+40)
	b[0], b[1] = 0x80, 111
	b[2], b[3] = byte(seq>>8), byte(seq)
	b[8], b[9], b[10], b[11] = byte(ssrc>>24), byte(ssrc>>16), byte(ssrc>>8), byte(ssrc)
	return b
}
