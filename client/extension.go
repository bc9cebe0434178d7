package client

import (
	"fmt"
	"time"

	"github.com/pion/rtp"

	"github.com/callrelay/callrelay/protocol"
)

// Header extensions a Sender writes besides the audio level and the
// rollover counter (e2ee.go): the video frame extension and abs-send-time
// (protocol/README.md 4). Each is added to the Sender's header on first
// use (one allocation) and rewritten in place afterwards, so sealing a
// packet allocates nothing more.

// SetAbsSendTime makes the next packets s seals carry t as abs-send-time
// (24-bit seconds in 6.18 fixed point, protocol.AbsSendTime) in the RFC 8285
// one-byte element id (protocol.DefaultAbsSendTimeExtensionID when
// signalling negotiated nothing else). Call it right before Seal with the
// time of sending: receivers estimate the bandwidth from the spacing of send
// and arrival times. It fails when id is out of 1..14 or already carries
// another extension (the audio level's id, say).
func (s *Sender) SetAbsSendTime(id uint8, t time.Time) error {
	p, err := s.extension(id, 3)
	if err != nil {
		return fmt.Errorf("client: abs-send-time: %w", err)
	}
	v := protocol.AbsSendTime(t)
	p[0], p[1], p[2] = byte(v>>16), byte(v>>8), byte(v)
	return nil
}

// setVideoFrame makes the next packets s seals carry vf as the video frame
// extension in element id.
func (s *Sender) setVideoFrame(id uint8, vf protocol.VideoFrame) error {
	b, err := vf.Byte()
	if err != nil {
		return fmt.Errorf("client: video frame extension: %w", err)
	}
	p, err := s.extension(id, 1)
	if err != nil {
		return fmt.Errorf("client: video frame extension: %w", err)
	}
	p[0] = b
	return nil
}

// extension returns the n-byte payload of element id in s's header, which
// Seal writes as it is, adding the element on first use.
func (s *Sender) extension(id uint8, n int) ([]byte, error) {
	if id == 0 || id > 14 {
		return nil, fmt.Errorf("extension id %d: want 1..14 (RFC 8285 one-byte form)", id)
	}
	if id == s.rocID {
		return nil, fmt.Errorf("extension id %d carries the rollover counter", id)
	}
	if p := s.hdr.GetExtension(id); p != nil {
		if len(p) != n {
			return nil, fmt.Errorf("extension id %d already carries a %d-byte element", id, len(p))
		}
		return p, nil
	}
	p := make([]byte, n)
	if err := s.hdr.SetExtensionWithProfile(id, p, rtp.ExtensionProfileOneByte); err != nil {
		return nil, err
	}
	return p, nil
}
