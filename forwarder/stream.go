package forwarder

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// TCP and TLS legs (protocol/README.md section 9). A device that cannot
// use UDP reaches the forwarder over TCP or TLS (443) and speaks the same
// protocol, each datagram one RFC 4571 frame. Inside the forwarder such a
// leg is a member like any other:
//
//   - Each connection gets a stream address, a unique address in 0.0.0.0/8
//     (never the source of a UDP datagram), and its frames enter the same
//     per-packet path as datagrams, with that address as their source: the
//     routes, sessions, cookies and store records key it as they key a UDP
//     address, so the UDP hot path is untouched but for one nil check per
//     destination (dest.leg).
//   - Frames are handed to one of a few stream workers (a connection always
//     to the same one), each a reader whose "socket" is that hand-off; its
//     sends to UDP members go out of the forwarder's UDP socket.
//   - What is sent to a stream member is queued on its leg (stream_leg.go):
//     bounded, never blocking a reader, oldest video dropped first, then
//     oldest audio, counted; one writer goroutine per leg drains it.

// StreamConfig configures the TCP and TLS listeners. Both listen addresses
// empty: no stream legs.
type StreamConfig struct {
	// TCPListen and TLSListen are ip:port to accept on ("" : off).
	TCPListen, TLSListen string
	// TLS is the listener's certificate (required with TLSListen).
	TLS *tls.Config
	// PerIP bounds the connections (open or handshaking) from one address;
	// MaxConns all of them.
	PerIP, MaxConns int
	// HandshakeTimeout bounds the TLS handshake and the first complete
	// frame; JoinTimeout the time to a joined session; a connection with
	// no complete frame for the forwarder's IdleTimeout is closed too.
	HandshakeTimeout, JoinTimeout time.Duration
	// WriteTimeout closes a connection that accepts nothing for this long
	// (a member that never reads).
	WriteTimeout time.Duration
	// QueueBytes bounds each leg's send queue.
	QueueBytes int
	// Announce tells the other forwarders the listeners in the heartbeat
	// (protocol/README.md 7.2, flag S), so a member on TCP or TLS is moved
	// over its own transport. Off while a cluster still has forwarders
	// that predate it: they reject such heartbeats.
	Announce bool
	// Advertise overrides what is announced for a listener, by
	// [transport-1][family] as protocol.StreamListeners: the address
	// devices reach behind a load balancer or NAT (--tcp-advertise,
	// --tls-advertise and their 6 variants). Zero: derived from the bound
	// address (streamListeners).
	Advertise protocol.StreamListeners
}

// DefaultStream: off, with production limits.
func DefaultStream() StreamConfig {
	return StreamConfig{PerIP: 16, MaxConns: 10000, HandshakeTimeout: 5 * time.Second, JoinTimeout: 10 * time.Second,
		WriteTimeout: 5 * time.Second, QueueBytes: 128 << 10, Announce: true}
}

func (c *StreamConfig) enabled() bool { return c.TCPListen != "" || c.TLSListen != "" }

func (c *StreamConfig) validate() error {
	if !c.enabled() {
		return errors.Join(c.checkAdvertise()...)
	}
	var errs []error
	for _, a := range []string{c.TCPListen, c.TLSListen} {
		if _, err := netip.ParseAddrPort(a); a != "" && err != nil {
			errs = append(errs, fmt.Errorf("forwarder: stream listen address %q: want ip:port, e.g. 0.0.0.0:443", a))
		}
	}
	if c.TLSListen != "" && (c.TLS == nil || len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil) {
		errs = append(errs, errors.New("forwarder: TLS listener without a certificate (--tls-cert, --tls-key)"))
	}
	if c.PerIP < 1 || c.MaxConns < c.PerIP {
		errs = append(errs, fmt.Errorf("forwarder: stream connections %d per address, %d in all: want 1 <= per address <= all", c.PerIP, c.MaxConns))
	}
	if c.HandshakeTimeout <= 0 || c.JoinTimeout <= 0 || c.WriteTimeout <= 0 {
		errs = append(errs, errors.New("forwarder: stream handshake, join and write timeouts must be positive"))
	}
	errs = append(errs, c.checkAdvertise()...)
	if c.QueueBytes < 4*(protocol.MaxFrame+protocol.FrameHeaderLen) {
		errs = append(errs, fmt.Errorf("forwarder: stream queue of %d bytes, want at least %d", c.QueueBytes, 4*(protocol.MaxFrame+2)))
	}
	return errors.Join(errs...)
}

