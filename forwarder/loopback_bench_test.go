package forwarder

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// The loopback benchmarks push one sender's packets through a relay that
// fans each one out to 4 receivers, all over real UDP sockets on 127.0.0.1.
// BenchmarkLoopbackForwarder runs our forwarder; BenchmarkLoopbackReflector
// runs a bare batched reflector (same batch I/O, no parsing, no lookup, no
// sessions) as the ceiling to compare against. Quote them from one run:
//
//	go test -run '^$' -bench Loopback -benchmem ./forwarder/

const fanout = 4

// sinks are receivers counting what reaches them.
type sinks struct {
	conns []*net.UDPConn
	got   atomic.Uint64
	wg    sync.WaitGroup
}

func newSinks(b *testing.B, n int) *sinks {
	s := &sinks{}
	for i := 0; i < n; i++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(b, err)
		_ = c.SetReadBuffer(8 << 20)
		s.conns = append(s.conns, c)
	}
	return s
}

func (s *sinks) start(b *testing.B) {
	for _, c := range s.conns {
		pc, err := newPacketConn(c)
		require.NoError(b, err)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				n, err := pc.ReadBatch()
				if err != nil {
					return
				}
				s.got.Add(uint64(n))
			}
		}()
	}
}

func (s *sinks) stop() {
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.wg.Wait()
}

func (s *sinks) addr(i int) netip.AddrPort { return s.conns[i].LocalAddr().(*net.UDPAddr).AddrPort() }

// blast sends b.N copies of pkt to dst in write batches, paced so the
// receivers are not simply overrun, and waits (bounded) for them to drain.
func blast(b *testing.B, from *net.UDPConn, dst netip.AddrPort, pkt []byte, s *sinks) {
	pc, err := newPacketConn(from)
	require.NoError(b, err)
	sa := encodeSockaddr(dst, false)
	want := uint64(b.N) * fanout
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		for i := 0; i < 32 && sent < b.N; i++ {
			pc.Queue(pkt, &sa)
			sent++
		}
		pc.Flush()
		// Keep at most a few batches in flight: we measure throughput,
		// not how fast a socket buffer overflows.
		for deadline := time.Now().Add(time.Second); uint64(sent)*fanout > s.got.Load()+2048*fanout && time.Now().Before(deadline); {
			time.Sleep(20 * time.Microsecond)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); s.got.Load() < want && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	got := s.got.Load()
	b.ReportMetric(float64(b.N)/el.Seconds(), "in-packets/s")
	b.ReportMetric(float64(got)/el.Seconds(), "out-packets/s")
	b.ReportMetric(100*(1-float64(got)/float64(want)), "loss-%")
}

func BenchmarkLoopbackForwarder(b *testing.B) {
	r := startRelayB(b)
	s := newSinks(b, fanout)
	call := protocol.NewID()
	// Join the sinks and the sender through the real join protocol.
	for i := 0; i < fanout; i++ {
		joinFrom(b, r, s.conns[i], call)
	}
	sender, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(b, err)
	defer sender.Close()
	joinFrom(b, r, sender, call)
	s.start(b)
	defer s.stop()
	b.ReportAllocs()
	blast(b, sender, r.f.Addr(), audioPacket, s)
	st := r.f.Stats()
	b.ReportMetric(float64(st.TotalDrops()), "relay-drops")
}

func BenchmarkLoopbackReflector(b *testing.B) {
	s := newSinks(b, fanout)
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(b, err)
	_ = rc.SetReadBuffer(4 << 20)
	pc, err := newPacketConn(rc)
	require.NoError(b, err)
	var dests [fanout]sockaddr
	for i := range dests {
		dests[i] = encodeSockaddr(s.addr(i), false)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the reflector: read a batch, send each datagram to all sinks
		defer wg.Done()
		for {
			n, err := pc.ReadBatch()
			if err != nil {
				return
			}
			for i := 0; i < n; i++ {
				for j := range dests {
					if !pc.Queue(pc.Buf(i), &dests[j]) {
						pc.Flush()
						pc.Queue(pc.Buf(i), &dests[j])
					}
				}
			}
			pc.Flush()
		}
	}()
	sender, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(b, err)
	defer sender.Close()
	s.start(b)
	defer s.stop()
	b.ReportAllocs()
	blast(b, sender, rc.LocalAddr().(*net.UDPAddr).AddrPort(), audioPacket, s)
	_ = rc.Close()
	wg.Wait()
}
