package demo

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/protocol"
)

// participant is one simulated device: it sends an encrypted audio stream
// with talk spurts (and, if it is one of its group call's video senders, a
// synthetic camera), decrypts and checks what the others send, and runs
// the receiver side of the relay's network adaptation: a client Feedback
// over everything it receives (NACKs, RR+REMB, PLIs; duplicates dropped)
// and its VideoSender fed with every RTCP datagram the relay sends.
type participant struct {
	conn   *client.Conn
	ssrc   uint32
	id     protocol.ID
	key    client.MediaKey
	sender *client.Sender
	recv   *client.Receiver
	fb     *client.Feedback
	// talking says whether the person speaks at a time since the call's
	// start (a P.59 conversation schedule shared by the call's members).
	talking func(time.Duration) bool
	start   time.Time
	// onSpeaker, if set, is told each change of dominant speaker this
	// device learns from the relay.
	onSpeaker func(protocol.ID)
	speaker   client.SpeakerTracker

	// Video, set by joinCall before the goroutines start and read-only
	// afterwards: sendsVideo says this member sends camera video on
	// videoSSRCs (one per simulcast layer, lowest first); videoLayer maps
	// the SSRCs of the call's other video senders to their layer; subs is
	// what the member subscribes to. video is the running sender, made by
	// startVideo.
	sendsVideo bool
	videoSSRCs [protocol.MaxSimulcastLayers]uint32
	videoLayer map[uint32]uint8
	subs       []protocol.VideoSubscription
	video      atomic.Pointer[client.VideoSender]
	subErrors  atomic.Uint64

	// loss, if set, drops a share of the RTP this device receives before
	// its Feedback sees it (--lossy-percent).
	loss *lossy

	sent, decrypted, failed    atomic.Uint64
	videoDecrypted, videoBytes atomic.Uint64
	videoFailed                atomic.Uint64
	videoInstructions          atomic.Uint64 // RTCP datagrams the camera acted on
}

func newParticipant(ctx context.Context, fwd netip.AddrPort, token []byte, id protocol.ID, ssrc uint32, log *zap.Logger) (*participant, error) {
	conn, err := client.Dial(ctx, client.Config{
		Forwarders: []netip.AddrPort{fwd},
		Token:      token,
		LocalAddr:  netip.AddrFrom4([4]byte{127, 0, 0, 1}),
		Logger:     log.Named("client"),
	})
	if err != nil {
		return nil, err
	}
	p := &participant{conn: conn, ssrc: ssrc, id: id, key: client.NewMediaKey(), recv: client.NewReceiver()}
	p.sender, err = client.NewSender(client.SenderConfig{SSRC: ssrc, PayloadType: 111, Key: p.key})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	p.fb = client.NewFeedback(conn, client.FeedbackConfig{SSRC: ssrc})
	return p, nil
}

// videoSSRC is the SSRC of layer i of the camera of the participant whose
// audio SSRC is ssrc: 'V' in the top byte, far from the small audio SSRCs.
func videoSSRC(ssrc uint32, layer int) uint32 {
	return 0x56000000 | ssrc<<2 | uint32(layer) //nolint:gosec // 0..2
}

// startVideo subscribes to the call's other cameras and, for a video
// sender, starts its camera. Call it once, before send and receive.
func (p *participant) startVideo() error {
	if len(p.subs) > 0 {
		if err := p.conn.Subscribe(p.subs); err != nil {
			p.subErrors.Add(1) // the Conn resends the set; counted, not fatal
		}
	}
	if !p.sendsVideo {
		return nil
	}
	v, err := client.NewVideoSender(p.conn, client.VideoConfig{SSRCs: p.videoSSRCs, Key: p.key})
	if err != nil {
		return err
	}
	p.video.Store(v)
	return nil
}

// framePayload is the plaintext of one audio frame: the sender's SSRC, the
// frame number, then filler derived from both (speechFiller bytes for
// speech, none for a comfort-noise frame of silence), so a receiver can
// check the decrypted bytes exactly.
func framePayload(dst []byte, ssrc uint32, n uint32, filler int) []byte {
	dst = dst[:0]
	dst = binary.BigEndian.AppendUint32(dst, ssrc)
	dst = binary.BigEndian.AppendUint32(dst, n)
	for i := 0; i < filler; i++ {
		dst = append(dst, byte(ssrc)+byte(n)+byte(i))
	}
	return dst
}

// speechFiller makes a speech frame 80 bytes of plaintext, about what Opus
// spends on 20 ms of speech; silence frames are 8 bytes, as with DTX
// comfort noise.
const speechFiller = 72

