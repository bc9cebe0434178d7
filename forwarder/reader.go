package forwarder

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"github.com/callrelay/callrelay/protocol"
)

// reader is one goroutine serving one socket: the per-packet path. It reads
// a batch, forwards media by the routes snapshot, hands STUN to the control
// goroutine, and sends the whole fan-out of the batch in one write batch.
// It allocates nothing, takes no lock shared with other readers, and logs
// nothing.
type reader struct {
	f   *Forwarder
	idx int // its place in Forwarder.rdrs (and its buffer in a capture)
	pc  packetConn
	c   *counters
	// Requests per source before the control path: members by address and
	// port, strangers by address alone (one host cannot dodge the limit by
	// using many ports).
	knownLimiter, newLimiter stunLimiter
	hdr                      protocol.RTPHeader // reused: parsing allocates nothing
	pace                     pacer              // waits that gather spread arrivals into batches (pace.go)
	coop                     coopReader         // polls while control is busy (yield.go)
	cw                       cacheWriter        // names it as the writer of its senders' NACK caches
	batchNow                 int64              // unix ns of this batch, 0 until read (now())

	// The trunk: this reader's own trunk socket (nil on a lone forwarder),
	// and fixed slots for the frames of one batch.
	tpc    packetConn
	tcodec *protocol.TrunkCodec
	tbufs  *[readBatch][maxDatagram + protocol.TrunkOverhead]byte
	tn     int

	// Rejoin nudges to media from unknown addresses: per address, and in
	// all, bounded; destinations in fixed slots.
	nudgeLimiter, nudgeAll stunLimiter
	nudgeTo                [readBatch]sockaddr
	nn                     int

	// Feedback: the RTCP walker, and fixed slots for the retransmissions
	// of one batch.
	rtcp    protocol.RTCPWalker
	rtxBufs [readBatch][maxDatagram]byte
	rtxTo   [readBatch]sockaddr
	rn      int

	// Per-batch tallies, added to the shared counters once per batch.
	pin, bin, pout, bout uint64
	tout, tbout, nudges  uint64
	muted, onsetMsgs     uint64 // audio held back by the gate; LoudOnset messages taken
	nacked, keyRequests  uint64 // packets NACKed by receivers; PLI/FIR taken
	nackOut              [numNackOutcomes]uint64
	drops                [numDropReasons]uint64
}

func (r *reader) run() {
	for {
		n, err := r.readBatch()
		if errors.Is(err, net.ErrClosed) {
			return // the forwarder is stopping
		}
		if err != nil {
			// A transient error (e.g. ENOMEM): count it and go on. A
			// reader that stopped would silently blackhole every flow the
			// kernel hashes to its socket.
			r.c.drops[DropReadError].Add(1)
			continue
		}
		r.drops[DropReceiveBuffer] += r.pc.Dropped()
		rt := r.f.routes.Load()
		r.batchNow = 0
		var nowNS int64 // read the clock only if a STUN message needs it
		for i := 0; i < n; i++ {
			b := r.pc.Buf(i)
			if r.pc.Truncated(i) || len(b) > maxDatagram {
				r.pin++
				r.bin += uint64(len(b))
				r.drops[DropOversized]++
				continue
			}
			if len(b) > 0 && b[0] < 4 && nowNS == 0 {
				nowNS = r.f.cfg.Now().UnixNano()
			}
			r.handle(rt, b, r.pc.Src(i), nowNS)
		}
		r.flush()
		if r.pace.waitNS > 0 {
			if w := r.pace.after(n, monoNS()); w > 0 {
				pauseNS(w) // gather the next batch (pace.go)
			}
		}
	}
}

// handle classifies one datagram and forwards, hands over or drops it.
func (r *reader) handle(rt *routes, b []byte, src netip.AddrPort, nowNS int64) {
	r.pin++
	r.bin += uint64(len(b))
	if cp := r.f.capture.Load(); cp != nil {
		r.captureOn(cp, rt, b, src) // off: this load is all it costs (capture.go)
	}
	kind := protocol.Classify(b)
	switch kind {
	case protocol.KindSTUN:
		r.toControl(rt, b, src, nowNS)
		return
	case protocol.KindRTP:
		if r.hdr.Parse(b) != nil || r.hdr.SSRC == protocol.RelayProbeSSRC {
			r.drops[DropMalformed]++ // SSRC 0 is the relay's (its probes)
			return
		}
	case protocol.KindRTCP:
		if !rtcpHeaderValid(b) {
			r.drops[DropMalformed]++
			return
		}
		if rte := rt.bySrc[src]; rte != nil && rte.media != nil {
			consumed, ok := r.feedback(rt, rte, b, src, nowNS)
			if !ok {
				r.drops[DropMalformed]++
				return
			}
			if consumed {
				return
			}
		} else if sub, _, ok := relayControlSubType(b); ok && (rte != nil || !deviceSubType(sub)) {
			r.drops[DropRelayControl]++ // relay instructions come from forwarders only
			return
		} // a device's own CRLY from an unknown address: below, as any packet from there
	default:
		r.drops[DropNotMedia]++
		return
	}
	rte := rt.bySrc[src]
	if rte == nil {
		r.drops[DropUnknownSource]++
		r.nudge(b, src, nowNS)
		return
	}
	m := rte.media
	if m == nil || kind != protocol.KindRTP {
		if m == nil || r.police(m, len(b), policeRTCP) {
			r.fanOut(rte, b)
		}
		return
	}
	r.rtp(rte, m, b)
}

