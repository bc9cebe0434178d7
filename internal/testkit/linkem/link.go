package linkem

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// sockBufSize is the socket buffer the link asks for, so that a burst is
// queued by the emulator rather than dropped by the kernel. The kernel may
// grant less (net.core.rmem_max).
const sockBufSize = 1 << 20

var loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// Link relays UDP datagrams between one client and one server on loopback,
// impairing each direction according to its Profile. Its methods are safe
// for concurrent use.
type Link struct {
	server     netip.AddrPort
	addr       netip.AddrPort // clientConn's address
	serverSide netip.AddrPort // serverConn's address
	clientConn *net.UDPConn   // the client sends here
	serverConn *net.UDPConn   // talks to the server
	client     atomic.Pointer[netip.AddrPort]
	up, down   *pipe

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New starts a link to server, which must be a loopback address (an
// unspecified address such as 0.0.0.0 or :: stands for the loopback address
// of its family). Both of the link's sockets listen on 127.0.0.1, or on ::1
// if server is IPv6, on ports chosen by the kernel. up impairs client to
// server, down server to client; seed makes the random loss and jitter
// reproducible. Close the link when done.
func New(server netip.AddrPort, up, down Profile, seed int64) (*Link, error) {
	server, err := loopbackServer(server)
	if err != nil {
		return nil, err
	}
	network, local := "udp4", loopback4
	if server.Addr().Is6() {
		network, local = "udp6", netip.IPv6Loopback()
	}
	cc, err := listen(network, local)
	if err != nil {
		return nil, err
	}
	sc, err := listen(network, local)
	if err != nil {
		_ = cc.Close()
		return nil, err
	}
	l := &Link{
		server:     server,
		addr:       localAddr(cc),
		serverSide: localAddr(sc),
		clientConn: cc,
		serverConn: sc,
		stop:       make(chan struct{}),
	}
	s := uint64(seed)
	l.up = newPipe(cc, sc, func() (netip.AddrPort, bool) { return l.server, true }, up, s, 0x7570) // "up"
	l.up.accept = l.fromClient
	l.down = newPipe(sc, cc, l.clientAddr, down, s, 0x646f776e) // "down"
	l.down.accept = l.fromServer
	for _, p := range []*pipe{l.up, l.down} {
		l.wg.Add(2)
		go func() { defer l.wg.Done(); p.read(l.stop) }()
		go func() { defer l.wg.Done(); p.schedule(l.stop) }()
	}
	return l, nil
}

// loopbackServer checks server and maps an unspecified address to loopback.
func loopbackServer(server netip.AddrPort) (netip.AddrPort, error) {
	a := server.Addr().Unmap()
	if !a.IsValid() || server.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrBadServer, server)
	}
	switch {
	case a == netip.IPv4Unspecified():
		a = loopback4
	case a == netip.IPv6Unspecified():
		a = netip.IPv6Loopback()
	case !a.IsLoopback():
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNotLoopback, server)
	}
	return netip.AddrPortFrom(a.WithZone(""), server.Port()), nil
}

func listen(network string, local netip.Addr) (*net.UDPConn, error) {
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, fmt.Errorf("linkem: listening on %v: %w", local, err)
	}
	_ = c.SetReadBuffer(sockBufSize) // best effort
	_ = c.SetWriteBuffer(sockBufSize)
	return c, nil
}

// fromClient accepts every datagram on the client side and remembers its
// sender as the client. It allocates only when the client address changes.
func (l *Link) fromClient(src netip.AddrPort) bool {
	src = unmap(src)
	if cur := l.client.Load(); cur == nil || *cur != src {
		c := src // escapes; declared here so that only a change allocates
		l.client.Store(&c)
	}
	return true
}

// fromServer accepts datagrams from the server once a client is known.
func (l *Link) fromServer(src netip.AddrPort) bool {
	return unmap(src) == l.server && l.client.Load() != nil
}

func (l *Link) clientAddr() (netip.AddrPort, bool) {
	c := l.client.Load()
	if c == nil {
		return netip.AddrPort{}, false
	}
	return *c, true
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func localAddr(c *net.UDPConn) netip.AddrPort {
	return unmap(c.LocalAddr().(*net.UDPAddr).AddrPort())
}

// Addr is where the client sends instead of the server.
func (l *Link) Addr() netip.AddrPort { return l.addr }

// ServerSide is the address the server sees as the client's.
func (l *Link) ServerSide() netip.AddrPort { return l.serverSide }

// Server is the address the link relays to.
func (l *Link) Server() netip.AddrPort { return l.server }

// SetUp replaces the client-to-server profile, for packets read from now
// on.
func (l *Link) SetUp(p Profile) { l.up.setProfile(p) }

// SetDown replaces the server-to-client profile, for packets read from now
// on.
func (l *Link) SetDown(p Profile) { l.down.setProfile(p) }

// Stats returns the counters of both directions. It may be called after
// Close.
func (l *Link) Stats() Stats {
	return Stats{Up: l.up.c.snapshot(), Down: l.down.c.snapshot()}
}

// Close stops the link's goroutines and closes its sockets. Packets still
// waiting for departure are discarded. Close is idempotent: later calls
// return the first call's result.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		close(l.stop)
		l.closeErr = errors.Join(l.clientConn.Close(), l.serverConn.Close())
		l.wg.Wait()
	})
	return l.closeErr
}
