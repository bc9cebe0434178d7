// Package forwarder is the data plane: it moves opaque, end-to-end encrypted
// media packets between the members of a call on ONE UDP port, admits
// participants by their signed join tokens, and keeps each session alive by
// authenticated keepalives.
//
// It must never decrypt or rewrite media (packets leave byte-exact), never
// allocate, lock globally or log per packet, and never let bad input from
// one source disturb the calls in progress.
package forwarder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Forwarder serves one UDP port. Create it with New, run it with Run.
type Forwarder struct {
	cfg   Config
	log   *zap.Logger
	addr  netip.AddrPort
	v6    bool
	conns []*net.UDPConn
	rdrs  []*reader

	routes atomic.Pointer[routes]

	// STUN from members and from strangers travel in separate queues with
	// separate pools of buffers, so strangers can never use up what members'
	// keepalives need.
	knownFree, newFree, ctrlKnown, ctrlNew chan *ctrlMsg
	ctrlDrops                              counters // drops decided by the control goroutine

	started atomic.Bool

	draining                       atomic.Bool
	nSessions, nCalls              atomic.Int64
	joins, joinErrors, addrChanges atomic.Uint64
	cookieChallenges               atomic.Uint64
}

// New validates cfg and binds the forwarder's sockets, so Addr is known
// before Run.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lap := netip.MustParseAddrPort(cfg.Listen)
	network := "udp4"
	v6 := lap.Addr().Is6() && !lap.Addr().Is4In6()
	if v6 {
		network = "udp6"
	}
	n := cfg.Readers
	if !reusePortSupported {
		n = 1
	}
	f := &Forwarder{cfg: cfg, log: cfg.Logger, v6: v6}
	addr := cfg.Listen
	for i := 0; i < n; i++ {
		c, err := listenUDP(network, addr, n > 1)
		if err != nil {
			f.closeConns()
			return nil, fmt.Errorf("forwarder: listen on %s: %w", addr, err)
		}
		// Room for bursts: a reader briefly busy must not mean drops.
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(4 << 20)
		f.conns = append(f.conns, c)
		if i == 0 {
			// With port 0 the kernel picked one; the others join it.
			f.addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
			addr = f.addr.String()
		}
	}
	f.addr = netip.AddrPortFrom(f.addr.Addr().Unmap(), f.addr.Port())
	for _, c := range f.conns {
		pc, err := newPacketConn(c)
		if err != nil {
			f.closeConns()
			return nil, err
		}
		f.rdrs = append(f.rdrs, &reader{f: f, pc: pc, c: new(counters),
			knownLimiter: newSTUNLimiter(cfg.STUNRate, cfg.STUNBurst),
			// SO_REUSEPORT spreads one IP's ports over all readers: each
			// reader gets its share of the per-IP budget.
			newLimiter: newSTUNLimiter(cfg.JoinRate/float64(n), max(1, cfg.JoinBurst/float64(n)))})
	}
	f.knownFree, f.newFree = make(chan *ctrlMsg, ctrlQueue), make(chan *ctrlMsg, ctrlQueue)
	f.ctrlKnown, f.ctrlNew = make(chan *ctrlMsg, ctrlQueue), make(chan *ctrlMsg, ctrlQueue)
	for i := 0; i < ctrlQueue; i++ {
		f.knownFree <- &ctrlMsg{free: f.knownFree}
		f.newFree <- &ctrlMsg{free: f.newFree}
	}
	f.routes.Store(&routes{bySrc: map[netip.AddrPort]*route{}})
	return f, nil
}

// Addr is the UDP address the forwarder serves.
func (f *Forwarder) Addr() netip.AddrPort { return f.addr }

// Run serves until ctx is done, then closes the sockets and returns. A
// Forwarder runs once.
func (f *Forwarder) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errors.New("forwarder: Run called twice")
	}
	f.log.Info("forwarder serving", zap.Stringer("addr", f.addr), zap.Int("readers", len(f.rdrs)))
	var wg sync.WaitGroup
	for _, r := range f.rdrs {
		wg.Add(1)
		go func() { defer wg.Done(); r.run() }()
	}
	f.runControl(ctx)
	f.closeConns()
	wg.Wait()
	f.log.Info("forwarder stopped", zap.Stringer("addr", f.addr))
	return nil
}

func (f *Forwarder) runControl(ctx context.Context) {
	c := newControl(f)
	tick := time.NewTicker(f.cfg.IdleTimeout / 4)
	defer tick.Stop()
	for {
		now := f.cfg.Now()
		// Members' keepalives first, whatever else is queued.
		var m *ctrlMsg
		select {
		case m = <-f.ctrlKnown:
		default:
			select {
			case m = <-f.ctrlNew:
			default:
			}
		}
		if m == nil {
			// Idle: make this batch's changes visible, then wait.
			if c.publishDue(true, now) {
				c.publish(now)
			}
			select {
			case <-ctx.Done():
				return
			case m = <-f.ctrlKnown:
			case m = <-f.ctrlNew:
			case <-tick.C:
				c.sweep(f.cfg.Now())
				continue
			}
		}
		c.handle(m.src, m.buf[:m.n])
		m.free <- m
		if c.publishDue(false, now) {
			c.publish(now)
		}
		// A queue that never empties must not hold off shutdown or the sweep.
		select {
		case <-ctx.Done():
			c.publish(now)
			return
		case <-tick.C:
			c.sweep(now)
		default:
		}
	}
}

// Drain stops admitting new sessions: joins are answered 300 Try Alternate
// (when an alternate is configured) or 508. Sessions already here go on.
func (f *Forwarder) Drain() { f.draining.Store(true) }

// Stats adds up every reader's counters.
func (f *Forwarder) Stats() Stats {
	var s Stats
	for _, r := range f.rdrs {
		s.add(r.c)
	}
	s.add(&f.ctrlDrops)
	s.Sessions = int(f.nSessions.Load())
	s.Calls = int(f.nCalls.Load())
	s.Joins = f.joins.Load()
	s.JoinErrors = f.joinErrors.Load()
	s.AddressChanges = f.addrChanges.Load()
	s.CookieChallenges = f.cookieChallenges.Load()
	return s
}

func (f *Forwarder) countDrop(r DropReason) { f.ctrlDrops.drops[r].Add(1) }

// reply sends a control answer from the forwarder's port (control goroutine).
func (f *Forwarder) reply(b []byte, to netip.AddrPort) {
	if _, err := f.conns[0].WriteToUDPAddrPort(b, to); err != nil {
		f.countDrop(DropSendFailed)
	}
}

func (f *Forwarder) closeConns() {
	for _, c := range f.conns {
		_ = c.Close()
	}
}
