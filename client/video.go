package client

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// VideoConfig configures a VideoSender. Zero values take the defaults listed
// per field.
type VideoConfig struct {
	// SSRCs are the streams' SSRCs, one per simulcast layer, lowest first:
	// layer i is always sent on SSRCs[i], and the single stream (no
	// simulcast) on SSRCs[0]. Zero entries are drawn at random.
	SSRCs [protocol.MaxSimulcastLayers]uint32
	// Key is the sender's SRTP master key, used for every layer (each SSRC
	// has its own SRTP context). Receivers add it for every SSRC.
	Key MediaKey
	// PayloadType is the RTP payload type. Default 96.
	PayloadType uint8
	// FrameRate in frames per second. Default 30.
	FrameRate int
	// Height is the picture height of the full-resolution stream, in
	// pixels. Default 720. With simulcast, the lowest layer is a quarter of
	// it and, with three layers, the middle one a half.
	Height int
	// InitialBitrate is what the single stream sends before the relay says
	// anything, bits per second. Default 600 kbit/s.
	InitialBitrate uint32
	// AudioBitrate is the part of a total target (TargetBitrate's total,
	// REMB) left to the device's audio, bits per second. Default 40 kbit/s.
	AudioBitrate uint32
	// KeyFrameInterval is the longest time between two key frames of a
	// layer. Default 4s.
	KeyFrameInterval time.Duration
	// KeyFrameMinInterval rate-limits key frames asked for by PLI or FIR:
	// at most one per interval and layer (a request inside it is served
	// when it ends). Default 200ms.
	KeyFrameMinInterval time.Duration
	// MaxPayload bounds an RTP packet's payload, bytes. Default 1100.
	MaxPayload int
	// VideoFrameID and AbsSendTimeID are the RFC 8285 one-byte ids of the
	// video frame and abs-send-time extensions. Defaults
	// protocol.DefaultVideoFrameExtensionID and
	// protocol.DefaultAbsSendTimeExtensionID.
	VideoFrameID  uint8
	AbsSendTimeID uint8
	// ROCID is the RFC 8285 one-byte id of the rollover counter extension
	// every packet carries (SenderConfig.ROCID). Default
	// protocol.DefaultRolloverCounterExtensionID.
	ROCID uint8
	// FirstSequence is every layer's first RTP sequence number
	// (SenderConfig.FirstSequence): 0, the default, draws a random one per
	// layer. Tests set it near 65535 to see every layer roll over soon.
	FirstSequence uint16
	// RelaySSRC is the packet-sender SSRC of the relay's own REMB; REMBs
	// with another one (another member's, relayed) are ignored. Default 0,
	// the SSRC the relay puts on its RTCP (protocol/README.md 5.1).
	RelaySSRC uint32
}

// Frame sizes: a key frame is keyFrameRatio times a delta frame's nominal
// size; the deltas that follow pay the excess back over paybackFrames
// frames, so each layer's average stays on its target.
const (
	keyFrameRatio  = 3.5
	paybackFrames  = 15
	minFramePacket = 16 // payload bytes of the smallest frame
	// maxFrameGap is the longest time a late frame makes up for: like an
	// encoder's rate control, a starved frame clock sends fewer, larger
	// frames.
	maxFrameGap = 500 * time.Millisecond
	srtpTagLen  = 10 // AES128_CM_HMAC_SHA1_80
)

