package forwarder

import (
	"errors"
	"net"

	"github.com/callrelay/callrelay/protocol"
)

// trunkReader serves one trunk socket: it authenticates each frame from
// another forwarder and fans the packet out to the call's members here,
// from the media port (devices hear everything from the address they
// joined). Like the media reader it allocates nothing, locks nothing shared
// and logs nothing per packet.
type trunkReader struct {
	f     *Forwarder
	in    packetConn // the trunk socket
	out   packetConn // the media socket of the same index, write side
	c     *counters
	codec *protocol.TrunkCodec
	hdr   protocol.TrunkHeader
	rtp   protocol.RTPHeader
	cw    cacheWriter // names it as the writer of its remote senders' NACK caches
	nowNS int64       // this batch's clock, 0 until read
	coop  coopReader  // polls while control is busy (yield.go)

	// The replay window of the last stream served (trunk_replay.go).
	win    *protocol.TrunkReplay
	winKey trunkStream

	pin, bin, pout, bout uint64
	drops                [numDropReasons]uint64
}

func (t *trunkReader) run() {
	for {
		n, err := t.coop.read(&t.f.coop, t.in)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			t.c.drops[DropReadError].Add(1)
			continue
		}
		t.drops[DropReceiveBuffer] += t.in.Dropped()
		rt := t.f.routes.Load()
		t.nowNS = 0
		for i := 0; i < n; i++ {
			if t.in.Truncated(i) {
				t.pin++
				t.drops[DropOversized]++
				continue
			}
			t.handle(rt, t.in.Buf(i))
		}
		t.flush()
	}
}

func (t *trunkReader) handle(rt *routes, frame []byte) {
	t.pin++
	t.bin += uint64(len(frame))
	payload, err := t.codec.Open(frame, &t.hdr)
	if err != nil || t.hdr.Origin == t.f.tag {
		t.drops[DropTrunkAuth]++
		return
	}
	if !t.fresh() {
		t.drops[DropTrunkReplay]++ // seen before, or older than the window
		return
	}
	cr := rt.byCall[t.hdr.Call]
	if cr == nil {
		if protocol.IsTrunkKeepalive(&t.hdr) {
			t.keepalive(payload) // a peer saying it is alive (liveness.go)
			return
		}
		t.drops[DropTrunkNoCall]++
		return
	}
	ts := cr.remote[t.hdr.Sender]
	if protocol.Classify(payload) == protocol.KindRTP && t.rtp.Parse(payload) == nil {
		if t.video(cr, ts, payload) {
			return
		}
	}
	for i := range cr.members {
		t.queue(payload, &cr.members[i])
	}
}

// video forwards a remote sender's video to the members subscribed to it,
// and caches every RTP packet of a known remote sender for NACKs. It
// returns false for audio, which goes to every member.
func (t *trunkReader) video(cr *callRoute, ts *trunkSender, payload []byte) bool {
	_, _, audio := t.rtp.AudioLevel(t.f.audio.extID)
	if ts == nil {
		if !audio {
			t.drops[DropUnsubscribed]++ // no member here has subscribed to a sender we do not know yet
		}
		return !audio
	}
	if t.nowNS == 0 {
		t.nowNS = t.f.cfg.Now().UnixNano()
	}
	m := ts.media
	slot := m.note(t.rtp.SSRC)
	m.keep(&t.cw, payload, &t.rtp, t.nowNS)
	if len(cr.members) > 1 || cr.members[0].participant != t.hdr.Sender { // a listener here, not only the sender moving in
		m.move.note(trunkPath(t.hdr.Origin), t.rtp.SSRC, audio, t.rtp.SequenceNumber, t.nowNS, &t.f.moves)
	}
	if audio {
		return false
	}
	vf, has := t.rtp.VideoFrame(t.f.adapt.videoID)
	m.noteVideo(slot, vf, has, len(payload), t.nowNS)
	for i := range cr.members {
		if p := ts.pairs[i]; p != nil && p.pass(vf, has, m, slot) {
			t.queue(payload, &cr.members[i])
		}
	}
	return true
}

func (t *trunkReader) queue(payload []byte, m *memberDest) {
	if m.participant == t.hdr.Sender {
		return // a device briefly on two forwarders hears no echo
	}
	if m.leg != nil { // a TCP or TLS member (stream_leg.go)
		m.leg.push(payload, streamIsVideo(payload, &t.rtp, t.f.audio.extID))
	} else if !t.out.Queue(payload, &m.sa) {
		t.flushQueue()
		t.out.Queue(payload, &m.sa)
	}
	t.bout += uint64(len(payload))
	if m.rx != nil {
		m.rx.down.sent.Add(uint64(len(payload)))
	}
}

func (t *trunkReader) flushQueue() {
	sent, failed := t.out.Flush()
	t.pout += uint64(sent)
	t.drops[DropSendFailed] += uint64(failed)
}

func (t *trunkReader) flush() {
	t.flushQueue()
	c := t.c
	c.trunkIn.Add(t.pin)
	c.trunkBytesIn.Add(t.bin)
	c.packetsOut.Add(t.pout)
	c.bytesOut.Add(t.bout)
	for i, d := range t.drops {
		if d != 0 {
			c.drops[i].Add(d)
			t.drops[i] = 0
		}
	}
	t.pin, t.bin, t.pout, t.bout = 0, 0, 0, 0
}
