package forwarder_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// IPv6 and dual stack over real sockets. A forwarder on [::] serves both
// families on its one port (a dual-stack AF_INET6 socket): IPv4 devices
// reach it at 127.0.0.1, IPv6 devices at [::1]. Binding [::] binds every
// interface of the machine; the tests only ever send over loopback, for the
// few seconds they run.

var loopback6 = netip.IPv6Loopback()

// freeDualPort is a UDP port free on both families now (bound on [::] and
// closed): a dual-stack forwarder must be told its advertised addresses,
// port included, before it binds.
func freeDualPort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	require.NoError(t, err)
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// joinFrom joins through fwds from a socket bound to local.
func joinFrom(t *testing.T, token []byte, local netip.Addr, fwds ...netip.AddrPort) *client.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: fwds, Token: token, LocalAddr: local, JoinTimeout: 3 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// mediaTap collects the RTP a session receives, by SSRC.
type mediaTap struct {
	mu  sync.Mutex
	got map[uint32][][]byte
}

func tapMedia(s *client.Session) *mediaTap {
	m := &mediaTap{got: map[uint32][][]byte{}}
	go func() {
		for p := range s.Media() {
			if p.Kind == protocol.KindRTP && len(p.Data) >= 12 {
				ssrc := binary.BigEndian.Uint32(p.Data[8:12])
				m.mu.Lock()
				m.got[ssrc] = append(m.got[ssrc], bytes.Clone(p.Data))
				m.mu.Unlock()
			}
			p.Release()
		}
	}()
	return m
}

// warm sends from s, with an SSRC of its own, until every tap hears it: the
// forwarders' routes include everyone (they are rebuilt just after a join
// or a move), so what follows is counted from a settled call.
func warm(t *testing.T, s *client.Session, ssrc uint32, taps ...*mediaTap) {
	t.Helper()
	seq := uint16(0)
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		seq++
		p := []byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 0, byte(ssrc >> 24), byte(ssrc >> 16), byte(ssrc >> 8), byte(ssrc), 'w'}
		if err := s.WriteRTP(p); err != nil {
			return err
		}
		for i, tap := range taps {
			tap.mu.Lock()
			n := len(tap.got[ssrc])
			tap.mu.Unlock()
			if n == 0 {
				return fmt.Errorf("receiver %d has not heard SSRC %d yet", i, ssrc)
			}
		}
		return nil
	})
}

// exchangeExact sends n distinct RTP packets (payloads of 20..300 random bytes)
// from s as ssrc and requires every tap to receive exactly them, byte for
// byte, each once.
func exchangeExact(t *testing.T, s *client.Session, ssrc uint32, n int, taps ...*mediaTap) {
	t.Helper()
	sent := make([][]byte, 0, n)
	for i := range n {
		p := make([]byte, 12+20+rand.IntN(281))
		p[0], p[1] = 0x80, 111
		binary.BigEndian.PutUint16(p[2:], uint16(i+1))
		binary.BigEndian.PutUint32(p[4:], uint32(i*960))
		binary.BigEndian.PutUint32(p[8:], ssrc)
		for j := 12; j < len(p); j++ {
			p[j] = byte(rand.IntN(256))
		}
		require.NoError(t, s.WriteRTP(p))
		sent = append(sent, p)
		time.Sleep(5 * time.Millisecond) // pacing, ~200 packets/s: under any policer's cap
	}
	for _, tap := range taps {
		testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			tap.mu.Lock()
			defer tap.mu.Unlock()
			if got := len(tap.got[ssrc]); got < n {
				return fmt.Errorf("%d of %d packets of SSRC %d arrived", got, n, ssrc)
			}
			return nil
		})
		tap.mu.Lock()
		got := tap.got[ssrc]
		tap.got[ssrc] = nil
		tap.mu.Unlock()
		require.Len(t, got, n, "each packet once")
		want := map[string]int{}
		for _, p := range sent {
			want[string(p)]++
		}
		for _, p := range got {
			require.Positive(t, want[string(p)], "a packet that was not sent, or altered: %x", p)
			want[string(p)]--
		}
	}
}

