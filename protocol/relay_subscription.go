package protocol

import (
	"encoding/binary"
	"fmt"
)

// MaxSubscriptions is the most videos one Subscription lists.
const MaxSubscriptions = 16

// VideoSubscription is one video a device wants to receive.
type VideoSubscription struct {
	Participant  [16]byte // whose camera video
	MaxHeight    uint16   // largest picture height wanted, pixels; 0 = no limit
	MaxFrameRate uint8    // largest frame rate wanted, frames/s; 0 = no limit
}

// Subscription (subtype 4, device -> relay) is the complete set of videos
// the device wants now; it replaces the previous set (an empty list
// unsubscribes from all video). Audio needs no subscription.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     count     |  reserved (0) |           sequence            |
//	+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//	|                                                               | \
//	+                 participant id (16 bytes, GUID)               +  |
//	|                                                               |  |
//	+                                                               +  | count
//	|                                                               |  | entries
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  | (0..16)
//	|          max height           |max frame rate |  reserved (0) | /
//	+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//
// The body is 4 + 20*count bytes. A participant appears at most once.
// Sequence is incremented by the device for every new set; the relay applies
// a Subscription only if it is Newer than the last one it applied in the
// session (RFC 1982 serial number arithmetic, so it may wrap), which makes
// resending safe and keeps a reordered old set from winning.
type Subscription struct {
	Sequence uint16
	Videos   []VideoSubscription // at most MaxSubscriptions
}

const (
	subscriptionHeaderLen = 4
	subscriptionEntryLen  = 20
)

// SubType returns SubTypeSubscription.
func (*Subscription) SubType() uint8 { return SubTypeSubscription }

// Newer reports whether s.Sequence comes after prev in 16-bit serial number
// arithmetic (RFC 1982).
func (s *Subscription) Newer(prev uint16) bool {
	return s.Sequence != prev && s.Sequence-prev < 0x8000
}

func (s *Subscription) check() error {
	if len(s.Videos) > MaxSubscriptions {
		return fmt.Errorf("%w: %d subscriptions > %d", ErrRelayAppInvalid, len(s.Videos), MaxSubscriptions)
	}
	for i := range s.Videos {
		for j := range i {
			if s.Videos[i].Participant == s.Videos[j].Participant {
				return fmt.Errorf("%w: subscription entries %d and %d name the same participant",
					ErrRelayAppInvalid, j, i)
			}
		}
	}
	return nil
}

// MarshalData appends the body.
func (s *Subscription) MarshalData(dst []byte) ([]byte, error) {
	if err := s.check(); err != nil {
		return dst, err
	}
	dst = append(dst, byte(len(s.Videos)), 0)
	dst = binary.BigEndian.AppendUint16(dst, s.Sequence)
	for _, v := range s.Videos {
		dst = append(dst, v.Participant[:]...)
		dst = binary.BigEndian.AppendUint16(dst, v.MaxHeight)
		dst = append(dst, v.MaxFrameRate, 0)
	}
	return dst, nil
}

// UnmarshalData decodes the body, reusing the capacity of s.Videos.
func (s *Subscription) UnmarshalData(b []byte) error {
	videos := s.Videos[:0]
	*s = Subscription{}
	if len(b) < subscriptionHeaderLen {
		return relayCheckLen("subscription", b, subscriptionHeaderLen)
	}
	n := int(b[0])
	if n > MaxSubscriptions {
		return fmt.Errorf("%w: %d subscriptions > %d", ErrRelayAppInvalid, n, MaxSubscriptions)
	}
	if err := relayCheckLen("subscription", b, subscriptionHeaderLen+subscriptionEntryLen*n); err != nil {
		return err
	}
	m := Subscription{Sequence: binary.BigEndian.Uint16(b[2:4]), Videos: videos}
	for e := b[subscriptionHeaderLen:]; len(e) > 0; e = e[subscriptionEntryLen:] {
		var v VideoSubscription
		copy(v.Participant[:], e[0:16])
		v.MaxHeight = binary.BigEndian.Uint16(e[16:18])
		v.MaxFrameRate = e[18]
		m.Videos = append(m.Videos, v)
	}
	if err := m.check(); err != nil {
		return err
	}
	*s = m
	return nil
}
