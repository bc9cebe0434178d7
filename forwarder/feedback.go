package forwarder

import (
	"math/bits"
	"net/netip"

	"github.com/callrelay/callrelay/protocol"
)

// A device's RTCP, read on the data path without allocating
// (protocol.RTCPWalker):
//
//   - generic NACK: answered here from the sender's NACK cache, to this
//     device only, within its leg's budget; never forwarded;
//   - PLI (the stream in its header) and FIR (the streams in its FCI
//     entries, RFC 5104): the sender is asked for a key frame by the
//     control goroutine (at most one PLI per stream per 200 ms);
//   - REMB: the device's downlink estimate; receiver reports: its loss;
//   - CRLY APP: LoudOnset is applied, Subscription goes to the control
//     goroutine, anything else is a forgery and dropped;
//   - anything else (sender reports, SDES, BYE, other APP) is the devices'
//     business: the datagram is forwarded byte-exact as before, after the
//     feedback in it has been read. A datagram with a CRLY packet is never
//     forwarded.
//
// feedback returns whether the datagram was consumed, and false for ok
// when it is malformed.
func (r *reader) feedback(rt *routes, rte *route, b []byte, src netip.AddrPort, nowNS int64) (consumed, ok bool) {
	w := &r.rtcp
	w.Reset(b)
	forward, crly := false, false
	for w.Next() {
		switch w.Type() {
		case rtcpRR:
			r.receiverReport(rte)
		case rtcpRTPFB:
			if w.Count() == 1 {
				r.nack(rte, w, src)
			} // transport-wide feedback (FMT 15) is read by nobody yet
		case rtcpPSFB:
			switch w.Count() {
			case protocol.RTCPFormatPLI: // the stream is the header's media SSRC
				r.keyRequest(rte, w.MediaSSRC())
			case protocol.RTCPFormatFIR: // the streams are in the FCI; the header's media SSRC is 0
				for i := range w.FIREntries() {
					ssrc, _ := w.FIREntry(i) // repeats are bounded by the relay's own PLI rate
					r.keyRequest(rte, ssrc)
				}
			case protocol.RTCPFormatAFB:
				if bps, ok := w.REMB(); ok && !rte.media.down.stream.Load() { // a stream leg's is its socket's (stream_estimate.go)
					rte.media.down.remb.Store(bps)
				}
			}
		case rtcpAPP:
			p := w.Packet()
			if len(p) < 12 || string(p[8:12]) != protocol.RelayAppName {
				forward = true
				continue
			}
			crly = true
			switch p[0] & 0x1F {
			case protocol.SubTypeLoudOnset:
				if len(p) == 20 && rte.media != nil {
					r.deviceOnset(&rte.media.audio)
					r.onsetMsgs++
				}
			case protocol.SubTypeSubscription:
				if nowNS == 0 {
					nowNS = r.now()
				}
				r.toControl(rt, b, src, nowNS)
			default:
				r.drops[DropRelayControl]++ // relay instructions come from forwarders only
			}
		default:
			forward = true
		}
	}
	if w.Err() != nil {
		return true, false
	}
	return crly || !forward, true
}

const (
	rtcpRR    = 201
	rtcpAPP   = 204
	rtcpRTPFB = 205
	rtcpPSFB  = 206
)

// receiverReport keeps the worst loss the device reports.
func (r *reader) receiverReport(rte *route) {
	w := &r.rtcp
	var worst uint8
	for i := 0; i < w.ReportBlocks(); i++ {
		_, frac, _, _, _ := w.ReportBlock(i)
		worst = max(worst, frac)
	}
	rte.media.down.lossQ8.Store(uint32(worst))
}

// senderOf finds the sender of ssrc among the call's senders seen here.
func senderOf(cr *callRoute, self *mediaInfo, ssrc uint32) (*mediaInfo, int, protocol.ID) {
	if cr == nil {
		return nil, -1, protocol.ID{}
	}
	for _, sr := range cr.senders {
		if sr.media == self {
			continue
		}
		if slot := sr.media.slotOf(ssrc); slot >= 0 {
			return sr.media, slot, sr.id
		}
	}
	return nil, -1, protocol.ID{}
}

