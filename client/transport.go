package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Transports (protocol/README.md section 9). A device joins over UDP
// when it can; when no UDP join succeeds within Config.UDPHeadStart, Dial
// also tries each forwarder's TCP and TLS listeners (Config.Streams), all
// in parallel, and the first join wins (happy eyeballs, RFC 8305 in
// spirit). A Session on TCP or TLS tries UDP again every
// Config.UDPRetryEvery and moves back, make-before-break, when a UDP join
// succeeds; its events say which transport it uses.
//
// A stream transport is carried behind a loopback datagram socket (a
// bridge): the Conn's socket sends to the bridge, which frames each
// datagram onto the TCP or TLS connection and unframes what comes back. So
// joins, keepalives, cookies, tickets and leaves are one code for every
// transport, at the cost of one loopback hop per packet on the device.

// Transport is how a Conn reaches its forwarder.
type Transport uint8

// Transports.
const (
	TransportUDP Transport = iota
	TransportTCP
	TransportTLS
)

func (t Transport) String() string {
	switch t {
	case TransportUDP:
		return "udp"
	case TransportTCP:
		return "tcp"
	case TransportTLS:
		return "tls"
	}
	return fmt.Sprintf("transport-%d", uint8(t))
}

// StreamEndpoints are a forwarder's TCP and TLS listeners (zero: none).
type StreamEndpoints struct {
	TCP, TLS netip.AddrPort
}

// Defaults of the transport race.
const (
	defaultUDPHeadStart  = 250 * time.Millisecond
	defaultUDPRetryEvery = 5 * time.Second
)

// Transport is how the Conn reaches its forwarder.
func (c *Conn) Transport() Transport {
	if c.cfg.bridge != nil {
		return c.cfg.bridge.transport
	}
	return TransportUDP
}

// forwarderOf is the forwarder a candidate address stands for: the
// bridge's forwarder for the bridge's address.
func forwarderOf(cfg Config, addr netip.AddrPort) netip.AddrPort {
	if b := cfg.bridge; b != nil && b.addr() == addr {
		return b.fwd
	}
	return addr
}

// dialRace is Dial with the transport race: UDP first, then, if it has not
// joined within UDPHeadStart, TCP and TLS to every forwarder that has
// them, each through its own bridge. The first Conn wins; the others are
// closed without a leave (a leave from a loser's address could end the
// session the winner holds on the same forwarder).
func dialRace(ctx context.Context, cfg Config) (*Conn, error) { return raceTransports(ctx, cfg, true) }

// dialStreams joins fwd over its TCP and TLS listeners only, both at once,
// the first join winning: a Session's spare leg when its UDP path is
// suspect (transport_session.go).
func dialStreams(ctx context.Context, cfg Config, fwd netip.AddrPort) (*Conn, error) {
	cfg.Forwarders = []netip.AddrPort{fwd}
	return raceTransports(ctx, cfg, false)
}

// raceTransports runs the race, with a UDP Dial first when udp, else with
// the stream Dials at once.
func raceTransports(ctx context.Context, cfg Config, udp bool) (*Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		c   *Conn
		err error
	}
	results := make(chan result, 1+2*len(cfg.Forwarders))
	var wg sync.WaitGroup
	try := func(dial func() (*Conn, error)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial()
			results <- result{c, err}
		}()
	}
	pending, started, headStart := 0, false, time.Duration(0)
	if udp {
		onlyUDP := cfg
		onlyUDP.Streams = nil
		try(func() (*Conn, error) { return Dial(ctx, onlyUDP) })
		pending, headStart = 1, cfg.UDPHeadStart
	}
	head := time.NewTimer(headStart)
	defer head.Stop()
	var errs []error
	var win *Conn
	for win == nil && (pending > 0 || !started) {
		select {
		case <-head.C:
			started = true
			pending += startStreams(ctx, cfg, try)
		case r := <-results:
			pending--
			if r.err != nil {
				errs = append(errs, r.err)
				if pending == 0 && !started { // UDP failed early: do not wait out the head start
					head.Reset(0)
				}
				continue
			}
			win = r.c
		}
	}
	cancel()
	go func() { // losers that join after all are let go quietly
		wg.Wait()
		close(results)
		for r := range results {
			if r.c != nil {
				r.c.closeQuietly()
			}
		}
	}()
	if win == nil && len(errs) == 0 {
		return nil, fmt.Errorf("%w: no TCP or TLS listener known for %v", ErrConfig, cfg.Forwarders)
	}
	if win == nil {
		return nil, errors.Join(errs...)
	}
	return win, nil
}