func (c VideoConfig) withDefaults() (VideoConfig, error) {
	setDefault(&c.FrameRate, 30)
	setDefault(&c.Height, 720)
	setDefault(&c.MaxPayload, 1100)
	setDefault(&c.KeyFrameInterval, 4*time.Second)
	setDefault(&c.KeyFrameMinInterval, 200*time.Millisecond)
	if c.PayloadType == 0 {
		c.PayloadType = 96
	}
	if c.InitialBitrate == 0 {
		c.InitialBitrate = 600_000
	}
	if c.AudioBitrate == 0 {
		c.AudioBitrate = 40_000
	}
	if c.VideoFrameID == 0 {
		c.VideoFrameID = protocol.DefaultVideoFrameExtensionID
	}
	if c.AbsSendTimeID == 0 {
		c.AbsSendTimeID = protocol.DefaultAbsSendTimeExtensionID
	}
	if c.ROCID == 0 {
		c.ROCID = protocol.DefaultRolloverCounterExtensionID
	}
	switch {
	case c.FrameRate > 120:
		return c, fmt.Errorf("%w: video FrameRate %d: want 1..120", ErrConfig, c.FrameRate)
	case c.MaxPayload < 200 || c.MaxPayload > 1400:
		return c, fmt.Errorf("%w: video MaxPayload %d: want 200..1400 bytes", ErrConfig, c.MaxPayload)
	case c.VideoFrameID > 14 || c.AbsSendTimeID > 14 || c.ROCID > 14 ||
		c.VideoFrameID == c.AbsSendTimeID || c.ROCID == c.VideoFrameID || c.ROCID == c.AbsSendTimeID:
		return c, fmt.Errorf("%w: video extension ids %d, %d and %d (video frame, abs-send-time, rollover counter): want three different ids in 1..14",
			ErrConfig, c.VideoFrameID, c.AbsSendTimeID, c.ROCID)
	}
	for i := range c.SSRCs {
		for c.SSRCs[i] == 0 || dupSSRC(c.SSRCs[:i], c.SSRCs[i]) {
			if c.SSRCs[i] != 0 {
				return c, fmt.Errorf("%w: video SSRCs[%d] = %d repeats an earlier layer's", ErrConfig, i, c.SSRCs[i])
			}
			var b [4]byte
			_, _ = rand.Read(b[:])
			c.SSRCs[i] = binary.BigEndian.Uint32(b[:])
		}
	}
	return c, nil
}

func dupSSRC(list []uint32, s uint32) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// VideoSender is a synthetic camera: it sends video frames at the
// configured frame rate, at the bitrates the relay asks for, as RTP packets
// whose payload is random-looking filler encrypted end to end like real
// media. It is what the demo, the load tester and the tests send.
//
// Every packet carries the video frame extension (layer, layer count, K on
// every packet of a key frame, S on a frame's first packet, E on its last)
// and abs-send-time, stamped when the packet is sealed. It obeys the relay's
// instructions, which the application passes to HandleRTCP:
//
//   - SimulcastControl splits the video into 2 or 3 layers (each on its own
//     SSRC, the lowest at a quarter of the height) or back into one stream;
//     every layer starts with a key frame.
//   - TargetBitrate sets the total and the per-layer targets; a layer target
//     of 0 pauses that layer (it restarts with a key frame). The single
//     stream sends layer 0's target when one is given, else the total less
//     AudioBitrate. Without per-layer targets, the video budget is split
//     over the layers (1:4 for two, 1:3:8 for three).
//   - REMB from the relay caps the total (less AudioBitrate).
//   - PLI or FIR for one of its SSRCs makes that layer's next frame a key
//     frame, at most one per KeyFrameMinInterval.
//
// It starts with one stream at InitialBitrate and a key frame, and sends a
// key frame on every layer at least every KeyFrameInterval. Its methods are
// safe for concurrent use.
type VideoSender struct {
	cfg    VideoConfig
	w      RTPWriter
	layers [protocol.MaxSimulcastLayers]*videoLayer
	start  time.Time
	tsBase uint32
	last   time.Time // the last frame time (frame goroutine only)

	mu  sync.Mutex // guards ctl; never held while sending
	ctl videoControl

	writeErrors atomic.Uint64
	closeOnce   sync.Once
	stop        chan struct{}
	wg          sync.WaitGroup
}

// videoLayer is one SSRC's sender and rate control. Only the frame
// goroutine touches the fields above the counters.
type videoLayer struct {
	snd     *Sender
	pkt     []byte // sealed packet
	payload []byte // plaintext payload
	// overhead is the bytes a packet adds to its payload: the RTP header
	// with its extensions and the SRTP tag. It grows by a word when the
	// rollover counter outgrows the header's padding.
	overhead int
	balance  float64 // bytes the layer may still send against its target
	lastKey  time.Time
	active   bool // sent in the last frame
	frame    uint32

	frames, keyFrames, packets, bytes atomic.Uint64
}

// videoControl is what the relay asked for. Guarded by VideoSender.mu.
type videoControl struct {
	layers     int // 1..3
	restart    bool
	target     protocol.TargetBitrate
	haveTarget bool
	remb       uint32
	pli        [protocol.MaxSimulcastLayers]bool // a key frame is asked for

	simulcasts, targets, rembs, plis, plisCoalesced, plisIgnored, malformed uint64
}

// NewVideoSender returns a VideoSender writing to w (a Conn or a Session)
// and starts it: the first frame, a key frame, goes out at once. Close
// stops it.
func NewVideoSender(w RTPWriter, cfg VideoConfig) (*VideoSender, error) {
	v, err := newVideoSender(w, cfg, time.Now())
	if err != nil {
		return nil, err
	}
	v.wg.Add(1)
	go v.run()
	return v, nil
}

