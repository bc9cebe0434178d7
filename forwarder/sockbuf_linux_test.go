package forwarder

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func sysctlInt(t *testing.T, path string) int {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	return v
}

// readBufs reads a socket's buffers from the kernel, in the units asked.
func readBufs(t *testing.T, c *net.UDPConn) (rcv, snd int) {
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	require.NoError(t, rc.Control(func(fd uintptr) {
		r, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		require.NoError(t, err)
		s, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		require.NoError(t, err)
		rcv, snd = r/2, s/2
	}))
	return rcv, snd
}

// Asked for more than net.core.rmem_max/wmem_max allow, a socket gets it
// when the process may force it (CAP_NET_ADMIN), else exactly the cap; and
// what is reported is what the kernel says, not what was asked.
func TestSocketBuffersReadBack(t *testing.T) {
	rmax := sysctlInt(t, "/proc/sys/net/core/rmem_max")
	wmax := sysctlInt(t, "/proc/sys/net/core/wmem_max")
	want := max(rmax, wmax) + 1<<20
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	rcv, snd := sizeSocketBuffers(c, want)
	kr, ks := readBufs(t, c)
	require.Equal(t, kr, rcv, "the receive buffer reported is the kernel's")
	require.Equal(t, ks, snd, "the send buffer reported is the kernel's")
	if rcv < want {
		require.Equal(t, rmax, rcv, "without CAP_NET_ADMIN: the cap, and it is reported short")
	}
	if snd < want {
		require.Equal(t, wmax, snd)
	}
	t.Logf("asked %d, got receive %d send %d (rmem_max %d, wmem_max %d)", want, rcv, snd, rmax, wmax)
}

// A forwarder exports the buffers its sockets got.
func TestSocketBuffersExported(t *testing.T) {
	r := startRelay(t, nil)
	for _, c := range r.f.conns {
		kr, ks := readBufs(t, c)
		require.LessOrEqual(t, r.f.sockBuf[sockMedia][0], kr)
		require.LessOrEqual(t, r.f.sockBuf[sockMedia][1], ks)
	}
	require.Positive(t, r.f.sockBuf[sockMedia][0])
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(r.f.Collector()))
	n, err := testutil.GatherAndCount(reg, "callrelay_forwarder_socket_buffer_bytes")
	require.NoError(t, err)
	require.Equal(t, 2, n, "media receive and send (no trunk here)")
}