// checkAdvertise: an advertised address needs its listener and belongs
// to its family slot.
func (c *StreamConfig) checkAdvertise() []error {
	var errs []error
	for t, listen := range []string{c.TCPListen, c.TLSListen} {
		for fam, a := range c.Advertise[t] {
			if !a.IsValid() {
				continue
			}
			what := fmt.Sprintf("forwarder: %s advertise address %s", protocol.Transport(t+1), a)
			switch {
			case listen == "":
				errs = append(errs, fmt.Errorf("%s: no such listener", what))
			case a.Addr().IsUnspecified() || a.Port() == 0:
				errs = append(errs, fmt.Errorf("%s: want the address and port devices reach", what))
			case familySlot(a.Addr()) != fam || a.Addr().Is4In6():
				errs = append(errs, fmt.Errorf("%s: wrong family for this setting", what))
			}
		}
	}
	return errs
}

// StreamStats counts stream legs (metrics: callrelay_forwarder_stream_*).
type StreamStats struct {
	Accepted   [2]uint64 // connections accepted, by transport (StreamTCP, StreamTLS)
	Open       int       // connections open now
	Refused    uint64    // over PerIP or MaxConns: closed at once
	Closed     [numStreamCloses]uint64
	QueueDrops [2]uint64 // packets dropped from send queues: audio, video
	SkippedRtx uint64    // retransmissions not sent to stream legs (they lose nothing)
	FramesIn   uint64
	FramesOut  uint64
	BytesOut   uint64
	// MigrateTo sent to members on a connection naming the target's
	// listener of their transport (by transport), or its UDP address, the
	// target having no such listener (stream_migrate.go).
	MigrateTo          [2]uint64
	MigrateUDPFallback uint64
}

// Stream transports.
const (
	StreamTCP = iota
	StreamTLS
)

// Why a stream connection was closed.
const (
	closeEOF          = iota // the device closed it
	closeHandshake           // TLS handshake failed or timed out
	closeFraming             // a zero or oversized length prefix
	closeSlow                // no complete frame in time (slowloris), or no join in time
	closeWriteStalled        // the device read nothing for WriteTimeout
	closeError               // another read or write error
	closeShutdown            // the forwarder stopped
	numStreamCloses
)

var streamCloseNames = [numStreamCloses]string{"eof", "handshake", "framing", "slow", "write_stalled", "error", "shutdown"}

type streamCounters struct {
	accepted                 [2]atomic.Uint64
	open                     atomic.Int64
	refused                  atomic.Uint64
	closed                   [numStreamCloses]atomic.Uint64
	queueDrops               [2]atomic.Uint64
	skippedRtx               atomic.Uint64
	framesIn, framesOut, out atomic.Uint64
	migrateTo                [2]atomic.Uint64
	migrateUDP               atomic.Uint64
}

func (c *streamCounters) stats() StreamStats {
	s := StreamStats{Open: int(c.open.Load()), Refused: c.refused.Load(), SkippedRtx: c.skippedRtx.Load(),
		FramesIn: c.framesIn.Load(), FramesOut: c.framesOut.Load(), BytesOut: c.out.Load(), MigrateUDPFallback: c.migrateUDP.Load()}
	for i := range s.Accepted {
		s.Accepted[i], s.QueueDrops[i] = c.accepted[i].Load(), c.queueDrops[i].Load()
		s.MigrateTo[i] = c.migrateTo[i].Load()
	}
	for i := range s.Closed {
		s.Closed[i] = c.closed[i].Load()
	}
	return s
}

