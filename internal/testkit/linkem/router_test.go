package linkem

import (
	"encoding/binary"
	"io"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// packetDev is an in-memory TUN: packets the test injects are read by the
// router, and packets the router writes come out of out. It stands in for
// a real TUN (which needs root and a namespace; regions' tests use one)
// so the path logic is tested anywhere.
type packetDev struct {
	in   chan []byte
	out  chan []byte
	once sync.Once
	done chan struct{}
}

func newPacketDev() *packetDev {
	return &packetDev{in: make(chan []byte, 64), out: make(chan []byte, 64), done: make(chan struct{})}
}

func (d *packetDev) Read(b []byte) (int, error) {
	select {
	case p := <-d.in:
		return copy(b, p), nil
	case <-d.done:
		return 0, os.ErrClosed
	}
}

func (d *packetDev) Write(b []byte) (int, error) {
	select {
	case d.out <- append([]byte(nil), b...):
		return len(b), nil
	case <-d.done:
		return 0, os.ErrClosed
	}
}

func (d *packetDev) Close() error { d.once.Do(func() { close(d.done) }); return nil }

var _ io.ReadWriteCloser = (*packetDev)(nil)

// ipv4 is a minimal IPv4 header from src to dst with an id, and a payload.
func ipv4(src, dst string, id uint16) []byte {
	b := make([]byte, 28)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 28)
	binary.BigEndian.PutUint16(b[4:], id)
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return b
}

func TestRouterPaths(t *testing.T) {
	dev := newPacketDev()
	r, err := NewRouter(dev, []Site{{"eu", netip.MustParsePrefix("10.1.0.0/24")}, {"za", netip.MustParsePrefix("10.2.0.0/24")}}, 1)
	require.NoError(t, err)
	defer func() { require.NoError(t, r.Close()) }()
	require.NoError(t, r.SetPath("eu", "za", Profile{Delay: 40 * time.Millisecond}))
	require.NoError(t, r.SetPath("za", "eu", Profile{Loss: 1}))
	require.ErrorIs(t, r.SetPath("eu", "us", Profile{}), ErrUnknownSite)

	recv := func() []byte {
		select {
		case p := <-dev.out:
			return p
		case <-time.After(5 * time.Second):
			t.Fatal("nothing came out")
			return nil
		}
	}
	start := time.Now()
	dev.in <- ipv4("10.1.0.2", "10.2.0.2", 1)
	dev.in <- ipv4("10.2.0.2", "10.1.0.2", 2)  // lost
	dev.in <- ipv4("10.1.0.2", "192.0.2.1", 3) // no site: back at once
	first := recv()
	require.Equal(t, uint16(3), binary.BigEndian.Uint16(first[4:]), "the unrouted packet overtakes the delayed one")
	second := recv()
	require.Equal(t, ipv4("10.1.0.2", "10.2.0.2", 1), second, "byte-exact")
	require.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond)
	require.Eventually(t, func() bool {
		s, _ := r.PathStats("za", "eu")
		return s.Lost == 1
	}, 5*time.Second, time.Millisecond)
	// Counted as the router's writer goes on after the write: the packet
	// can be read here first (a clean-clone CI run at load ~2 saw 0).
	require.Eventually(t, func() bool {
		s, err := r.PathStats("eu", "za")
		return err == nil && s.Delivered == 1
	}, 5*time.Second, time.Millisecond)
	require.Equal(t, uint64(1), r.Unrouted())
	select {
	case p := <-dev.out:
		t.Fatalf("a lost packet came out: %x", p)
	default:
	}
}

func TestRouterRejectsSites(t *testing.T) {
	for _, sites := range [][]Site{
		{{"a", netip.MustParsePrefix("10.0.0.0/16")}, {"b", netip.MustParsePrefix("10.0.1.0/24")}},
		{{"a", netip.MustParsePrefix("10.0.0.0/24")}, {"a", netip.MustParsePrefix("10.0.1.0/24")}},
		{{"a", netip.MustParsePrefix("fd00::/64")}},
	} {
		_, err := NewRouter(newPacketDev(), sites, 1)
		require.Error(t, err, "%v", sites)
	}
}
