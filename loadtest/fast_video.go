package loadtest

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Simulcast video in the fast engine (Fast.VideoLayers): every member of a
// call sends, beside its audio, one RTP packet per simulcast layer per
// 20 ms frame, each layer on its own SSRC, with the callrelay video frame
// extension (protocol/README.md 4: layer, layer count, start and end of a
// one-packet frame, and a key frame every videoKeyEvery frames, so that a
// receiver's layer starts within a second without the devices answering
// PLIs), abs-send-time and a rollover counter. The payload is filler with
// the engine's stamp in clear, as in a pre-sealed audio copy: the relay
// cannot tell. Without a conductor the forwarder gives every receiver the
// lowest layer of each sender (5.11); against the reflector the other
// layers go from muteAddr (fast_select.go).

// videoSizes are the layers' datagram payload sizes, lowest first: at 50
// packets/s about 100, 240 and 440 kbit/s.
var videoSizes = [3]int{250, 600, 1100}

// videoKeyEvery is how often (in frames) a frame is a key frame.
const videoKeyEvery = 50

// videoPayloadType is the video streams' RTP payload type (the
// application's choice).
const videoPayloadType = 96

// videoSSRC is device dev's SSRC for video layer l: fastSSRC's form with
// 1+l in bits 25-26 (device numbers are below 2^24), never a probe.
func videoSSRC(dev, l int) uint32 {
	return fastSSRC(dev, false) | uint32(1+l)<<25 //nolint:gosec // l < 3
}

// streamKind is 0 for an audio SSRC of the engine, 1+l for video layer l.
func streamKind(ssrc uint32) int { return int(ssrc >> 25 & 3) }

// fastVideo is a device's video: a template per layer and its offsets.
type fastVideo struct {
	tpl    [3][]byte
	seq    [3]uint16
	vfOff  [3]int // the video frame element's data byte
	absOff [3]int
	payOff [3]int
	// keyNs is when its last key frame went (ns since the epoch; -1:
	// none yet).
	keyNs int64
}

// newFastVideo makes dev's templates for layers layers.
func newFastVideo(dev, layers int, seq uint16) (*fastVideo, error) {
	v := &fastVideo{keyNs: -1}
	for l := range layers {
		vf, err := protocol.VideoFrame{Start: true, End: true, Layer: uint8(l), Layers: uint8(layers)}.Byte() //nolint:gosec // l < layers <= 3
		if err != nil {
			return nil, err
		}
		h := protocol.RTPHeaderFields{PayloadType: videoPayloadType, SSRC: videoSSRC(dev, l), SequenceNumber: seq}
		h.Extensions[0] = protocol.RTPExtension{ID: protocol.DefaultVideoFrameExtensionID, Data: []byte{vf}}
		h.Extensions[1] = protocol.RTPExtension{ID: protocol.DefaultAbsSendTimeExtensionID, Data: []byte{0, 0, 0}}
		h.Extensions[2] = protocol.RTPExtension{ID: protocol.DefaultRolloverCounterExtensionID, Data: []byte{0}}
		pkt := make([]byte, h.MarshalSize()+videoSizes[l])
		if _, err := h.MarshalTo(pkt); err != nil {
			return nil, err
		}
		pay, vfo, ok := rtpOffsets(pkt, protocol.DefaultVideoFrameExtensionID)
		_, abs, _ := rtpOffsets(pkt, protocol.DefaultAbsSendTimeExtensionID)
		if !ok || vfo == 0 || abs == 0 || len(pkt) < pay+stampSize {
			return nil, errors.New("loadtest: video template without its elements")
		}
		v.tpl[l], v.seq[l], v.vfOff[l], v.absOff[l], v.payOff[l] = pkt, seq, vfo, abs, pay
	}
	return v, nil
}

// sendVideo sends d's video packets of one frame, one per layer.
func (e *fastEngine) sendVideo(d *fastDev, now time.Time) {
	v := d.video
	if v == nil {
		return
	}
	c := e.calls[d.call]
	sentNs := int64(now.Sub(e.epoch))
	fanout := e.receivers(c, d, sentNs)
	frame := d.frame - 1 // sendFrame counted this frame
	if frame%videoKeyEvery == 0 {
		v.keyNs = sentNs
	}
	abs := protocol.AbsSendTimeBytes(protocol.AbsSendTime(now))
	for l := range e.f.VideoLayers {
		pkt := v.tpl[l]
		binary.BigEndian.PutUint16(pkt[2:4], v.seq[l])
		v.seq[l]++
		binary.BigEndian.PutUint32(pkt[4:8], frame*videoTicks)
		if frame%videoKeyEvery == 0 {
			pkt[v.vfOff[l]] |= 0x80
		} else {
			pkt[v.vfOff[l]] &^= 0x80
		}
		copy(pkt[v.absOff[l]:v.absOff[l]+3], abs[:])
		putStamp(pkt[v.payOff[l]:], sentNs, c.cls, 0, frame)
		if l > 0 && e.f.Target == TargetReflector {
			e.queueFrom(d, pkt, e.devices().mute())
		} else {
			e.queue(d, pkt)
		}
		e.sent[c.cls].Add(1)
		e.selSent.sent[1+l].Add(1)
		e.selSent.offered[1+l].Add(uint64(fanout)) //nolint:gosec // fanout >= 0
		if l == 0 {
			if n := e.keyedReceivers(c, d, v.keyNs); n > 0 {
				e.expected[c.cls][(sentNs/lossBucketNs)%lossRing].Add(uint64(n)) //nolint:gosec // n > 0
			}
		}
	}
}

// keyedReceivers counts the members of c other than d whose copy of d's
// layer 0 has started by now: they counted as receivers before d's last
// key frame, sent at keyNs (fast_select.go).
func (e *fastEngine) keyedReceivers(c *fastCall, d *fastDev, keyNs int64) int {
	if keyNs < 0 {
		return 0
	}
	n := 0
	for _, no := range c.devs {
		if no != d.no && e.devs[no].state == devUp {
			if r := e.readyAt[no].Load(); r > 0 && r <= keyNs {
				n++
			}
		}
	}
	return n
}

// videoTicks is a video frame's RTP timestamp step (90 kHz, 20 ms).
const videoTicks = 1800
