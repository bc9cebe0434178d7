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
	key    client.MediaKey
	sender *client.Sender
	recv   *client.Receiver

	sent, decrypted, failed atomic.Uint64
}

func newParticipant(ctx context.Context, fwd netip.AddrPort, token []byte, ssrc uint32, log *zap.Logger) (*participant, error) {
	conn, err := client.Dial(ctx, client.Config{
		Forwarders: []netip.AddrPort{fwd},
		Token:      token,
		LocalAddr:  netip.AddrFrom4([4]byte{127, 0, 0, 1}),
		Logger:     log.Named("client"),
	})
	if err != nil {
		return nil, err
	}
	p := &participant{conn: conn, ssrc: ssrc, key: client.NewMediaKey(), recv: client.NewReceiver()}
	p.sender, err = client.NewSender(client.SenderConfig{SSRC: ssrc, PayloadType: 111, Key: p.key})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return p, nil
}

// framePayload is the plaintext of one audio frame: the sender's SSRC, the
// frame number, then filler derived from both, so a receiver can check the
// decrypted bytes exactly.
func framePayload(dst []byte, ssrc uint32, n uint32) []byte {
	dst = dst[:0]
	dst = binary.BigEndian.AppendUint32(dst, ssrc)
	dst = binary.BigEndian.AppendUint32(dst, n)
	for i := 0; i < 72; i++ {
		dst = append(dst, byte(ssrc)+byte(n)+byte(i))
	}
	return dst
}

// send emits one 20 ms frame per tick, alternating talk spurts and pauses
// (loud with the voice flag, then near silence), as a device with an Opus
// encoder without DTX would.
func (p *participant) send(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var plain, pkt []byte
	plain, pkt = make([]byte, 0, 128), make([]byte, 0, 256)
	talking, spurtLeft := false, 0
	for n := uint32(0); ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if spurtLeft <= 0 {
			talking = !talking
			spurtLeft = 25 + rand.IntN(100) // 0.5 to 2.5 s at 50 packets/s
		}
		spurtLeft--
		lvl := client.AudioLevel{Level: 110 + uint8(rand.IntN(17))}
		if talking {
			lvl = client.AudioLevel{Level: 15 + uint8(rand.IntN(20)), Voice: true}
		}
		plain = framePayload(plain, p.ssrc, n)
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
				if err == nil && len(got) >= 8 {
					want = framePayload(want, binary.BigEndian.Uint32(got[0:4]), binary.BigEndian.Uint32(got[4:8]))
				}
				if err != nil || hdr.SSRC == p.ssrc || !bytes.Equal(got, want) {
					p.failed.Add(1)
				} else {
					p.decrypted.Add(1)
				}
			}
			pkt.Release()
		}
	}
}

func (p *participant) close() { _ = p.conn.Close() }
