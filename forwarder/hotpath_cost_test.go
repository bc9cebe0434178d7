package forwarder

import (
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/callrelay/callrelay/protocol"
)

// The cost of one packet as production runs it: the sender's NACK cache
// exists (the control goroutine makes it after the first RTP), so every
// RTP packet is also stored in it. BenchmarkHotPath runs without one.
//
//	taskset -c 1 go test -run '^$' -bench 'HotPathCached|NackCacheContended' -count 10 ./forwarder/

// threadCPU measures the CPU time of the benchmark's own thread, next to
// the wall time: on a shared, loaded machine (load averages of 10-20 on 2
// cores) the wall time mostly measures the others, while the thread's CPU
// time per op moves only with the work done (and the caches it shares).
type threadCPU struct{ start int64 }

func startThreadCPU(b *testing.B) *threadCPU {
	runtime.LockOSThread()
	b.Cleanup(runtime.UnlockOSThread)
	t := &threadCPU{start: threadCPUNow(b)}
	b.ResetTimer()
	return t
}

func threadCPUNow(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// report adds cpu-ns/op and packets per CPU-second.
func (t *threadCPU) report(b *testing.B) {
	cpu := float64(threadCPUNow(b) - t.start)
	if cpu <= 0 || b.N < 1000 {
		return // too short to measure: the rusage clock is coarse
	}
	b.ReportMetric(cpu/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(b.N)/(cpu/1e9), "packets/cpu-s")
}

// BenchmarkHotPathCachedAudio: audio to 4 others, stored in the cache.
func BenchmarkHotPathCachedAudio(b *testing.B) {
	r, rt, src, _ := hotPathFixture(b)
	rt.bySrc[src].media.cache.Store(newNackCache(512<<10, &r.cw))
	b.ReportAllocs()
	cpu := startThreadCPU(b)
	for i := 0; i < b.N; i++ {
		r.handle(rt, audioPacket, src, 0)
		if i%readBatch == readBatch-1 {
			r.flush()
		}
	}
	r.flush()
	cpu.report(b)
}

// BenchmarkHotPathCachedVideo: one ~1030-byte video packet through the
// pairs to 4 others, stored in the cache.
func BenchmarkHotPathCachedVideo(b *testing.B) {
	r, rt, src, _ := hotPathFixture(b)
	rt.bySrc[src].media.cache.Store(newNackCache(512<<10, &r.cw))
	pkt := videoPacket(0xcafe, 0, protocol.VideoFrame{Key: true, Start: true, Layers: 1})
	b.ReportAllocs()
	cpu := startThreadCPU(b)
	for i := 0; i < b.N; i++ {
		binary.BigEndian.PutUint16(pkt[2:], uint16(i))
		r.handle(rt, pkt, src, 0)
		if i%readBatch == readBatch-1 {
			r.flush()
		}
	}
	r.flush()
	cpu.report(b)
}

// BenchmarkNackCacheStore: the sender's reader storing 1100-byte packets,
// nobody answering.
func BenchmarkNackCacheStore(b *testing.B) {
	c := newNackCache(512<<10, nil)
	pkt := cachedPacket(7, 0, 1100)
	b.ReportAllocs()
	cpu := startThreadCPU(b)
	for i := 0; i < b.N; i++ {
		c.put(pkt, 7, uint16(i), int64(i)*1e6)
	}
	cpu.report(b)
}

// BenchmarkNackCacheContended: one goroutine stores 1100-byte packets (the
// sender's reader) while another answers NACKs for recent ones without
// pause (the receivers' reader under a NACK storm). ns/op is the storing
// side's cost per packet.
func BenchmarkNackCacheContended(b *testing.B) {
	c := newNackCache(512<<10, nil)
	pkt := cachedPacket(7, 0, 1100)
	var stored atomic.Uint32
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		dst := make([]byte, maxDatagram)
		for !stop.Load() {
			seq := uint16(stored.Load())
			c.resend(dst, 7, seq-10, 1, nil, 0)
		}
	}()
	b.ReportAllocs()
	cpu := startThreadCPU(b)
	for i := 0; i < b.N; i++ {
		seq := uint16(i)
		c.put(pkt, 7, seq, int64(i)*1e6)
		stored.Store(uint32(seq))
	}
	cpu.report(b)
	b.StopTimer()
	stop.Store(true)
	wg.Wait()
}
