package regions

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/linkem"
)

// udpIn binds a UDP socket on the site's address inside its namespace.
func udpIn(t *testing.T, tp *Topology, site string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	require.NoError(t, tp.Do(site, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tp.Addr(site), 0)))
		return err
	}))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echo answers every datagram on c until it is closed.
func echo(c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// minRTT sends rounds datagrams from c to dst one at a time and returns
// the smallest round trip, checking each answer byte for byte.
func minRTT(t *testing.T, c *net.UDPConn, dst netip.AddrPort, rounds int) time.Duration {
	t.Helper()
	best := time.Hour
	buf := make([]byte, 2048)
	for i := range rounds {
		msg := []byte{byte(i), 'p', 'i', 'n', 'g'}
		start := time.Now()
		_, err := c.WriteToUDPAddrPort(msg, dst)
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		require.NoError(t, err, "round %d", i)
		require.Equal(t, msg, buf[:n])
		best = min(best, time.Since(start))
	}
	return best
}

// TestRegionTopology: two regions 30 ms apart each way and a city 5 ms
// from the first: a UDP round trip between the regions takes at least
// 60 ms, from the city to the far region at least 70 ms, and the emulator
// counts the packets on each path. When the test ends its namespaces are
// gone.
func TestRegionTopology(t *testing.T) {
	var names []string
	t.Run("build", func(t *testing.T) {
		tp := New(t, Spec{Sites: []Site{{Name: "eu"}, {Name: "za"}, {Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 5 * time.Millisecond}}},
			Links: []Link{{A: "eu", B: "za", OneWay: linkem.Profile{Delay: 30 * time.Millisecond, Jitter: time.Millisecond}}}, Seed: 1})
		names = []string{tp.Netns("eu"), tp.Netns("za"), tp.Netns("paris"), tp.wan}
		za := udpIn(t, tp, "za")
		go echo(za)
		eu, paris := udpIn(t, tp, "eu"), udpIn(t, tp, "paris")
		dst := za.LocalAddr().(*net.UDPAddr).AddrPort()
		regions := minRTT(t, eu, dst, 5)
		city := minRTT(t, paris, dst, 5)
		t.Logf("eu<->za min RTT %v (60 ms emulated), paris<->za %v (70 ms)", regions, city)
		require.GreaterOrEqual(t, regions, 60*time.Millisecond)
		require.GreaterOrEqual(t, city, 70*time.Millisecond)
		for _, p := range [][2]string{{"eu", "za"}, {"za", "eu"}, {"paris", "za"}, {"za", "paris"}} {
			require.Eventually(t, func() bool { // counted just after the write that the answer may beat
				s, err := tp.Router().PathStats(p[0], p[1])
				return err == nil && s.Delivered == 5 && s.Received == 5
			}, 5*time.Second, time.Millisecond, "%s -> %s", p[0], p[1])
		}
		require.Equal(t, linkem.Profile{Delay: 35 * time.Millisecond, Jitter: time.Millisecond}, tp.Profile("paris", "za"))

		tp.SetLink(t, "eu", "za", linkem.Profile{Delay: 60 * time.Millisecond})
		require.GreaterOrEqual(t, minRTT(t, eu, dst, 2), 120*time.Millisecond, "the new link applies")
	})
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	for _, n := range names {
		require.NotContains(t, string(out), n+" ", "namespace %s left behind", n)
		require.False(t, strings.Contains(string(out)+"\n", n+"\n"), "namespace %s left behind", n)
	}
}

func TestRegionSpecRejects(t *testing.T) {
	for _, s := range []Spec{
		{},
		{Sites: []Site{{Name: "EU"}}},
		{Sites: []Site{{Name: "eu"}, {Name: "eu"}}},
		{Sites: []Site{{Name: "paris", Home: "eu"}}},
		{Sites: []Site{{Name: "eu"}}, Links: []Link{{A: "eu", B: "eu"}}},
		{Sites: []Site{{Name: "eu"}, {Name: "paris", Home: "eu", Direct: map[string]linkem.Profile{"eu": {}}}}}, // its home
		{Sites: []Site{{Name: "eu"}, {Name: "za", Direct: map[string]linkem.Profile{"eu": {}}}}},                // a region
	} {
		tp := &Topology{spec: s, sites: map[string]*site{}}
		require.Error(t, tp.check(), "%+v", s)
	}
}

// TestRegionDirectLink: a multi-homed city reaches its direct link's
// region over that link (20 ms each way, not its 5 ms access plus the
// 30 ms between the regions), and SetAccess changes each of its links
// alone: its home link to 50 ms leaves the direct one as it was.
func TestRegionDirectLink(t *testing.T) {
	ms := time.Millisecond
	tp := New(t, Spec{Sites: []Site{{Name: "eu"}, {Name: "za"},
		{Name: "lagos", Home: "eu", Access: linkem.Profile{Delay: 5 * ms}, Direct: map[string]linkem.Profile{"za": {Delay: 20 * ms}}}},
		Links: []Link{{A: "eu", B: "za", OneWay: linkem.Profile{Delay: 30 * ms}}}, Seed: 2})
	eu, za := udpIn(t, tp, "eu"), udpIn(t, tp, "za")
	go echo(eu)
	go echo(za)
	lagos := udpIn(t, tp, "lagos")
	toEU, toZA := eu.LocalAddr().(*net.UDPAddr).AddrPort(), za.LocalAddr().(*net.UDPAddr).AddrPort()
	within := func(got, want time.Duration) {
		t.Helper()
		require.GreaterOrEqual(t, got, want)
		require.Less(t, got, want+15*ms, "the emulated delay plus scheduling")
	}
	rEU, rZA := minRTT(t, lagos, toEU, 5), minRTT(t, lagos, toZA, 5)
	within(rEU, 10*ms)
	within(rZA, 40*ms)
	tp.SetAccess(t, "lagos", "eu", linkem.Profile{Delay: 50 * ms})
	jEU, jZA := minRTT(t, lagos, toEU, 5), minRTT(t, lagos, toZA, 5)
	within(jEU, 100*ms)
	within(jZA, 40*ms)
	tp.SetAccess(t, "lagos", "za", linkem.Profile{Delay: 35 * ms})
	within(minRTT(t, lagos, toZA, 5), 70*ms)
	t.Logf("lagos RTT to eu %v, za %v; eu link to 50 ms: eu %v, za %v", rEU, rZA, jEU, jZA)
}