// rtp forwards a member's RTP packet (parsed into r.hdr): audio to every
// other member through the gate, video through the pairs, both policed.
func (r *reader) rtp(rte *route, m *mediaInfo, b []byte) {
	slot := m.note(r.hdr.SSRC)
	nowNS := r.now()
	m.up.onPacket(&r.cw, &r.hdr, r.f.adapt.absID, len(b), slot, nowNS)
	voice, level, audio := r.hdr.AudioLevel(r.f.audio.extID)
	if rte.hold != 0 && r.held(rte, m, audio) {
		return
	}
	if audio {
		if !r.police(m, len(b), policeAudio) {
			return
		}
		if !r.audio(&m.audio, r.hdr.SequenceNumber, voice, level, len(b)-r.hdr.HeaderLen-r.hdr.PaddingLen, len(b)) {
			r.muted++
			return
		}
		m.keep(&r.cw, b, &r.hdr, nowNS)
		if len(rte.dests) > 0 { // only where members here hear it (sender_moves.go)
			m.move.note(pathDirect, r.hdr.SSRC, true, r.hdr.SequenceNumber, nowNS, &r.f.moves)
		}
		r.fanOut(rte, b)
		return
	}
	m.audio.bytes.Add(uint64(len(b)) << 32)
	if !r.police(m, len(b), policeVideo) {
		return
	}
	if rte.group && r.f.thr.shedVideo.Load() {
		r.drops[DropShedVideo]++ // overload: group video goes before any audio
		return
	}
	vf, has := r.hdr.VideoFrame(r.f.adapt.videoID)
	m.noteVideo(slot, vf, has, len(b), nowNS)
	m.keep(&r.cw, b, &r.hdr, nowNS)
	if len(rte.dests) > 0 {
		m.move.note(pathDirect, r.hdr.SSRC, false, r.hdr.SequenceNumber, nowNS, &r.f.moves)
	}
	for i := range rte.dests {
		d := &rte.dests[i]
		if d.pair != nil && d.pair.pass(vf, has, m, slot) {
			r.queue(b, d)
		}
	}
	if len(rte.trunks) > 0 && r.tpc != nil {
		r.toTrunks(rte, b)
	}
}

// fanOut sends b to every other member of the call: audio, and RTCP that
// is not the relay's.
func (r *reader) fanOut(rte *route, b []byte) {
	for i := range rte.dests {
		r.queue(b, &rte.dests[i])
	}
	if len(rte.trunks) > 0 && r.tpc != nil {
		r.toTrunks(rte, b)
	}
}

func (r *reader) queue(b []byte, d *dest) {
	if d.leg != nil { // a TCP or TLS member (stream_leg.go)
		r.toStream(b, d)
		return
	}
	if !r.pc.Queue(b, &d.sa) {
		r.flushQueue()
		r.pc.Queue(b, &d.sa)
	}
	r.bout += uint64(len(b))
	d.rx.down.sent.Add(uint64(len(b)))
}

// toTrunks seals b once and queues the frame to every other forwarder of
// the call.
func (r *reader) toTrunks(rte *route, b []byte) {
	if r.tn == len(r.tbufs) {
		r.flushTrunk(true)
	}
	h := protocol.TrunkHeader{Call: rte.call, Sender: rte.participant, Origin: r.f.tag}
	frame := r.tcodec.Seal(r.tbufs[r.tn][:0], &h, b)
	r.tn++
	for i := range rte.trunks {
		if !r.tpc.Queue(frame, &rte.trunks[i]) {
			r.flushTrunk(false) // the frame's slot stays taken
			r.tpc.Queue(frame, &rte.trunks[i])
		}
		r.tbout += uint64(len(frame))
	}
}

