package forwarder

import (
	"net/netip"
	"sync/atomic"

	"github.com/callrelay/callrelay/internal/bwe"
	"github.com/callrelay/callrelay/protocol"
)

// Per-leg bandwidth: every session is two legs, its uplink (device to
// relay) and its downlink (relay to device).
//
// The uplink is estimated here, from what the sender sends: arrival times
// against its abs-send-time, and sequence gaps (internal/bwe). The reader
// serving the session's flow owns the estimator (SO_REUSEPORT keeps a flow
// on one socket) and publishes the estimate through an atomic.
//
// The downlink is the receiver's own estimate, its REMB, and the loss in
// its receiver reports. What the relay sends the leg (media and
// retransmissions) is counted, and retransmissions are held to what the
// estimate leaves over the media: never more bytes than the leg can carry.
type uplink struct {
	// Owned by the reader serving the flow.
	est        bwe.Estimator
	unwrap     bwe.SendTimeUnwrapper
	inited     bool
	nextUpdate int64

	bps atomic.Uint64 // the last estimate, bit/s; 0 before the first
}

const uplinkUpdateNS = 50e6

// onPacket feeds one RTP packet of the sender to its uplink estimate.
func (u *uplink) onPacket(h *protocol.RTPHeader, absID uint8, size, slot int, nowNS int64) {
	if !u.inited {
		u.est.Init(bwe.Config{})
		u.inited, u.nextUpdate = true, nowNS+uplinkUpdateNS
	}
	var send int64
	abs, has := h.AbsSendTime(absID)
	if has {
		send = u.unwrap.Unwrap(abs)
	}
	if slot >= bwe.MaxStreams {
		slot = -1 // counted for the rate only
	}
	u.est.OnPacket(nowNS, send, has, size, slot, h.SequenceNumber)
	if nowNS >= u.nextUpdate {
		u.nextUpdate = nowNS + uplinkUpdateNS
		u.bps.Store(u.est.Update(nowNS))
	}
}

// downlink is a receiver's leg as its feedback describes it.
type downlink struct {
	remb     atomic.Uint64 // the receiver's REMB, bit/s; 0 before the first
	lossQ8   atomic.Uint32 // fraction lost in its last receiver report, /256
	sent     atomic.Uint64 // bytes sent to it: media and retransmissions
	resent   atomic.Uint64 // bytes retransmitted to it
	rtxAllow atomic.Uint64 // bit/s of retransmissions the estimate leaves over the media (control goroutine)
	// stream: a TCP or TLS leg, whose estimate is what its socket accepts
	// (stream_estimate.go), not its REMB.
	stream atomic.Bool

	// What its NACKs may still cost (rtx.go), owned by the reader serving
	// the receiver's flow (its NACKs arrive there).
	rtx rtxAccount
}

// estimate is the leg's downlink estimate, or 0 when unknown.
func (d *downlink) estimate() uint64 { return d.remb.Load() }

// Leg is one session's network as this forwarder sees it (Forwarder.Legs).
type Leg struct {
	Call, Participant protocol.ID
	Addr              netip.AddrPort
	UplinkEstBps      uint64  // estimated from what it sends (0: nothing yet)
	DownlinkEstBps    uint64  // its own estimate, from its REMB (0: none yet)
	DownlinkLoss      float64 // fraction lost in its last receiver report
	SentBytes         uint64  // media and retransmissions sent to it
	ResentBytes       uint64  // of which retransmissions
	VideoLayers       uint8   // simulcast layers it sends now (0: no video)
}

// Legs lists every session served here with its legs' estimates and
// counters, read from the current routes (no lock on the data path).
func (f *Forwarder) Legs() []Leg {
	rt := f.routes.Load()
	out := make([]Leg, 0, len(rt.bySrc))
	for a, rte := range rt.bySrc {
		m := rte.media
		if m == nil {
			continue
		}
		out = append(out, Leg{Call: rte.call, Participant: rte.participant, Addr: a,
			UplinkEstBps: m.up.bps.Load(), DownlinkEstBps: m.down.estimate(),
			DownlinkLoss: float64(m.down.lossQ8.Load()) / 256,
			SentBytes:    m.down.sent.Load(), ResentBytes: m.down.resent.Load(),
			VideoLayers: uint8(m.video.layers.Load())})
	}
	return out
}