// streamServer owns the listeners, the connections and the workers.
type streamServer struct {
	f       *Forwarder
	cfg     StreamConfig
	lns     [2]net.Listener // by transport; nil: off
	workers []*streamWorker
	rdrs    []*reader
	c       streamCounters

	mu     sync.Mutex
	perIP  map[netip.Addr]int
	conns  map[*streamConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// newStreamServer binds the listeners (so their addresses are known before
// Run) and makes the workers.
func (f *Forwarder) newStreamServer() (*streamServer, error) {
	cfg := f.cfg.Stream
	s := &streamServer{f: f, cfg: cfg, perIP: make(map[netip.Addr]int), conns: make(map[*streamConn]struct{})}
	for i, a := range []string{cfg.TCPListen, cfg.TLSListen} {
		if a == "" {
			continue
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("forwarder: listen on tcp %s: %w", a, err)
		}
		s.lns[i] = ln
	}
	// One worker per reader, as long as their trunk streams fit below the
	// control goroutine's (255).
	workers := min(len(f.rdrs), controlTrunkStream-len(f.rdrs))
	if workers < 1 {
		s.closeListeners()
		return nil, fmt.Errorf("forwarder: %d readers leave no trunk stream for TCP and TLS workers: use at most %d", len(f.rdrs), controlTrunkStream-1)
	}
	for i := range workers {
		w, r, err := f.newStreamWorker(i, &s.c)
		if err != nil {
			s.closeListeners()
			return nil, err
		}
		s.workers, s.rdrs = append(s.workers, w), append(s.rdrs, r)
	}
	return s, nil
}

func (s *streamServer) closeListeners() {
	for _, ln := range s.lns {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// addr is where transport t listens (zero: off).
func (s *streamServer) addr(t int) netip.AddrPort {
	if s == nil || s.lns[t] == nil {
		return netip.AddrPort{}
	}
	a := s.lns[t].Addr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// run accepts until ctx is done, then closes every connection and waits
// for their goroutines and the workers.
func (s *streamServer) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range s.rdrs {
		wg.Add(1)
		go func() { defer wg.Done(); r.run() }()
	}
	for t, ln := range s.lns {
		if ln != nil {
			s.f.log.Info("stream listener serving", zap.String("transport", [2]string{"tcp", "tls"}[t]), zap.Stringer("addr", s.addr(t)))
			wg.Add(1)
			go func() { defer wg.Done(); s.accept(ln, t) }()
		}
	}
	<-ctx.Done()
	s.closeListeners()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.close(closeShutdown)
	}
	s.mu.Unlock()
	s.wg.Wait()
	for _, w := range s.workers {
		close(w.quit)
	}
	wg.Wait()
}

func (s *streamServer) accept(ln net.Listener, transport int) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: do not spin
			continue
		}
		s.c.accepted[transport].Add(1)
		c := s.admit(nc, transport)
		if c == nil {
			s.c.refused.Add(1)
			_ = nc.Close()
			continue
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); c.serve() }()
	}
}

// admit registers a connection within the per-address and total bounds.
func (s *streamServer) admit(nc net.Conn, transport int) *streamConn {
	remote := nc.RemoteAddr().(*net.TCPAddr).AddrPort()
	ip := remote.Addr().Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.perIP[ip] >= s.cfg.PerIP || len(s.conns) >= s.cfg.MaxConns {
		return nil
	}
	s.perIP[ip]++
	c := newStreamConn(s, nc, transport, ip)
	s.conns[c] = struct{}{}
	s.c.open.Add(1)
	return c
}

func (s *streamServer) release(c *streamConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if s.perIP[c.ip]--; s.perIP[c.ip] <= 0 {
		delete(s.perIP, c.ip)
	}
	s.c.open.Add(-1)
}

// Stream addresses: 0.0.0.0/8 is "this network", never the source of a
// datagram the kernel delivers, so no UDP peer can collide with a stream
// leg. 24 bits of address and 16 of port, unique in the process (several
// forwarders share it in tests).
var streamAddrNext atomic.Uint64

func nextStreamAddr() netip.AddrPort {
	// The address varies first: the join limiter keys strangers by
	// address, and each connection should have a bucket of its own.
	for {
		n := streamAddrNext.Add(1)
		a, port := uint32(n)&0xffffff, uint16(n>>24)+1
		if a != 0 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte{0, byte(a >> 16), byte(a >> 8), byte(a)}), port)
		}
	}
}

