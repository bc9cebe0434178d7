package linkem

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

func TestNewRejectsBadServers(t *testing.T) {
	for _, tc := range []struct {
		server string
		want   error
	}{
		{"", ErrBadServer},
		{"127.0.0.1:0", ErrBadServer},
		{"192.0.2.1:5000", ErrNotLoopback},
		{"[2001:db8::1]:5000", ErrNotLoopback},
	} {
		t.Run(tc.server, func(t *testing.T) {
			var ap netip.AddrPort
			if tc.server != "" {
				ap = netip.MustParseAddrPort(tc.server)
			}
			_, err := New(ap, Profile{}, Profile{}, 1)
			require.ErrorIs(t, err, tc.want)
		})
	}
}

func TestNewMapsUnspecifiedToLoopback(t *testing.T) {
	srv := udpSocket(t)
	port := addrOf(srv).Port()
	l := newLink(t, netip.AddrPortFrom(netip.IPv4Unspecified(), port), Profile{}, Profile{})
	require.Equal(t, netip.AddrPortFrom(loopback4, port), l.Server())
	require.True(t, l.Addr().Addr().IsLoopback())
	require.True(t, l.ServerSide().Addr().IsLoopback())
}

// exchange sends bursts of datagrams of assorted sizes (empty to
// MaxPayload) from one socket to dst and checks that they reach to in
// order, unchanged, from wantSrc.
func exchange(t *testing.T, from, to *net.UDPConn, dst, wantSrc netip.AddrPort) {
	t.Helper()
	sizes := []int{0, 1, 4, 100, 1200, 1500, MaxPayload}
	buf := make([]byte, MaxPayload+1)
	require.NoError(t, to.SetReadDeadline(time.Now().Add(10*time.Second)))
	defer func() { _ = to.SetReadDeadline(time.Time{}) }()
	seq := 0
	for range 10 {
		var sent [][]byte
		for range 20 {
			p := make([]byte, sizes[seq%len(sizes)])
			for i := range p {
				p[i] = byte(seq*7 + i)
			}
			if len(p) >= 4 {
				binary.BigEndian.PutUint32(p, uint32(seq))
			}
			_, err := from.WriteToUDPAddrPort(p, dst)
			require.NoError(t, err)
			sent = append(sent, p)
			seq++
		}
		for i, want := range sent {
			n, src, err := to.ReadFromUDPAddrPort(buf)
			require.NoError(t, err, "datagram %d of the burst", i)
			require.Equal(t, wantSrc, src)
			require.True(t, bytes.Equal(want, buf[:n]), "datagram %d of the burst: %d bytes, want %d", i, n, len(want))
		}
	}
}

func TestPassThrough(t *testing.T) {
	srv, cli := udpSocket(t), udpSocket(t)
	l := newLink(t, addrOf(srv), Profile{}, Profile{})

	exchange(t, cli, srv, l.Addr(), l.ServerSide())
	exchange(t, srv, cli, l.ServerSide(), l.Addr())

	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st := l.Stats()
		for _, d := range []DirStats{st.Up, st.Down} {
			if d.Received != 200 || d.Delivered != 200 || d.InFlight() != 0 {
				return fmt.Errorf("stats %+v", d)
			}
		}
		return nil
	})
	st := l.Stats()
	require.Equal(t, st.Up.ReceivedBytes, st.Up.DeliveredBytes)
	require.Equal(t, st.Down.ReceivedBytes, st.Down.DeliveredBytes)
	require.Zero(t, st.Up.Lost+st.Up.QueueDropped+st.Up.Limit+st.Up.SendErrors+st.Up.Stray)
}

func TestIPv6(t *testing.T) {
	srv, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::1]:0")))
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	echo(t, srv)
	cli, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::1]:0")))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	l := newLink(t, addrOf(srv), Profile{}, Profile{})
	require.Equal(t, netip.IPv6Loopback(), l.Addr().Addr())
	_, ok := ping(t, cli, l.Addr(), 1, 5*time.Second)
	require.True(t, ok)
}

func TestLoss(t *testing.T) {
	const total, batch = 4000, 100
	srv, cli := udpSocket(t), udpSocket(t)
	r := record(t, srv)
	l := newLink(t, addrOf(srv), Profile{Loss: 0.05}, Profile{})
	buf := make([]byte, 200)
	// In batches, each awaited, so that no socket buffer overflows and
	// every missing packet is one the link dropped.
	for sent := 0; sent < total; {
		for range batch {
			binary.BigEndian.PutUint32(buf, uint32(sent))
			_, err := cli.WriteToUDPAddrPort(buf, l.Addr())
			require.NoError(t, err)
			sent++
		}
		testenv.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			st := l.Stats().Up
			if st.Received != uint64(sent) || st.InFlight() != 0 || uint64(r.count()) != st.Delivered {
				return fmt.Errorf("after %d sent: %+v, server got %d", sent, st, r.count())
			}
			return nil
		})
	}
	st := l.Stats().Up
	frac := float64(st.Lost) / total
	t.Logf("loss 5%%: %d of %d lost (%.2f%%), %d delivered", st.Lost, total, 100*frac, st.Delivered)
	require.Equal(t, uint64(total), st.Lost+st.Delivered)
	require.Equal(t, uint64(200)*st.Lost, st.LostBytes)
	require.GreaterOrEqual(t, frac, 0.03)
	require.LessOrEqual(t, frac, 0.07)
	got := r.arrivals()
	for i := 1; i < len(got); i++ {
		require.Greater(t, got[i].seq, got[i-1].seq, "order kept")
	}
}

