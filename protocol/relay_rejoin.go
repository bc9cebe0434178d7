package protocol

import (
	"fmt"
	"strconv"
)

// RejoinReason says why the relay asks a device to rejoin. Devices act the
// same on every reason (authenticate again at once); it is for logs and
// metrics. Unknown values are accepted.
type RejoinReason uint8

// Rejoin reasons.
const (
	RejoinUnspecified    RejoinReason = 0
	RejoinUnknownAddress RejoinReason = 1 // media from an address with no session (NAT rebinding, forwarder restart)
	RejoinSessionExpired RejoinReason = 2 // the session timed out for lack of keepalives
)

// String names the reason.
func (r RejoinReason) String() string {
	switch r {
	case RejoinUnspecified:
		return "unspecified"
	case RejoinUnknownAddress:
		return "unknown-address"
	case RejoinSessionExpired:
		return "session-expired"
	default:
		return "reason-" + strconv.Itoa(int(r))
	}
}

// Rejoin (subtype 7, relay -> device) says "I do not know you at this
// address": the device must at once send an authenticated STUN Binding (its
// join) from that address. The body is empty (reason unspecified), which
// makes the whole packet 12 bytes, no larger than any RTP packet, so a
// forwarder may answer media from an unknown address with it without
// amplification; or one word carrying a reason:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|    reason     |                  reserved (0)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// MarshalData writes the empty body when Reason is RejoinUnspecified.
type Rejoin struct {
	Reason RejoinReason
}

// SubType returns SubTypeRejoin.
func (*Rejoin) SubType() uint8 { return SubTypeRejoin }

// MarshalData appends the body: nothing, or the reason word.
func (r *Rejoin) MarshalData(dst []byte) ([]byte, error) {
	if r.Reason == RejoinUnspecified {
		return dst, nil
	}
	return append(dst, byte(r.Reason), 0, 0, 0), nil
}

// UnmarshalData decodes an empty or 4-byte body.
func (r *Rejoin) UnmarshalData(b []byte) error {
	*r = Rejoin{}
	switch len(b) {
	case 0:
		return nil
	case 4:
		r.Reason = RejoinReason(b[0])
		return nil
	default:
		if len(b) < 4 {
			return fmt.Errorf("%w: rejoin body of %d bytes", ErrRelayAppTruncated, len(b))
		}
		return fmt.Errorf("%w: rejoin body of %d bytes", ErrRelayAppOversized, len(b))
	}
}
