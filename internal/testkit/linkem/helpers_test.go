package linkem

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// udpSocket opens a UDP socket on 127.0.0.1, closed at the end of the test.
func udpSocket(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	require.NoError(t, err)
	_ = c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// newLink starts a link to server, closed at the end of the test.
func newLink(t *testing.T, server netip.AddrPort, up, down Profile) *Link {
	t.Helper()
	l, err := New(server, up, down, 1)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

// echo answers every datagram on c to its sender until c is closed; the
// test waits for it to stop.
func echo(t *testing.T, c *net.UDPConn) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				_, _ = c.WriteToUDPAddrPort(buf[:n], src)
			}
		}
	})
	t.Cleanup(func() { _ = c.Close(); wg.Wait() })
}

// arrival is one datagram seen by a recorder.
type arrival struct {
	at  time.Time
	n   int
	seq uint32 // first four bytes, if there are four
}

// recorder notes every datagram arriving on c until c is closed.
type recorder struct {
	mu  sync.Mutex
	got []arrival
}

func record(t *testing.T, c *net.UDPConn) *recorder {
	t.Helper()
	r := &recorder{}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		rd := newArrivalReader(c) // kernel arrival times: a late read does not skew them
		for {
			n, _, at, err := rd.read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			a := arrival{at: at, n: n}
			if n >= 4 {
				a.seq = binary.BigEndian.Uint32(buf)
			}
			r.mu.Lock()
			r.got = append(r.got, a)
			r.mu.Unlock()
		}
	})
	t.Cleanup(func() { _ = c.Close(); wg.Wait() })
	return r
}

func (r *recorder) arrivals() []arrival {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// ping sends a datagram carrying seq from c to dst and waits up to wait for
// the echo of that seq, skipping late echoes of earlier ones. It returns the
// round-trip time (to the kernel's arrival time of the echo), or false if
// no echo came.
func ping(t *testing.T, c *net.UDPConn, dst netip.AddrPort, seq uint32, wait time.Duration) (time.Duration, bool) {
	t.Helper()
	var out [64]byte
	binary.BigEndian.PutUint32(out[:], seq)
	start := time.Now()
	_, err := c.WriteToUDPAddrPort(out[:], dst)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(start.Add(wait)))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var in [128]byte
	rd := newArrivalReader(c)
	for {
		n, _, at, err := rd.read(in[:])
		if err != nil {
			var ne net.Error
			require.True(t, errors.As(err, &ne) && ne.Timeout(), "reading the echo: %v", err)
			return 0, false
		}
		if n >= 4 && binary.BigEndian.Uint32(in[:]) == seq {
			return at.Sub(start), true
		}
	}
}

// median of ds, which it sorts.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// paced sends count datagrams of size bytes from c to dst at rate bits/s,
// each starting with its sequence number, keeping to an absolute schedule
// so that late wake-ups are made up with short bursts.
func paced(t *testing.T, c *net.UDPConn, dst netip.AddrPort, size int, rate uint64, dur time.Duration) int {
	t.Helper()
	buf := make([]byte, size)
	gap := serialisation(size, rate)
	start := time.Now()
	n := 0
	for ; time.Duration(n)*gap < dur; n++ {
		if d := time.Until(start.Add(time.Duration(n) * gap)); d > 0 {
			time.Sleep(d)
		}
		binary.BigEndian.PutUint32(buf, uint32(n))
		_, err := c.WriteToUDPAddrPort(buf, dst)
		require.NoError(t, err)
	}
	return n
}
