package client

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

	"github.com/callrelay/callrelay/protocol"
)

// Profile is the SRTP protection profile of end-to-end media (RFC 3711):
// AES-128 counter mode with an 80-bit HMAC-SHA1 tag. It encrypts the RTP
// payload only: the header and its RFC 8285 extensions stay in clear (and
// authenticated), so the relay can read SSRC, sequence numbers and the
// RFC 6464 audio level but never the media.
const Profile = srtp.ProtectionProfileAes128CmHmacSha1_80

// replayWindow is how far behind the newest packet a Receiver still accepts
// one it has not seen: the relay's NACK cache resends lost packets up to a
// few seconds late, byte-exact with their original sequence numbers.
const replayWindow = 4096

// MediaKey is one sender's SRTP master key and salt. Each participant picks
// its own, and gives it to the others end to end (out of band, through the
// application's encrypted signalling); the relay never sees it.
type MediaKey struct {
	Key  [16]byte
	Salt [14]byte
}

// NewMediaKey returns a fresh random key.
func NewMediaKey() MediaKey {
	var k MediaKey
	_, _ = rand.Read(k.Key[:]) // crypto/rand.Read never fails
	_, _ = rand.Read(k.Salt[:])
	return k
}

func (k *MediaKey) context(opts ...srtp.ContextOption) (*srtp.Context, error) {
	return srtp.CreateContext(k.Key[:], k.Salt[:], Profile, opts...)
}

// AudioLevel is the RFC 6464 audio level of an audio packet: Level is
// -dBov, 0 (loudest) to 127 (silence); Voice is the V flag (the sender's
// voice activity detector says speech).
type AudioLevel struct {
	Level uint8
	Voice bool
}

// SenderConfig describes one outgoing media stream.
type SenderConfig struct {
	SSRC        uint32
	PayloadType uint8 // 0..63 or 96..127: 64..95 would read as RTCP (RFC 5761 4)
	Key         MediaKey
	// AudioLevelID is the RFC 8285 one-byte extension id of the audio level,
	// 1..14. Default protocol.DefaultAudioLevelExtensionID (1).
	AudioLevelID uint8
	// NoAudioLevel leaves the audio-level extension out (video streams).
	NoAudioLevel bool
}

// Sample is one RTP packet to send: the plaintext payload (e.g. one Opus
// frame) and the header fields that change per packet.
type Sample struct {
	Payload    []byte
	Timestamp  uint32
	Marker     bool
	AudioLevel AudioLevel // ignored with SenderConfig.NoAudioLevel
}

// Sender builds and encrypts one stream's RTP packets. It numbers them from
// a random initial sequence number (RFC 3550 5.1). A Sender is not safe for
// concurrent use.
type Sender struct {
	ctx     *srtp.Context
	hdr     rtp.Header
	level   [1]byte // the extension's payload, rewritten per packet
	plain   []byte  // reused plaintext packet
	scratch rtp.Header
}

// NewSender returns a Sender for cfg.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.PayloadType > 127 || (cfg.PayloadType >= 64 && cfg.PayloadType <= 95) {
		return nil, fmt.Errorf("client: payload type %d: want 0..63 or 96..127 (64..95 collide with RTCP)", cfg.PayloadType)
	}
	if cfg.AudioLevelID == 0 {
		cfg.AudioLevelID = protocol.DefaultAudioLevelExtensionID
	}
	if cfg.AudioLevelID > 14 {
		return nil, fmt.Errorf("client: audio level extension id %d: want 1..14 (RFC 8285 one-byte form)", cfg.AudioLevelID)
	}
	ctx, err := cfg.Key.context()
	if err != nil {
		return nil, fmt.Errorf("client: SRTP context: %w", err)
	}
	var seq [2]byte
	_, _ = rand.Read(seq[:])
	s := &Sender{ctx: ctx}
	s.hdr = rtp.Header{
		Version:        2,
		PayloadType:    cfg.PayloadType,
		SSRC:           cfg.SSRC,
		SequenceNumber: binary.BigEndian.Uint16(seq[:]),
	}
	if !cfg.NoAudioLevel {
		if err := s.hdr.SetExtensionWithProfile(cfg.AudioLevelID, s.level[:], rtp.ExtensionProfileOneByte); err != nil {
			return nil, fmt.Errorf("client: audio level extension: %w", err)
		}
	}
	return s, nil
}

