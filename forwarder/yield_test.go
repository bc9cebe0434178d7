//go:build linux

package forwarder

import (
	"net"
	"net/netip"
	"runtime"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// yieldRig is a forwarder's control with a large routes table and one
// reader on a real UDP socket, in a process of one P: what `make capacity`
// runs (--readers 1 pinned to one core).
type yieldRig struct {
	f     *Forwarder
	c     *control
	r     *reader
	to    *net.UDPConn // sends to the reader's socket
	dst   netip.AddrPort
	got   atomic.Int64 // monotonic ns when the reader's last read returned
	reads atomic.Int64
	stop  atomic.Bool
	// during, when set, is a job's end flag: readDuring tells whether the
	// last read came before it.
	during     atomic.Pointer[atomic.Bool]
	readDuring atomic.Bool
}

func newYieldRig(tb testing.TB, coop bool, calls int) *yieldRig {
	return newYieldRigOn(tb, coop, calls, false)
}

// newYieldRigOn: the reader is a trunk reader when trunk is set.
func newYieldRigOn(tb testing.TB, coop bool, calls int, trunk bool) *yieldRig {
	f := &Forwarder{cfg: Default()}
	f.coop.on = coop
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(tb, err)
	pc, err := newPacketConn(sock)
	require.NoError(tb, err)
	r := &reader{f: f, pc: pc}
	cr := &r.coop
	if trunk {
		t := &trunkReader{f: f, in: pc}
		cr = &t.coop
		f.trunkRdrs = []*trunkReader{t}
	} else {
		f.rdrs = []*reader{r}
	}
	cr.sock = sock
	cr.try, _ = pc.(tryReader)
	old := &routes{bySrc: map[netip.AddrPort]*route{}, byCall: map[protocol.ID]*callRoute{}}
	for i := range calls {
		id := protocol.NewID()
		old.byCall[id] = &callRoute{}
		for j := range 2 {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), uint16(1000+j))
			old.bySrc[a] = &route{call: id}
		}
	}
	f.routes.Store(old)
	to, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(tb, err)
	y := &yieldRig{f: f, c: newControl(f), r: r, to: to, dst: sock.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		for !y.stop.Load() {
			n, err := cr.read(&f.coop, pc)
			if err != nil {
				return
			}
			if n > 0 {
				if d := y.during.Load(); d != nil {
					y.readDuring.Store(!d.Load())
				}
				y.got.Store(monoNS())
				y.reads.Add(int64(n))
			}
		}
	}()
	tb.Cleanup(func() { y.stop.Store(true); _ = sock.Close(); _ = to.Close() })
	return y
}

// job is one routes rebuild over the whole table (publish with a call
// changed), a control job of about a millisecond per few thousand calls.
func (y *yieldRig) job() {
	y.c.dirtyCalls[protocol.NewID()] = struct{}{}
	y.c.publish(time.Now())
	y.c.idle()
}

// wait sends one datagram to the reader, runs a control job, and returns
// how long after the send the reader had it.
func (y *yieldRig) wait(tb testing.TB) time.Duration {
	before := y.reads.Load()
	sent := monoNS()
	_, err := y.to.WriteToUDPAddrPort([]byte{0x80, 0, 0, 0}, y.dst)
	require.NoError(tb, err)
	y.job()
	deadline := time.Now().Add(5 * time.Second)
	for y.reads.Load() == before {
		require.True(tb, time.Now().Before(deadline), "the reader never read")
		runtime.Gosched()
	}
	return time.Duration(y.got.Load() - sent)
}

// BenchmarkReaderBehindControl: with one P, how long a datagram that
// arrives while the control goroutine rebuilds the routes of 4,000 calls
// waits for the reader (wait-µs, the median of the run's waits; p99-µs),
// with the control goroutine yielding to the readers (yield=on, yield.go)
// and without (yield=off, as before). Compare in one run:
//
//	taskset -c 1 go test -run '^$' -bench ReaderBehindControl -count 10 ./forwarder/ | tee /tmp/y.txt
//	benchstat -col /yield /tmp/y.txt
func BenchmarkReaderBehindControl(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "yield=off"
		if on {
			name = "yield=on"
		}
		b.Run(name, func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			y := newYieldRig(b, on, 4000)
			y.wait(b) // warm
			waits := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				waits = append(waits, y.wait(b))
			}
			b.StopTimer()
			sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
			b.ReportMetric(float64(waits[len(waits)/2].Microseconds()), "wait-µs")
			b.ReportMetric(float64(waits[len(waits)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// With one P, a datagram that arrives while control rebuilds a large
// routes table, at a media reader or a trunk reader, is read during the job (at its first yield), not after it:
// an order, not a timing, so that the test does not depend on the
// machine's load.
func TestReaderNotHeldBehindControl(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, c := range []struct{ on, trunk bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		on := c.on
		y := newYieldRigOn(t, on, 4000, c.trunk)
		y.wait(t)
		var jobDone atomic.Bool
		y.during.Store(&jobDone)
		before := y.reads.Load()
		_, err := y.to.WriteToUDPAddrPort([]byte{0x80, 0, 0, 0}, y.dst)
		require.NoError(t, err)
		y.job()
		jobDone.Store(true)
		deadline := time.Now().Add(5 * time.Second)
		for y.reads.Load() == before {
			require.True(t, time.Now().Before(deadline), "the reader never read")
			runtime.Gosched()
		}
		t.Logf("yield %v, trunk reader %v: read during the job: %v", on, c.trunk, y.readDuring.Load())
		if on {
			require.True(t, y.readDuring.Load(), "with one P and yielding, the reader (trunk %v) must read during a long control job", c.trunk)
		}
	}
}