// startStreams starts a Dial through a new bridge to each stream listener
// of each forwarder; it returns how many started.
func startStreams(ctx context.Context, cfg Config, try func(func() (*Conn, error))) int {
	n := 0
	for _, fwd := range cfg.Forwarders {
		ep := cfg.Streams[fwd]
		for _, t := range []struct {
			kind Transport
			addr netip.AddrPort
		}{{TransportTCP, ep.TCP}, {TransportTLS, ep.TLS}} {
			if !t.addr.IsValid() {
				continue
			}
			n++
			try(func() (*Conn, error) {
				b, err := openBridge(ctx, cfg, fwd, t.addr, t.kind)
				if err != nil {
					return nil, err
				}
				sub := cfg
				sub.Streams, sub.Forwarders, sub.bridge = nil, []netip.AddrPort{b.addr()}, b
				c, err := Dial(ctx, sub)
				if err != nil {
					b.close()
					return nil, err
				}
				go func() { <-c.Done(); b.close() }()
				return c, nil
			})
		}
	}
	return n
}

// closeQuietly ends a Conn that lost a transport race without a leave.
func (c *Conn) closeQuietly() {
	c.closeOnce.Do(func() {
		c.kaMu.Lock()
		c.leaving = true
		c.kaMu.Unlock()
		c.finish(ErrClosed)
		c.dialer.cancelGrace()
		c.wg.Wait()
	})
}

// bridge carries one Conn's datagrams over a TCP or TLS connection.
type bridge struct {
	fwd       netip.AddrPort // the forwarder's UDP address it stands for
	transport Transport
	local     *net.UDPConn // the Conn's socket sends here
	conn      net.Conn
	log       *zap.Logger
	once      sync.Once
	peer      chan netip.AddrPort // the Conn's socket, learned from its first datagram
	done      chan struct{}       // closed by close
}

// openBridge connects to a forwarder's stream listener and opens the
// loopback socket the Conn will use.
func openBridge(ctx context.Context, cfg Config, fwd, remote netip.AddrPort, t Transport) (*bridge, error) {
	d := net.Dialer{}
	if cfg.LocalAddr.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(cfg.LocalAddr, 0))
	}
	nc, err := d.DialContext(ctx, "tcp", remote.String())
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: %w", t, remote, err)
	}
	if t == TransportTLS {
		tc := tls.Client(nc, cfg.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("client: tls %s: %w", remote, err)
		}
		nc = tc
	}
	loop := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	switch {
	case cfg.LocalAddr.IsValid():
		loop = cfg.LocalAddr // the Conn's socket binds there, and must reach the bridge
	case isIPv6(remote):
		loop = netip.IPv6Loopback() // an IPv6-only host may have no 127.0.0.1
	}
	local, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loop, 0)))
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	b := &bridge{fwd: fwd, transport: t, local: local, conn: nc, log: cfg.Logger,
		peer: make(chan netip.AddrPort, 1), done: make(chan struct{})}
	go b.up()
	go b.down()
	return b, nil
}

func (b *bridge) addr() netip.AddrPort { return unmap(b.local.LocalAddr().(*net.UDPAddr).AddrPort()) }

func (b *bridge) close() {
	b.once.Do(func() {
		close(b.done)
		_ = b.local.Close()
		_ = b.conn.Close()
	})
}

// up frames the Conn's datagrams onto the stream. Only the first source is
// served: the loopback socket is the Conn's alone.
func (b *bridge) up() {
	defer b.close()
	buf := make([]byte, MaxPacketSize+1)
	frame := make([]byte, 0, protocol.FrameHeaderLen+protocol.MaxFrame)
	var peer netip.AddrPort
	for {
		n, src, err := b.local.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if !peer.IsValid() {
			peer = src
			b.peer <- src
		} else if src != peer {
			continue
		}
		f, err := protocol.AppendFrame(frame[:0], buf[:n])
		if err != nil {
			continue // empty or too large for a frame: a datagram no forwarder takes either
		}
		if _, err := b.conn.Write(f); err != nil {
			return
		}
	}
}

// down unframes what the forwarder sends to the Conn's socket.
func (b *bridge) down() {
	defer b.close()
	fr := protocol.NewFrameReader(b.conn)
	var peer netip.AddrPort
	select {
	case peer = <-b.peer:
	case <-b.done:
		return
	}
	for {
		p, err := fr.Next()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				b.log.Debug("stream to the forwarder ended", zap.Stringer("forwarder", b.fwd), zap.Stringer("transport", b.transport), zap.Error(err))
			}
			return
		}
		if _, err := b.local.WriteToUDPAddrPort(p, peer); err != nil {
			return
		}
	}
}
