package forwarder

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/callrelay/callrelay/protocol"
)

// The per-packet cost with many senders, as at the knee: 500 one-to-one
// audio calls (1,000 senders), one audio packet of each sender in turn, so
// every sender's state (NACK cache, estimator, meters) is cold in the CPU
// caches as in production, where BenchmarkHotPath* keep one sender's state
// hot. The caches are made by the control goroutine's own code
// (ensureCache) after each sender's first packet, as in production.
//
//	taskset -c 1 go test -run '^$' -bench 'ManyAudioSenders' -benchtime 2000000x -count 8 ./forwarder/
//
// new: the calls' first 2,000 packets per sender (40 s of audio) after
// their caches were made; steady: the same once every sender has written
// 4,200 packets (more than a 512 KiB ring holds of them).

const manyCalls = 500

type manySenders struct {
	r    *reader
	rt   *routes
	srcs []netip.AddrPort
	seqs []uint16
	pkt  []byte
}

func newManySenders(b *testing.B) *manySenders {
	calls := make(map[protocol.ID]*call, manyCalls)
	var srcs []netip.AddrPort
	for i := 0; i < manyCalls; i++ {
		cl := &call{id: protocol.NewID(), members: map[protocol.ID]*session{}}
		for j := 0; j < 2; j++ {
			n := 2*i + j
			ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(n >> 8), byte(n)}), 20000)
			id := protocol.NewID()
			cl.members[id] = &session{call: cl, participant: id, addr: ap, media: new(mediaInfo)}
			srcs = append(srcs, ap)
		}
		calls[cl.id] = cl
	}
	f := &Forwarder{cfg: Default(), audio: audioParamsOf(DefaultAudio()), adapt: adaptParamsOf(DefaultAdapt())}
	ms := &manySenders{
		r:    &reader{f: f, pc: &memConn{}, c: new(counters), knownLimiter: newSTUNLimiter(20, 40), newLimiter: newSTUNLimiter(20, 40)},
		rt:   buildRoutes(calls, false),
		srcs: srcs,
		seqs: make([]uint16, len(srcs)),
		pkt:  append([]byte(nil), audioPacket...),
	}
	ms.send(len(srcs)) // every sender's first packet: it asks for a cache
	c := &control{f: f}
	for _, src := range srcs {
		c.ensureCache(ms.rt.bySrc[src].media)
	}
	return ms
}

// send feeds n packets, the senders in turn, flushing once per read batch
// as the reader does (and reading the clock once per batch).
func (ms *manySenders) send(n int) {
	r := ms.r
	for i := 0; i < n; i++ {
		k := i % len(ms.srcs)
		ms.seqs[k]++
		binary.BigEndian.PutUint16(ms.pkt[2:], ms.seqs[k])
		binary.BigEndian.PutUint32(ms.pkt[8:], uint32(k))
		r.handle(ms.rt, ms.pkt, ms.srcs[k], 0)
		if i%readBatch == readBatch-1 {
			r.flush()
			r.batchNow = 0
		}
	}
	r.flush()
	r.batchNow = 0
}

func BenchmarkManyAudioSenders(b *testing.B) {
	for _, bc := range []struct {
		name   string
		warmup int // packets per sender before timing
	}{{"new", 0}, {"steady", 4200}} {
		b.Run(bc.name, func(b *testing.B) {
			ms := newManySenders(b)
			ms.send(bc.warmup * len(ms.srcs))
			b.ReportAllocs()
			cpu := startThreadCPU(b)
			ms.send(b.N)
			cpu.report(b)
		})
	}
}

// BenchmarkSenderCache: what the control goroutine spends making one audio
// sender's NACK cache (ensureCache after its first packet).
func BenchmarkSenderCache(b *testing.B) {
	f := &Forwarder{cfg: Default()}
	c := &control{f: f}
	var w cacheWriter
	ms := make([]mediaInfo, 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m := &ms[i%len(ms)]
		m.cache.Store(nil)
		m.cacheFor.Store(&w)
		c.ensureCache(m)
	}
}