// TestDualStackOnePort: one forwarder on [::]:port; an IPv4 device at
// 127.0.0.1 and two IPv6-only devices at [::1] are in one call, each sees
// its own address mapped in its family, and media crosses between the
// families byte for byte.
func TestDualStackOnePort(t *testing.T) {
	r := runRelay(t, func(c *forwarder.Config) { c.Listen = "[::]:0" })
	port := r.f.Addr().Port()
	require.True(t, r.f.Addr().Addr().IsUnspecified() && r.f.Addr().Addr().Is6(), "bound %s", r.f.Addr())
	at4 := netip.AddrPortFrom(loopback, port)
	at6 := netip.AddrPortFrom(loopback6, port)

	call := protocol.NewID()
	v4 := joinFrom(t, r.mint(t, call, protocol.ClassGroup, 4), loopback, at4)
	v6a := joinFrom(t, r.mint(t, call, protocol.ClassGroup, 4), loopback6, at6)
	v6b := joinFrom(t, r.mint(t, call, protocol.ClassGroup, 4), loopback6, at6)
	require.Equal(t, 3, r.f.Stats().Sessions)
	require.True(t, v4.LocalAddr().Addr().Is4(), "v4 device bound %s", v4.LocalAddr())
	require.True(t, v6a.LocalAddr().Addr().Is6(), "v6 device bound %s", v6a.LocalAddr())
	require.Equal(t, at6, v6a.Forwarder())
	require.Equal(t, at4, v4.Forwarder())

	t4, t6a, t6b := tapMedia(v4), tapMedia(v6a), tapMedia(v6b)
	warm(t, v4, 1041, t6a, t6b)
	warm(t, v6a, 1061, t4, t6b)
	warm(t, v6b, 1062, t4, t6a)
	exchangeExact(t, v4, 41, 100, t6a, t6b)
	exchangeExact(t, v6a, 61, 100, t4, t6b)
	exchangeExact(t, v6b, 62, 100, t4, t6a)
}

// TestDualStackMappedAddress: the join answer's XOR-MAPPED-ADDRESS is the
// device's address in its own family: IPv6 for an IPv6 device, plain IPv4
// (never v4-mapped) for an IPv4 device on the dual-stack socket.
func TestDualStackMappedAddress(t *testing.T) {
	r := runRelay(t, func(c *forwarder.Config) { c.Listen = "[::]:0" })
	port := r.f.Addr().Port()
	call := protocol.NewID()
	for _, local := range []netip.Addr{loopback, loopback6} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{netip.AddrPortFrom(local, port)},
			Token: r.mint(t, call, protocol.ClassGroup, 4), LocalAddr: local})
		cancel()
		require.NoError(t, err)
		require.Equal(t, c.LocalAddr(), c.MappedAddr(), "the address the forwarder sees, in the device's family")
		require.NoError(t, c.Close())
	}
}

// dualNode starts a cluster forwarder on [::]:port with both media
// addresses advertised and its trunk on [::1].
func (e *clusterEnv) dualNode(t *testing.T, id string) (*clusterNode, netip.AddrPort, netip.AddrPort) {
	t.Helper()
	port := freeDualPort(t)
	at4, at6 := netip.AddrPortFrom(loopback, port), netip.AddrPortFrom(loopback6, port)
	n := e.startWith(t, id, func(c *forwarder.Config) {
		c.Listen = fmt.Sprintf("[::]:%d", port)
		c.Cluster.MediaAdvertise, c.Cluster.MediaAdvertise6 = at4, at6
		c.Cluster.TrunkListen = "[::1]:0"
	})
	return n, at4, at6
}

