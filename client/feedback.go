package client

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"

	"github.com/callrelay/callrelay/internal/bwe"
	"github.com/callrelay/callrelay/protocol"
)

// FeedbackConfig configures a Feedback. Zero values take the defaults
// listed per field.
type FeedbackConfig struct {
	// SSRC is the packet sender SSRC of the feedback: one of the device's
	// own media SSRCs (its audio's, say). Zero draws one at random.
	SSRC uint32
	// ReorderWait is how long a missing packet is waited for before the
	// first NACK: reordering within it costs nothing. Default 15ms.
	ReorderWait time.Duration
	// NACKInterval is the time between NACKs of one packet, about a round
	// trip. Default 100ms.
	NACKInterval time.Duration
	// MaxNACKs is how often one packet is NACKed. Default 3.
	MaxNACKs int
	// GiveUpAfter is how long after the gap a missing packet is given up
	// (Unrecovered). Default 1s.
	GiveUpAfter time.Duration
	// ReportInterval is the time between two receiver reports with REMB.
	// Default 200ms.
	ReportInterval time.Duration
	// KeyFrameRequestInterval rate-limits PLI, per stream. Default 300ms.
	KeyFrameRequestInterval time.Duration
	// VideoFrameID and AbsSendTimeID are the RFC 8285 ids of the video
	// frame and abs-send-time extensions. Defaults
	// protocol.DefaultVideoFrameExtensionID and
	// protocol.DefaultAbsSendTimeExtensionID.
	VideoFrameID  uint8
	AbsSendTimeID uint8
	// BWE bounds the bandwidth estimate sent as REMB.
	BWE bwe.Config
}

func (c FeedbackConfig) withDefaults() FeedbackConfig {
	setDefault(&c.ReorderWait, 15*time.Millisecond)
	setDefault(&c.NACKInterval, 100*time.Millisecond)
	setDefault(&c.MaxNACKs, 3)
	setDefault(&c.GiveUpAfter, time.Second)
	setDefault(&c.ReportInterval, 200*time.Millisecond)
	setDefault(&c.KeyFrameRequestInterval, 300*time.Millisecond)
	if c.VideoFrameID == 0 {
		c.VideoFrameID = protocol.DefaultVideoFrameExtensionID
	}
	if c.AbsSendTimeID == 0 {
		c.AbsSendTimeID = protocol.DefaultAbsSendTimeExtensionID
	}
	for c.SSRC == 0 {
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.SSRC = binary.BigEndian.Uint32(b[:])
	}
	return c
}

// Stream bookkeeping bounds.
const (
	// maxStreams is how many received streams a Feedback follows; when a
	// new one arrives beyond it, the one silent the longest is forgotten.
	maxStreams = 64
	// streamQuiet: a stream silent this long is no longer reported (RR,
	// REMB) and gives up its estimator slot.
	streamQuiet = 2 * time.Second
	// streamForget: a stream silent this long is forgotten.
	streamForget = 30 * time.Second
	// bweUpdate is how often the estimator runs (bwe: every 25..100ms).
	bweUpdate = 50 * time.Millisecond
	// maxRTCPDatagram bounds one feedback datagram; more packets go in
	// another.
	maxRTCPDatagram = 1200
	// maxReportBlocks is the most report blocks one RR holds (RFC 3550).
	maxReportBlocks = 31
)

// Feedback is the receiver side of the relay's network adaptation. Feed
// it every packet from Media (Observe); for each received RTP stream
// (SSRC) it
//
//   - tracks sequence numbers, and on a gap sends a generic NACK (RFC 4585)
//     for the missing packets after ReorderWait, repeated up to MaxNACKs
//     times NACKInterval apart, giving them up after GiveUpAfter; none
//     while its writer (a Conn or Session) is on TCP or TLS;
//   - recognises duplicates (a packet seen before: Observe returns false,
//     drop it) and counts them;
//   - for video (packets with the video frame extension), sends a PLI when
//     the stream has not yet shown a key frame or a packet was given up,
//     at most one per KeyFrameRequestInterval;
//
// and it runs a bandwidth estimator (internal/bwe) over all incoming RTP
// (arrival times, abs-send-time when present, sizes, sequence numbers),
// sending every ReportInterval a receiver report (loss per stream) and a
// REMB (the estimate, for the streams received lately) in one compound RTCP
// packet. Its methods are safe for concurrent use.
type Feedback struct {
	cfg FeedbackConfig
	pol nackPolicy
	w   RTCPWriter

	mu      sync.Mutex // guards the fields below; never held while writing
	hdr     protocol.RTPHeader
	streams map[uint32]*rtpStream
	est     bwe.Estimator
	slots   [bwe.MaxStreams]*rtpStream // estimator stream index -> stream
	nextRR  time.Time
	nextBWE time.Time
	remb    uint64 // the last REMB sent
	nackBuf []uint16
	sent    feedbackCounters

	writeErrors atomic.Uint64
	kick        chan struct{} // capacity 1: something is due sooner
	stop        chan struct{}
	closeOnce   sync.Once
	wg          sync.WaitGroup
}