// newVideoSender builds a VideoSender without its goroutine; tests drive it
// with tick.
func newVideoSender(w RTPWriter, cfg VideoConfig, now time.Time) (*VideoSender, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var ts [4]byte
	_, _ = rand.Read(ts[:])
	v := &VideoSender{cfg: cfg, w: w, start: now, tsBase: binary.BigEndian.Uint32(ts[:]), stop: make(chan struct{})}
	v.ctl.layers = 1
	for i := range v.layers {
		snd, err := NewSender(SenderConfig{SSRC: cfg.SSRCs[i], PayloadType: cfg.PayloadType, Key: cfg.Key, NoAudioLevel: true,
			ROCID: cfg.ROCID, FirstSequence: cfg.FirstSequence})
		if err != nil {
			return nil, err
		}
		if err := snd.setVideoFrame(cfg.VideoFrameID, protocol.VideoFrame{Layers: 1}); err != nil {
			return nil, err
		}
		if err := snd.SetAbsSendTime(cfg.AbsSendTimeID, now); err != nil {
			return nil, err
		}
		v.layers[i] = &videoLayer{
			snd:      snd,
			pkt:      make([]byte, 0, MaxPacketSize),
			payload:  make([]byte, cfg.MaxPayload),
			overhead: snd.hdr.MarshalSize() + srtpTagLen,
		}
		_, _ = rand.Read(v.layers[i].payload) // filler: what an encoder's output looks like
	}
	return v, nil
}

// run sends a frame every 1/FrameRate until Close.
func (v *VideoSender) run() {
	defer v.wg.Done()
	t := time.NewTicker(time.Second / time.Duration(v.cfg.FrameRate))
	defer t.Stop()
	v.tick(time.Now())
	for {
		select {
		case <-v.stop:
			return
		case now := <-t.C:
			v.tick(now)
		}
	}
}

// Close stops sending and waits for the frame goroutine. It is idempotent.
func (v *VideoSender) Close() {
	v.closeOnce.Do(func() { close(v.stop) })
	v.wg.Wait()
}

// SSRCs returns the layers' SSRCs, lowest first.
func (v *VideoSender) SSRCs() [protocol.MaxSimulcastLayers]uint32 { return v.cfg.SSRCs }

// LayerOf returns the layer index of ssrc, one of the sender's SSRCs.
func (v *VideoSender) LayerOf(ssrc uint32) (int, bool) {
	for i, s := range v.cfg.SSRCs {
		if s == ssrc {
			return i, true
		}
	}
	return 0, false
}

// layerPlan is what one frame time sends on one layer.
type layerPlan struct {
	target uint32
	key    bool
}

// tick sends one frame on every active layer. Each frame's share of the
// target is the time since the previous frame (at most maxFrameGap):
// a late or missed tick does not lower the bitrate, a long stall does not
// burst.
func (v *VideoSender) tick(now time.Time) {
	frame := time.Second / time.Duration(v.cfg.FrameRate)
	dt := frame
	if !v.last.IsZero() {
		dt = min(max(now.Sub(v.last), 0), maxFrameGap)
	}
	v.last = now
	layers, plan := v.plan(now)
	ts := v.tsBase + uint32(now.Sub(v.start).Nanoseconds()*9/100_000) //nolint:gosec // the 90 kHz clock wraps
	for i, l := range v.layers {
		if plan[i].target == 0 {
			l.active, l.balance = false, 0
			continue
		}
		v.sendFrame(i, l, layers, plan[i], ts, now, dt)
	}
}

// plan reads the relay's instructions for this frame time: the layer
// count, and per layer the target (0: not sent) and whether the frame is a
// key frame.
func (v *VideoSender) plan(now time.Time) (int, [protocol.MaxSimulcastLayers]layerPlan) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c := &v.ctl
	targets := videoTargets(c, v.cfg)
	var plan [protocol.MaxSimulcastLayers]layerPlan
	for i, l := range v.layers {
		if targets[i] == 0 {
			continue
		}
		// Frame times are discrete: an interval counts as over at the frame
		// nearest to its end.
		sinceKey := now.Sub(l.lastKey) + time.Second/time.Duration(2*v.cfg.FrameRate)
		key := !l.active || c.restart || sinceKey >= v.cfg.KeyFrameInterval ||
			c.pli[i] && sinceKey >= v.cfg.KeyFrameMinInterval
		if key {
			c.pli[i] = false
		}
		plan[i] = layerPlan{target: targets[i], key: key}
	}
	c.restart = false
	return c.layers, plan
}

