package protocol

import (
	"encoding/binary"
	"fmt"
)

// MaxSimulcastLayers is the most simulcast layers a sender sends.
const MaxSimulcastLayers = 3

// TargetBitrate (subtype 1, relay -> sender) tells a sender what to send:
// a target for all its media together and, optionally, one per simulcast
// layer. Targets count RTP packets (headers included, IP and UDP not), in
// bits per second, like REMB; the sender stays at or under them.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 total target, bits per second                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  layer count  |                  reserved (0)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|            layer 0 (lowest) target, bits per second           | \
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  layer count
//	:                              ...                              : / words (0..3)
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The body is 8 + 4*layer count bytes. A layer target of 0 means: do not
// send that layer. Layers beyond the count are the sender's choice.
type TargetBitrate struct {
	Total      uint32                     // whole uplink, bits per second
	LayerCount uint8                      // entries of Layers in use, 0..MaxSimulcastLayers
	Layers     [MaxSimulcastLayers]uint32 // per layer, lowest first, bits per second
}

// SubType returns SubTypeTargetBitrate.
func (*TargetBitrate) SubType() uint8 { return SubTypeTargetBitrate }

// MarshalData appends the body; Layers beyond LayerCount are not written.
func (t *TargetBitrate) MarshalData(dst []byte) ([]byte, error) {
	if t.LayerCount > MaxSimulcastLayers {
		return dst, fmt.Errorf("%w: target bitrate layer count %d > %d", ErrRelayAppInvalid, t.LayerCount, MaxSimulcastLayers)
	}
	dst = binary.BigEndian.AppendUint32(dst, t.Total)
	dst = append(dst, t.LayerCount, 0, 0, 0)
	for _, l := range t.Layers[:t.LayerCount] {
		dst = binary.BigEndian.AppendUint32(dst, l)
	}
	return dst, nil
}

// UnmarshalData decodes the body; Layers beyond LayerCount are zeroed.
func (t *TargetBitrate) UnmarshalData(b []byte) error {
	*t = TargetBitrate{}
	if len(b) < 8 {
		return relayCheckLen("target bitrate", b, 8)
	}
	n := b[4]
	if n > MaxSimulcastLayers {
		return fmt.Errorf("%w: target bitrate layer count %d > %d", ErrRelayAppInvalid, n, MaxSimulcastLayers)
	}
	if err := relayCheckLen("target bitrate", b, 8+4*int(n)); err != nil {
		return err
	}
	t.Total = binary.BigEndian.Uint32(b[0:4])
	t.LayerCount = n
	for i := range t.Layers[:n] {
		t.Layers[i] = binary.BigEndian.Uint32(b[8+4*i:])
	}
	return nil
}
