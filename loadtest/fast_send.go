package loadtest

import (
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

// The fast engine's frame stamp, the first stampSize bytes of every
// frame's payload (encrypted in a probe's, in clear in a pre-sealed copy,
// where the relay cannot tell it from ciphertext): the send time in ns
// since the engine's epoch, the call class, flags, and the frame counter.
// A probe's payload after the stamp is filler that depends on the frame
// counter, checked byte for byte.
const (
	stampSize    = 16
	stampDirect  = 1 // a baseline frame: sent to the peer directly
	silenceSize  = frameHeader
	fastSpeechSz = speechSize
)

func putU64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }

func putStamp(p []byte, sentNs int64, cls int, flags byte, frame uint32) {
	putU64(p[0:8], uint64(sentNs)) //nolint:gosec // ns since the epoch, >= 0
	p[8], p[9], p[10], p[11] = byte(cls), flags, 0, 0
	binary.BigEndian.PutUint32(p[12:16], frame)
}

func readStamp(p []byte) (sentNs int64, cls int, flags byte, frame uint32) {
	return int64(binary.BigEndian.Uint64(p[0:8])), int(p[8] & 1), p[9], binary.BigEndian.Uint32(p[12:16]) //nolint:gosec // our own stamp
}

// fillProbe writes a probe frame's filler after the stamp.
func fillProbe(p []byte, frame uint32) {
	for i := stampSize; i < len(p); i++ {
		p[i] = byte(frame) + byte(i)
	}
}

// probeFillerOK checks it.
func probeFillerOK(p []byte, frame uint32) bool {
	for i := stampSize; i < len(p); i++ {
		if p[i] != byte(frame)+byte(i) {
			return false
		}
	}
	return true
}

// preseal seals a silence and a speech frame once with s: real SRTP
// packets with the audio level, abs-send-time and rollover counter
// elements, whose sequence number, timestamp, abs-send-time and stamp
// each send overwrites (the copies do not authenticate; only probes are
// decrypted).
func (d *fastDev) preseal(s *client.Sender) error {
	for k, size := range []int{silenceSize, fastSpeechSz} {
		lvl := client.AudioLevel{Level: 120}
		if k == 1 {
			lvl = client.AudioLevel{Level: 25, Voice: true}
		}
		if err := s.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, time.Now()); err != nil {
			return err
		}
		pkt, err := s.Seal(nil, client.Sample{Payload: make([]byte, size), AudioLevel: lvl})
		if err != nil {
			return err
		}
		pay, abs, ok := rtpOffsets(pkt, protocol.DefaultAbsSendTimeExtensionID)
		if !ok || len(pkt) < pay+stampSize {
			return errors.New("loadtest: pre-sealed frame without payload room")
		}
		d.tpl[k], d.payOff[k], d.absOff[k] = pkt, pay, abs
	}
	return nil
}

// rtpOffsets finds an RTP packet's payload offset and the data offset of
// the one-byte extension element id (0 when absent).
func rtpOffsets(b []byte, id uint8) (payload, ext int, ok bool) {
	if len(b) < 12 || b[0]>>6 != 2 {
		return 0, 0, false
	}
	off := 12 + 4*int(b[0]&0x0f)
	if b[0]&0x10 == 0 {
		return off, 0, off <= len(b)
	}
	if len(b) < off+4 {
		return 0, 0, false
	}
	words := int(binary.BigEndian.Uint16(b[off+2 : off+4]))
	profile := binary.BigEndian.Uint16(b[off : off+2])
	start, end := off+4, off+4+4*words
	if end > len(b) {
		return 0, 0, false
	}
	for i := start; profile == 0xBEDE && i < end; {
		if b[i] == 0 { // padding
			i++
			continue
		}
		eid, l := b[i]>>4, int(b[i]&0x0f)+1
		if eid == 15 {
			break
		}
		if eid == id && i+1+l <= end {
			ext = i + 1
		}
		i += 1 + l
	}
	return end, ext, true
}

