package forwarder

import (
	"sync/atomic"

	"github.com/callrelay/callrelay/protocol"
)

// Video routing: subscriptions, simulcast layers and key-frame switching.
//
// An RTP packet without the audio-level extension is video. A receiver gets
// a sender's video only if it subscribed to it (protocol/README.md 5.5);
// for each such (sender, receiver) pair the data path holds a pair: the
// conductor's target (the highest quality rank the receiver may get, see
// protocol.VideoFrame.Rank) and the rank being forwarded now. The clear
// video frame extension says which layer a packet belongs to, how many
// layers the sender sends, and whether it starts a key frame; the payload
// is never read.
//
// For each video packet and subscribed receiver the reader forwards the
// highest rank the sender offers now that is not above the target (the
// lowest one before any decision: the default policy). Switching to another
// rank waits for a packet that starts a key frame on that rank; until then
// the receiver keeps getting the rank it had, if the sender still sends it,
// and the sender is asked for a key frame (PLI, sent by the control
// goroutine). A packet without the extension is a single stream that is
// forwarded to every subscribed receiver not set to rankNone.
type pair struct {
	target atomic.Uint32 // rankDefault, 0..2, or rankNone; written by the control goroutine
	cur    atomic.Uint32 // 0: nothing yet; else 1 | layers<<4 | rank<<8 being forwarded
}

const (
	rankNone    = uint32(protocol.RankNone)
	rankDefault = 0x100 // no decision: the lowest rank offered
)

func newPair() *pair {
	p := new(pair)
	p.target.Store(rankDefault)
	return p
}

// pass decides one video packet for one receiver. vf is the packet's video
// frame extension, has whether it carried one. m is the sender's media.
func (p *pair) pass(vf protocol.VideoFrame, has bool, m *mediaInfo, slot int) bool {
	t := p.target.Load()
	if t == rankNone {
		return false
	}
	if !has {
		return true
	}
	lowest := uint32(protocol.MaxSimulcastLayers) - uint32(vf.Layers)
	want := t
	if t == rankDefault {
		want = lowest
	} else if t < lowest {
		return false // the sender's lowest layer is still too much for this receiver
	}
	rank := uint32(vf.Rank())
	wantCur := 1 | uint32(vf.Layers)<<4 | want<<8
	cur := p.cur.Load()
	if cur == wantCur {
		return rank == want
	}
	if rank == want {
		if vf.Key && vf.Start {
			p.cur.Store(wantCur) // switch at the start of a key frame
			return true
		}
		if slot >= 0 {
			m.keyWanted.Or(1 << slot) // the control goroutine asks for one
		}
	}
	// Until the switch, keep what the receiver had, if it is still sent.
	return cur != 0 && cur>>4&0xF == uint32(vf.Layers) && cur>>8 == rank
}

// videoMeter counts a sender's video per quality rank and remembers the
// layer count it sends, for the metadata. Written by the reader serving
// the sender's flow, read by the control goroutine.
type videoMeter struct {
	bytes  [protocol.MaxSimulcastLayers]atomic.Uint64 // cumulative bytes per rank
	layers atomic.Uint32                              // layer count of the last video packet; 0 before any
	lastNS atomic.Int64                               // unix ns of the last video packet
}

// noteVideo meters one video packet of the sender, carried on the SSRC in
// slot, and remembers which layer that SSRC carries.
func (m *mediaInfo) noteVideo(slot int, vf protocol.VideoFrame, has bool, size int, nowNS int64) {
	m.video.note(vf, has, size, nowNS)
	if slot < 0 || !has {
		return
	}
	if v := 1 | uint32(vf.Layers)<<4 | uint32(vf.Rank())<<8; m.slotVideo[slot].Load() != v {
		m.slotVideo[slot].Store(v)
	}
}

// keep stores one of the sender's RTP packets for NACKs, from w, the
// reader serving the sender's flow, once the control goroutine has made a
// cache written by w alone. A flow that moved to another reader asks for a
// new cache (the old one's packets are no longer answered).
func (m *mediaInfo) keep(w *cacheWriter, b []byte, h *protocol.RTPHeader, nowNS int64) {
	if !m.rtpSeen.Load() {
		m.rtpSeen.Store(true)
	}
	if c := m.cache.Load(); c != nil && c.writer == w {
		c.put(b, h.SSRC, h.SequenceNumber, nowNS)
		return
	}
	if m.cacheFor.Load() != w {
		m.cacheFor.Store(w) // the control goroutine makes w a cache
	}
}

func (v *videoMeter) note(vf protocol.VideoFrame, has bool, size int, nowNS int64) {
	rank, layers := uint8(protocol.MaxSimulcastLayers-1), uint8(1)
	if has {
		rank, layers = vf.Rank(), vf.Layers
	}
	v.bytes[rank].Add(uint64(size))
	if uint8(v.layers.Load()) != layers {
		v.layers.Store(uint32(layers))
	}
	v.lastNS.Store(nowNS)
}

// slotOf returns the index of ssrc among the SSRCs noted for m, or -1.
func (m *mediaInfo) slotOf(ssrc uint32) int {
	for i := range m.ssrcs {
		v, ok := m.ssrcs[i].get()
		if !ok {
			return -1
		}
		if v == ssrc {
			return i
		}
	}
	return -1
}