type feedbackCounters struct {
	reports, nacks, plis, rtcp uint64 // RR+REMB compounds, NACK packets, PLIs, datagrams
}

// rtpStream is one received SSRC.
type rtpStream struct {
	ssrc    uint32
	seq     seqTracker
	slot    int // estimator stream index, -1 when none
	sendTS  bwe.SendTimeUnwrapper
	packets uint64 // new packets (not duplicates)
	bytes   uint64
	last    time.Time // arrival of the last packet

	video, keySeen bool
	layer, layers  uint8
	keyFrames      uint64
	wantKey        bool      // a PLI is due
	pliAt          time.Time // the last PLI sent
	plis           uint64

	lastSR   uint32    // middle 32 bits of the last SR's NTP time
	lastSRAt time.Time // when it arrived
}

// NewFeedback returns a Feedback that sends its RTCP through w (the Conn
// or Session whose Media it observes) and starts its timer goroutine.
// Close stops it.
func NewFeedback(w RTCPWriter, cfg FeedbackConfig) *Feedback {
	f := newFeedback(w, cfg, time.Now())
	f.wg.Add(1)
	go f.run()
	return f
}

// newFeedback builds a Feedback without its goroutine; tests drive it with
// tick.
func newFeedback(w RTCPWriter, cfg FeedbackConfig, now time.Time) *Feedback {
	cfg = cfg.withDefaults()
	f := &Feedback{
		cfg: cfg,
		pol: nackPolicy{wait: cfg.ReorderWait, interval: cfg.NACKInterval, tries: cfg.MaxNACKs,
			giveUp: cfg.GiveUpAfter},
		w:       w,
		streams: make(map[uint32]*rtpStream),
		nextRR:  now.Add(cfg.ReportInterval),
		nextBWE: now.Add(bweUpdate),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	f.est.Init(cfg.BWE)
	return f
}

// Close stops the timer goroutine (nothing more is sent) and waits for it.
// It is idempotent.
func (f *Feedback) Close() {
	f.closeOnce.Do(func() { close(f.stop) })
	f.wg.Wait()
}

// Observe reads one packet received from Media. It returns false for a
// duplicate RTP packet and for the relay's padding probes (SSRC 0), which
// the caller should drop (and Release); true for anything else. RTCP is read for the senders' reports (their times go
// back in the receiver reports).
func (f *Feedback) Observe(p *Packet) bool {
	switch p.Kind {
	case protocol.KindRTP:
		return f.ObserveRTP(p.Data, p.Received)
	case protocol.KindRTCP:
		f.ObserveRTCP(p.Data, p.Received)
	}
	return true
}

// ObserveRTP reads one RTP packet that arrived at at. It returns false
// for a duplicate, and true for anything else, including a packet too
// broken to parse (the decryption will judge it).
func (f *Feedback) ObserveRTP(b []byte, at time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := &f.hdr
	if h.Parse(b) != nil {
		return true
	}
	s := f.stream(h.SSRC, at)
	s.last = at
	if h.SSRC == protocol.RelayProbeSSRC {
		// The relay's padding probe: it measures the downlink and carries
		// nothing. Estimator only; never NACKed, never delivered.
		var sendNS int64
		abs, hasAbs := h.AbsSendTime(f.cfg.AbsSendTimeID)
		if hasAbs && s.slot >= 0 {
			sendNS = s.sendTS.Unwrap(abs)
		}
		f.est.OnPacket(at.UnixNano(), sendNS, hasAbs && s.slot >= 0, len(b), s.slot, h.SequenceNumber)
		s.packets++
		s.bytes += uint64(len(b))
		return false
	}
	gaps := len(s.seq.pending)
	vf, isVideo := h.VideoFrame(f.cfg.VideoFrameID)
	pol := f.pol
	pol.maxGap = audioMaxGap
	if isVideo {
		pol.maxGap = videoMaxGap
	}
	skipped := s.seq.skipped
	v := s.seq.push(h.SequenceNumber, at, &pol, isVideo && vf.Key && vf.Start)
	slot := s.slot
	if v == seqDuplicate {
		slot = -1 // it used the link: rate only
	}
	if s.seq.skipped != skipped {
		f.est.SkipTo(slot, h.SequenceNumber) // the relay chose that gap: not loss
	}
	abs, hasAbs := h.AbsSendTime(f.cfg.AbsSendTimeID)
	var sendNS int64
	if hasAbs && slot >= 0 {
		sendNS = s.sendTS.Unwrap(abs)
	}
	f.est.OnPacket(at.UnixNano(), sendNS, hasAbs && slot >= 0, len(b), slot, h.SequenceNumber)
	if v == seqDuplicate {
		return false
	}
	s.packets++
	s.bytes += uint64(len(b))
	if isVideo {
		f.video(s, vf)
	}
	if len(s.seq.pending) > gaps || s.wantKey && at.Sub(s.pliAt) >= f.cfg.KeyFrameRequestInterval {
		f.poke()
	}
	return true
}

// video notes a video packet's frame extension.
func (f *Feedback) video(s *rtpStream, vf protocol.VideoFrame) {
	s.video, s.layer, s.layers = true, vf.Layer, vf.Layers
	switch {
	case vf.Key && vf.Start:
		s.keyFrames++
		s.keySeen, s.wantKey = true, false
	case !s.keySeen:
		s.wantKey = true
	}
}

// ObserveRTCP reads one RTCP datagram that arrived at at, for the sender
// reports in it.
func (f *Feedback) ObserveRTCP(b []byte, at time.Time) {
	forEachRTCP(b, func(p rtcp.Packet) {
		sr, ok := p.(*rtcp.SenderReport)
		if !ok {
			return
		}
		f.mu.Lock()
		if s := f.streams[sr.SSRC]; s != nil {
			s.lastSR, s.lastSRAt = uint32(sr.NTPTime>>16), at //nolint:gosec // the middle 32 bits
		}
		f.mu.Unlock()
	})
}

// poke wakes the timer goroutine. f.mu may be held.
func (f *Feedback) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// stream returns ssrc's stream, adding it (and forgetting the stalest
// when the table is full). f.mu must be held.
func (f *Feedback) stream(ssrc uint32, now time.Time) *rtpStream {
	s := f.streams[ssrc]
	if s == nil {
		if len(f.streams) >= maxStreams {
			var stalest *rtpStream
			for _, o := range f.streams {
				if stalest == nil || o.last.Before(stalest.last) {
					stalest = o
				}
			}
			f.forget(stalest)
		}
		s = &rtpStream{ssrc: ssrc, slot: -1, last: now}
		f.streams[ssrc] = s
	}
	if s.slot < 0 {
		for i, o := range f.slots {
			if o == nil {
				f.slots[i], s.slot = s, i
				s.sendTS.Reset()
				break
			}
		}
	}
	return s
}

// forget drops a stream. f.mu must be held.
func (f *Feedback) forget(s *rtpStream) {
	f.release(s)
	delete(f.streams, s.ssrc)
}

// release frees a stream's estimator slot. f.mu must be held.
func (f *Feedback) release(s *rtpStream) {
	if s.slot >= 0 {
		f.slots[s.slot], s.slot = nil, -1
	}
}

// run sends what is due, then sleeps until the next thing is.
func (f *Feedback) run() {
	defer f.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := f.tick(time.Now())
		timer.Reset(max(time.Until(next), time.Millisecond))
		select {
		case <-f.stop:
			return
		case <-f.kick:
		case <-timer.C:
		}
	}
}

