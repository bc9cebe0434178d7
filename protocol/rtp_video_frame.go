package protocol

import "fmt"

// DefaultVideoFrameExtensionID is the RFC 8285 id of callrelay's video
// frame extension when signaling does not negotiate another.
const DefaultVideoFrameExtensionID uint8 = 2

// RankNone is the LayerAssign rank that stops a sender's video from
// reaching a receiver. Real ranks are 0..MaxSimulcastLayers-1 (see
// VideoFrame.Rank).
const RankNone uint8 = 0xFF

// The video frame extension's data byte (README.md section 4):
//
//	 0 1 2 3 4 5 6 7
//	+-+-+-+-+-+-+-+-+
//	|K|S|E|R| N | L |
//	+-+-+-+-+-+-+-+-+
//
// K key frame, S first packet of a frame, E last packet of a frame, R
// reserved (0, ignored on receipt), N layer count minus one (0..2; 3 is
// invalid), L layer index (0 lowest, < N+1).
const (
	vfKey        = 0x80
	vfStart      = 0x40
	vfEnd        = 0x20
	vfReserved   = 0x10
	vfCountShift = 2
	vfCountMask  = 0x03 // after the shift
	vfLayerMask  = 0x03
)

// VideoFrame is what callrelay's video frame header extension says about
// one video RTP packet, so that the relay can recognise key frames and
// simulcast layers without reading the encrypted payload. Every video packet
// carries it; a packet without it is taken as VideoFrame{Layers: 1}: a
// single stream, never a key frame.
type VideoFrame struct {
	Key   bool // the packet belongs to a key frame
	Start bool // the first packet of a frame
	End   bool // the last packet of a frame
	// Layer is the packet's simulcast layer, 0 the lowest; < Layers.
	Layer uint8
	// Layers is how many simulcast layers the sender sends right now,
	// 1..MaxSimulcastLayers; 1 means it does not simulcast.
	Layers uint8
}

// valid reports whether v can be written: Layers 1..MaxSimulcastLayers and
// Layer below Layers.
func (v VideoFrame) valid() bool {
	return v.Layers >= 1 && v.Layers <= MaxSimulcastLayers && v.Layer < v.Layers
}

// Byte encodes v as the extension's one data byte, the reserved bit 0. It
// fails, wrapping ErrRTPVideoFrame, when Layers is not 1..3 or Layer is not
// below Layers.
func (v VideoFrame) Byte() (byte, error) {
	if !v.valid() {
		return 0, fmt.Errorf("%w: layer %d of %d layers, want 1..%d layers", ErrRTPVideoFrame, v.Layer, v.Layers, MaxSimulcastLayers)
	}
	b := (v.Layers-1)<<vfCountShift | v.Layer
	if v.Key {
		b |= vfKey
	}
	if v.Start {
		b |= vfStart
	}
	if v.End {
		b |= vfEnd
	}
	return b, nil
}

// Rank is the packet's quality rank in a ladder of MaxSimulcastLayers
// rungs, 0 (lowest) to 2: Layer + MaxSimulcastLayers - Layers. The top
// layer always ranks 2, so a single stream is rank 2 and a two-layer split
// has ranks 1 (low) and 2 (high). A VideoFrame that is not valid (such as
// the zero value) ranks 2, as a single stream would.
func (v VideoFrame) Rank() uint8 {
	if !v.valid() {
		return MaxSimulcastLayers - 1
	}
	return v.Layer + MaxSimulcastLayers - v.Layers
}

// parseVideoFrame decodes the extension's data byte. ok is false when the
// layer count field is 3 or the layer index is not below the count.
func parseVideoFrame(b byte) (VideoFrame, bool) {
	v := VideoFrame{
		Key:    b&vfKey != 0,
		Start:  b&vfStart != 0,
		End:    b&vfEnd != 0,
		Layer:  b & vfLayerMask,
		Layers: (b>>vfCountShift)&vfCountMask + 1,
	}
	if !v.valid() {
		return VideoFrame{}, false
	}
	return v, true
}

// VideoFrame reads callrelay's video frame extension from the element with
// the given id (negotiated out of band; default
// DefaultVideoFrameExtensionID). ok is false when the element is absent,
// its data is not exactly one byte, or the byte is invalid (layer count
// field 3, or a layer index not below the count); the caller then treats
// the packet as VideoFrame{Layers: 1}. It does not allocate.
func (h *RTPHeader) VideoFrame(id uint8) (VideoFrame, bool) {
	d, found := h.ExtensionByID(id)
	if !found || len(d) != 1 {
		return VideoFrame{}, false
	}
	return parseVideoFrame(d[0])
}
