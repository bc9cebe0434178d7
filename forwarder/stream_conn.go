package forwarder

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// streamConn is one TCP or TLS connection: its reader goroutine (serve)
// splits frames and hands them to its worker; its leg (stream_leg.go)
// sends.
type streamConn struct {
	s         *streamServer
	nc        net.Conn
	transport int
	ip        netip.Addr
	addr      netip.AddrPort // its stream address
	leg       *streamLeg
	w         *streamWorker
	// free holds the connection's frame buffers not in a worker's hands:
	// a connection that sends faster than its worker takes waits for its
	// own buffers, and holds up no other.
	free      chan *streamFrame
	closeOnce sync.Once
	why       int
}

// streamFrame is one frame in flight from a connection to its worker.
type streamFrame struct {
	c   *streamConn
	n   int
	buf [protocol.MaxFrame]byte
}

// framesPerConn bounds the frames of one connection in its worker's hands.
const framesPerConn = 8

func newStreamConn(s *streamServer, nc net.Conn, transport int, ip netip.Addr) *streamConn {
	c := &streamConn{s: s, nc: nc, transport: transport, ip: ip, addr: nextStreamAddr(),
		free: make(chan *streamFrame, framesPerConn)}
	for range framesPerConn {
		c.free <- &streamFrame{c: c}
	}
	c.w = s.workers[int(c.addr.Port())%len(s.workers)]
	c.leg = newStreamLeg(s, c)
	return c
}

// close ends the connection once, counting why; the reader and the writer
// see their calls fail and return.
func (c *streamConn) close(why int) {
	c.closeOnce.Do(func() {
		c.why = why
		c.s.c.closed[why].Add(1)
		unregisterLeg(c.leg)
		c.leg.shut()
		_ = c.nc.Close()
	})
}

// serve runs the connection: the TLS handshake, then frames until the end.
func (c *streamConn) serve() {
	defer c.s.release(c)
	start := time.Now()
	cfg := &c.s.cfg
	if c.transport == StreamTLS {
		tc := tls.Server(c.nc, cfg.TLS)
		ctx, cancel := context.WithTimeout(context.Background(), cfg.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.close(closeHandshake)
			return
		}
		c.nc = tc
	}
	registerLeg(c.leg)
	c.s.wg.Add(1)
	go func() { defer c.s.wg.Done(); c.leg.write() }()
	c.close(c.read(start))
}

// read hands frames to the worker until an error, and says why it ended.
// Deadlines: the first frame within HandshakeTimeout of the accept, a
// joined session within JoinTimeout, then a complete frame at least every
// IdleTimeout. A frame trickled in byte by byte never resets them.
func (c *streamConn) read(start time.Time) int {
	cfg, idle := &c.s.cfg, c.s.f.cfg.IdleTimeout
	fr := protocol.NewFrameReader(c.nc)
	_ = c.nc.SetReadDeadline(start.Add(cfg.HandshakeTimeout))
	joined := false
	var deadlineAt time.Time
	for {
		p, err := fr.Next()
		if err != nil {
			return closeReason(err)
		}
		now := time.Now()
		if !joined && now.Sub(deadlineAt) >= time.Second/4 {
			joined = c.s.f.routes.Load().bySrc[c.addr] != nil
			if !joined && now.Sub(start) > cfg.JoinTimeout {
				return closeSlow
			}
		}
		if now.Sub(deadlineAt) >= time.Second/4 {
			// Not per frame: a deadline costs a timer update.
			d := now.Add(idle)
			if !joined {
				d = minTime(d, start.Add(cfg.JoinTimeout))
			}
			_ = c.nc.SetReadDeadline(d)
			deadlineAt = now
		}
		var f *streamFrame
		select {
		case f = <-c.free:
		case <-c.w.quit:
			return closeShutdown
		}
		f.n = copy(f.buf[:], p)
		select {
		case c.w.in <- f:
		case <-c.w.quit:
			return closeShutdown
		}
	}
}

func closeReason(err error) int {
	switch {
	case errors.Is(err, protocol.ErrFrameEmpty), errors.Is(err, protocol.ErrFrameTooLarge):
		return closeFraming
	case errors.Is(err, os.ErrDeadlineExceeded):
		return closeSlow
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return closeEOF
	case errors.Is(err, net.ErrClosed):
		return closeShutdown
	}
	return closeError
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