// isStreamAddr reports whether ap names a stream leg.
func isStreamAddr(ap netip.AddrPort) bool {
	a := ap.Addr()
	return a.Is4() && a.As4()[0] == 0
}

// The legs by stream address, for the control path (routes, replies).
var streamLegs = struct {
	sync.Mutex
	m map[netip.AddrPort]*streamLeg
}{m: make(map[netip.AddrPort]*streamLeg)}

func registerLeg(l *streamLeg) {
	streamLegs.Lock()
	streamLegs.m[l.addr] = l
	streamLegs.Unlock()
}

func unregisterLeg(l *streamLeg) {
	streamLegs.Lock()
	if streamLegs.m[l.addr] == l {
		delete(streamLegs.m, l.addr)
	}
	streamLegs.Unlock()
}

// streamLegAt is the stream leg at ap, nil for a UDP address or a closed leg.
func streamLegAt(ap netip.AddrPort) *streamLeg {
	if !isStreamAddr(ap) {
		return nil
	}
	streamLegs.Lock()
	defer streamLegs.Unlock()
	return streamLegs.m[ap]
}

// StreamAddrs are the TCP and TLS listeners' addresses (zero when off).
func (f *Forwarder) StreamAddrs() (tcp, tls netip.AddrPort) {
	return f.stream.addr(StreamTCP), f.stream.addr(StreamTLS)
}

var (
	mStreamAccepted = prometheus.NewDesc("callrelay_forwarder_stream_connections_total",
		"TCP and TLS connections accepted, by transport.", []string{"transport"}, nil)
	mStreamOpen    = prometheus.NewDesc("callrelay_forwarder_stream_connections", "TCP and TLS connections open.", nil, nil)
	mStreamRefused = prometheus.NewDesc("callrelay_forwarder_stream_refused_total",
		"TCP and TLS connections closed at once: over the per-address or total bound.", nil, nil)
	mStreamClosed = prometheus.NewDesc("callrelay_forwarder_stream_closed_total",
		"TCP and TLS connections closed, by reason (handshake: TLS failed or timed out; framing: zero or oversized length; slow: no complete frame or no join in time; write_stalled: the device read nothing).", []string{"reason"}, nil)
	mStreamQueueDrops = prometheus.NewDesc("callrelay_forwarder_stream_queue_drops_total",
		"Packets dropped from stream legs' send queues (backed up), by kind.", []string{"kind"}, nil)
	mStreamRtx = prometheus.NewDesc("callrelay_forwarder_stream_retransmissions_skipped_total",
		"Retransmissions not sent to stream legs, which lose nothing.", nil, nil)
	mStreamFrames = prometheus.NewDesc("callrelay_forwarder_stream_frames_total",
		"Frames on stream legs by direction.", []string{"direction"}, nil)
)

func describeStream(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mStreamAccepted, mStreamOpen, mStreamRefused, mStreamClosed, mStreamQueueDrops, mStreamRtx, mStreamFrames, mStreamMigrate} {
		ch <- d
	}
}

func collectStream(ch chan<- prometheus.Metric, s StreamStats) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(mStreamAccepted, s.Accepted[StreamTCP], "tcp")
	counter(mStreamAccepted, s.Accepted[StreamTLS], "tls")
	ch <- prometheus.MustNewConstMetric(mStreamOpen, prometheus.GaugeValue, float64(s.Open))
	counter(mStreamRefused, s.Refused)
	for i, n := range s.Closed {
		counter(mStreamClosed, n, streamCloseNames[i])
	}
	counter(mStreamQueueDrops, s.QueueDrops[0], "audio")
	counter(mStreamQueueDrops, s.QueueDrops[1], "video")
	counter(mStreamRtx, s.SkippedRtx)
	counter(mStreamFrames, s.FramesIn, "in")
	counter(mStreamFrames, s.FramesOut, "out")
	collectStreamMigrate(ch, s)
}
