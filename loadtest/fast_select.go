package loadtest

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Selective forwarding in the fast engine: calls whose relay forwards only
// part of what the devices send, so that the generator cannot know which
// frames each receiver should get.
//
//   - Fast.Forwarded > 0: group audio under a conductor that forwards at
//     most that many members' audio per call (the dominant speakers, its
//     --max-forwarded), deciding from the RFC 6464 levels the devices send
//     (silence at level 120, speech at 25 with the voice flag, from the
//     talkspurt model).
//   - Fast.VideoLayers > 0: every member also sends simulcast video, one
//     packet per layer per 20 ms (fast_video.go), and each receiver gets one
//     layer of each sender, the lowest (the forwarder's default policy).
//
// Under a conductor, audio loss is counted per stream (receiver, sender
// SSRC) from the sender's own RTP sequence numbers, which the relay
// forwards unchanged: a stream's first packet at a receiver starts it, and
// a gap of at most gapLimit packets before a packet counts those packets
// lost, a longer one as the relay not forwarding the stream meanwhile
// (gating: the conductor takes a member out of its forwarding set for
// seconds). Loss in bursts longer than gapLimit inside an audio stream is
// therefore not seen, and a gate that closes for one or two frames (a
// loud-onset hold ending just before the decision that keeps the member
// in) is counted as loss: the listener hears that gap too.
//
// Video has no conductor here, so the generator knows what must arrive:
// every layer-0 packet at every other member, once the receiver's copy of
// the sender's layer 0 has started, which the forwarder does at a key
// frame (protocol/README.md 4). A layer-0 packet is expected of a receiver
// when the sender's last key frame was sent after the receiver counted
// (readyAfter its admission), and counted received when the stream's
// first key frame sent after that has arrived; layers 1 and 2 are never
// expected, and a copy of one arriving is counted in Forwarding only.
//
// The bare reflector has no conductor and no layers: against it
// (Target reflector) the generator decides instead. Members 0 ..
// Forwarded-1 of a call send from their own addresses and are fanned out
// to every other member; the others send their audio, and every device
// its video layers but layer 0, from muteAddr, an address no device
// registers, so the reflector reads each of those datagrams, finds no
// group and drops it, as the forwarder reads and drops a gated frame. Both
// relays then read the same datagrams and write as many copies (the
// forwarder at most as many: its set may hold fewer than Forwarded).

// muteAddr is the source of the frames the reflector must not fan out:
// below the devices' range (fast_addr.go), so never registered.
var muteAddr = netip.AddrFrom4([4]byte{127, addrFirstBlock - 1, 0, 1})

// gapLimit is the longest gap inside a gated audio stream counted as loss.
const gapLimit = 2

// winNs is the window in which a receiver's distinct audio senders are
// counted (Forwarding.AudioSenders).
const winNs = int64(200 * time.Millisecond)

// maxWinSenders bounds the senders a window tells apart; more count as
// this many.
const maxWinSenders = 8

// Stream kinds (the index of Forwarding's arrays): audio, then video layer
// l at 1+l.
const streamKinds = 1 + 3

// selective says whether the run counts loss per stream (see above).
func (f Fast) selective() bool { return f.Forwarded > 0 || f.VideoLayers > 0 }

// muted says whether d's audio goes to the reflector from muteAddr.
func (e *fastEngine) muted(d *fastDev) bool {
	return e.f.Target == TargetReflector && e.f.Forwarded > 0 && d.idx >= e.f.Forwarded
}

// queueFrom adds b, from d's socket but from address src, to its batch.
func (e *fastEngine) queueFrom(d *fastDev, b []byte, src netip.Addr) {
	c := e.socks[d.sock]
	if !c.Queue(b, d.target, src) {
		e.flushOne(c)
		c.Queue(b, d.target, src)
	}
}

// selState is one reader's per-stream state (its owner's mu held).
type selState struct {
	// last holds a stream's last in-order sequence number, 1<<16 | seq,
	// by receiver device << 32 | SSRC.
	last map[uint64]uint32
	// started holds the layer-0 streams whose first key frame sent after
	// the receiver counted has arrived, by the same key.
	started map[uint64]bool
	// wins holds each receiver's current window of audio senders.
	wins     map[int32]*recvWin
	hist     [maxWinSenders + 1]uint64
	received [streamKinds]uint64
}

// recvWin is one receiver's window: its number and the senders heard in
// it.
type recvWin struct {
	win  int64
	n    int
	devs [maxWinSenders]int32
}

func newSelState() *selState {
	return &selState{last: map[uint64]uint32{}, started: map[uint64]bool{}, wins: map[int32]*recvWin{}}
}

// selCounters are the senders' side (the scheduler adds, the summary
// reads).
type selCounters struct {
	sent, offered [streamKinds]atomic.Uint64
}

