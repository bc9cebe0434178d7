package forwarder

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/callrelay/callrelay/protocol"
)

// The audio forwarding gate and meter.
//
// An RTP stream is audio when its packets carry the RFC 6464 audio-level
// header extension (protocol/README.md section 4); everything else (video,
// RTCP) passes the gate untouched. For each session the reader that serves
// its flow measures the audio it sends (packets, VAD-flagged packets,
// payload bytes, summed and loudest level, sequence gaps) into cumulative
// counters; the control goroutine reads their differences once per
// metadata tick and publishes them to the conductor.
//
// The gate decides whether a session's audio is forwarded at all:
//
//   - gateAll: no conductor decision yet for the call, or none fresh for
//     Audio.DecisionTimeout (default policy): every member's audio is
//     forwarded.
//   - gateOn: the conductor's last decision puts the member in the call's
//     audio forwarding set.
//   - gateOff: the last decision leaves it out (a silent member). Its audio
//     is not forwarded, except during a loud-onset hold: when a packet is
//     loud (VAD flag, level at or above OnsetLevel, a payload big enough to
//     carry speech) after a packet that was not, or when the device sends
//     a LoudOnset message while its audio is loud, the reader opens the gate
//     for OnsetHold at once, so first words are not cut off while the
//     conductor's next decision is on its way.
//
// Decisions are fail-static, within a bound: the gate keeps the last
// decision while the conductor keeps repeating it, and for
// Audio.DecisionTimeout after it stops; then the call is back on the
// default policy until a fresh decision arrives (decisions.go).
type audioMeter struct {
	// Written only by the reader serving the flow (SO_REUSEPORT keeps a
	// flow on one socket), read by the control goroutine.
	//
	// Several counters share one word, so a packet costs few atomic adds:
	// each field's increments between two metadata ticks stay below its
	// width, so the fields of the difference of two readings are exact
	// even when a field of the cumulative value has carried into the next.
	levels     atomic.Uint64 // packets | VAD-flagged packets<<16 | sum of 127-level<<32
	bytes      atomic.Uint64 // audio payload bytes | bytes of every RTP/RTCP packet<<32
	expected   atomic.Uint64 // packets expected from sequence numbers
	loudest    atomic.Uint32 // highest 127-level since the control goroutine last took it
	onsets     atomic.Uint64 // onsets seen (level steps and device flags)
	lastSeq    atomic.Uint32 // 1<<16 | last sequence number; 0 before the first packet
	loud       atomic.Bool   // the last audio packet was loud
	onsetUntil atomic.Int64  // unix ns until which a muted stream is forwarded
	gate       atomic.Uint32 // gateAll, gateOn, gateOff; written by the control goroutine
}

const (
	gateAll uint32 = iota
	gateOn
	gateOff
)

// audioParams are the data path's audio settings, fixed at start.
type audioParams struct {
	extID      uint8
	onsetLevel uint8 // loud means level (in -dBov) at most this
	minPayload int   // loud needs at least this many payload bytes
	holdNS     int64
}

func audioParamsOf(a AudioConfig) audioParams {
	return audioParams{extID: a.ExtensionID, onsetLevel: a.OnsetLevel, minPayload: a.OnsetMinPayload, holdNS: a.OnsetHold.Nanoseconds()}
}

