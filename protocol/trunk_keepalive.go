package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Trunk keepalives let forwarders hear each other on the trunk itself,
// whether or not they share a call and whatever NATS is doing: every
// forwarder sends one, about once a heartbeat interval, to the trunk of
// every other forwarder it knows. A keepalive is an ordinary trunk frame
// (same header, key and tag) whose call id and sender participant id are
// both zero, which no media frame has (join tokens with a zero id are
// refused). Its payload:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   kind = 1    |   id length   |  started, Unix ms (64 bits)   :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	:                               |  sequence (64 bits, unsigned) :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	:                               |  forwarder id (id length)     :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The frame's origin tag must be ForwarderTag of the id. README.md section
// 6.2 has the rules and an example.

// TrunkKindKeepalive is the first payload byte of a trunk keepalive. Media
// payloads start with 0x80..0xBF (RTP and RTCP version 2), so a kind can
// never be mistaken for media even without the zero ids.
const TrunkKindKeepalive = 1

// trunkKeepaliveFixed is the payload before the forwarder id.
const trunkKeepaliveFixed = 18

// MaxTrunkKeepalive is the longest keepalive payload.
const MaxTrunkKeepalive = trunkKeepaliveFixed + maxForwarderIDLen

// ErrTrunkKeepalive: an authentic trunk frame with zero call and sender
// ids whose payload is not a valid keepalive, or whose origin tag is not
// its forwarder's.
var ErrTrunkKeepalive = errors.New("protocol: invalid trunk keepalive")

// TrunkKeepalive says that a forwarder is alive and reaches the receiver's
// trunk.
type TrunkKeepalive struct {
	Forwarder string    // the sender's id (ValidForwarderID)
	Started   time.Time // when the sender's process started, as in ForwarderAnnounce
	Seq       uint64    // increases with every keepalive of one process
}

// IsTrunkKeepalive says whether an opened frame is a keepalive rather than
// media: both of its ids are zero.
func IsTrunkKeepalive(h *TrunkHeader) bool { return h.Call.IsZero() && h.Sender.IsZero() }

// SealTrunkKeepalive appends k as a sealed trunk frame to dst.
func SealTrunkKeepalive(c *TrunkCodec, dst []byte, k *TrunkKeepalive) ([]byte, error) {
	if err := ValidForwarderID(k.Forwarder); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrunkKeepalive, err)
	}
	if err := clusterCheckTime("started", k.Started); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrunkKeepalive, err)
	}
	var p [MaxTrunkKeepalive]byte
	b := append(p[:0], TrunkKindKeepalive, byte(len(k.Forwarder)))
	b = clusterAppendTime(b, k.Started)
	b = binary.BigEndian.AppendUint64(b, k.Seq)
	b = append(b, k.Forwarder...)
	h := TrunkHeader{Origin: ForwarderTag(k.Forwarder)}
	return c.Seal(dst, &h, b), nil
}

// ParseTrunkKeepalive reads the payload of an opened keepalive frame (h
// its header). It fails with ErrTrunkKeepalive unless the payload is
// exactly one keepalive of a valid forwarder id whose tag is h.Origin.
func ParseTrunkKeepalive(h *TrunkHeader, payload []byte) (TrunkKeepalive, error) {
	if !IsTrunkKeepalive(h) {
		return TrunkKeepalive{}, fmt.Errorf("%w: a frame of call %s", ErrTrunkKeepalive, h.Call)
	}
	if len(payload) < trunkKeepaliveFixed {
		return TrunkKeepalive{}, fmt.Errorf("%w: %d bytes, want at least %d", ErrTrunkKeepalive, len(payload), trunkKeepaliveFixed)
	}
	if payload[0] != TrunkKindKeepalive {
		return TrunkKeepalive{}, fmt.Errorf("%w: kind %d", ErrTrunkKeepalive, payload[0])
	}
	if n := int(payload[1]); len(payload) != trunkKeepaliveFixed+n {
		return TrunkKeepalive{}, fmt.Errorf("%w: id of %d bytes in a %d-byte payload", ErrTrunkKeepalive, n, len(payload))
	}
	id := payload[trunkKeepaliveFixed:]
	if ForwarderTag(string(id)) != h.Origin {
		return TrunkKeepalive{}, fmt.Errorf("%w: origin tag %#x is not forwarder %q's", ErrTrunkKeepalive, h.Origin, id)
	}
	k := TrunkKeepalive{Forwarder: string(id), Started: clusterTime(payload[2:10]), Seq: binary.BigEndian.Uint64(payload[10:18])}
	if err := ValidForwarderID(k.Forwarder); err != nil {
		return TrunkKeepalive{}, fmt.Errorf("%w: %w", ErrTrunkKeepalive, err)
	}
	return k, nil
}