// TestClusterTrunkOverIPv6: two forwarders whose trunk is on [::1]; an IPv4
// device on the first and an IPv6-only device on the second talk byte for
// byte across the trunk; the call's record in Redis and the notices and
// heartbeats on NATS carry the IPv6 addresses.
func TestClusterTrunkOverIPv6(t *testing.T) {
	e := newClusterEnv(t)
	a := e.startWith(t, "fwd-a", func(c *forwarder.Config) { c.Cluster.TrunkListen = "[::1]:0" })
	b := e.startWith(t, "fwd-b", func(c *forwarder.Config) { c.Listen, c.Cluster.TrunkListen = "[::1]:0", "[::1]:0" })
	require.True(t, a.f.TrunkAddr().Addr().Is6() && b.f.TrunkAddr().Addr().Is6())
	require.Equal(t, loopback6, b.f.Addr().Addr())

	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	call := protocol.NewID()
	notices, err := nc.SubscribeSync(protocol.CallSubject("callrelay", call))
	require.NoError(t, err)
	announces, err := nc.SubscribeSync(protocol.ForwardersSubject("callrelay"))
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	tok4, p4 := e.token(t, call, 4)
	tok6, p6 := e.token(t, call, 4)
	s4 := joinFrom(t, tok4, loopback, a.f.Addr())
	s6 := joinFrom(t, tok6, loopback6, b.f.Addr())
	t4, t6 := tapMedia(s4), tapMedia(s6)
	warm(t, s4, 1004, t6)
	warm(t, s6, 1006, t4)
	exchangeExact(t, s4, 4, 100, t6)
	exchangeExact(t, s6, 6, 100, t4)
	require.NotZero(t, a.f.Stats().TrunkOut)
	require.NotZero(t, b.f.Stats().TrunkOut)

	rec, err := e.store.Get(context.Background(), call)
	require.NoError(t, err)
	require.Equal(t, b.f.TrunkAddr(), rec.Members[p6].Trunk)
	require.Equal(t, s6.LocalAddr(), rec.Members[p6].Addr, "the IPv6 device's address, stored and read back")
	require.Equal(t, a.f.TrunkAddr(), rec.Members[p4].Trunk)
	require.True(t, rec.Members[p4].Addr.Addr().Is4())

	placed := map[string]netip.AddrPort{}
	for len(placed) < 2 {
		m, err := notices.NextMsg(5 * time.Second)
		require.NoError(t, err, "placements heard so far: %v", placed)
		var n protocol.MemberNotice
		if n.Unmarshal(m.Data, e.key) == nil && n.Op.Places() {
			placed[n.Forwarder] = n.Trunk
		}
	}
	require.Equal(t, map[string]netip.AddrPort{"fwd-a": a.f.TrunkAddr(), "fwd-b": b.f.TrunkAddr()}, placed)
	for {
		m, err := announces.NextMsg(5 * time.Second)
		require.NoError(t, err)
		var an protocol.ForwarderAnnounce
		if an.Unmarshal(m.Data, e.key) == nil && an.ID == "fwd-b" {
			require.Equal(t, b.f.Addr(), an.Media)
			require.Equal(t, b.f.TrunkAddr(), an.Trunk)
			break
		}
	}
}

// TestClusterMigrateToIPv6: dual-stack forwarders advertise both media
// addresses; when one drains, its IPv6 device is sent (MigrateTo) to the
// other's IPv6 address and its IPv4 device to the IPv4 one, and after the
// move they still talk byte for byte.
func TestClusterMigrateToIPv6(t *testing.T) {
	e := newClusterEnv(t)
	a, a4, a6 := e.dualNode(t, "fwd-a")
	b, b4, b6 := e.dualNode(t, "fwd-b")
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if a.f.Stats().Peers < 1 {
			return fmt.Errorf("fwd-a has not heard fwd-b yet")
		}
		return nil
	})
	call := protocol.NewID()
	tok4, _ := e.token(t, call, 4)
	tok6, _ := e.token(t, call, 4)
	s4 := joinFrom(t, tok4, loopback, a4)
	s6 := joinFrom(t, tok6, loopback6, a6)
	t4, t6 := tapMedia(s4), tapMedia(s6)
	warm(t, s4, 1004, t6)
	warm(t, s6, 1006, t4)
	exchangeExact(t, s4, 4, 20, t6)

	a.f.Drain()
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if s4.Forwarder() != b4 || s6.Forwarder() != b6 {
			return fmt.Errorf("IPv4 device on %s, IPv6 device on %s", s4.Forwarder(), s6.Forwarder())
		}
		return nil
	})
	require.Equal(t, uint64(1), s6.Stats().Migrations)
	require.Equal(t, uint64(1), s4.Stats().Migrations)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := b.f.Stats().Sessions; n != 2 {
			return fmt.Errorf("%d sessions on fwd-b", n)
		}
		return nil
	})
	warm(t, s4, 2004, t6)
	warm(t, s6, 2006, t4)
	exchangeExact(t, s4, 4, 50, t6)
	exchangeExact(t, s6, 6, 50, t4)
}

