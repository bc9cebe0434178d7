package loadtest

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// An access link is a city device's last mile (Plan.Cities): a small UDP
// relay on the generator's host between one device socket and one
// forwarder, which delays each datagram by the city's one-way delay plus
// a uniform jitter and drops a share of them, in each direction. The
// device sends to the link's address, the forwarder sees the link's other
// socket as the device. Real sockets all the way; the impairment is done
// in userspace because the kernel here has no netem. Packets never
// overtake each other (a jitter draw below the previous packet's
// departure waits for it), as on a FIFO path.

// accessSlots bounds the datagrams waiting in one direction of a link
// (at 50 frames/s and 300 ms of delay, 15 are in flight); beyond, a
// datagram is dropped and counted.
const accessSlots = 64

type accessSlot struct {
	at  time.Time
	n   int
	buf *[1500]byte
	to  netip.AddrPort
}

type accessLink struct {
	dev, fwd *net.UDPConn
	server   netip.AddrPort
	device   atomic.Pointer[netip.AddrPort] // the device's address, once it sent
	wg       sync.WaitGroup
	dropped  *atomic.Uint64 // the run's count of datagrams the links dropped at a full queue
}

// openAccess starts a link in front of server with profile a; local is
// the address its sockets bind (loopback when unset).
func openAccess(server netip.AddrPort, local netip.Addr, a Access, seed uint64, dropped *atomic.Uint64) (*accessLink, error) {
	if !local.IsValid() {
		local = netip.MustParseAddr("127.0.0.1")
	}
	dev, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, err
	}
	fwd, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		_ = dev.Close()
		return nil, err
	}
	l := &accessLink{dev: dev, fwd: fwd, server: server, dropped: dropped}
	up := l.direction(a, seed, dev, func(src netip.AddrPort) (netip.AddrPort, bool) {
		l.device.Store(&src)
		return server, true
	}, fwd)
	down := l.direction(a, seed^0x5bd1e995, fwd, func(src netip.AddrPort) (netip.AddrPort, bool) {
		d := l.device.Load()
		if d == nil || unmapAP(src) != unmapAP(server) {
			return netip.AddrPort{}, false
		}
		return *d, true
	}, dev)
	l.wg.Add(4)
	go up.read()
	go up.write()
	go down.read()
	go down.write()
	return l, nil
}

func unmapAP(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// Addr is where the device sends.
func (l *accessLink) Addr() netip.AddrPort {
	return unmapAP(l.dev.LocalAddr().(*net.UDPAddr).AddrPort())
}

// Close ends the link and waits for its goroutines.
func (l *accessLink) Close() {
	_ = l.dev.Close()
	_ = l.fwd.Close()
	l.wg.Wait()
}

// accessDir is one direction of a link: a reader that stamps departures
// and a writer that sends at them.
type accessDir struct {
	l       *accessLink
	a       Access
	rng     *rand.Rand
	in, out *net.UDPConn
	dest    func(src netip.AddrPort) (netip.AddrPort, bool)
	queue   chan accessSlot
	free    chan *[1500]byte
	scratch *[1500]byte // read into when every slot waits: the datagram is dropped
}

func (l *accessLink) direction(a Access, seed uint64, in *net.UDPConn, dest func(netip.AddrPort) (netip.AddrPort, bool), out *net.UDPConn) *accessDir {
	d := &accessDir{l: l, a: a, rng: rand.New(rand.NewPCG(seed, 0xacce55)), in: in, out: out, dest: dest, //nolint:gosec // emulation, not security
		queue: make(chan accessSlot, accessSlots), free: make(chan *[1500]byte, accessSlots), scratch: new([1500]byte)}
	for range accessSlots {
		d.free <- new([1500]byte)
	}
	return d
}

// read takes datagrams until the socket closes.
func (d *accessDir) read() {
	defer d.l.wg.Done()
	defer close(d.queue)
	var last time.Time
	for {
		var buf *[1500]byte
		select {
		case buf = <-d.free:
		default:
			buf = d.scratch
		}
		n, src, err := d.in.ReadFromUDPAddrPort(buf[:])
		if err != nil {
			return
		}
		if buf == d.scratch {
			d.l.dropped.Add(1)
			continue
		}
		to, ok := d.dest(src)
		if !ok || (d.a.LossPct > 0 && d.rng.Float64()*100 < d.a.LossPct) {
			d.release(buf)
			continue
		}
		at := time.Now().Add(d.a.Delay.D())
		if j := d.a.Jitter.D(); j > 0 {
			at = at.Add(time.Duration(d.rng.Int64N(int64(j) + 1)))
		}
		if at.Before(last) {
			at = last
		}
		last = at
		select {
		case d.queue <- accessSlot{at: at, n: n, buf: buf, to: to}:
		default:
			d.l.dropped.Add(1)
			d.release(buf)
		}
	}
}

func (d *accessDir) release(b *[1500]byte) {
	select {
	case d.free <- b:
	default:
	}
}

// write sends each datagram at its departure time.
func (d *accessDir) write() {
	defer d.l.wg.Done()
	for s := range d.queue {
		if w := time.Until(s.at); w > 0 {
			time.Sleep(w) // pacing the emulated path, not synchronisation
		}
		_, _ = d.out.WriteToUDPAddrPort(s.buf[:s.n], s.to)
		d.release(s.buf)
	}
}