// tick sends the NACKs, PLIs and reports due at now and returns when the
// next thing is due.
func (f *Feedback) tick(now time.Time) time.Time {
	stream := onStream(f.w)
	f.mu.Lock()
	pkts, next := f.due(now, stream)
	f.mu.Unlock()
	f.send(pkts)
	return next
}

// onStream reports whether w sends over TCP or TLS now (a Conn or Session
// on a stream transport): no NACKs go there, since TCP loses nothing and
// the forwarder answers none on a connection (protocol/README.md section
// 9 rule 3); gaps then are the relay's queue dropping on purpose, given up
// as unrecovered. Other writers are taken as UDP.
func onStream(w RTCPWriter) bool {
	t, ok := w.(interface{ Transport() Transport })
	return ok && t.Transport() != TransportUDP
}

// due collects the RTCP due at now; on a stream transport, no NACKs. f.mu
// must be held.
func (f *Feedback) due(now time.Time, stream bool) ([]rtcp.Packet, time.Time) {
	pol := f.pol
	if stream {
		pol.tries = 0
	}
	next := f.nextRR
	if !now.Before(f.nextBWE) {
		f.est.Update(now.UnixNano())
		f.nextBWE = now.Add(bweUpdate)
	}
	next = earliest(next, f.nextBWE)
	var pkts []rtcp.Packet
	if !now.Before(f.nextRR) {
		pkts = f.report(now)
		f.nextRR = now.Add(f.cfg.ReportInterval)
		next = earliest(next, f.nextRR)
	}
	for _, s := range f.streams {
		seqs, gaveUp, when := s.seq.due(now, &pol, f.nackBuf[:0])
		f.nackBuf = seqs
		next = earliest(next, when)
		if len(seqs) > 0 {
			pkts = append(pkts, &rtcp.TransportLayerNack{SenderSSRC: f.cfg.SSRC, MediaSSRC: s.ssrc,
				Nacks: rtcp.NackPairsFromSequenceNumbers(seqs)})
			f.sent.nacks++
		}
		if gaveUp > 0 && s.video {
			s.wantKey = true // a frame is broken for good
		}
		if s.wantKey {
			if at := s.pliAt.Add(f.cfg.KeyFrameRequestInterval); now.Before(at) {
				next = earliest(next, at)
			} else if now.Sub(s.last) < streamQuiet {
				pkts = append(pkts, &rtcp.PictureLossIndication{SenderSSRC: f.cfg.SSRC, MediaSSRC: s.ssrc})
				s.pliAt, s.wantKey = now, false
				s.plis++
				f.sent.plis++
			}
		}
	}
	return pkts, next
}