// audio meters one audio packet of a session and says whether it passes
// the gate. payload is the packet's length after the RTP header, size its
// whole length. The clock
// is read only for a muted stream.
func (r *reader) audio(m *audioMeter, seq uint16, voice bool, level uint8, payload, size int) bool {
	p := &r.f.audio
	loudness := uint32(127 - level)
	inc := 1 | uint64(loudness)<<32
	if voice {
		inc |= 1 << 16
	}
	m.levels.Add(inc)
	m.bytes.Add(uint64(payload) | uint64(size)<<32)
	if loudness > m.loudest.Load() {
		m.loudest.Store(loudness) // a lost race with the control's reset costs one tick's peak
	}
	r.audioSeq(m, seq)

	loud := voice && level <= p.onsetLevel && payload >= p.minPayload
	wasLoud := m.loud.Load()
	if loud != wasLoud {
		m.loud.Store(loud)
	}
	switch m.gate.Load() {
	case gateAll, gateOn:
		return true
	}
	if loud && !wasLoud {
		m.onsets.Add(1)
		m.onsetUntil.Store(r.now() + p.holdNS)
		return true
	}
	if until := m.onsetUntil.Load(); until != 0 {
		return r.now() < until
	}
	return false
}

// audioSeq counts the packets expected from the sequence numbers: a step
// forward of n expects n packets; reordered and repeated packets expect
// none (so they may make received exceed expected over a tick; the loss is
// then read as zero).
func (r *reader) audioSeq(m *audioMeter, seq uint16) {
	last := m.lastSeq.Load()
	if last == 0 {
		m.lastSeq.Store(1<<16 | uint32(seq))
		m.expected.Add(1)
		return
	}
	if d := int16(seq - uint16(last)); d > 0 {
		m.lastSeq.Store(1<<16 | uint32(seq))
		m.expected.Add(uint64(d))
	}
}

// deviceOnset applies a LoudOnset message from a member's device: it opens
// the gate for the hold time, but only while the member's audio is loud by
// its own packets, so a device cannot stay forwarded by sending flags
// alone.
func (r *reader) deviceOnset(m *audioMeter) {
	if !m.loud.Load() {
		return
	}
	now := r.now()
	if m.onsetUntil.Load() > now {
		return
	}
	m.onsets.Add(1)
	m.onsetUntil.Store(now + r.f.audio.holdNS)
}

// now reads the clock once per batch, when first needed (run resets
// batchNow for every batch).
func (r *reader) now() int64 {
	if r.batchNow == 0 {
		r.batchNow = r.f.cfg.Now().UnixNano()
	}
	return r.batchNow
}

// relayControlSubType finds the first CRLY APP packet in an RTCP datagram
// whose first header is valid, and returns its subtype and the packet; ok is
// false when there is none.
func relayControlSubType(b []byte) (sub uint8, pkt []byte, ok bool) {
	for off := 0; off+12 <= len(b); {
		size := 4 * (int(binary.BigEndian.Uint16(b[off+2:off+4])) + 1)
		if b[off+1] == 204 && string(b[off+8:off+12]) == protocol.RelayAppName {
			if off+size > len(b) {
				return 0, nil, false
			}
			return b[off] & 0x1f, b[off : off+size], true
		}
		off += size
	}
	return 0, nil, false
}

// deviceSubType reports whether a CRLY subtype is one devices send to the
// relay (protocol/relay_app.go); the others are relay instructions.
func deviceSubType(sub uint8) bool {
	return sub == protocol.SubTypeSubscription || sub == protocol.SubTypeLoudOnset
}

// audioTotals is a reading of a meter's cumulative counters, taken by the
// control goroutine once per metadata tick.
type audioTotals struct {
	levels, bytes, expected, onsets uint64
}

func (m *audioMeter) totals() audioTotals {
	return audioTotals{levels: m.levels.Load(), bytes: m.bytes.Load(), expected: m.expected.Load(), onsets: m.onsets.Load()}
}

// audioTick is what happened between two readings.
type audioTick struct {
	packets, voice        uint64
	loudSum, payload, all uint64
	expected, onsets      uint64
}

func (a audioTotals) since(b audioTotals) audioTick {
	l, by := a.levels-b.levels, a.bytes-b.bytes
	return audioTick{
		packets: l & 0xffff, voice: l >> 16 & 0xffff, loudSum: l >> 32,
		payload: by & 0xffffffff, all: by >> 32,
		expected: a.expected - b.expected, onsets: a.onsets - b.onsets,
	}
}
