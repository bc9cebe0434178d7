package forwarder

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

// The queue-drops load signal counts the datagrams the kernel dropped from
// this forwarder's own sockets, read with SO_RXQ_OVFL (internal/mmsg), and
// nothing else on the host. Every test here runs over real loopback
// sockets; a receive buffer set to 1 byte is raised by the kernel to its
// minimum (2304 bytes on Linux 6: two or three small datagrams).

// floodDatagram is what the floods send: not media, so a forwarder that
// reads one drops it as not_media.
var floodDatagram = bytes.Repeat([]byte{0xff}, 100)

// tinySocket is a loopback socket with the smallest receive buffer.
func tinySocket(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := listenUDP("udp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetReadBuffer(1))
	return c
}

// flooder sends bounded floods from its own loopback socket.
type flooder struct {
	t *testing.T
	c *net.UDPConn
}

func newFlooder(t *testing.T) *flooder {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &flooder{t: t, c: c}
}

func (f *flooder) send(b []byte, to netip.AddrPort, n int) {
	f.t.Helper()
	for range n {
		_, err := f.c.WriteToUDPAddrPort(b, to)
		require.NoError(f.t, err)
	}
}

func addrOf(c *net.UDPConn) netip.AddrPort {
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// hostRcvbufErrors is the network namespace's count of UDP datagrams
// dropped for a full receive buffer (RcvbufErrors of /proc/net/snmp): what
// the queue-drops signal used to read.
func hostRcvbufErrors(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/snmp")
	require.NoError(t, err)
	var header []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = f
			continue
		}
		for i, name := range header {
			if name == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				require.NoError(t, err)
				return v
			}
		}
	}
	t.Fatalf("no Udp RcvbufErrors in /proc/net/snmp:\n%s", b)
	return 0
}

// floodAndCount floods c's socket with n datagrams nobody reads, reads what
// fit, then sends a probe (which carries the count: it is queued after the
// drops) and reads up to it. It returns the flood's datagrams read and the
// drops reported.
func floodAndCount(t *testing.T, pc packetConn, to netip.AddrPort, f *flooder, n int) (read int, dropped uint64) {
	t.Helper()
	f.send(floodDatagram, to, n)
	read, err := pc.ReadBatch() // all that fits in the buffer: a few
	require.NoError(t, err)
	require.Less(t, read, readBatch, "the tiny buffer took more than one batch")
	dropped = pc.Dropped()
	f.send(probeDatagram, to, 1)
	for seen := false; !seen; {
		k, err := pc.ReadBatch()
		require.NoError(t, err)
		for i := range k {
			if bytes.Equal(pc.Buf(i), probeDatagram) {
				seen = true
			} else {
				read++
			}
		}
		dropped += pc.Dropped()
	}
	return read, dropped
}

var probeDatagram = []byte("probe")

// A socket learns its own drops exactly: after a flood into a full buffer
// that nobody reads, the datagrams read and the drops reported add up to
// the datagrams sent, flood after flood. Reading a datagram that carries
// the count allocates nothing.
func TestSocketCountsItsOwnDrops(t *testing.T) {
	c := tinySocket(t)
	pc, err := newPacketConn(c)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute))) // a safety net, never a wait
	f := newFlooder(t)
	to := addrOf(c)

	const n = 300
	for flood := range 3 {
		read, dropped := floodAndCount(t, pc, to, f, n)
		require.Positive(t, dropped, "flood %d", flood)
		require.Equal(t, uint64(n), uint64(read)+dropped, "flood %d: read %d, dropped %d of %d sent", flood, read, dropped, n)
		require.Zero(t, pc.Dropped(), "Dropped reports each drop once")
	}

	// Every datagram now carries the socket's count: the read that parses
	// it allocates nothing (internal/mmsg's TestDropCountWithoutAllocation
	// checks the count is there).
	var dropped uint64
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := f.c.WriteToUDPAddrPort(probeDatagram, to); err != nil {
			panic(err)
		}
		if k, err := pc.ReadBatch(); err != nil || k != 1 {
			panic(fmt.Sprintf("read %d, %v", k, err))
		}
		dropped += pc.Dropped()
	})
	require.Zero(t, allocs)
	require.Zero(t, dropped, "no drops while reading one by one")
}

