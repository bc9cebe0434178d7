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
// with talk spurts, and decrypts and checks what the others send.
type participant struct {
	conn   *client.Conn
	ssrc   uint32
	id     protocol.ID
	key    client.MediaKey
	sender *client.Sender
	recv   *client.Receiver
	// talking says whether the person speaks at a time since the call's
	// start (a P.59 conversation schedule shared by the call's members).
	talking func(time.Duration) bool
	start   time.Time
	// onSpeaker, if set, is told each change of dominant speaker this
	// device learns from the relay.
	onSpeaker func(protocol.ID)
	speaker   client.SpeakerTracker

	sent, decrypted, failed atomic.Uint64
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
	return p, nil
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
// comfort noise would.
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

// receive decrypts every packet from the others and checks its plaintext.
func (p *participant) receive(ctx context.Context) {
	var hdr rtp.Header
	plain, want := make([]byte, 0, 256), make([]byte, 0, 128)
	for {
		select {
		case <-ctx.Done():
			return
		case pkt, ok := <-p.conn.Media():
			if !ok {
				return // the session ended: Media is closed
			}
			if pkt.Kind == protocol.KindRTP {
				got, err := p.recv.Open(plain, pkt.Data, &hdr)
				if err == nil && (len(got) == 8 || len(got) == 8+speechFiller) {
					want = framePayload(want, binary.BigEndian.Uint32(got[0:4]), binary.BigEndian.Uint32(got[4:8]), len(got)-8)
				}
				if err != nil || hdr.SSRC == p.ssrc || !bytes.Equal(got, want) {
					p.failed.Add(1)
				} else {
					p.decrypted.Add(1)
				}
			}
			if pkt.Kind == protocol.KindRTCP && p.onSpeaker != nil {
				if id, changed := p.speaker.Observe(pkt.Data); changed {
					p.onSpeaker(id)
				}
			}
			pkt.Release()
		}
	}
}

func (p *participant) close() { _ = p.conn.Close() }
