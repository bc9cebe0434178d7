package linkem

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// MaxPayload is the largest UDP payload the link relays; larger ones are
	// dropped and counted as Limit. It leaves room above a 1500-byte MTU so
	// a test can still send the server an oversized datagram.
	MaxPayload = 2048
	// MaxInFlight is how many packets per direction may wait for departure;
	// beyond it packets are dropped and counted as Limit.
	MaxInFlight = 1024
	// readBufSize holds any UDP datagram, so an oversized one is noticed
	// rather than truncated.
	readBufSize = 64 << 10
)

// slot is one packet waiting for departure.
type slot struct {
	buf    *[MaxPayload]byte
	n      int
	depart time.Time
}

// pipe is one direction of a link: a reader goroutine that reads from in,
// decides each packet's fate with the shaper and queues it, and a scheduler
// goroutine that writes queued packets to out at their departure times.
//
// The queue is a FIFO ring: departure times never decrease, so the head
// always leaves first. The reader only appends at the tail and the
// scheduler only reads and removes the head, so the scheduler may send from
// the head slot's buffer without holding mu.
type pipe struct {
	in *net.UDPConn // nil for a router's path (router.go), which is fed by admit
	// accept reports whether a datagram from src is to be relayed; write
	// sends one on. Both are called from this pipe's goroutines only.
	accept func(src netip.AddrPort) bool
	write  func(b []byte) error

	prof   atomic.Pointer[Profile] // normalized; replaced whole on change
	shaper shaper                  // reader goroutine only
	wake   chan struct{}           // capacity 1: the queue became non-empty
	c      counters

	// mu guards head, n and free, and the ring slots as described above.
	// Every buffer in use sits in a queued slot (the scheduler removes a
	// slot only after sending it), so at most MaxInFlight buffers are ever
	// allocated: the pool is bounded by the queue.
	mu   sync.Mutex
	ring [MaxInFlight]slot
	head int
	n    int
	free []*[MaxPayload]byte // released buffers, zeroed
}

// errNoDest: a datagram with nowhere to go (not reached: accept admits
// nothing without a destination).
var errNoDest = errors.New("linkem: no destination")

// newPipe makes a pipe that reads from in and writes to out, to where dest
// says.
func newPipe(in, out *net.UDPConn, dest func() (netip.AddrPort, bool), p Profile, seed1, seed2 uint64) *pipe {
	pp := newPath(func(b []byte) error {
		dst, ok := dest()
		if !ok {
			return errNoDest
		}
		_, err := out.WriteToUDPAddrPort(b, dst)
		return err
	}, p, seed1, seed2)
	pp.in = in
	return pp
}

// newPath makes a pipe without a reader: packets come in through admit
// and leave through write.
func newPath(write func(b []byte) error, p Profile, seed1, seed2 uint64) *pipe {
	pp := &pipe{
		write:  write,
		shaper: newShaper(seed1, seed2),
		wake:   make(chan struct{}, 1),
		free:   make([]*[MaxPayload]byte, 0, MaxInFlight),
	}
	pp.setProfile(p)
	return pp
}

func (p *pipe) setProfile(prof Profile) {
	prof = prof.normalized()
	p.prof.Store(&prof)
}

// read is the reader goroutine; it returns when in is closed.
func (p *pipe) read(stop <-chan struct{}) {
	buf := make([]byte, readBufSize)
	r := newArrivalReader(p.in)
	for {
		n, src, at, err := r.read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-stop:
				return
			default:
				continue // transient; UDP reads have nothing to retry
			}
		}
		if !p.accept(src) {
			p.c.stray.Add(1)
			continue
		}
		p.admit(at, buf[:n])
	}
}

// admit applies the profile to one packet and queues it if it survives.
func (p *pipe) admit(now time.Time, b []byte) {
	p.c.received.Add(1)
	p.c.receivedBytes.Add(uint64(len(b)))
	if len(b) > MaxPayload || p.queued() == MaxInFlight {
		p.c.limit.Add(1)
		return
	}
	depart, v := p.shaper.admit(now, len(b), p.prof.Load())
	switch v {
	case lost:
		p.c.lost.Add(1)
		p.c.lostBytes.Add(uint64(len(b)))
		return
	case queueFull:
		p.c.queueDropped.Add(1)
		p.c.queueDroppedBytes.Add(uint64(len(b)))
		return
	}
	p.mu.Lock()
	// The queue cannot have filled since queued(): only this goroutine
	// appends.
	var buf *[MaxPayload]byte
	if k := len(p.free); k > 0 {
		buf = p.free[k-1]
		p.free = p.free[:k-1]
	} else {
		buf = new([MaxPayload]byte)
	}
	copy(buf[:], b)
	p.ring[(p.head+p.n)%MaxInFlight] = slot{buf: buf, n: len(b), depart: depart}
	p.n++
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pipe) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// peek returns the head of the queue without removing it.
func (p *pipe) peek() (slot, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		return slot{}, false
	}
	return p.ring[p.head], true
}

// pop removes the head of the queue and zeroes and frees its buffer.
func (p *pipe) pop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.ring[p.head]
	p.ring[p.head] = slot{}
	p.head = (p.head + 1) % MaxInFlight
	p.n--
	clear(s.buf[:s.n])
	p.free = append(p.free, s.buf)
}

// schedule is the scheduler goroutine; it returns when stop is closed,
// leaving any packets still queued unsent.
func (p *pipe) schedule(stop <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s, ok := p.peek()
		if !ok {
			select {
			case <-p.wake:
				continue
			case <-stop:
				return
			}
		}
		if d := time.Until(s.depart); d > 0 {
			// Packets queued meanwhile depart no earlier than s, so only
			// the timer and stop matter here.
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-stop:
				return
			}
		}
		p.send(s)
		p.pop()
	}
}

func (p *pipe) send(s slot) {
	if err := p.write(s.buf[:s.n]); err != nil {
		p.c.sendErrors.Add(1)
		return
	}
	p.c.delivered.Add(1)
	p.c.deliveredBytes.Add(uint64(s.n))
}