// dropTestRelay is a running forwarder whose only load signal that can
// move is queue drops, at its most sensitive: one dropped datagram a second
// is full load. It samples every 10 ms and never steps down during a test.
func dropTestRelay(t *testing.T) *testRelay {
	return startRelay(t, func(c *Config) {
		c.Readers = 1
		c.LoadEvery = 10 * time.Millisecond
		c.Load.CPUCores = 1e6
		c.Load.QueueDropsFull = 1
		c.Load.HoldDown = time.Hour
	})
}

// waitSamples waits until the forwarder has taken k more load samples than
// it had when called.
func waitSamples(t *testing.T, f *Forwarder, k uint64) {
	t.Helper()
	until := f.thr.samples.Load() + k
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := f.thr.samples.Load(); n < until {
			return fmt.Errorf("%d load samples, want %d", n, until)
		}
		return nil
	})
}

// A host's UDP drops do not throttle a forwarder (issue 15): another
// socket on the same host, in this very process, overflows by the
// thousand, the namespace's RcvbufErrors rise, and the idle forwarder,
// whose drops signal would reach 1.0 with a single drop a second, stays at
// level none.
func TestOtherSocketsDropsDoNotThrottle(t *testing.T) {
	r := dropTestRelay(t)
	waitSamples(t, r.f, 1) // the first sample is the base of the rates
	other := tinySocket(t)
	f := newFlooder(t)
	before := hostRcvbufErrors(t)
	sample0 := r.f.loadSample(loadT0)

	const n = 2000
	f.send(floodDatagram, addrOf(other), n)
	// The kernel counts a drop when it happens; the flood is over.
	grown := hostRcvbufErrors(t) - before
	require.GreaterOrEqual(t, grown, uint64(n/2), "the flood must overflow the other socket")

	waitSamples(t, r.f, 3) // samples whose window holds the flood
	st := r.f.Stats()
	require.Equal(t, ThrottleNone, st.ThrottleLevel, "load %+v", st.Load)
	require.Zero(t, st.Load.QueueDrops)
	require.Zero(t, st.Drops[DropReceiveBuffer])
	require.Equal(t, [5]uint64{}, st.LevelChanges)

	// The same through the sampler on a fake clock: one second that saw
	// the flood gives a drops signal of 0.
	th := newThrottle(r.f.cfg.Load)
	th.update(sample0)
	lvl, sig, _ := th.update(r.f.loadSample(loadT0.Add(time.Second)))
	require.Zero(t, sig.QueueDrops)
	require.Equal(t, ThrottleNone, lvl)
	t.Logf("host RcvbufErrors +%d during the flood; forwarder level %s, queue drops signal %v", grown, st.ThrottleLevel, st.Load.QueueDrops)
}

// Drops of the forwarder's own socket are counted (drops_total{reason=
// "receive_buffer"}) and drive the level: with the media socket's buffer
// shrunk, bounded floods outrun the reader.
func TestOwnSocketDropsThrottle(t *testing.T) {
	r := dropTestRelay(t)
	require.NoError(t, r.f.conns[0].SetReadBuffer(1))
	f := newFlooder(t)
	floods := 0
	testenv.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		st := r.f.Stats()
		if st.Drops[DropReceiveBuffer] > 0 && st.ThrottleLevel == ThrottleSecondParty {
			return nil
		}
		f.send(floodDatagram, r.f.Addr(), 200)
		floods++
		return fmt.Errorf("after %d floods of 200: %d receive-buffer drops, level %s, load %+v",
			floods, st.Drops[DropReceiveBuffer], st.ThrottleLevel, st.Load)
	})
	st := r.f.Stats()
	require.Positive(t, st.Drops[DropNotMedia], "the reader read part of the floods")
	require.LessOrEqual(t, st.Drops[DropReceiveBuffer]+st.Drops[DropNotMedia], uint64(200*floods))
	t.Logf("%d floods of 200: %d dropped by the kernel, %d read", floods, st.Drops[DropReceiveBuffer], st.Drops[DropNotMedia])
}
