package forwarder

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// sizeOf varies the cached packets' lengths, so that wraps land anywhere.
func sizeOf(seq uint16) int { return 60 + int(seq)*37%1100 }

// The cache takes no lock: NACKs answered by two readers while the sender's
// reader stores the same stream through a small arena, so that the packets
// asked for are overwritten under the answerers' copies all the time. Every
// answer must be the packet asked for, byte for byte; a torn or stale copy
// must come back as a miss. Run with -race: the writer's plain fields and
// the answerers' atomics are checked by the detector, the bytes by the
// comparison (the lock-free copy is left out of the detector on purpose).
func TestNackCacheAnsweredWhileStoring(t *testing.T) {
	c := newNackCache(64<<10, nil) // ~110 packets of ~600 bytes
	const ssrc = 0xfeed
	const packets = 30_000
	var stored atomic.Int64 // sequence number of the last packet stored, -1 before
	stored.Store(-1)
	var sent, missed [2]int
	var wg sync.WaitGroup
	for a := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := make([]byte, maxDatagram)
			for i := 0; ; i++ {
				last := stored.Load()
				if last >= packets-1 {
					return
				}
				if last < 0 {
					continue
				}
				// Recent packets (held) and old ones (being overwritten).
				seq := uint16(last) - uint16(i%160)
				n, out := c.resend(dst, ssrc, seq, 1, nil, 0)
				if out != nackSent {
					missed[a]++
					continue
				}
				sent[a]++
				if !bytes.Equal(cachedPacket(ssrc, seq, sizeOf(seq)), dst[:n]) {
					t.Errorf("answerer %d: packet %d came back torn or stale", a, seq)
					return
				}
			}
		}()
	}
	for i := 0; i < packets; i++ {
		seq := uint16(i)
		c.put(cachedPacket(ssrc, seq, sizeOf(seq)), ssrc, seq, int64(i))
		stored.Store(int64(i))
	}
	wg.Wait()
	t.Logf("answered %v, missed %v", sent, missed)
	require.Positive(t, sent[0]+sent[1], "recent packets are answered while the writer stores")
	require.Positive(t, missed[0]+missed[1], "overwritten packets are misses")
}

// Two readers store packets of the same sender (its flow moved from one to
// the other and back, as after address changes) while the control
// goroutine makes caches and a third reader answers NACKs. Only the reader
// a cache was made for writes it; the other's packets ask for a cache of
// their own. -race catches two writers in one cache.
func TestNackCacheTwoReadersOneSender(t *testing.T) {
	m := new(mediaInfo)
	c := &control{f: &Forwarder{cfg: Default()}}
	var readers [2]cacheWriter
	const ssrc = 0xbeef
	const rounds = 3000
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the control goroutine's feedback tick
		defer wg.Done()
		for !stop.Load() {
			c.ensureCache(m)
		}
	}()
	var answered atomic.Int64
	go func() { // a receiver's reader answering NACKs
		defer wg.Done()
		dst := make([]byte, maxDatagram)
		for !stop.Load() {
			cache := m.cache.Load()
			if cache == nil {
				continue
			}
			for seq := range uint16(64) {
				n, out := cache.resend(dst, ssrc, seq, 1, nil, 0)
				if out == nackSent {
					answered.Add(1)
					if !bytes.Equal(cachedPacket(ssrc, seq, sizeOf(seq)), dst[:n]) {
						t.Errorf("packet %d came back torn or stale", seq)
						return
					}
				}
			}
		}
	}()
	var hdr [2]protocol.RTPHeader
	var rw sync.WaitGroup
	for i := range readers {
		rw.Add(1)
		go func() {
			defer rw.Done()
			for r := 0; r < rounds; r++ {
				seq := uint16(r % 64)
				pkt := cachedPacket(ssrc, seq, sizeOf(seq))
				hdr[i].SSRC, hdr[i].SequenceNumber = ssrc, seq
				m.keep(&readers[i], pkt, &hdr[i], int64(r))
			}
		}()
	}
	rw.Wait()
	// The flow settles on reader 1: its cache is made and answers.
	for r := range 64 {
		seq := uint16(r)
		hdr[1].SSRC, hdr[1].SequenceNumber = ssrc, seq
		m.keep(&readers[1], cachedPacket(ssrc, seq, sizeOf(seq)), &hdr[1], int64(r))
	}
	require.Eventually(t, func() bool {
		cache := m.cache.Load()
		return cache != nil && cache.writer == &readers[1]
	}, 10e9, 1e6, "the control goroutine makes a cache for the reader now storing")
	for r := range 64 {
		seq := uint16(r)
		hdr[1].SSRC, hdr[1].SequenceNumber = ssrc, seq
		m.keep(&readers[1], cachedPacket(ssrc, seq, sizeOf(seq)), &hdr[1], int64(r))
	}
	require.Eventually(t, func() bool { return answered.Load() > 0 }, 10e9, 1e6)
	stop.Store(true)
	wg.Wait()
}
