package forwarder

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// streamLeg is what the forwarder sends a stream member: a bounded queue
// that any reader (UDP, trunk, stream worker) and the control goroutine
// push to without ever blocking, and one writer goroutine that drains it
// into the connection.
//
// The queue is two rings of pooled frame buffers, audio (with RTCP and
// relay messages) and video, bounded together by QueueBytes. Over the
// bound the oldest video goes first, then (if the newcomer is audio) the
// oldest audio; a video packet that would need audio dropped is dropped
// itself. Audio is written before video. Drops are counted.
//
// The lock is the leg's own, held for a copy; readers share it only when
// they send to the same member, as they would share its socket's lock on
// UDP.
type streamLeg struct {
	s    *streamServer
	c    *streamConn
	addr netip.AddrPort // the connection's stream address

	mu      sync.Mutex
	audio   frameRing
	video   frameRing
	bytes   int  // queued, prefixes included
	dropped bool // since the writer last gathered
	closed  bool
	wake    chan struct{} // capacity 1

	est legEstimate // owned by the writer
}

// legFrame is a queued frame: the RFC 4571 prefix and the payload.
type legFrame struct {
	n   int
	buf [protocol.FrameHeaderLen + protocol.MaxFrame]byte
}

var legFrames = sync.Pool{New: func() any { return new(legFrame) }}

// frameRing is a fixed ring of queued frames.
type frameRing struct {
	f          []*legFrame
	head, size int
}

func (r *frameRing) push(f *legFrame) bool {
	if r.size == len(r.f) {
		return false
	}
	r.f[(r.head+r.size)%len(r.f)] = f
	r.size++
	return true
}

func (r *frameRing) pop() *legFrame {
	if r.size == 0 {
		return nil
	}
	f := r.f[r.head]
	r.f[r.head] = nil
	r.head, r.size = (r.head+1)%len(r.f), r.size-1
	return f
}

// Ring sizes: the byte bound is what usually binds; these bound small
// packets.
const (
	legAudioSlots = 256
	legVideoSlots = 512
)

func newStreamLeg(s *streamServer, c *streamConn) *streamLeg {
	return &streamLeg{s: s, c: c, addr: c.addr, wake: make(chan struct{}, 1),
		audio: frameRing{f: make([]*legFrame, legAudioSlots)}, video: frameRing{f: make([]*legFrame, legVideoSlots)}}
}

// push queues a copy of b; video says which ring. It never blocks.
func (l *streamLeg) push(b []byte, video bool) {
	if len(b) == 0 || len(b) > protocol.MaxFrame {
		return
	}
	f := legFrames.Get().(*legFrame)
	f.buf[0], f.buf[1] = byte(len(b)>>8), byte(len(b))
	f.n = protocol.FrameHeaderLen + copy(f.buf[protocol.FrameHeaderLen:], b)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		legFrames.Put(f)
		return
	}
	ring := &l.audio
	if video {
		ring = &l.video
	}
	for l.bytes+f.n > l.s.cfg.QueueBytes || ring.size == len(ring.f) {
		if !l.dropOldest(video) {
			l.dropped = true
			l.mu.Unlock()
			l.s.c.queueDrops[1].Add(1) // video that only audio could make room for
			legFrames.Put(f)
			return
		}
	}
	ring.push(f)
	l.bytes += f.n
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// dropOldest makes room for a newcomer: a video newcomer only by dropping
// the oldest video; an audio one by the oldest video, or the oldest audio
// when there is none or the audio ring itself is full. Called with mu held.
func (l *streamLeg) dropOldest(newIsVideo bool) bool {
	kind, ring := 1, &l.video
	switch {
	case newIsVideo && l.video.size == 0:
		return false
	case !newIsVideo && (l.video.size == 0 || l.audio.size == len(l.audio.f)):
		kind, ring = 0, &l.audio
	}
	f := ring.pop()
	if f == nil {
		return false
	}
	l.bytes -= f.n
	legFrames.Put(f)
	l.dropped = true
	l.s.c.queueDrops[kind].Add(1)
	return true
}

// shut empties the queue and refuses more; the writer ends.
func (l *streamLeg) shut() {
	l.mu.Lock()
	l.closed = true
	for _, r := range []*frameRing{&l.audio, &l.video} {
		for f := r.pop(); f != nil; f = r.pop() {
			legFrames.Put(f)
		}
	}
	l.bytes = 0
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// legWriteBuf is how much one write gathers.
const legWriteBuf = 16 << 10

// write drains the queue into the connection until it is closed. A write
// that makes no progress for WriteTimeout (the member does not read) ends
// the connection.
func (l *streamLeg) write() {
	buf := make([]byte, 0, legWriteBuf)
	tick := time.NewTicker(legEstimateEvery)
	defer tick.Stop()
	for {
		select {
		case <-l.wake:
		case now := <-tick.C:
			l.est.tick(l, now)
			continue
		}
		for {
			var more, closed bool
			buf, more, closed = l.gather(buf[:0])
			if closed {
				return
			}
			if len(buf) == 0 {
				break
			}
			start := time.Now()
			_ = l.c.nc.SetWriteDeadline(start.Add(l.s.cfg.WriteTimeout))
			n, err := l.c.nc.Write(buf)
			l.est.wrote(n, time.Since(start), more)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					l.c.close(closeWriteStalled)
				} else {
					l.c.close(closeError)
				}
				return
			}
		}
	}
}

// gather moves queued frames into buf, audio first, up to legWriteBuf.
// more: frames are left queued.
func (l *streamLeg) gather(buf []byte) (out []byte, more, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return buf, false, true
	}
	frames := 0
	for _, r := range []*frameRing{&l.audio, &l.video} {
		for r.size > 0 && len(buf)+r.f[r.head].n <= cap(buf) {
			f := r.pop()
			buf = append(buf, f.buf[:f.n]...)
			l.bytes -= f.n
			legFrames.Put(f)
			frames++
		}
	}
	l.s.c.framesOut.Add(uint64(frames))
	l.s.c.out.Add(uint64(len(buf)))
	more = l.audio.size+l.video.size > 0 || l.dropped
	l.dropped = false
	return buf, more, false
}

// toStream queues b for a stream member (reader.queue's other half).
func (r *reader) toStream(b []byte, d *dest) {
	d.leg.push(b, streamIsVideo(b, &r.hdr, r.f.audio.extID))
	r.pout++
	r.bout += uint64(len(b))
	d.rx.down.sent.Add(uint64(len(b)))
}

// streamIsVideo: b, whose RTP header (if it is RTP) is parsed into h, is
// video, which a backed-up leg drops first. RTCP and relay messages count
// as audio.
func streamIsVideo(b []byte, h *protocol.RTPHeader, audioExt uint8) bool {
	if protocol.Classify(b) != protocol.KindRTP {
		return false
	}
	_, _, audio := h.AudioLevel(audioExt)
	return !audio
}