// TestClusterTrunkFamilyMismatchCounted: a forwarder whose trunk socket is
// IPv4 only cannot reach a peer's IPv6 trunk; it leaves that route out and
// counts it (before, laying the IPv6 address out for the IPv4 socket
// panicked), and its own members go on talking.
func TestClusterTrunkFamilyMismatchCounted(t *testing.T) {
	e := newClusterEnv(t)
	a := e.start(t, "fwd-a") // trunk on 127.0.0.1
	b := e.startWith(t, "fwd-b", func(c *forwarder.Config) { c.Cluster.TrunkListen = "[::1]:0" })
	call := protocol.NewID()
	tok1, _ := e.token(t, call, 4)
	tok2, _ := e.token(t, call, 4)
	tok3, _ := e.token(t, call, 4)
	s1 := joinFrom(t, tok1, loopback, a.f.Addr())
	s2 := joinFrom(t, tok2, loopback, a.f.Addr())
	_ = joinFrom(t, tok3, loopback, b.f.Addr())
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if a.f.Stats().Peering.TrunkFamilySkipped == 0 {
			return fmt.Errorf("fwd-a has not met fwd-b's IPv6 trunk yet")
		}
		return nil
	})
	t1, t2 := tapMedia(s1), tapMedia(s2)
	warm(t, s1, 1001, t2)
	warm(t, s2, 1002, t1)
	exchangeExact(t, s1, 1, 20, t2)
	require.Zero(t, a.f.Stats().TrunkOut)
}

// TestDualStackDevicePrefersIPv6: a device that lists a dual-stack
// forwarder at both its addresses (what a name with A and AAAA records
// gives) sends its join both ways; the forwarder sees one participant
// arrive twice. The device keeps the IPv6 path (both answer within a few
// ms on loopback) and leaves the IPv4 one, and that leave never ends the
// session it kept, whichever join the forwarder saw first (repeated, so
// both orders happen): one session per device, media byte-exact, no
// re-join. With the preference off, the first answer wins, and the same
// holds.
func TestDualStackDevicePrefersIPv6(t *testing.T) {
	r := runRelay(t, func(c *forwarder.Config) { c.Listen = "[::]:0" })
	port := r.f.Addr().Port()
	at4, at6 := netip.AddrPortFrom(loopback, port), netip.AddrPortFrom(loopback6, port)
	call := protocol.NewID()
	peer := joinFrom(t, r.mint(t, call, protocol.ClassGroup, 12), loopback, at4)
	tp := tapMedia(peer)
	type dual struct {
		s   *client.Session
		tap *mediaTap
	}
	var ds []dual
	for i := range 8 {
		prefer := 200 * time.Millisecond // generous: the machine is loaded
		if i%4 == 3 {
			prefer = -1 // no preference: the first answer wins
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{at4, at6},
			Token: r.mint(t, call, protocol.ClassGroup, 12), PreferIPv6Within: prefer})
		cancel()
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		if prefer > 0 {
			require.Equal(t, at6, s.Forwarder(), "device %d: IPv6 answered within %s of IPv4", i, prefer)
		}
		ds = append(ds, dual{s, tapMedia(s)})
	}
	// The losers' leaves come within 500 + 300 ms of each join (the
	// client's defaults), while the devices talk below: a session they
	// ended would lose packets and make its device re-join.
	for i, d := range ds {
		ssrc := uint32(100 + i)
		warm(t, d.s, 1000+ssrc, tp)
		warm(t, peer, 2000+ssrc, d.tap)
		exchangeExact(t, d.s, ssrc, 20, tp)
		exchangeExact(t, peer, 3000+ssrc, 20, d.tap)
		st := d.s.Stats()
		require.Zero(t, st.Rejoins+st.Failovers, "device %d lost its session", i)
	}
	fs := r.f.Stats()
	require.Equal(t, 1+len(ds), fs.Sessions)
	require.Equal(t, uint64(1+len(ds)), fs.Joins, "a session ended by a losing path's leave and admitted again")
	t.Logf("address changes (second joins and moves back): %d", fs.AddressChanges)
}
