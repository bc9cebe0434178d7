package loadtest

import (
	"encoding/binary"
	"math/rand/v2"

	"github.com/pion/rtp"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/protocol"
)

// A call's network adaptation, as its members' client library runs it:
// every member's Feedback over what it receives (NACKs, RR+REMB, PLIs,
// duplicates dropped), the video mix's cameras (client.VideoSender, obeying
// the relay's targets, simulcast, REMB and PLI), and every member's
// subscription to the call's cameras. The libraries' own counters are
// folded into the member's window once a second.

func (f *FeedbackMeasures) add(o *FeedbackMeasures) {
	f.Reports += o.Reports
	f.NACKs += o.NACKs
	f.PLIs += o.PLIs
	f.Duplicates += o.Duplicates
	f.Audio.add(&o.Audio)
	f.Video.add(&o.Video)
}

func (s *StreamFeedback) add(o *StreamFeedback) {
	s.NACKed += o.NACKed
	s.Recovered += o.Recovered
	s.Unrecovered += o.Unrecovered
}

// add adds o's counters (not its rates).
func (v *VideoMeasures) add(o *VideoMeasures) {
	v.SenderSeconds += o.SenderSeconds
	v.PacketsSent += o.PacketsSent
	v.BytesSent += o.BytesSent
	v.KeyFrames += o.KeyFrames
	v.PacketsReceived += o.PacketsReceived
	v.BytesReceived += o.BytesReceived
	v.DecryptFailures += o.DecryptFailures
	v.PLIs += o.PLIs
	v.TargetBitrates += o.TargetBitrates
	v.REMBs += o.REMBs
	v.SimulcastControls += o.SimulcastControls
	for i := range v.Layers {
		v.Layers[i] += o.Layers[i]
		v.ReceivedByLayer[i] += o.ReceivedByLayer[i]
	}
}

// drawVideo picks the members of a call of size that send video: each
// with probability share, from the call's own seed (every agent draws the
// same).
func drawVideo(seed uint64, size int, share float64) []bool {
	if share <= 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x71de0))
	cams := make([]bool, size)
	for i := range cams {
		cams[i] = rng.Float64() < share
	}
	return cams
}

// setUpMedia gives the call's members their Feedback, makes the cameras of
// the members drawn in cams (their layers' SSRCs and keys known to every
// other member first, so the first key frame decrypts), and subscribes
// every member to the other cameras. Call it after the audio keys were
// exchanged and before the receivers start. Every camera layer's first
// sequence number is firstSeq (0: a random one per layer).
func setUpMedia(members []*member, cams []bool, firstSeq uint16) {
	var senders []*member
	for _, m := range members {
		m.fb = client.NewFeedback(m.sess, client.FeedbackConfig{SSRC: m.ssrc})
		m.seen.streams = make(map[uint32]streamSeen)
		if m.idx < len(cams) && cams[m.idx] {
			for l := range m.camSSRCs {
				m.camSSRCs[l] = rand.Uint32() | 1
			}
			senders = append(senders, m)
		}
	}
	for _, m := range members {
		var subs []protocol.VideoSubscription
		for _, c := range senders {
			if c == m {
				continue
			}
			if m.videoOf == nil {
				m.videoOf = make(map[uint32]uint8)
			}
			for l, ssrc := range c.camSSRCs {
				_ = m.recv.AddSender(ssrc, c.key) // a fresh valid key cannot fail
				m.videoOf[ssrc] = uint8(l)        //nolint:gosec // 0..2
			}
			if len(subs) < protocol.MaxSubscriptions {
				subs = append(subs, protocol.VideoSubscription{Participant: c.id})
			}
		}
		if len(subs) > 0 {
			m.sub = client.NewSubscriber(m.sess, m.ssrc)
			_ = m.sub.Subscribe(subs) // a failed write is resent by the Subscriber
		}
	}
	for _, c := range senders {
		cam, err := client.NewVideoSender(c.sess, client.VideoConfig{SSRCs: c.camSSRCs, Key: c.key, FirstSequence: firstSeq})
		if err == nil { // a valid config cannot fail
			c.cam = cam
		}
	}
}

