package client

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// udpRelay relays datagrams between one client and server, as a test's
// link emulator in front of a forwarder would.
type udpRelay struct {
	front, back *net.UDPConn
	mu          sync.Mutex
	client      netip.AddrPort
	relayed     int
}

func newUDPRelay(t *testing.T, server netip.AddrPort) *udpRelay {
	t.Helper()
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	front, err := net.ListenUDP("udp4", lo)
	require.NoError(t, err)
	back, err := net.ListenUDP("udp4", lo)
	require.NoError(t, err)
	r := &udpRelay{front: front, back: back}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		b := make([]byte, 2048)
		for {
			n, from, err := front.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = from
			r.relayed++
			r.mu.Unlock()
			_, _ = back.WriteToUDPAddrPort(b[:n], server)
		}
	}()
	go func() {
		defer wg.Done()
		b := make([]byte, 2048)
		for {
			n, _, err := back.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			r.mu.Lock()
			to := r.client
			r.mu.Unlock()
			_, _ = front.WriteToUDPAddrPort(b[:n], to)
		}
	}()
	t.Cleanup(func() { _ = front.Close(); _ = back.Close(); wg.Wait() })
	return r
}

func (r *udpRelay) addr() netip.AddrPort { return r.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// With Config.Route the session's sockets go to the relay in front of the
// forwarder, and the forwarder is still known by its own address: in
// Forwarder and in the RTT reports.
func TestRouteSendsThroughTheRelay(t *testing.T) {
	e := newEnv(t)
	r := newResponder(t, e.pub, fastParams)
	relay := newUDPRelay(t, r.addr)
	cfg := e.config(r)
	cfg.Route = func(f netip.AddrPort) netip.AddrPort {
		if f == r.addr {
			return relay.addr()
		}
		return f
	}
	s := e.join(cfg)
	require.Equal(t, r.addr, s.Forwarder())
	require.Contains(t, s.CandidateRTTs(), r.addr)
	back := relay.back.LocalAddr().(*net.UDPAddr).AddrPort()
	r.mu.Lock()
	reqs := append([]request(nil), r.requests...)
	r.mu.Unlock()
	require.NotEmpty(t, reqs)
	for _, q := range reqs {
		require.Equal(t, back, q.from, "every request came through the relay")
	}
	relay.mu.Lock()
	defer relay.mu.Unlock()
	require.Positive(t, relay.relayed, "relayed by %v", relay.addr())
}

// The keepalive sent as the race is won carries only the winner's RTT; once
// the losers have answered, the Conn sends one more at once, carrying theirs,
// instead of a keepalive interval (here 1 s) later.
func TestKeepaliveOnceLosersMeasured(t *testing.T) {
	e := newEnv(t)
	a, b := newResponder(t, e.pub, fastParams), newResponder(t, e.pub, fastParams)
	joined := time.Now()
	s := e.join(e.config(a, b))
	win := a
	if s.Forwarder() == b.addr {
		win = b
	}
	eventually(t, func() bool {
		win.mu.Lock()
		defer win.mu.Unlock()
		return len(win.requests) >= 3
	}, "the winner has the join, the keepalive sent on winning and the one after the losers answered")
	require.Less(t, time.Since(joined), 700*time.Millisecond, "well before the 1 s keepalive interval")
	require.Len(t, s.CandidateRTTs(), 2)
}
