package forwarder

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUplinkTwoReadersOneSession: a device whose address changed (a rebind,
// or a failover whose old path still delivers late packets) reaches the
// relay through two readers at once (SO_REUSEPORT hashes each address to
// its own socket). Both deliver the same session's RTP while the control
// goroutine hands the uplink estimator over; under -race this proves the
// estimator has one writer at a time. Readers over in-memory connections
// (hotpath_test.go): two sockets cannot be made to hash a flow to a chosen
// reader.
func TestUplinkTwoReadersOneSession(t *testing.T) {
	ra, rt, src, _ := hotPathFixture(t)
	rb := &reader{f: ra.f, pc: &memConn{}, c: new(counters), knownLimiter: newSTUNLimiter(20, 40), newLimiter: newSTUNLimiter(20, 40)}
	m := rt.bySrc[src].media
	start := time.Now().UnixNano()
	send := func(r *reader, from, n int) {
		pkt := append([]byte(nil), audioPacket...)
		for i := from; i < from+n; i++ {
			pkt[2], pkt[3] = byte(i>>8), byte(i)
			r.batchNow = start + int64(i)*20e6
			r.handle(rt, pkt, src, r.batchNow)
			r.flush()
		}
	}
	send(ra, 0, 100) // reader A alone: it owns the estimator
	require.Positive(t, m.up.bps.Load(), "A's packets give an estimate")
	require.Same(t, &ra.cw, m.up.cur.Load().writer)

	var wg, ctl sync.WaitGroup
	done := make(chan struct{})
	wg.Add(2)
	ctl.Add(1)
	go func() { defer wg.Done(); send(ra, 100, 2000) }() // late packets of the old path
	go func() { defer wg.Done(); send(rb, 100, 2000) }() // the new path
	go func() {                                          // the control goroutine's ticks
		defer ctl.Done()
		for {
			select {
			case <-done:
				return
			default:
				m.up.handOver()
				runtime.Gosched()
			}
		}
	}()
	wg.Wait()
	close(done)
	ctl.Wait()

	// The old path is gone. A request A left after the last tick may be
	// granted once more; B's next packet asks again, so within two ticks B
	// has an estimator of its own, which B's packets feed.
	for i := 0; i < 2; i++ {
		send(rb, 2100+i, 1)
		m.up.handOver()
	}
	require.Same(t, &rb.cw, m.up.cur.Load().writer)
	before := m.up.cur.Load()
	send(rb, 2102, 100)
	require.Same(t, before, m.up.cur.Load(), "the owner keeps its estimator")
	require.True(t, before.inited, "B's packets reach its estimator")
	require.Positive(t, m.up.bps.Load())
}