// stopVideo stops the cameras and the subscriptions' resends.
func stopVideo(members []*member) {
	for _, m := range members {
		if m.cam != nil {
			m.cam.Close()
		}
		if m.sub != nil {
			m.sub.Close()
		}
	}
}

// closeFeedback stops the members' Feedback from sending; Observe and the
// counters still work.
func closeFeedback(members []*member) {
	for _, m := range members {
		if m.fb != nil {
			m.fb.Close()
		}
	}
}

// seen is what of a member's library counters was already folded into its
// window.
type seen struct {
	reports, nacks, plis uint64
	streams              map[uint32]streamSeen
	cam                  VideoMeasures
}

// streamSeen is one received stream's counters as last folded.
type streamSeen struct {
	nacked, recovered, unrecovered, duplicates uint64
}

// delta returns cur - prev, or cur when the counter restarted (the
// Feedback forgot the stream and met it again).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// fold adds what m's Feedback and camera counted since the last fold to
// m.win; sample also counts the camera's second (with its layer count).
// m.mu is held.
func (m *member) fold(sample bool) {
	if m.fb != nil {
		st := m.fb.Stats()
		f := &m.win.fb
		f.Reports += delta(st.Reports, m.seen.reports)
		f.NACKs += delta(st.NACKs, m.seen.nacks)
		f.PLIs += delta(st.PLIs, m.seen.plis)
		m.seen.reports, m.seen.nacks, m.seen.plis = st.Reports, st.NACKs, st.PLIs
		for _, s := range st.Streams {
			prev := m.seen.streams[s.SSRC]
			kind := &f.Audio
			if s.Video {
				kind = &f.Video
			}
			kind.NACKed += delta(s.NACKed, prev.nacked)
			kind.Recovered += delta(s.Recovered, prev.recovered)
			kind.Unrecovered += delta(s.Unrecovered, prev.unrecovered)
			f.Duplicates += delta(s.Duplicates, prev.duplicates)
			m.seen.streams[s.SSRC] = streamSeen{nacked: s.NACKed, recovered: s.Recovered, unrecovered: s.Unrecovered, duplicates: s.Duplicates}
		}
	}
	if m.cam == nil {
		return
	}
	st := m.cam.Stats()
	var cur VideoMeasures
	for _, l := range st.Layer {
		cur.PacketsSent += l.Packets
		cur.BytesSent += l.Bytes
		cur.KeyFrames += l.KeyFrames
	}
	cur.PLIs, cur.TargetBitrates, cur.REMBs, cur.SimulcastControls = st.PLIs, st.TargetBitrates, st.REMBs, st.SimulcastControls
	v, p := &m.win.video, &m.seen.cam
	v.PacketsSent += delta(cur.PacketsSent, p.PacketsSent)
	v.BytesSent += delta(cur.BytesSent, p.BytesSent)
	v.KeyFrames += delta(cur.KeyFrames, p.KeyFrames)
	v.PLIs += delta(cur.PLIs, p.PLIs)
	v.TargetBitrates += delta(cur.TargetBitrates, p.TargetBitrates)
	v.REMBs += delta(cur.REMBs, p.REMBs)
	v.SimulcastControls += delta(cur.SimulcastControls, p.SimulcastControls)
	*p = cur
	if sample && st.Layers >= 1 && st.Layers <= len(v.Layers) {
		v.SenderSeconds++
		v.Layers[st.Layers-1]++
	}
}

// openVideo decrypts one video packet of a camera's layer layer and
// reports whether it decrypted and its plaintext names that layer. buf has
// room for any packet; hdr is the receiver's.
func (m *member) openVideo(data, buf []byte, hdr *rtp.Header, layer uint8) bool {
	got, err := m.recv.Open(buf, data, hdr)
	l, _, _, _, ok := client.VideoPayloadInfo(got)
	return err == nil && ok && l == layer
}

// countVideo counts one video packet received in w.
func countVideo(w *window, size int, layer uint8, ok bool) {
	if !ok {
		w.video.DecryptFailures++
		return
	}
	w.video.PacketsReceived++
	w.video.BytesReceived += uint64(size)
	w.video.ReceivedByLayer[layer]++
}

// rtpSSRC reads the SSRC of an RTP packet (false when too short).
func rtpSSRC(b []byte) (uint32, bool) {
	if len(b) < 12 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[8:12]), true
}
