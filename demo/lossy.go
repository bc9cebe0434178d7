package demo

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// lossy emulates a bad downlink for one participant, in its own process:
// it drops a share of the RTP packets the device receives before its
// Feedback sees them, so the Feedback NACKs them and the relay resends
// them from its cache. Retransmissions are dropped at the same rate. It
// follows every packet it dropped until it arrives after all (recovered)
// or lossGiveUp has passed (lost), so the demo can say exactly what NACK
// recovered of the loss it made. Only the receive goroutine calls drop and
// arrived; stats may be called from anywhere.
type lossy struct {
	pct float64 // 0..100
	rng *rand.Rand

	mu      sync.Mutex
	pending map[uint64]time.Time // (SSRC, sequence number) dropped and not yet arrived -> first drop
	drops   uint64               // packets dropped, retransmissions included
	dropped uint64               // distinct packets dropped
	recov   uint64               // of them, arrived later
	lost    uint64               // of them, given up
	swept   time.Time            // the last expire
}

const (
	// lossGiveUp is when a dropped packet counts as lost: past the
	// Feedback's give-up time (1s) and its last NACK's round trip.
	lossGiveUp = 2 * time.Second
	// maxLossPending bounds the packets followed; beyond it no more are
	// dropped until some arrive or are given up.
	maxLossPending = 8192
)

func newLossy(pct float64, seed uint64) *lossy {
	return &lossy{pct: pct, rng: rand.New(rand.NewPCG(seed, 0x1055)), pending: make(map[uint64]time.Time)}
}

// rtpKey is the (SSRC, sequence number) of an RTP packet; false when b is
// too short to be one.
func rtpKey(b []byte) (uint64, bool) {
	if len(b) < 12 {
		return 0, false
	}
	return uint64(binary.BigEndian.Uint32(b[8:12]))<<16 | uint64(binary.BigEndian.Uint16(b[2:4])), true
}

// drop reports whether to drop the RTP packet b, received at now.
func (l *lossy) drop(b []byte, now time.Time) bool {
	if l.rng.Float64()*100 >= l.pct {
		return false
	}
	k, ok := rtpKey(b)
	if !ok {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) >= 100*time.Millisecond {
		l.expire(now)
	}
	if _, again := l.pending[k]; !again {
		if len(l.pending) >= maxLossPending {
			return false
		}
		l.pending[k] = now
		l.dropped++
	}
	l.drops++
	return true
}

// arrived notes an RTP packet that passed (not a duplicate).
func (l *lossy) arrived(b []byte) {
	k, ok := rtpKey(b)
	if !ok {
		return
	}
	l.mu.Lock()
	if _, was := l.pending[k]; was {
		delete(l.pending, k)
		l.recov++
	}
	l.mu.Unlock()
}

// expire gives up the packets dropped lossGiveUp before now. l.mu is held.
func (l *lossy) expire(now time.Time) {
	l.swept = now
	for k, at := range l.pending {
		if now.Sub(at) >= lossGiveUp {
			delete(l.pending, k)
			l.lost++
		}
	}
}

// lossStats is what a lossy saw.
type lossStats struct {
	Drops     uint64 // packets dropped, retransmissions included
	Dropped   uint64 // distinct packets dropped
	Recovered uint64 // of them, arrived after all (resent by the relay after a NACK)
	Lost      uint64 // of them, never arrived
	Pending   uint64 // of them, dropped less than lossGiveUp ago
}

func (l *lossy) stats(now time.Time) lossStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	return lossStats{Drops: l.drops, Dropped: l.dropped, Recovered: l.recov, Lost: l.lost, Pending: uint64(len(l.pending))}
}