func TestDelay(t *testing.T) {
	srv, cli := udpSocket(t), udpSocket(t)
	echo(t, srv)
	// 50 ms round trip, split unevenly to show each direction applies its own.
	l := newLink(t, addrOf(srv), Profile{Delay: 30 * time.Millisecond}, Profile{Delay: 20 * time.Millisecond})
	var rtts []time.Duration
	for seq := range uint32(41) { // about two seconds
		rtt, ok := ping(t, cli, l.Addr(), seq, 2*time.Second)
		require.True(t, ok, "ping %d", seq)
		rtts = append(rtts, rtt)
	}
	med := median(rtts)
	t.Logf("delay 30+20 ms: median RTT %v, min %v, max %v", med, rtts[0], rtts[len(rtts)-1])
	require.GreaterOrEqual(t, rtts[0], 50*time.Millisecond, "never early")
	require.GreaterOrEqual(t, med, 50*time.Millisecond)
	require.LessOrEqual(t, med, 80*time.Millisecond)
}

func TestJitterKeepsOrder(t *testing.T) {
	const count = 200
	srv, cli := udpSocket(t), udpSocket(t)
	r := record(t, srv)
	up := Profile{Delay: 10 * time.Millisecond, Jitter: 30 * time.Millisecond}
	l := newLink(t, addrOf(srv), up, Profile{})
	// 2 ms apart, well inside the jitter: netem would reorder these.
	sent := paced(t, cli, l.Addr(), 100, 400_000, count*serialisation(100, 400_000))
	require.Equal(t, count, sent)
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := r.count(); n != count {
			return fmt.Errorf("server got %d of %d", n, count)
		}
		return nil
	})
	for i, a := range r.arrivals() {
		require.Equal(t, uint32(i), a.seq, "arrival %d out of order", i)
	}
}

func TestRateCap(t *testing.T) {
	for _, tc := range []struct {
		rate, offered uint64
	}{
		{300_000, 1_000_000},
		{5_000_000, 6_000_000},
	} {
		t.Run(fmt.Sprint(tc.rate), func(t *testing.T) {
			const size = 1200
			srv, cli := udpSocket(t), udpSocket(t)
			r := record(t, srv)
			l := newLink(t, addrOf(srv), Profile{RateBps: tc.rate}, Profile{})
			sent := paced(t, cli, l.Addr(), size, tc.offered, 2*time.Second)
			testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				st := l.Stats().Up
				if st.Received != uint64(sent) || st.InFlight() != 0 || uint64(r.count()) != st.Delivered {
					return fmt.Errorf("%d sent: %+v, server got %d", sent, st, r.count())
				}
				return nil
			})
			st := l.Stats().Up
			got := r.arrivals()
			// The first arrival starts the clock; the bytes after it are
			// what the bottleneck delivered in the time measured.
			span := got[len(got)-1].at.Sub(got[0].at)
			rate := float64((len(got)-1)*size*8) / span.Seconds()
			t.Logf("cap %d bit/s, offered %d: delivered %.0f bit/s (%+.2f%%) over %v; %d sent, %d delivered, %d tail-dropped",
				tc.rate, tc.offered, rate, 100*(rate/float64(tc.rate)-1), span.Round(time.Millisecond),
				sent, st.Delivered, st.QueueDropped)
			require.InEpsilon(t, float64(tc.rate), rate, 0.15)
			require.Positive(t, st.QueueDropped)
			require.Equal(t, st.QueueDropped*size, st.QueueDroppedBytes)
			require.Equal(t, uint64(sent), st.Delivered+st.QueueDropped)
		})
	}
}

func TestSetDownAtRuntime(t *testing.T) {
	srv, cli := udpSocket(t), udpSocket(t)
	echo(t, srv)
	l := newLink(t, addrOf(srv), Profile{}, Profile{})
	seq := uint32(0)
	next := func() uint32 { seq++; return seq }

	rtt, ok := ping(t, cli, l.Addr(), next(), 2*time.Second)
	require.True(t, ok)
	require.Less(t, rtt, 150*time.Millisecond, "no delay yet")

	l.SetDown(Profile{Delay: 150 * time.Millisecond})
	rtt, ok = ping(t, cli, l.Addr(), next(), 2*time.Second)
	require.True(t, ok)
	require.GreaterOrEqual(t, rtt, 150*time.Millisecond, "down delay applies")

	l.SetDown(Profile{Loss: 1})
	for range 5 {
		_, ok = ping(t, cli, l.Addr(), next(), 200*time.Millisecond)
		require.False(t, ok, "down loss applies")
	}
	require.Equal(t, uint64(5), l.Stats().Down.Lost)
	require.Zero(t, l.Stats().Up.Lost, "up untouched")

	l.SetDown(Profile{})
	_, ok = ping(t, cli, l.Addr(), next(), 2*time.Second)
	require.True(t, ok, "restored")
}

