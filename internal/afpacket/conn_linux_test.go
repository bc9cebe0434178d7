//go:build linux

package afpacket

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newTestLab(t *testing.T) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: the AF_PACKET tests make network namespaces and a veth pair (ip netns, CAP_NET_RAW)")
	}
	l, err := NewLab(netip.MustParsePrefix("198.18.0.0/15"))
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l
}

// TestConnBothWays: frames a Conn sends from many source addresses reach
// a kernel UDP socket in the relay namespace byte for byte, from the
// addresses and port given; the socket's answers come back through the
// Conn's ring, byte for byte, to those addresses, with the kernel's
// arrival times.
func TestConnBothWays(t *testing.T) {
	l := newTestLab(t)
	var udp *net.UDPConn
	require.NoError(t, InNetNS(l.RelayNS, func() (err error) {
		udp, err = net.ListenUDP("udp4", &net.UDPAddr{IP: l.RelayAddr.AsSlice()})
		return err
	}))
	defer udp.Close()
	relay := udp.LocalAddr().(*net.UDPAddr).AddrPort()
	c, err := Open(Config{NetNS: l.GenNS, Iface: l.GenIface, Gateway: l.RelayMAC, Port: 20000, Checksum: true})
	require.NoError(t, err)
	defer c.Close()

	const n = 50
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 20+i) }
	src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(1 + i/200), byte(1 + i%200)}) }
	for i := range n {
		require.True(t, c.Queue(payload(i), relay, src(i)))
		if i%16 == 15 {
			sent, failed := c.Flush()
			require.Equal(t, 16, sent)
			require.Zero(t, failed)
		}
	}
	c.Flush()
	buf := make([]byte, 2048)
	require.NoError(t, udp.SetReadDeadline(time.Now().Add(10*time.Second)))
	for i := range n {
		k, from, err := udp.ReadFromUDPAddrPort(buf)
		require.NoError(t, err)
		require.Equal(t, netip.AddrPortFrom(src(i), 20000), from)
		require.Equal(t, payload(i), buf[:k])
		_, err = udp.WriteToUDPAddrPort(append([]byte("re:"), buf[:k]...), from)
		require.NoError(t, err)
	}
	got := 0
	for got < n {
		k, err := c.ReadBatch()
		require.NoError(t, err)
		for j := range k {
			require.Equal(t, src(got), c.Dst(j))
			require.Equal(t, append([]byte("re:"), payload(got)...), c.Buf(j))
			require.InDelta(t, time.Now().UnixNano(), c.RxTime(j), float64(10*time.Second))
			got++
		}
	}
	require.Zero(t, c.Dropped())
	// The per-packet path allocates nothing: a frame queued and sent,
	// its answer read back.
	one := payload(1)
	allocs := testing.AllocsPerRun(20, func() {
		c.Queue(one, relay, src(1))
		c.Flush()
		k, _, _ := udp.ReadFromUDPAddrPort(buf)
		_, _ = udp.WriteToUDPAddrPort(buf[:k], netip.AddrPortFrom(src(1), 20000))
		if k, err := c.ReadBatch(); err != nil || k != 1 || !bytes.Equal(c.Buf(0), one) {
			t.Fatalf("read back %d, %v", k, err)
		}
	})
	require.Zero(t, allocs)
	require.NoError(t, c.Close())
	_, err = c.ReadBatch()
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestConnCloseWithoutReader: Close releases the ring when no reader took
// it, and a ReadBatch after that fails at once.
func TestConnCloseWithoutReader(t *testing.T) {
	l := newTestLab(t)
	c, err := Open(Config{NetNS: l.GenNS, Iface: l.GenIface, Gateway: l.RelayMAC, Port: 20000})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	_, err = c.ReadBatch()
	require.ErrorIs(t, err, net.ErrClosed)
}