// noteStream files one packet the receiver at dst received in time, sent
// after the receiver counted: its kind, its stream's gap (gated audio),
// its sender in the receiver's window, and says whether it counts as
// received against the expected (always, unless the run is selective). The
// reader's mu is held.
func (e *fastEngine) noteStream(sock int, b []byte, dst netip.Addr, sentNs int64, cls int) bool {
	if e.sel == nil {
		return true
	}
	s := e.sel[sock]
	ssrc := binary.BigEndian.Uint32(b[8:12])
	kind := streamKind(ssrc)
	s.received[kind]++
	rcv, ok := e.localDev(dst)
	if !ok {
		return false
	}
	key := uint64(rcv)<<32 | uint64(ssrc) //nolint:gosec // rcv < maxDevices
	switch {
	case kind == 0:
		sender, _, _ := fastSender(ssrc)
		s.hear(int32(rcv), int32(sender), sentNs/winNs) //nolint:gosec // both < maxDevices
		if e.f.Forwarded > 0 {
			e.expected[cls][(sentNs/lossBucketNs)%lossRing].Add(s.gap(key, binary.BigEndian.Uint16(b[2:4]), gapLimit))
		}
		return true
	case kind == 1:
		if !s.started[key] {
			_, vf, ok := rtpOffsets(b, protocol.DefaultVideoFrameExtensionID)
			if !ok || vf == 0 || b[vf]&0x80 == 0 {
				return false // not started: not expected either
			}
			s.started[key] = true
		}
		return true
	}
	return false // layers 1 and 2 are never expected
}

// gap files seq on stream key and returns the packets it makes expected:
// 1, plus the packets missing before it when the gap is at most limit; 0
// for a packet older than the last (it fills a gap counted before).
func (s *selState) gap(key uint64, seq uint16, limit int) uint64 {
	last, seen := s.last[key]
	if !seen {
		s.last[key] = 1<<16 | uint32(seq)
		return 1
	}
	d := seq - uint16(last) //nolint:gosec // the low 16 bits
	switch {
	case d == 0:
		return 0 // a duplicate
	case d >= 1<<15:
		return 0 // reordered: it was counted lost, now it is here
	}
	s.last[key] = 1<<16 | uint32(seq)
	if int(d)-1 <= limit {
		return uint64(d)
	}
	return 1
}

// hear notes that receiver rcv heard sender in window win.
func (s *selState) hear(rcv, sender int32, win int64) {
	w := s.wins[rcv]
	if w == nil {
		w = &recvWin{win: win}
		s.wins[rcv] = w
	}
	if w.win != win {
		s.closeWin(w)
		w.win, w.n = win, 0
	}
	for i := range min(w.n, maxWinSenders) {
		if w.devs[i] == sender {
			return
		}
	}
	if w.n < maxWinSenders {
		w.devs[w.n] = sender
	}
	w.n++
}

func (s *selState) closeWin(w *recvWin) {
	if w.n > 0 {
		s.hist[min(w.n, maxWinSenders)]++
	}
}

// Forwarding is what the relay forwarded of what the devices sent, in a
// fast-engine run with selective forwarding (Fast.Forwarded or
// Fast.VideoLayers): the generator cannot predict each frame's receivers
// there, so it reports what arrived. Index 0 of each array is audio, 1+l
// video layer l.
type Forwarding struct {
	// Forwarded is Fast.Forwarded: at most this many members' audio per
	// call should reach a receiver (0: all).
	Forwarded int `json:"forwarded"`
	// Sent counts the packets the devices sent to the relay; Offered the
	// same times the call's other admitted members (what a relay
	// forwarding everything would write); Received the copies the devices
	// received (in time, from admitted senders).
	Sent     [streamKinds]uint64 `json:"sent"`
	Offered  [streamKinds]uint64 `json:"offered"`
	Received [streamKinds]uint64 `json:"received"`
	// AudioForwardedPct is Received[0] in percent of Offered[0]: the share
	// of the audio copies the relay's gating let through.
	AudioForwardedPct float64 `json:"audio_forwarded_pct"`
	// AudioSenders[k] counts 200 ms windows of a receiver in which it got
	// audio from k distinct members (the last index: that many or more);
	// OverForwardedPct is the percentage of those windows with more than
	// Forwarded (a decision changing the set inside a window, a loud onset
	// let through, a call's first decision not made yet).
	AudioSenders     []uint64 `json:"audio_senders"`
	MaxAudioSenders  int      `json:"max_audio_senders"`
	OverForwardedPct float64  `json:"over_forwarded_pct"`
}

// forwarding sums the run's selective-forwarding figures (nil unless the
// run is selective). After stop.
func (e *fastEngine) forwarding() *Forwarding {
	if e.sel == nil {
		return nil
	}
	f := &Forwarding{Forwarded: e.f.Forwarded, AudioSenders: make([]uint64, maxWinSenders+1)}
	for k := range streamKinds {
		f.Sent[k], f.Offered[k] = e.selSent.sent[k].Load(), e.selSent.offered[k].Load()
	}
	for i, rd := range e.rds {
		rd.mu.Lock()
		s := e.sel[i]
		for _, w := range s.wins {
			s.closeWin(w)
			w.n = 0
		}
		for k := range streamKinds {
			f.Received[k] += s.received[k]
		}
		for n, c := range s.hist {
			f.AudioSenders[n] += c
		}
		rd.mu.Unlock()
	}
	var wins, over uint64
	for n, c := range f.AudioSenders {
		wins += c
		if c > 0 {
			f.MaxAudioSenders = n
		}
		if f.Forwarded > 0 && n > f.Forwarded {
			over += c
		}
	}
	if wins > 0 {
		f.OverForwardedPct = round3(100 * float64(over) / float64(wins))
	}
	if f.Offered[0] > 0 {
		f.AudioForwardedPct = round3(100 * float64(f.Received[0]) / float64(f.Offered[0]))
	}
	return f
}
