package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Trunk echoes let forwarders measure the round-trip time between them on
// the trunk, the path media takes between regions. Every keepalive
// (trunk_keepalive.go) is also a probe: a forwarder that takes a keepalive
// answers it with an echo, sent to the trunk the keepalive's sender
// announced in its heartbeat (never to the datagram's source address, so a
// spoofed source cannot aim echoes anywhere). An echo is an ordinary
// trunk frame with zero call and sender ids, like a keepalive, whose
// payload is:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   kind = 2    |   id length   | region length |  reserved (0) |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   echoed keepalive's started, Unix ms (64 bits, signed)       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   echoed keepalive's sequence (64 bits, unsigned)             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   hold, microseconds (32 bits, unsigned)                      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	:   echoer's forwarder id (id length), region (region length)   :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// hold is how long the echoer held the keepalive between reading it and
// sending the echo; the prober's RTT sample is (echo arrival - keepalive
// departure) - hold. The frame's origin tag must be ForwarderTag of the
// echoer's id. README.md section 6.3 has the rules and an example.

// TrunkKindEcho is the first payload byte of a trunk echo.
const TrunkKindEcho = 2

// trunkEchoFixed is the payload before the id and region.
const trunkEchoFixed = 24

// MaxTrunkEcho is the longest echo payload.
const MaxTrunkEcho = trunkEchoFixed + maxForwarderIDLen + MaxRegionLen

// MaxTrunkControl is the longest payload of a trunk frame with zero ids
// (keepalive or echo).
const MaxTrunkControl = max(MaxTrunkKeepalive, MaxTrunkEcho)

// MaxEchoHold is the longest hold an echo can carry.
const MaxEchoHold = time.Duration(1<<32-1) * time.Microsecond

// ErrTrunkEcho: an authentic trunk frame with zero ids and kind 2 whose
// payload is not a valid echo, or whose origin tag is not its echoer's.
var ErrTrunkEcho = errors.New("protocol: invalid trunk echo")

// TrunkEcho answers one trunk keepalive.
type TrunkEcho struct {
	Forwarder string        // the echoer's id (ValidForwarderID)
	Region    string        // the echoer's region (ValidRegion; empty: none)
	Started   time.Time     // the echoed keepalive's Started: the prober's process
	Seq       uint64        // the echoed keepalive's Seq
	Hold      time.Duration // how long the echoer held it, 0..MaxEchoHold, microsecond resolution
}

// TrunkControlKind is the kind of an opened frame with zero ids: its first
// payload byte (0 for an empty payload).
func TrunkControlKind(payload []byte) byte {
	if len(payload) == 0 {
		return 0
	}
	return payload[0]
}

// SealTrunkEcho appends e as a sealed trunk frame to dst. Its hold is
// truncated to whole microseconds.
func SealTrunkEcho(c *TrunkCodec, dst []byte, e *TrunkEcho) ([]byte, error) {
	if err := ValidForwarderID(e.Forwarder); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrunkEcho, err)
	}
	if err := ValidRegion(e.Region); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrunkEcho, err)
	}
	if err := clusterCheckTime("started", e.Started); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrunkEcho, err)
	}
	if e.Hold < 0 || e.Hold > MaxEchoHold {
		return nil, fmt.Errorf("%w: hold %s, want 0..%s", ErrTrunkEcho, e.Hold, MaxEchoHold)
	}
	var p [MaxTrunkEcho]byte
	b := append(p[:0], TrunkKindEcho, byte(len(e.Forwarder)), byte(len(e.Region)), 0)
	b = clusterAppendTime(b, e.Started)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = binary.BigEndian.AppendUint32(b, uint32(e.Hold/time.Microsecond))
	b = append(b, e.Forwarder...)
	b = append(b, e.Region...)
	h := TrunkHeader{Origin: ForwarderTag(e.Forwarder)}
	return c.Seal(dst, &h, b), nil
}

// ParseTrunkEcho reads the payload of an opened echo frame (h its header).
// It fails with ErrTrunkEcho unless the payload is exactly one echo of a
// valid forwarder id whose tag is h.Origin, with a valid region. The
// reserved byte is ignored.
func ParseTrunkEcho(h *TrunkHeader, payload []byte) (TrunkEcho, error) {
	if !IsTrunkKeepalive(h) {
		return TrunkEcho{}, fmt.Errorf("%w: a frame of call %s", ErrTrunkEcho, h.Call)
	}
	if len(payload) < trunkEchoFixed {
		return TrunkEcho{}, fmt.Errorf("%w: %d bytes, want at least %d", ErrTrunkEcho, len(payload), trunkEchoFixed)
	}
	if payload[0] != TrunkKindEcho {
		return TrunkEcho{}, fmt.Errorf("%w: kind %d", ErrTrunkEcho, payload[0])
	}
	n, r := int(payload[1]), int(payload[2])
	if len(payload) != trunkEchoFixed+n+r {
		return TrunkEcho{}, fmt.Errorf("%w: id of %d and region of %d bytes in a %d-byte payload", ErrTrunkEcho, n, r, len(payload))
	}
	id := payload[trunkEchoFixed : trunkEchoFixed+n]
	if ForwarderTag(string(id)) != h.Origin {
		return TrunkEcho{}, fmt.Errorf("%w: origin tag %#x is not forwarder %q's", ErrTrunkEcho, h.Origin, id)
	}
	e := TrunkEcho{Forwarder: string(id), Region: string(payload[trunkEchoFixed+n:]),
		Started: clusterTime(payload[4:12]), Seq: binary.BigEndian.Uint64(payload[12:20]),
		Hold: time.Duration(binary.BigEndian.Uint32(payload[20:24])) * time.Microsecond}
	if err := ValidForwarderID(e.Forwarder); err != nil {
		return TrunkEcho{}, fmt.Errorf("%w: %w", ErrTrunkEcho, err)
	}
	if err := ValidRegion(e.Region); err != nil {
		return TrunkEcho{}, fmt.Errorf("%w: %w", ErrTrunkEcho, err)
	}
	return e, nil
}
