package forwarder

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

// The control goroutine yields to the readers during its long jobs.
//
// With one P (GOMAXPROCS 1: a forwarder pinned to one core, as `make
// capacity` runs it, or a container with a one-CPU quota), a reader parked
// in the runtime's poller is woken only when the P finds nothing else to
// run, or by sysmon after 10 ms: runtime.Gosched does not look at the
// poller (the run queues come first). So a control job of several ms (the
// feedback tick over every member, a routes rebuild, a burst of joins)
// held every packet that arrived meanwhile for as long: a runtime trace of
// a forwarder at ~500 one-to-one calls showed the reader runnable for up
// to 6-20 ms (p99.9 9.7 ms) behind it, and the probes' relay-added p99
// delay grew with the calls (1.5 / 3.7 / 10 ms at 17 / 31 / 47 % of the
// core) while the bare reflector, with no other goroutine, stayed low
// (docs/capacity.md, cost per packet).
//
// So, with one P, once a control job has done yieldEvery units of work
// (a member visited, a request answered), control marks itself busy,
// wakes the readers parked in the poller (a read deadline in the past
// readies a parked reader at once), and yields (Gosched) after every
// yieldEvery units. While control is busy the readers do not park: they
// poll their socket without waiting (mmsg TryReadBatch) and yield back
// when it is empty. Control clears busy before it blocks. A packet then
// waits at most one slice of yieldEvery units (tens of µs) instead of the
// whole job; when control is idle nothing changes (the readers park as
// before), and with more than one P this is off: other Ps poll the
// network when their readers park.
const yieldEvery = 64

// coopState is the forwarder's side of it.
type coopState struct {
	on     bool        // GOMAXPROCS was 1 when the forwarder started
	busy   atomic.Bool // control is in a long job: readers poll
	yields atomic.Uint64
}

// tryReader is a packetConn that can read without parking (mmsg.Conn).
type tryReader interface {
	TryReadBatch() (int, error)
}

// coopReader is a reader's (or a trunk reader's) side: its socket, to
// wake it with a deadline, and whether it is parked in the poller.
type coopReader struct {
	sock   *net.UDPConn
	try    tryReader
	parked atomic.Bool
}

// yieldUnits notes n units of control work, and yields to the readers
// when a slice is done (with one P).
func (c *control) yieldUnits(n int) {
	co := &c.f.coop
	if !co.on {
		return
	}
	c.work += n
	if c.work < yieldEvery {
		return
	}
	c.work = 0
	if !co.busy.Load() {
		co.busy.Store(true)
	}
	for _, r := range c.f.rdrs {
		r.coop.wake()
	}
	for _, t := range c.f.trunkRdrs {
		t.coop.wake()
	}
	co.yields.Add(1)
	runtime.Gosched()
}

// idle ends a long job: control is about to block.
func (c *control) idle() {
	c.work = 0
	if c.f.coop.on && c.f.coop.busy.Load() {
		c.f.coop.busy.Store(false)
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// readBatch is the reader's read (coopReader.read).
func (r *reader) readBatch() (int, error) { return r.coop.read(&r.f.coop, r.pc) }

// wake readies the goroutine if it is parked in the poller: a read
// deadline in the past, cleared by read.
func (cr *coopReader) wake() {
	if cr.sock != nil && cr.parked.Load() {
		_ = cr.sock.SetReadDeadline(aLongTimeAgo)
	}
}

// read is a reader's (or a trunk reader's) read of pc: ReadBatch (parked
// in the poller until a datagram arrives), or, while control is busy (one
// P), a poll that yields to control when the socket is empty.
func (cr *coopReader) read(co *coopState, pc packetConn) (int, error) {
	for {
		var n int
		var err error
		polled := false
		if cr.try != nil && co.busy.Load() {
			seen := co.yields.Load()
			n, err = cr.try.TryReadBatch()
			if n == 0 && err == nil {
				runtime.Gosched()
				if co.yields.Load() != seen {
					continue // control ran a slice: poll again
				}
				// Control did not run (it blocked while busy): park.
			} else {
				polled = true
			}
		}
		if !polled {
			cr.parked.Store(true)
			n, err = pc.ReadBatch()
			cr.parked.Store(false)
		}
		if cr.sock != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// Control's wake-up (it may land after a read the poller
			// readied anyway, and stays set until cleared).
			_ = cr.sock.SetReadDeadline(time.Time{})
			continue
		}
		return n, err
	}
}