func TestRepliesFollowTheClient(t *testing.T) {
	srv, cli1, cli2 := udpSocket(t), udpSocket(t), udpSocket(t)
	echo(t, srv)
	l := newLink(t, addrOf(srv), Profile{}, Profile{})
	_, ok := ping(t, cli1, l.Addr(), 1, 2*time.Second)
	require.True(t, ok)
	// The client rebinds (a new port, as after a NAT rebinding): replies
	// go to it from then on, and the server still sees one address.
	_, ok = ping(t, cli2, l.Addr(), 2, 2*time.Second)
	require.True(t, ok)
}

func TestStrayAndOversized(t *testing.T) {
	srv, cli, other := udpSocket(t), udpSocket(t), udpSocket(t)
	l := newLink(t, addrOf(srv), Profile{}, Profile{})

	// The server speaks before any client: nowhere to send it.
	_, err := srv.WriteToUDPAddrPort([]byte("early"), l.ServerSide())
	require.NoError(t, err)
	// Someone other than the server sends to the server side.
	_, err = other.WriteToUDPAddrPort([]byte("stranger"), l.ServerSide())
	require.NoError(t, err)
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := l.Stats().Down.Stray; n != 2 {
			return fmt.Errorf("%d stray", n)
		}
		return nil
	})
	// Larger than MaxPayload.
	_, err = cli.WriteToUDPAddrPort(make([]byte, MaxPayload+1), l.Addr())
	require.NoError(t, err)

	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st := l.Stats()
		if st.Down.Stray != 2 || st.Up.Limit != 1 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	st := l.Stats()
	require.Zero(t, st.Down.Received)
	require.Zero(t, st.Up.Delivered)
}

func TestCloseStopsEverything(t *testing.T) {
	srv, cli := udpSocket(t), udpSocket(t)
	l, err := New(addrOf(srv), Profile{Delay: time.Hour}, Profile{}, 1)
	require.NoError(t, err)
	for range 10 {
		_, err := cli.WriteToUDPAddrPort([]byte("held"), l.Addr())
		require.NoError(t, err)
	}
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := l.Stats().Up.InFlight(); n != 10 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- l.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs with packets in flight")
	}
	require.NoError(t, l.Close(), "idempotent")
	_, err = cli.WriteToUDPAddrPort([]byte("late"), l.Addr())
	require.NoError(t, err) // UDP: nobody listens, nothing fails here
	require.Equal(t, uint64(10), l.Stats().Up.Received)
	goleak.VerifyNone(t)
}

func TestRelayDoesNotAllocate(t *testing.T) {
	srv, cli := udpSocket(t), udpSocket(t)
	echo(t, srv)
	l := newLink(t, addrOf(srv), Profile{Jitter: time.Millisecond, Loss: 1e-9}, Profile{RateBps: 100_000_000})
	out := make([]byte, 1200)
	in := make([]byte, 2048)
	require.NoError(t, cli.SetReadDeadline(time.Now().Add(30*time.Second)))
	roundTrip := func() {
		if _, err := cli.WriteToUDPAddrPort(out, l.Addr()); err != nil {
			panic(err)
		}
		if _, _, err := cli.ReadFromUDPAddrPort(in); err != nil {
			panic(err)
		}
	}
	roundTrip() // the client address is stored once
	// Counts mallocs everywhere in the process: the link's four
	// goroutines and the echo server included.
	allocs := testing.AllocsPerRun(200, roundTrip)
	require.Zero(t, allocs)
}

func TestInFlightIsBounded(t *testing.T) {
	srv, cli := udpSocket(t), udpSocket(t)
	l := newLink(t, addrOf(srv), Profile{Delay: time.Hour}, Profile{})
	const extra = 6
	for sent := 0; sent < MaxInFlight+extra; {
		for range min(100, MaxInFlight+extra-sent) {
			_, err := cli.WriteToUDPAddrPort([]byte("held"), l.Addr())
			require.NoError(t, err)
			sent++
		}
		testenv.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			if n := l.Stats().Up.Received; n != uint64(sent) {
				return fmt.Errorf("%d of %d read", n, sent)
			}
			return nil
		})
	}
	st := l.Stats().Up
	require.Equal(t, uint64(extra), st.Limit)
	require.Equal(t, uint64(MaxInFlight), st.InFlight())
}
