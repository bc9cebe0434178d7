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
// against its abs-send-time, and sequence gaps (internal/bwe). The
// estimator has exactly one writer for its whole life, the reader serving
// the session's flow (SO_REUSEPORT keeps a flow on one socket), and
// publishes the estimate through an atomic. A device whose address changes
// (a rebind, a failover whose old path still delivers a late packet) can
// reach the relay through another reader: that reader does not touch the
// estimator, it asks the control goroutine for a fresh one of its own
// (uplink.handOver), like the NACK cache (nack.go). Until then its packets
// are not estimated and the last estimate stands.
//
// The downlink is the receiver's own estimate, its REMB, and the loss in
// its receiver reports. What the relay sends the leg (media and
// retransmissions) is counted, and retransmissions are held to what the
// estimate leaves over the media: never more bytes than the leg can carry.
type uplink struct {
	cur     atomic.Pointer[uplinkEst]   // the estimator and its writer; nil before the first RTP
	first   uplinkEst                   // the first writer's, taken without allocating
	claimed atomic.Bool                 // first is taken
	wantFor atomic.Pointer[cacheWriter] // a reader that got the flow and has no estimator

	bps atomic.Uint64 // the last estimate, bit/s; 0 before the first
}

// uplinkEst is one writer's estimator: only that reader touches it.
type uplinkEst struct {
	writer     *cacheWriter
	est        bwe.Estimator
	unwrap     bwe.SendTimeUnwrapper
	inited     bool
	nextUpdate int64
}

const uplinkUpdateNS = 50e6

// onPacket feeds one RTP packet of the sender, read by w, to its uplink
// estimate.
func (u *uplink) onPacket(w *cacheWriter, h *protocol.RTPHeader, absID uint8, size, slot int, nowNS int64) {
	e := u.cur.Load()
	if e == nil && u.claimed.CompareAndSwap(false, true) {
		e = &u.first
		e.writer = w
		u.cur.Store(e)
	}
	if e == nil || e.writer != w {
		if u.wantFor.Load() != w {
			u.wantFor.Store(w) // the control goroutine gives w its own (handOver)
		}
		return
	}
	e.onPacket(u, h, absID, size, slot, nowNS)
}

func (e *uplinkEst) onPacket(u *uplink, h *protocol.RTPHeader, absID uint8, size, slot int, nowNS int64) {
	if !e.inited {
		e.est.Init(bwe.Config{})
		e.inited, e.nextUpdate = true, nowNS+uplinkUpdateNS
	}
	var send int64
	abs, has := h.AbsSendTime(absID)
	if has {
		send = e.unwrap.Unwrap(abs)
	}
	if slot >= bwe.MaxStreams {
		slot = -1 // counted for the rate only
	}
	e.est.OnPacket(nowNS, send, has, size, slot, h.SequenceNumber)
	if nowNS >= e.nextUpdate {
		e.nextUpdate = nowNS + uplinkUpdateNS
		u.bps.Store(e.est.Update(nowNS))
	}
}

// handOver gives the reader now serving the flow a fresh estimator when the
// flow moved to it. Control goroutine only (senderTick): the old writer may
// still be inside the old estimator, which is left to it and then dropped.
func (u *uplink) handOver() {
	w := u.wantFor.Load()
	if w == nil {
		return
	}
	if e := u.cur.Load(); e != nil && e.writer != w { // nil: the first writer is taking first
		u.cur.Store(&uplinkEst{writer: w})
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
