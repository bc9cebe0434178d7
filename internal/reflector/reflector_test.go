package reflector

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseRegister(t *testing.T) {
	g, ok := parseRegister(Register(42))
	require.True(t, ok)
	require.Equal(t, uint64(42), g)
	for _, b := range [][]byte{nil, Register(1)[:17], append(Register(1), 0), []byte("CRREFLECT2\x00\x00\x00\x00\x00\x00\x00\x01")} {
		_, ok := parseRegister(b)
		require.False(t, ok, "%q", b)
	}
}

// Three registered devices of one group get each other's datagrams byte
// for byte, never their own; a device of another group and an unregistered
// one get nothing; junk from strangers is counted dropped.
func TestReflectsWithinGroup(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("batched I/O is Linux only (mmsg)")
	}
	r, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); require.NoError(t, r.Run(ctx)) }()
	defer func() { cancel(); wg.Wait() }()

	dev := func(group uint64) *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		if group != 0 {
			_, err = c.WriteToUDPAddrPort(Register(group), r.Addr())
			require.NoError(t, err)
			require.Equal(t, Register(group), read(t, c), "registration answered")
		}
		return c
	}
	a, b, c, other, stranger := dev(7), dev(7), dev(7), dev(8), dev(0)
	_, err = a.WriteToUDPAddrPort([]byte("from a"), r.Addr())
	require.NoError(t, err)
	require.Equal(t, []byte("from a"), read(t, b))
	require.Equal(t, []byte("from a"), read(t, c))
	_, err = stranger.WriteToUDPAddrPort([]byte("junk"), r.Addr())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return r.Stats().Dropped == 1 }, 10*time.Second, 5*time.Millisecond)
	for _, q := range []*net.UDPConn{a, other, stranger} {
		require.NoError(t, q.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
		_, _, err := q.ReadFromUDPAddrPort(make([]byte, 100))
		require.Error(t, err, "nothing for a device outside the group or the sender")
	}
	st := r.Stats()
	require.Equal(t, uint64(4), st.Registered)
	require.Equal(t, uint64(6), st.In)
	require.Equal(t, uint64(6), st.Out) // 4 answers, 2 reflections
}

func read(t *testing.T, c *net.UDPConn) []byte {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	b := make([]byte, 1500)
	n, _, err := c.ReadFromUDPAddrPort(b)
	require.NoError(t, err)
	return b[:n]
}

// FuzzParseRegister: any datagram is a registration for the group it names,
// or none; never a panic.
func FuzzParseRegister(f *testing.F) {
	f.Add(Register(1))
	f.Add([]byte("CRREFLECT1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, ok := parseRegister(b)
		if ok {
			require.Equal(t, Register(g), b)
		}
	})
}