// sendFrame sizes one frame of layer i against its target (dt's worth of
// it), cuts it into packets of at most MaxPayload bytes and sends them.
func (v *VideoSender) sendFrame(i int, l *videoLayer, layers int, p layerPlan, ts uint32, now time.Time, dt time.Duration) {
	l.overhead = l.snd.hdr.MarshalSize() + srtpTagLen
	nominal := float64(p.target) / 8 / float64(v.cfg.FrameRate)
	size := l.frameSize(float64(p.target)/8*dt.Seconds(), nominal, p.key)
	n := (size + v.cfg.MaxPayload + l.overhead - 1) / (v.cfg.MaxPayload + l.overhead)
	payload := max(size-n*l.overhead, n*minFramePacket)
	l.frame++
	if p.key {
		l.lastKey = now
		l.keyFrames.Add(1)
	}
	l.active = true
	l.frames.Add(1)
	sent := 0
	for j := range n {
		chunk := payload / n
		if j < payload%n {
			chunk++
		}
		vf := protocol.VideoFrame{Key: p.key, Start: j == 0, End: j == n-1, Layer: uint8(i), Layers: uint8(layers)} //nolint:gosec // 0..3
		pkt, err := v.seal(l, vf, chunk, ts, j, p.key)
		if err != nil {
			v.writeErrors.Add(1)
			continue
		}
		if err := v.w.WriteRTP(pkt); err != nil {
			v.writeErrors.Add(1)
			continue
		}
		sent += len(pkt)
		l.packets.Add(1)
		l.bytes.Add(uint64(len(pkt)))
	}
	// Forget debt or credit beyond a few frames: a target change starts
	// afresh rather than bursting or starving.
	l.balance = min(max(l.balance-float64(sent), -3*keyFrameRatio*nominal), 2*nominal)
}

// seal builds packet j of the layer's current frame with a chunk-byte
// payload. The payload starts with the layer, the key flag, the frame
// number and the packet index (what a test that decrypts can check), then
// filler.
func (v *VideoSender) seal(l *videoLayer, vf protocol.VideoFrame, chunk int, ts uint32, j int, key bool) ([]byte, error) {
	if err := l.snd.setVideoFrame(v.cfg.VideoFrameID, vf); err != nil {
		return nil, err
	}
	if err := l.snd.SetAbsSendTime(v.cfg.AbsSendTimeID, time.Now()); err != nil {
		return nil, err
	}
	pl := l.payload[:chunk]
	if chunk >= videoPayloadHeader {
		pl[0] = vf.Layer
		pl[1] = 0
		if key {
			pl[1] = 1
		}
		binary.BigEndian.PutUint32(pl[2:6], l.frame)
		binary.BigEndian.PutUint16(pl[6:8], uint16(j)) //nolint:gosec // packets per frame are few
	}
	return l.snd.Seal(l.pkt[:0], Sample{Payload: pl, Timestamp: ts, Marker: vf.End})
}

// videoPayloadHeader is the plaintext prefix seal writes: layer, key flag,
// frame number, packet index.
const videoPayloadHeader = 8

// VideoPayloadInfo reads the plaintext prefix a VideoSender writes into its
// payloads (after decryption): the layer, whether the frame is a key frame,
// the layer's frame number and the packet's index in its frame. ok is false
// for a payload too short to carry it.
func VideoPayloadInfo(plain []byte) (layer uint8, key bool, frame uint32, index uint16, ok bool) {
	if len(plain) < videoPayloadHeader {
		return 0, false, 0, 0, false
	}
	return plain[0], plain[1] == 1, binary.BigEndian.Uint32(plain[2:6]), binary.BigEndian.Uint16(plain[6:8]), true
}

// frameSize returns the wire size (RTP packets, headers included) of the
// layer's next frame. credit is the target's share of the time since the
// last frame, nominal its share of one frame time: a key frame is
// keyFrameRatio nominal deltas; a delta is the credit, plus or minus what
// the layer sent below or above its target spread over paybackFrames
// frames.
func (l *videoLayer) frameSize(credit, nominal float64, key bool) int {
	size := nominal * keyFrameRatio
	if !key {
		size = credit + l.balance/paybackFrames
		size = min(max(size, credit/4), 2*credit)
	}
	l.balance += credit
	return max(int(math.Round(size)), l.overhead+minFramePacket)
}
