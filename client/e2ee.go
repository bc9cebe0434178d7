package client

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

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
	// ROCID is the RFC 8285 one-byte extension id of the rollover counter
	// (protocol/README.md 4), which every packet carries so that receivers
	// who join late or switch layers find the stream's SRTP rollover
	// counter. 1..14, not AudioLevelID. Default
	// protocol.DefaultRolloverCounterExtensionID (4).
	ROCID uint8
	// FirstSequence is the first packet's RTP sequence number. 0 draws a
	// random one (RFC 3550 5.1), which is what a device should do; tests
	// set it near 65535 to see the sequence number roll over soon.
	FirstSequence uint16
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
// a random initial sequence number (RFC 3550 5.1) and counts the sequence
// number's rollovers itself (the ROC of RFC 3711 3.3.1, from 0): every
// packet is encrypted with that ROC and carries it in clear in the
// rollover counter extension. A Sender is not safe for concurrent use.
type Sender struct {
	ctx      *srtp.Context
	hdr      rtp.Header
	level    [1]byte // the extension's payload, rewritten per packet
	hasLevel bool
	rocID    uint8
	roc      uint32                               // the next packet's rollover counter
	rocData  [protocol.MaxRolloverCounterLen]byte // the element's payload is rocData[:1..4]
	plain    []byte                               // reused plaintext packet
	scratch  rtp.Header
}

// NewSender returns a Sender for cfg.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.PayloadType > 127 || (cfg.PayloadType >= 64 && cfg.PayloadType <= 95) {
		return nil, fmt.Errorf("client: payload type %d: want 0..63 or 96..127 (64..95 collide with RTCP)", cfg.PayloadType)
	}
	if cfg.AudioLevelID == 0 {
		cfg.AudioLevelID = protocol.DefaultAudioLevelExtensionID
	}
	if cfg.ROCID == 0 {
		cfg.ROCID = protocol.DefaultRolloverCounterExtensionID
	}
	if cfg.AudioLevelID > 14 || cfg.ROCID > 14 || (!cfg.NoAudioLevel && cfg.AudioLevelID == cfg.ROCID) {
		return nil, fmt.Errorf("client: audio level and rollover counter extension ids %d and %d: want two different ids in 1..14 (RFC 8285 one-byte form)",
			cfg.AudioLevelID, cfg.ROCID)
	}
	ctx, err := cfg.Key.context()
	if err != nil {
		return nil, fmt.Errorf("client: SRTP context: %w", err)
	}
	seq := cfg.FirstSequence
	for seq == 0 {
		var b [2]byte
		_, _ = rand.Read(b[:])
		seq = binary.BigEndian.Uint16(b[:])
	}
	s := &Sender{ctx: ctx, rocID: cfg.ROCID}
	s.hdr = rtp.Header{
		Version:        2,
		PayloadType:    cfg.PayloadType,
		SSRC:           cfg.SSRC,
		SequenceNumber: seq,
	}
	if !cfg.NoAudioLevel {
		if err := s.hdr.SetExtensionWithProfile(cfg.AudioLevelID, s.level[:], rtp.ExtensionProfileOneByte); err != nil {
			return nil, fmt.Errorf("client: audio level extension: %w", err)
		}
		s.hasLevel = true
	}
	if err := s.putROC(); err != nil {
		return nil, fmt.Errorf("client: rollover counter extension: %w", err)
	}
	return s, nil
}

// putROC writes the next packet's rollover counter into its element,
// in place while the ROC keeps its byte length; the element is set again
// (no allocation: it points into s.rocData) when the ROC grows a byte, at
// 256, 65536 and 2^24 rollovers.
func (s *Sender) putROC() error {
	d := protocol.AppendRolloverCounter(s.rocData[:0], s.roc)
	if len(s.hdr.GetExtension(s.rocID)) == len(d) {
		return nil
	}
	return s.hdr.SetExtensionWithProfile(s.rocID, d, rtp.ExtensionProfileOneByte)
}

// SSRC returns the stream's SSRC.
func (s *Sender) SSRC() uint32 { return s.hdr.SSRC }

// Seal builds the next RTP packet from smp, encrypts its payload and
// returns it, appended to dst[:0] when dst has room (else a new buffer).
// The packet is len(header)+len(payload)+10 bytes (the auth tag).
func (s *Sender) Seal(dst []byte, smp Sample) ([]byte, error) {
	if err := s.putROC(); err != nil {
		return nil, fmt.Errorf("client: rollover counter extension: %w", err)
	}
	if s.hasLevel {
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
	// Encrypt with exactly the ROC the packet carries, not one pion
	// guesses from the sequence numbers it saw.
	s.ctx.SetROC(s.hdr.SSRC, s.roc)
	out, err := s.ctx.EncryptRTP(dst[:0], plain, &s.scratch)
	if err != nil {
		return nil, fmt.Errorf("client: SRTP encrypt: %w", err)
	}
	s.hdr.SequenceNumber++
	if s.hdr.SequenceNumber == 0 {
		s.roc++
	}
	return out, nil
}
