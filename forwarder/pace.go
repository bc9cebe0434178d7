package forwarder

import "time"

var monoStart = time.Now()

// monoNS is a monotonic clock in ns.
func monoNS() int64 { return int64(time.Since(monoStart)) }

// Batching that holds at spread arrivals. Media arrives spread out: 50
// packets a second per audio sender, from thousands of senders, never in
// bursts of 64. A reader that reads as soon as its socket is readable gets
// one or two datagrams per read and pays, for each, a wake-up from the
// runtime's poller (epoll_wait, a context switch), a recvmmsg and a
// sendmmsg of its fan-out: the system calls cost far more than the
// forwarding. When a reader's packet rate is high enough that waiting a
// little gathers several packets, it waits BatchWait (a plain nanosleep:
// one wake-up per wait, not per packet, and no runtime timer, whose
// sub-millisecond waits become a millisecond when the process is otherwise
// idle) after each batch that was not full, then reads everything that
// arrived in one recvmmsg and sends the fan-out of all of it in one
// sendmmsg. Below that rate it reads as before: a packet is never held
// waiting for others that are not coming. What a packet can lose to it is
// one BatchWait (plus the kernel's timer slack, 50 µs by default).
//
// Off by default (Config.BatchWait 0): measured on the shared 2-core
// machine at load averages of 25-35 it did not pay (a reader descheduled
// that often finds batches waiting anyway, and each wait is a wake-up of
// its own); docs/architecture.md has the figures. It is to be measured
// again on a quiet machine before it is turned on.
type pacer struct {
	waitNS   int64 // BatchWait; 0: never wait
	minBatch int64 // wait only if a wait gathers at least this many packets at the recent rate
	start    int64 // this window's start (monotonic ns)
	pkts     int64 // packets read in this window
	on       bool  // waiting, by the last window's rate
}

const (
	paceWindowNS = 10e6 // the packet rate is re-estimated every 10 ms
	paceMinBatch = 4
)

func newPacer(wait time.Duration) pacer {
	return pacer{waitNS: int64(wait), minBatch: paceMinBatch}
}

// after notes a batch of n packets read at nowNS (monotonic) and returns
// how long to wait before the next read: 0 to read at once (blocking until
// a datagram arrives).
func (p *pacer) after(n int, nowNS int64) int64 {
	if p.waitNS == 0 {
		return 0
	}
	p.pkts += int64(n)
	if el := nowNS - p.start; el >= paceWindowNS {
		// Packets one wait would gather at this window's rate.
		p.on = p.pkts*p.waitNS >= p.minBatch*el
		p.start, p.pkts = nowNS, 0
	}
	if !p.on || n >= readBatch {
		return 0 // a slow trickle, or a full batch: more is already waiting
	}
	return p.waitNS
}
