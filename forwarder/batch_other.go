//go:build !linux

package forwarder

import (
	"net"
	"net/netip"
)

// singleConn is the portable fallback: one datagram per system call. It is
// correct everywhere and fast nowhere; production forwarders run on Linux.
type singleConn struct {
	conn   *net.UDPConn
	buf    [bufSize]byte
	n      int
	src    netip.AddrPort
	bufs   [writeBatch][]byte
	dsts   [writeBatch]netip.AddrPort
	queued int
}

func newPacketConn(c *net.UDPConn) (packetConn, error) { return &singleConn{conn: c}, nil }

func (s *singleConn) ReadBatch() (int, error) {
	n, src, err := s.conn.ReadFromUDPAddrPort(s.buf[:])
	if err != nil {
		return 0, err
	}
	s.n, s.src = n, netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	return 1, nil
}

func (s *singleConn) Buf(int) []byte         { return s.buf[:s.n] }
func (s *singleConn) Src(int) netip.AddrPort { return s.src }
func (s *singleConn) Truncated(int) bool     { return s.n > maxDatagram }
func (s *singleConn) Close() error           { return s.conn.Close() }

// Dropped: only Linux tells a socket its receive-queue drops (SO_RXQ_OVFL);
// elsewhere they are not counted and the queue-drops signal stays 0.
func (s *singleConn) Dropped() uint64 { return 0 }

func (s *singleConn) Queue(b []byte, dst *sockaddr) bool {
	if s.queued == writeBatch {
		return false
	}
	s.bufs[s.queued], s.dsts[s.queued] = b, dst.ap
	s.queued++
	return true
}

func (s *singleConn) Flush() (sent, failed int) {
	for i := 0; i < s.queued; i++ {
		if _, err := s.conn.WriteToUDPAddrPort(s.bufs[i], s.dsts[i]); err != nil {
			failed++
		} else {
			sent++
		}
		s.bufs[i] = nil
	}
	s.queued = 0
	return sent, failed
}
