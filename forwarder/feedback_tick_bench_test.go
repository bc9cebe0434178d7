package forwarder

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// BenchmarkFeedbackTick: the control goroutine's feedback tick (every
// FeedbackEvery, 50 ms) over 500 one-to-one audio calls, 1,000 senders
// with an uplink estimate, so that each is sent a REMB every fifth tick
// (rembEvery, 250 ms): 200 REMBs per tick, on a real loopback socket to a
// sink that drains them. One op is one tick; cpu-ns/op is the benchmark
// thread's CPU (the sends' loopback delivery included).
//
//	taskset -c 1 go test -run '^$' -bench FeedbackTick -count 8 ./forwarder/
func BenchmarkFeedbackTick(b *testing.B) {
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	_ = sink.SetReadBuffer(8 << 20)
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
		}
	}()
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	f := &Forwarder{cfg: Default(), conns: []*net.UDPConn{out}}
	c := newTickControl(f, sink.LocalAddr().(*net.UDPAddr).AddrPort())
	now := time.Now()
	b.ReportAllocs()
	cpu := startThreadCPU(b)
	for i := 0; i < b.N; i++ {
		now = now.Add(50 * time.Millisecond)
		c.feedbackTick(now)
	}
	cpu.report(b)
}

// newTickControl is a control goroutine's state with 500 one-to-one calls
// whose members send audio (an estimate, an SSRC, a cache) to sink.
func newTickControl(f *Forwarder, sink netip.AddrPort) *control {
	c := &control{f: f, calls: map[protocol.ID]*call{}}
	var w cacheWriter
	for i := 0; i < 500; i++ {
		cl := &call{id: protocol.NewID(), class: protocol.ClassOneToOne, members: map[protocol.ID]*session{}}
		for j := 0; j < 2; j++ {
			id := protocol.NewID()
			m := new(mediaInfo)
			m.note(uint32(2*i + j + 1))
			m.rtpSeen.Store(true)
			m.up.bps.Store(64_000)
			m.cacheFor.Store(&w)
			cl.members[id] = &session{call: cl, participant: id, addr: sink, media: m}
		}
		c.calls[cl.id] = cl
	}
	c.feedbackTick(time.Now()) // makes the caches
	return c
}