// report builds the receiver reports and the REMB for the streams heard
// lately, and forgets long-silent streams. f.mu must be held.
func (f *Feedback) report(now time.Time) []rtcp.Packet {
	var pkts []rtcp.Packet
	var rr *rtcp.ReceiverReport
	var ssrcs []uint32
	for _, s := range f.streams {
		silent := now.Sub(s.last)
		if silent >= streamForget {
			f.forget(s)
			continue
		}
		if silent >= streamQuiet {
			f.release(s)
			continue
		}
		if rr == nil || len(rr.Reports) == maxReportBlocks {
			rr = &rtcp.ReceiverReport{SSRC: f.cfg.SSRC}
			pkts = append(pkts, rr)
		}
		frac, lost, highest := s.seq.report()
		blk := rtcp.ReceptionReport{SSRC: s.ssrc, FractionLost: frac, TotalLost: lost, LastSequenceNumber: highest}
		if !s.lastSRAt.IsZero() {
			blk.LastSenderReport = s.lastSR
			blk.Delay = uint32(now.Sub(s.lastSRAt) * 65536 / time.Second) //nolint:gosec // 1/65536 s, wraps as RFC 3550 allows
		}
		rr.Reports = append(rr.Reports, blk)
		ssrcs = append(ssrcs, s.ssrc)
	}
	if len(ssrcs) == 0 {
		return nil
	}
	f.remb = f.est.Estimate()
	pkts = append(pkts, &rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: f.cfg.SSRC,
		Bitrate: float32(f.remb), SSRCs: ssrcs})
	f.sent.reports++
	return pkts
}

// send writes pkts in as few datagrams of at most maxRTCPDatagram bytes
// as it takes.
func (f *Feedback) send(pkts []rtcp.Packet) {
	for len(pkts) > 0 {
		n, size := 0, 0
		for n < len(pkts) && (n == 0 || size+pkts[n].MarshalSize() <= maxRTCPDatagram) {
			size += pkts[n].MarshalSize()
			n++
		}
		if err := f.w.WriteRTCP(pkts[:n]...); err != nil {
			f.writeErrors.Add(1)
		} else {
			f.mu.Lock()
			f.sent.rtcp++
			f.mu.Unlock()
		}
		pkts = pkts[n:]
	}
}

