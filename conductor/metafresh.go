package conductor

import (
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Metadata freshness (protocol/README.md 7 "Freshness" and 7.3). A
// MetadataBatch is authenticated by the cluster key but carries no replay
// window: anyone who can publish on a metadata subject could send a
// captured batch again, and an old batch says who spoke then (a replayed
// burst of speech would make an old speaker dominant). So a partition
// takes one forwarder's batches only in order, by (at, sequence), and only
// if made within metadataSkew of its clock; the rest are dropped and
// counted (callrelay_conductor_metadata_rejected_total{reason="stale"} and
// {reason="skewed"}).

// metadataSkew bounds how far a batch's `at` may lie from this clock.
const metadataSkew = 10 * time.Second

// batchMark is the last batch a partition took from one forwarder.
type batchMark struct {
	at  time.Time
	seq uint64
}

// takeBatch says whether b may be taken: newer than the last batch taken
// from its forwarder for this partition (a later `at`, or the same `at`
// and a higher sequence: one tick's calls split over several batches), and
// within metadataSkew of now. A batch taken is remembered. A forwarder
// that restarts starts its sequence again, with a later `at`.
func (p *partition) takeBatch(b *protocol.MetadataBatch, now time.Time) bool {
	if b.At.Sub(now).Abs() > metadataSkew {
		p.reject("skewed", now, zap.String("forwarder", b.Forwarder), zap.Time("at", b.At))
		return false
	}
	if p.marks == nil {
		p.marks = make(map[string]batchMark)
	}
	last, ok := p.marks[b.Forwarder]
	newer := b.At.After(last.at) || b.At.Equal(last.at) && b.Seq > last.seq
	if ok && !newer {
		p.reject("stale", now, zap.String("forwarder", b.Forwarder), zap.Uint64("seq", b.Seq), zap.Uint64("last_seq", last.seq))
		return false
	}
	p.marks[b.Forwarder] = batchMark{at: b.At, seq: b.Seq}
	p.pruneMarks(now)
	return true
}

// pruneMarks forgets forwarders not heard from for twice metadataSkew:
// whatever they sent before that fails the skew check anyway. At most once
// per metadataSkew, so it costs nothing per batch.
func (p *partition) pruneMarks(now time.Time) {
	if now.Sub(p.marksPruned) < metadataSkew {
		return
	}
	p.marksPruned = now
	for fwd, m := range p.marks {
		if now.Sub(m.at) > 2*metadataSkew {
			delete(p.marks, fwd)
		}
	}
}