// sendFrame sends d's next 20 ms frame: a pre-sealed copy, or a probe's
// sealed frame, speech-sized while d talks.
func (e *fastEngine) sendFrame(d *fastDev, now time.Time) {
	cls, talking, fanout := idxOneToOne, true, 1
	sentNs := int64(now.Sub(e.epoch))
	var flags byte
	if d.direct {
		flags = stampDirect
	} else {
		cls, fanout = e.fanout(d, sentNs)
		at := now.Sub(d.callStart)
		var known bool
		if talking, known = d.talkingNow(at); !known {
			talking = d.talking(e.calls[d.call].spec.sched, at)
		}
	}
	frame := d.frame
	d.frame++
	var pkt []byte
	if d.probe {
		pkt = e.sealProbe(d, now, sentNs, cls, flags, frame, talking)
		if pkt == nil {
			return
		}
		if d.channel != 0 {
			pkt = d.channelFrame(pkt)
		}
	} else {
		k := 0
		if talking {
			k = 1
		}
		pkt = d.tpl[k]
		r := pkt
		if d.channel != 0 {
			r = pkt[channelHeader:] // the template carries its ChannelData header
		}
		binary.BigEndian.PutUint16(r[2:4], d.seq)
		binary.BigEndian.PutUint32(r[4:8], frame*frameTicks)
		if o := d.absOff[k]; o > 0 {
			v := protocol.AbsSendTimeBytes(protocol.AbsSendTime(now))
			copy(pkt[o:o+3], v[:])
		}
		putStamp(pkt[d.payOff[k]:], sentNs, cls, flags, frame)
		d.seq++
	}
	if e.muted(d) && !d.direct {
		e.queueFrom(d, pkt, e.devices().mute())
	} else {
		e.queue(d, pkt)
	}
	if d.direct {
		return
	}
	e.sent[cls].Add(1)
	if e.sel != nil {
		e.selSent.sent[0].Add(1)
		e.selSent.offered[0].Add(uint64(fanout)) //nolint:gosec // fanout >= 0
		if e.f.Forwarded > 0 {
			return // expected per stream by the readers (fast_select.go)
		}
	}
	if fanout > 0 {
		e.expected[cls][(sentNs/lossBucketNs)%lossRing].Add(uint64(fanout)) //nolint:gosec // fanout > 0
	}
}

// talking is talkspurt.Schedule.Talking for d at a time no earlier than
// the last it was asked: a cursor walks d's spurts forward instead of a
// binary search over an hour of them per frame (it was 7 % of the
// generator's CPU in a perf profile).
func (d *fastDev) talking(s talkspurt.Schedule, at time.Duration) bool {
	if t, ok := d.talkingNow(at); ok {
		return t
	}
	if d.idx < 0 || d.idx >= len(s) {
		return false
	}
	sp := s[d.idx]
	for d.spurt < len(sp) && sp[d.spurt].End <= at {
		d.spurt++
	}
	d.spurtFrom, d.spurtTo = math.MaxInt64, math.MaxInt64 // no spurt left
	if d.spurt < len(sp) {
		d.spurtFrom, d.spurtTo = sp[d.spurt].Start, sp[d.spurt].End
	}
	return d.spurtFrom <= at
}

// talkingNow answers talking from the bounds of the spurt kept in d, with
// no look at the schedule (another cache line per frame, per call); false
// ok when the schedule must be read.
func (d *fastDev) talkingNow(at time.Duration) (talking, ok bool) {
	if at < d.spurtTo {
		return d.spurtFrom <= at, true
	}
	return false, false
}

// sealProbe seals a probe's frame with the client library.
func (e *fastEngine) sealProbe(d *fastDev, now time.Time, sentNs int64, cls int, flags byte, frame uint32, talking bool) []byte {
	size, lvl := silenceSize, client.AudioLevel{Level: 120}
	if talking {
		size, lvl = fastSpeechSz, client.AudioLevel{Level: 25, Voice: true}
	}
	p := d.plain[:size]
	putStamp(p, sentNs, cls, flags, frame)
	fillProbe(p, frame)
	if d.sender.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, now) != nil {
		return nil
	}
	out, err := d.sender.Seal(d.out, client.Sample{Payload: p, Timestamp: frame * frameTicks, AudioLevel: lvl})
	if err != nil {
		return nil
	}
	d.out = out
	return out
}

// fanout is d's call class and receivers() at sentNs. Once every other
// member counts, the figure is kept in d: it cannot fall until the call
// ends (members leave only with their call, which stops every frame of
// it), and reading the call and each peer per frame cost the generator
// cache misses on cold structures (a third of sendFrame's time in a
// profile: docs/capacity.md, Packet I/O). d.callStart is set here too.
func (e *fastEngine) fanout(d *fastDev, sentNs int64) (cls, n int) {
	if d.fanFull {
		return d.cls, int(d.fan)
	}
	c := e.calls[d.call]
	d.cls, d.callStart = c.cls, c.start
	n = e.receivers(c, d, sentNs)
	if n == len(c.devs)-1 {
		d.fanFull, d.fan = true, int32(n) //nolint:gosec // at most a call's size
	}
	return c.cls, n
}

// receivers counts the members of c other than d that count as receivers
// of a frame sent at sentNs.
func (e *fastEngine) receivers(c *fastCall, d *fastDev, sentNs int64) int {
	n := 0
	for _, no := range c.devs {
		if no != d.no && e.devs[no].state == devUp {
			if r := e.readyAt[no].Load(); r > 0 && r <= sentNs {
				n++
			}
		}
	}
	return n
}

// deviceBound is how many devices a run of p may make: every call's
// members and the baseline pairs.
func deviceBound(p Plan) int {
	size := 2
	if p.Mix.OneToOne < 1 {
		size = max(size, p.Mix.GroupMax)
	}
	return p.Bounds.MaxCalls*size + 2*max(p.Fast.BaselinePairs, 0)
}