func (r *reader) flushTrunk(freeSlots bool) {
	sent, failed := r.tpc.Flush()
	r.tout += uint64(sent)
	r.drops[DropSendFailed] += uint64(failed)
	if freeSlots {
		r.tn = 0
	}
}

// nudge answers media from an unknown address with a Rejoin, so a device
// whose forwarder restarted, or whose flow a load balancer moved here,
// re-authenticates at once. Never larger than what it answers, and bounded
// per address and in all.
func (r *reader) nudge(b []byte, src netip.AddrPort, nowNS int64) {
	nudge := r.f.nudge
	if len(b) < len(nudge) || r.nudgeAll.burst == 0 {
		return
	}
	if nowNS == 0 {
		nowNS = r.f.cfg.Now().UnixNano()
	}
	if !r.nudgeLimiter.allow(hashAddrPort(src), nowNS) || !r.nudgeAll.allow(0, nowNS) {
		return
	}
	sa := &r.nudgeTo[r.nn]
	*sa = encodeSockaddr(src, r.f.v6)
	if !r.pc.Queue(nudge, sa) {
		r.flushQueue() // frees every slot
		r.nudgeTo[0] = *sa
		sa = &r.nudgeTo[0]
		r.pc.Queue(nudge, sa)
	}
	r.nn++
	r.nudges++
	r.bout += uint64(len(nudge))
}

// rtcpHeaderValid checks the first RTCP header of a (compound) packet: version
// 2 and a length that fits. The rest is opaque to the relay for now.
func rtcpHeaderValid(b []byte) bool {
	if len(b) < 4 || b[0]>>6 != 2 {
		return false
	}
	return 4*(int(binary.BigEndian.Uint16(b[2:4]))+1) <= len(b)
}

func (r *reader) toControl(rt *routes, b []byte, src netip.AddrPort, nowNS int64) {
	q, free, lim, key := r.f.ctrlNew, r.f.newFree, &r.newLimiter, hashAddr(src.Addr())
	if rt.bySrc[src] != nil {
		q, free, lim, key = r.f.ctrlKnown, r.f.knownFree, &r.knownLimiter, hashAddrPort(src)
	}
	if !lim.allow(key, nowNS) {
		r.drops[DropSTUNRateLimited]++
		return
	}
	var m *ctrlMsg
	select {
	case m = <-free:
	default:
		r.drops[DropControlBusy]++
		return
	}
	m.n = copy(m.buf[:], b)
	m.src = src
	select {
	case q <- m:
	default:
		free <- m // cannot block: we just took it from there
		r.drops[DropControlBusy]++
	}
}

func (r *reader) flushQueue() {
	sent, failed := r.pc.Flush()
	r.pout += uint64(sent)
	r.drops[DropSendFailed] += uint64(failed)
	r.nn, r.rn = 0, 0
}

// flush sends the batch's fan-out and publishes the batch's tallies.
func (r *reader) flush() {
	r.flushQueue()
	if r.tpc != nil {
		r.flushTrunk(true)
	}
	c := r.c
	c.packetsIn.Add(r.pin)
	c.bytesIn.Add(r.bin)
	c.packetsOut.Add(r.pout)
	c.bytesOut.Add(r.bout)
	if r.nacked|r.keyRequests != 0 {
		c.nacked.Add(r.nacked)
		c.keyRequests.Add(r.keyRequests)
		for i, n := range r.nackOut {
			c.nackOut[i].Add(n)
			r.nackOut[i] = 0
		}
		r.nacked, r.keyRequests = 0, 0
	}
	if r.tout|r.tbout|r.nudges|r.muted|r.onsetMsgs != 0 {
		c.trunkOut.Add(r.tout)
		c.trunkBytesOut.Add(r.tbout)
		c.nudges.Add(r.nudges)
		c.audioMuted.Add(r.muted)
		c.onsetMsgs.Add(r.onsetMsgs)
		r.tout, r.tbout, r.nudges, r.muted, r.onsetMsgs = 0, 0, 0, 0, 0
	}
	for i, d := range r.drops {
		if d != 0 {
			c.drops[i].Add(d)
			r.drops[i] = 0
		}
	}
	r.pin, r.bin, r.pout, r.bout = 0, 0, 0, 0
}

// held reports whether an operator holds this kind of the member's media
// (admin.go); a held packet is counted and goes nowhere.
func (r *reader) held(rte *route, m *mediaInfo, audio bool) bool {
	bit := holdVideo
	if audio {
		bit = holdAudio
	}
	if rte.hold&bit == 0 {
		return false
	}
	m.held.Add(1)
	return true
}
