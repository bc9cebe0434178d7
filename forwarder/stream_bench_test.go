package forwarder

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// The TCP path beside the UDP path:
//
//	go test -run '^$' -bench 'HotPath$|HotPathToStream|LoopbackForwarder|LoopbackStream' -benchmem ./forwarder/
//
// BenchmarkHotPathToStream is BenchmarkHotPath with the 4 receivers on
// stream legs (each packet copied into 4 send queues, which are drained
// as a writer would, without the socket); BenchmarkLoopbackStreamSender is
// BenchmarkLoopbackForwarder with the sender on TCP: frames read from a
// real loopback TCP connection, handed to a stream worker, fanned out by
// UDP. Both report cpu-ns/packet, the process's CPU time per packet.

// streamFixture is hotPathFixture with every member on a stream leg.
func streamFixture(t testing.TB) (*reader, *routes, netip.AddrPort, []*streamLeg) {
	r, _, _, _ := hotPathFixture(t)
	srv := &streamServer{cfg: DefaultStream()}
	srv.cfg.QueueBytes = 1 << 20
	cl := &call{id: protocol.NewID(), members: map[protocol.ID]*session{}}
	var first netip.AddrPort
	var legs []*streamLeg
	for i := range 5 {
		c := &streamConn{s: srv, addr: nextStreamAddr()}
		l := newStreamLeg(srv, c)
		registerLeg(l)
		t.Cleanup(func() { unregisterLeg(l) })
		if i == 0 {
			first = c.addr
		} else {
			legs = append(legs, l)
		}
		id := protocol.NewID()
		cl.members[id] = &session{call: cl, participant: id, addr: c.addr, media: new(mediaInfo)}
	}
	rt := buildRoutes(map[protocol.ID]*call{cl.id: cl}, false)
	require.Len(t, rt.bySrc[first].dests, 4)
	for _, d := range rt.bySrc[first].dests {
		require.NotNil(t, d.leg)
	}
	return r, rt, first, legs
}

func TestHotPathToStreamAllocatesNothing(t *testing.T) {
	r, rt, src, legs := streamFixture(t)
	buf := make([]byte, 0, legWriteBuf)
	frames := 0
	allocs := testing.AllocsPerRun(1000, func() {
		r.handle(rt, audioPacket, src, 0)
		r.flush()
		for _, l := range legs {
			out, _, _ := l.gather(buf[:0])
			for len(out) > 0 {
				p, n, err := protocol.NextFrame(out)
				if err != nil || !bytes.Equal(p, audioPacket) {
					t.Fatal("not the packet sent, framed") // byte-exact
				}
				out, frames = out[n:], frames+1
			}
		}
	})
	if streamRace {
		require.LessOrEqual(t, allocs, 8.0, "under -race the frame pool drops buffers at random, at most one a frame")
	} else {
		require.Zero(t, allocs)
	}
	require.Equal(t, 4*1001, frames)
}

func BenchmarkHotPathToStream(b *testing.B) {
	r, rt, src, legs := streamFixture(b)
	buf := make([]byte, 0, legWriteBuf)
	b.ReportAllocs()
	b.SetBytes(int64(len(audioPacket)))
	cpu := cpuNow()
	for i := 0; i < b.N; i++ {
		r.handle(rt, audioPacket, src, 0)
		if i%readBatch == readBatch-1 {
			r.flush()
			for _, l := range legs {
				l.gather(buf[:0])
			}
		}
	}
	r.flush()
	b.ReportMetric(float64(cpuNow()-cpu)/float64(b.N), "cpu-ns/packet")
}

// cpuNow is the process's CPU time (user and system), ns.
func cpuNow() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func BenchmarkLoopbackStreamSender(b *testing.B) {
	r := startStreamRelayB(b)
	s := newSinks(b, fanout)
	call := protocol.NewID()
	for i := 0; i < fanout; i++ {
		joinFrom(b, r, s.conns[i], call)
	}
	tcp, _ := r.f.StreamAddrs()
	c, err := net.Dial("tcp", tcp.String())
	require.NoError(b, err)
	defer c.Close()
	tok, err := protocol.SignToken(r.priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(),
		Class: protocol.ClassGroup, MaxSize: 16, Expiry: time.Now().Add(time.Hour)})
	require.NoError(b, err)
	joinStream(b, c, tok)
	s.start(b)
	defer s.stop()
	frame, err := protocol.AppendFrame(nil, audioPacket)
	require.NoError(b, err)
	batch := make([]byte, 0, 32*len(frame))
	for range 32 {
		batch = append(batch, frame...)
	}
	want := uint64(b.N) * fanout
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuNow()
	for sent := 0; sent < b.N; {
		k := min(32, b.N-sent)
		_, err := c.Write(batch[:k*len(frame)])
		require.NoError(b, err)
		sent += k
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
	b.ReportMetric(float64(cpuNow()-cpu)/float64(b.N), "cpu-ns/packet")
	b.ReportMetric(100*(1-float64(got)/float64(want)), "loss-%")
}

// startStreamRelayB is startRelayB with a TCP listener and police off (the
// benchmark's sender is faster than any device).
func startStreamRelayB(b *testing.B) *testRelay {
	return startRelayBWith(b, func(c *Config) {
		c.Stream.TCPListen = "127.0.0.1:0"
		c.Police.GroupBps, c.Police.AudioBps = 1<<40, 1<<40
	})
}

// joinStream joins over a TCP connection, cookie round included.
func joinStream(b *testing.B, c net.Conn, tok []byte) {
	fr := protocol.NewFrameReader(c)
	var cookie []byte
	for try := 0; try < 2; try++ {
		m, err := protocol.BuildJoinRequest(tok, protocol.JoinOptions{Cookie: cookie})
		require.NoError(b, err)
		f, _ := protocol.AppendFrame(nil, m.Raw)
		_, err = c.Write(f)
		require.NoError(b, err)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		p, err := fr.Next()
		require.NoError(b, err)
		_ = c.SetReadDeadline(time.Time{})
		resp, err := protocol.ParseJoinResponse(p, m.TransactionID, protocol.IntegrityKey(tok))
		require.NoError(b, err)
		if resp.OK {
			return
		}
		cookie = resp.Cookie
	}
	b.Fatal("join refused")
}

// startRelayBWith is startRelayB with the config modified.
func startRelayBWith(b *testing.B, mod func(*Config)) *testRelay {
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(b, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(b, err)
	cfg := Default()
	cfg.Listen, cfg.Verifier, cfg.Readers = "127.0.0.1:0", v, 1
	mod(&cfg)
	f, err := New(cfg)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return &testRelay{f: f, priv: priv}
}
