package httpserve

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// refusalLogEvery is the least time between two log lines about refused
// connections: a flood is one line a minute, with its count.
const refusalLogEvery = time.Minute

// cappedListener hands out at most max connections at once. One accepted
// over the cap is closed at once with a reset (no lingering state on
// either side) and counted; Accept then takes the next one.
type cappedListener struct {
	net.Listener
	max     int
	log     *zap.Logger
	open    atomic.Int64
	refused atomic.Uint64
	// loggedAt (unix ns) and loggedRefused are the time and the refusal
	// count of the last log line about refusals.
	loggedAt, loggedRefused atomic.Uint64
	// perSource caps the connections open from one source (0: no cap);
	// bySource counts them (under mu: accept and close only).
	perSource int
	mu        sync.Mutex
	bySource  map[netip.Prefix]int
}

// sourceOf is the source a connection is counted under: its IPv4
// address, or the /64 of its IPv6 one (a host holds a whole /64).
func sourceOf(a net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// takeSource counts a connection from src, or says it is over the cap.
func (l *cappedListener) takeSource(src netip.Prefix) bool {
	if l.perSource <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySource[src] >= l.perSource {
		return false
	}
	if l.bySource == nil {
		l.bySource = make(map[netip.Prefix]int)
	}
	l.bySource[src]++
	return true
}

func (l *cappedListener) dropSource(src netip.Prefix) {
	if l.perSource <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
}

func newCappedListener(l net.Listener, max int, log *zap.Logger) *cappedListener {
	return &cappedListener{Listener: l, max: max, log: log}
}

func (l *cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		if l.open.Add(1) <= int64(l.max) {
			if l.takeSource(src) {
				return &countedConn{Conn: c, l: l, src: src}, nil
			}
		}
		l.open.Add(-1)
		l.noteRefused(c.RemoteAddr()) // counted before the client can see it closed
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close with a reset: no TIME_WAIT kept for a flood
		}
		_ = c.Close()
	}
}

// noteRefused counts a refused connection and logs refusals at most once
// per refusalLogEvery.
func (l *cappedListener) noteRefused(from net.Addr) {
	n := l.refused.Add(1)
	now := uint64(time.Now().UnixNano())
	last := l.loggedAt.Load()
	if last != 0 && now-last < uint64(refusalLogEvery) || !l.loggedAt.CompareAndSwap(last, now) {
		return
	}
	since := n - l.loggedRefused.Swap(n)
	l.log.Warn("connections over the cap (in all or from one source) closed at once (callrelay_http_connections_refused_total)",
		zap.Int("max_conns", l.max), zap.Int("max_conns_per_source", l.perSource), zap.Uint64("refused", since), zap.Stringer("latest_from", from))
}

// countedConn gives its slot back when closed (once, however often Close
// is called).
type countedConn struct {
	net.Conn
	l      *cappedListener
	src    netip.Prefix
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
		c.l.dropSource(c.src)
	}
	return err
}