// FeedbackStats are a Feedback's counters: per received stream, and what
// it sent.
type FeedbackStats struct {
	// Streams are the streams followed, by SSRC (ascending).
	Streams []StreamStats
	// REMB is the last REMB sent, bits per second (0 before the first).
	REMB uint64
	// Estimate, IncomingBps and LossFraction are the estimator's current
	// view of the downlink.
	Estimate     uint64
	IncomingBps  uint64
	LossFraction float64
	// Reports counts receiver reports sent (each with a REMB), NACKs the
	// NACK packets, PLIs the PLIs; Datagrams the RTCP datagrams written,
	// WriteErrors those the writer refused.
	Reports     uint64
	NACKs       uint64
	PLIs        uint64
	Datagrams   uint64
	WriteErrors uint64
}

// StreamStats are one received stream's counters. Packets and Bytes count
// distinct packets (duplicates apart), RTP header included.
type StreamStats struct {
	SSRC       uint32
	Packets    uint64
	Bytes      uint64
	Duplicates uint64 // dropped
	// Lost is the RFC 3550 cumulative count: packets expected (from the
	// sequence numbers) less packets received, NACKed or not.
	Lost uint64
	// Missing counts the sequence numbers found missing in gaps; of them,
	// Reordered arrived before any NACK, Recovered after one, Unrecovered
	// were given up; Pending are still waited for.
	Missing     uint64
	Reordered   uint64
	Recovered   uint64
	Unrecovered uint64
	// Skipped counts numbers not taken as loss: a gap longer than a loss
	// burst (audio the relay held back while its sender was silent, a
	// layer not forwarded for a while) or one ending at a key frame's
	// first packet (the relay switched this receiver to the layer there).
	Skipped uint64
	Pending int
	// NACKed counts sequence numbers NACKed, each try once.
	NACKed uint64
	// Late counts packets that came after they were given up (or from
	// before the stream's first), Restarts the sender's numbering
	// restarting.
	Late     uint64
	Restarts uint64
	// HighestSeq is the highest sequence number received.
	HighestSeq uint16
	// Video is set once a packet carried the video frame extension; Layer
	// and Layers are the last one's (the simulcast layer the relay
	// forwards), KeyFrames counts key frames begun, PLIs the PLIs sent.
	Video     bool
	Layer     uint8
	Layers    uint8
	KeyFrames uint64
	PLIs      uint64
	Last      time.Time // arrival of the last packet
}

// Stats returns the counters.
func (f *Feedback) Stats() FeedbackStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := FeedbackStats{
		REMB:         f.remb,
		Estimate:     f.est.Estimate(),
		IncomingBps:  f.est.IncomingBps(),
		LossFraction: f.est.LossFraction(),
		Reports:      f.sent.reports,
		NACKs:        f.sent.nacks,
		PLIs:         f.sent.plis,
		Datagrams:    f.sent.rtcp,
		WriteErrors:  f.writeErrors.Load(),
		Streams:      make([]StreamStats, 0, len(f.streams)),
	}
	for _, s := range f.streams {
		q := &s.seq
		st.Streams = append(st.Streams, StreamStats{
			SSRC: s.ssrc, Packets: s.packets, Bytes: s.bytes, Duplicates: q.duplicates, Lost: q.lost(),
			Missing: q.missed, Reordered: q.reordered, Recovered: q.recovered, Unrecovered: q.unrecovered, Skipped: q.skipped,
			Pending: len(q.pending), NACKed: q.nacked, Late: q.late, Restarts: q.restarts,
			HighestSeq: uint16(q.max), //nolint:gosec // the low 16 bits
			Video:      s.video, Layer: s.layer, Layers: s.layers, KeyFrames: s.keyFrames, PLIs: s.plis, Last: s.last,
		})
	}
	slices.SortFunc(st.Streams, func(a, b StreamStats) int { return cmp.Compare(a.SSRC, b.SSRC) })
	return st
}

// Stream returns the stats of the stream ssrc.
func (s FeedbackStats) Stream(ssrc uint32) (StreamStats, bool) {
	for _, x := range s.Streams {
		if x.SSRC == ssrc {
			return x, true
		}
	}
	return StreamStats{}, false
}
