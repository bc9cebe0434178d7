package client

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// A MigrateTo may name a forwarder's TCP or TLS listener (protocol/README.md
// 5.7): a forwarder sends one to a device on a connection, whose network
// may block UDP. The Session then joins that listener over a new connection
// of the same transport, make-before-break as for a UDP target, verifying a
// TLS listener with Config.TLSConfig as it verifies its first forwarder's
// (every forwarder of the cluster carries that name). If that join fails,
// it tries the other configured forwarders, as a UDP migration does.

// streamForwarder is the forwarder a MigrateTo naming listener (a TCP or
// TLS listener) stands for: the one of Config.Streams that has it, else the
// listener itself.
func (s *Session) streamForwarder(listener netip.AddrPort, t protocol.Transport) netip.AddrPort {
	for fwd, ep := range s.cfg.Streams {
		if t == protocol.TransportTCP && unmap(ep.TCP) == listener || t == protocol.TransportTLS && unmap(ep.TLS) == listener {
			return fwd
		}
	}
	return listener
}

// migrateStream joins fwd over listener with transport t alone; if that
// fails, every configured forwarder but old and fwd.
func (s *Session) migrateStream(ctx context.Context, fwd, listener netip.AddrPort, t protocol.Transport, old netip.AddrPort,
	deadline time.Duration) (*Conn, error) {
	cfg := s.cfg
	ep := StreamEndpoints{TCP: listener}
	if t == protocol.TransportTLS {
		ep = StreamEndpoints{TLS: listener}
	}
	cfg.Streams = map[netip.AddrPort]StreamEndpoints{fwd: ep}
	tctx, cancel := context.WithTimeout(ctx, migrateTimeout(s.cfg.JoinTimeout, deadline))
	c, err := dialStreams(tctx, cfg, fwd)
	cancel()
	if err == nil {
		return c, nil
	}
	var rest []netip.AddrPort
	for _, a := range s.cfg.Forwarders {
		if a != old && a != fwd {
			rest = append(rest, a)
		}
	}
	if len(rest) == 0 || ctx.Err() != nil {
		return nil, fmt.Errorf("client: migrate to %s %s: %w", t, listener, err)
	}
	s.log.Info("migration target did not take the session; trying the other forwarders",
		zap.Stringer("target", listener), zap.Stringer("transport", t), zap.Error(err))
	c, err2 := s.dial(ctx, rest)
	if err2 != nil {
		return nil, fmt.Errorf("client: migrate to %s %s: %w", t, listener, multiError{err, err2})
	}
	return c, nil
}
