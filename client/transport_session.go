package client

import (
	"context"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// udpRetryAt: on a TCP or TLS Conn, when the Session tries UDP again.
func (s *Session) udpRetryAt(cur *Conn) (time.Time, bool) {
	if cur.Transport() == TransportUDP || s.att != nil || len(s.cfg.Streams) == 0 {
		return time.Time{}, false
	}
	return s.udpRetry, true
}

// backToUDP starts a UDP join of the current forwarder when one is due; it
// reports whether it did. The stream Conn carries the call until the UDP
// Conn is up (the forwarder moves the session to the UDP address on its
// join); then the swap closes it.
func (s *Session) backToUDP(cur *Conn, now time.Time) bool {
	at, ok := s.udpRetryAt(cur)
	if !ok || now.Before(at) {
		return false
	}
	fwd := cur.Forwarder()
	s.log.Debug("trying UDP again", zap.Stringer("forwarder", fwd), zap.Stringer("transport", cur.Transport()))
	cfg := s.cfg
	cfg.Streams, cfg.Forwarders = nil, []netip.AddrPort{fwd}
	cfg.JoinTimeout = min(cfg.JoinTimeout, 2*time.Second)
	s.start(&attempt{kind: EventTransport, from: fwd, began: now},
		func(ctx context.Context) (*Conn, error) { return Dial(ctx, cfg) })
	return true
}

// Transport is how the Session reaches its forwarder now: udp, tcp or tls.
func (s *Session) Transport() Transport { return s.current().Transport() }