// send emits one 20 ms frame per tick, speaking when the call's
// conversation schedule says so (loud, with the voice flag, speech-sized)
// and otherwise sending small near-silent frames, as an Opus encoder with
// comfort noise would. Every frame carries abs-send-time, stamped right
// before it is sealed, for the relay's uplink estimate.
func (p *participant) send(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var plain, pkt []byte
	plain, pkt = make([]byte, 0, 128), make([]byte, 0, 256)
	for n := uint32(0); ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lvl, filler := client.AudioLevel{Level: 110 + uint8(rand.IntN(17))}, 0
		if p.talking(time.Since(p.start)) {
			lvl, filler = client.AudioLevel{Level: 15 + uint8(rand.IntN(20)), Voice: true}, speechFiller
		}
		plain = framePayload(plain, p.ssrc, n, filler)
		if err := p.sender.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, time.Now()); err != nil {
			p.failed.Add(1)
			continue
		}
		out, err := p.sender.Seal(pkt, client.Sample{Payload: plain, Timestamp: n * 960, AudioLevel: lvl})
		if err != nil {
			p.failed.Add(1)
			continue
		}
		if p.conn.WriteRTP(out) == nil {
			p.sent.Add(1)
		}
	}
}

// receive reads everything the relay sends until ctx ends or the session
// does: the simulated loss (if any) first, then the Feedback, which drops
// duplicates; RTP is decrypted and checked, RTCP goes to the camera (the
// relay's targets, REMB and PLIs) and to the speaker tracker.
func (p *participant) receive(ctx context.Context) {
	var hdr rtp.Header
	plain, want := make([]byte, 0, client.MaxPacketSize), make([]byte, 0, 128)
	// Once ctx ends the senders stop (the camera too): what the forwarders
	// already sent is still received, until nothing came for drainQuiet
	// (at most drainMax), so that the totals count it as decrypted, not
	// as lost in flight.
	var quiet <-chan time.Time
	done := ctx.Done()
	var drainEnd time.Time
	for {
		select {
		case <-done:
			if v := p.video.Load(); v != nil {
				v.Close()
			}
			done, drainEnd = nil, time.Now().Add(drainMax)
			quiet = time.After(drainQuiet)
			continue
		case <-quiet:
			return
		case pkt, ok := <-p.conn.Media():
			if !ok {
				return // the session ended: Media is closed
			}
			if pkt.Kind == protocol.KindRTP && p.loss != nil && p.loss.drop(pkt.Data, pkt.Received) {
				pkt.Release()
				continue
			}
			if !p.fb.Observe(pkt) {
				pkt.Release() // a duplicate (a retransmission that crossed the original)
				continue
			}
			switch pkt.Kind {
			case protocol.KindRTP:
				if p.loss != nil {
					p.loss.arrived(pkt.Data)
				}
				plain, want = p.open(pkt.Data, &hdr, plain, want)
			case protocol.KindRTCP:
				p.rtcp(pkt.Data)
			}
			pkt.Release()
			if done == nil { // draining: wait again for a quiet spell, within drainMax
				quiet = time.After(min(drainQuiet, max(0, time.Until(drainEnd))))
			}
		}
	}
}

// drainQuiet and drainMax bound how long a receiver keeps reading after the
// demo ends (participant.receive).
const (
	drainQuiet = 200 * time.Millisecond
	drainMax   = 2 * time.Second
)

// open decrypts one RTP packet and checks it: audio byte-exact, video by
// the layer its plaintext names.
func (p *participant) open(data []byte, hdr *rtp.Header, plain, want []byte) ([]byte, []byte) {
	got, err := p.recv.Open(plain, data, hdr) // plain has room for any packet
	if layer, isVideo := p.videoLayer[hdr.SSRC]; isVideo {
		l, _, _, _, ok := client.VideoPayloadInfo(got)
		if err != nil || !ok || l != layer {
			p.videoFailed.Add(1)
			p.failed.Add(1)
			return plain, want
		}
		p.videoDecrypted.Add(1)
		p.videoBytes.Add(uint64(len(data)))
		return plain, want
	}
	if err == nil && (len(got) == 8 || len(got) == 8+speechFiller) {
		want = framePayload(want, binary.BigEndian.Uint32(got[0:4]), binary.BigEndian.Uint32(got[4:8]), len(got)-8)
	}
	if err != nil || hdr.SSRC == p.ssrc || !bytes.Equal(got, want) {
		p.failed.Add(1)
	} else {
		p.decrypted.Add(1)
	}
	return plain, want
}

// rtcp hands one RTCP datagram from the relay to the camera and the
// speaker tracker.
func (p *participant) rtcp(b []byte) {
	if v := p.video.Load(); v != nil && v.HandleRTCP(b) {
		p.videoInstructions.Add(1)
	}
	if p.onSpeaker != nil {
		if id, changed := p.speaker.Observe(b); changed {
			p.onSpeaker(id)
		}
	}
}

// close stops the camera and the feedback, then leaves (so nothing of
// theirs reaches the forwarder after the leave). It may be called more
// than once.
func (p *participant) close() {
	if v := p.video.Load(); v != nil {
		v.Close()
	}
	p.fb.Close()
	_ = p.conn.Close()
}