// SSRC returns the stream's SSRC.
func (s *Sender) SSRC() uint32 { return s.hdr.SSRC }

// Seal builds the next RTP packet from smp, encrypts its payload and
// returns it, appended to dst[:0] when dst has room (else a new buffer).
// The packet is len(header)+len(payload)+10 bytes (the auth tag).
func (s *Sender) Seal(dst []byte, smp Sample) ([]byte, error) {
	if s.hdr.Extension {
		lv := smp.AudioLevel
		if lv.Level > 127 {
			return nil, fmt.Errorf("client: audio level %d: want 0..127 (-dBov)", lv.Level)
		}
		s.level[0] = lv.Level
		if lv.Voice {
			s.level[0] |= 0x80
		}
	}
	s.hdr.Timestamp, s.hdr.Marker = smp.Timestamp, smp.Marker
	hl := s.hdr.MarshalSize()
	n := hl + len(smp.Payload)
	if cap(s.plain) < n {
		s.plain = make([]byte, n)
	}
	plain := s.plain[:n]
	if _, err := s.hdr.MarshalTo(plain); err != nil {
		return nil, fmt.Errorf("client: marshal RTP header: %w", err)
	}
	copy(plain[hl:], smp.Payload)
	out, err := s.ctx.EncryptRTP(dst[:0], plain, &s.scratch)
	if err != nil {
		return nil, fmt.Errorf("client: SRTP encrypt: %w", err)
	}
	s.hdr.SequenceNumber++
	return out, nil
}

// Receiver decrypts the media of the senders whose keys it was given, with
// one SRTP context (and replay window) per sender SSRC. It is safe for
// concurrent use.
type Receiver struct {
	mu      sync.Mutex
	senders map[uint32]*srtp.Context
}

// NewReceiver returns a Receiver that knows no sender yet.
func NewReceiver() *Receiver {
	return &Receiver{senders: make(map[uint32]*srtp.Context)}
}

// AddSender installs the key of the stream ssrc (learnt out of band). Adding
// an SSRC again replaces its key and restarts its replay window (re-keying).
func (r *Receiver) AddSender(ssrc uint32, k MediaKey) error {
	ctx, err := k.context(srtp.SRTPReplayProtection(replayWindow))
	if err != nil {
		return fmt.Errorf("client: SRTP context for SSRC %d: %w", ssrc, err)
	}
	r.mu.Lock()
	r.senders[ssrc] = ctx
	r.mu.Unlock()
	return nil
}

// RemoveSender forgets the stream ssrc (the participant left).
func (r *Receiver) RemoveSender(ssrc uint32) {
	r.mu.Lock()
	delete(r.senders, ssrc)
	r.mu.Unlock()
}

// Open authenticates and decrypts an SRTP packet. It fills hdr (which the
// caller owns and may reuse; its extension payloads point into pkt) and
// returns the plaintext payload, a sub-slice of dst when dst has room for
// the packet (else of a new buffer). A packet from an SSRC without a key
// fails with ErrUnknownSSRC; a tampered, wrongly keyed or replayed one with
// ErrDecrypt.
func (r *Receiver) Open(dst, pkt []byte, hdr *rtp.Header) ([]byte, error) {
	if hdr == nil {
		hdr = new(rtp.Header)
	}
	hl, err := hdr.Unmarshal(pkt)
	if err != nil {
		return nil, fmt.Errorf("%w: not an RTP packet: %w", ErrDecrypt, err)
	}
	r.mu.Lock()
	ctx := r.senders[hdr.SSRC]
	if ctx == nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w %d", ErrUnknownSSRC, hdr.SSRC)
	}
	out, err := ctx.DecryptRTP(dst[:0], pkt, hdr)
	r.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: SSRC %d seq %d: %w", ErrDecrypt, hdr.SSRC, hdr.SequenceNumber, err)
	}
	payload := out[hl:]
	if hdr.Padding {
		if len(payload) == 0 || payload[len(payload)-1] == 0 || int(payload[len(payload)-1]) > len(payload) {
			return nil, fmt.Errorf("%w: SSRC %d: bad padding", ErrDecrypt, hdr.SSRC)
		}
		payload = payload[:len(payload)-int(payload[len(payload)-1])]
	}
	return payload, nil
}