// keyRequest notes that a receiver asked for a key frame of ssrc.
func (r *reader) keyRequest(rte *route, ssrc uint32) {
	if m, slot, _ := senderOf(rte.cr, rte.media, ssrc); m != nil {
		m.keyWanted.Or(1 << slot)
		r.keyRequests++
	}
}

// nack answers one generic NACK from the sender's cache: each lost packet
// still held, not resent to this device too often, and within its share and
// its leg's budget (rtx.go), goes to this device alone.
func (r *reader) nack(rte *route, w *protocol.RTCPWalker, src netip.AddrPort) {
	if isStreamAddr(src) && r.f.stream != nil {
		// A connection loses nothing: not answered (protocol/README.md 9,
		// rule 3), and not a NACK outcome; counted per packet asked for.
		n := 0
		for i := 0; i < w.NackPairs(); i++ {
			_, blp := w.NackPair(i)
			n += 1 + bits.OnesCount16(blp)
		}
		r.f.stream.c.skippedRtx.Add(uint64(n))
		return
	}
	m, slot, sender := senderOf(rte.cr, rte.media, w.MediaSSRC())
	var cache [2]*nackCache // the sender's cache, and the audio cache it replaced
	if m != nil && forwardedTo(rte, m, slot, sender) {
		cache = [2]*nackCache{m.cache.Load(), m.cachePrev.Load()}
	}
	nowNS := r.now()
	ssrc := w.MediaSSRC()
	for i := 0; i < w.NackPairs(); i++ {
		pid, blp := w.NackPair(i)
		r.resend(rte, &cache, ssrc, pid, src, nowNS)
		for bit := uint16(0); bit < 16; bit++ {
			if blp&(1<<bit) != 0 {
				r.resend(rte, &cache, ssrc, pid+bit+1, src, nowNS)
			}
		}
	}
}

// forwardedTo reports whether the stream in slot of sender m is what the
// receiver gets now: its audio, or the video layer its pair forwards. A
// NACK for another layer (one it was switched away from) is not answered.
func forwardedTo(rte *route, m *mediaInfo, slot int, sender protocol.ID) bool {
	v := m.slotVideo[slot].Load()
	if v == 0 {
		return true // audio, or video without the frame extension
	}
	p := rte.rxPairs[sender]
	return p != nil && p.cur.Load() == v
}

func (r *reader) resend(rte *route, caches *[2]*nackCache, ssrc uint32, seq uint16, src netip.AddrPort, nowNS int64) {
	r.nacked++
	cache := caches[0]
	if cache == nil {
		r.nackOut[nackMiss]++
		return
	}
	leg := &rte.media.down
	if !leg.rtx.mayResend(ssrc, seq, nowNS, r.f.adapt.resendGapNS) {
		r.nackOut[nackBounded]++ // resent to this receiver often enough, or just now
		return
	}
	if r.rn == len(r.rtxBufs) {
		r.flushQueue()
	}
	buf := r.rtxBufs[r.rn][:]
	n, out := cache.resend(buf, ssrc, seq, nowNS, leg, r.f.adapt.nackShareQ10)
	if prev := caches[1]; out == nackMiss && prev != nil {
		n, out = prev.resend(buf, ssrc, seq, nowNS, leg, r.f.adapt.nackShareQ10)
	}
	r.nackOut[out]++
	if out != nackSent {
		return
	}
	leg.rtx.noteResent(ssrc, seq, nowNS)
	r.rtxTo[r.rn] = encodeSockaddr(src, r.f.v6)
	if !r.pc.Queue(buf[:n], &r.rtxTo[r.rn]) {
		// The write batch is full: send it, which frees every slot, and
		// start again from the first.
		to := r.rtxTo[r.rn]
		r.flushQueue()
		copy(r.rtxBufs[0][:], buf[:n])
		r.rtxTo[0] = to
		r.pc.Queue(r.rtxBufs[0][:n], &r.rtxTo[0])
	}
	r.rn++
	leg.sent.Add(uint64(n))
	leg.resent.Add(uint64(n))
	r.c.resentBytes.Add(uint64(n))
	r.bout += uint64(n)
}
