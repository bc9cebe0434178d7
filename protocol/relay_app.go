package protocol

import (
	"fmt"

	"github.com/pion/rtcp"
)

// RelayAppName is the 4-byte name of every relay instruction carried as an
// RTCP APP packet (RFC 3550 6.7).
const RelayAppName = "CRLY"

// Subtypes of CRLY APP packets: the 5-bit subtype field of the RTCP header
// selects the message. 0 and 8..31 are reserved.
const (
	SubTypeTargetBitrate    uint8 = 1 // relay -> sender
	SubTypeSimulcastControl uint8 = 2 // relay -> sender
	SubTypeDominantSpeaker  uint8 = 3 // relay -> device
	SubTypeSubscription     uint8 = 4 // device -> relay
	SubTypeLoudOnset        uint8 = 5 // device -> relay
	SubTypeMigrateTo        uint8 = 6 // relay -> device
	SubTypeRejoin           uint8 = 7 // relay -> device
)

// relayAppHeaderLen is the RTCP common header, the SSRC and the name.
const relayAppHeaderLen = 12

// RelayMessage is the application-dependent data of one CRLY APP packet.
// Every body is a whole number of 32-bit words of big-endian fields;
// reserved bits are written as zero and ignored when read.
type RelayMessage interface {
	// SubType is the 5-bit RTCP subtype that selects the message.
	SubType() uint8
	// MarshalData appends the message body to dst and returns the extended
	// slice. It fails, wrapping ErrRelayAppInvalid, on a field the format
	// cannot carry.
	MarshalData(dst []byte) ([]byte, error)
	// UnmarshalData overwrites the message with the body b. It fails,
	// wrapping ErrRelayAppTruncated, ErrRelayAppOversized or
	// ErrRelayAppInvalid, on anything but an exact, valid body; every body
	// it accepts, MarshalData writes back.
	UnmarshalData(b []byte) error
}

// Compile-time checks.
var (
	_ RelayMessage = (*TargetBitrate)(nil)
	_ RelayMessage = (*SimulcastControl)(nil)
	_ RelayMessage = (*DominantSpeaker)(nil)
	_ RelayMessage = (*Subscription)(nil)
	_ RelayMessage = (*LoudOnset)(nil)
	_ RelayMessage = (*MigrateTo)(nil)
	_ RelayMessage = (*Rejoin)(nil)
)

// newRelayMessage returns a zero message of the subtype.
func newRelayMessage(subType uint8) (RelayMessage, error) {
	switch subType {
	case SubTypeTargetBitrate:
		return new(TargetBitrate), nil
	case SubTypeSimulcastControl:
		return new(SimulcastControl), nil
	case SubTypeDominantSpeaker:
		return new(DominantSpeaker), nil
	case SubTypeSubscription:
		return new(Subscription), nil
	case SubTypeLoudOnset:
		return new(LoudOnset), nil
	case SubTypeMigrateTo:
		return new(MigrateTo), nil
	case SubTypeRejoin:
		return new(Rejoin), nil
	default:
		return nil, fmt.Errorf("%w: %d", ErrRelayAppSubType, subType)
	}
}

// NewRelayApp wraps m in an RTCP APP packet named CRLY, for callers that
// send it inside a compound packet with rtcp.Marshal. ssrc is the sender's
// SSRC (see protocol/README.md, section 5.1): a device puts one of its own media
// SSRCs, the relay 0 unless the message says otherwise.
func NewRelayApp(ssrc uint32, m RelayMessage) (*rtcp.ApplicationDefined, error) {
	data, err := m.MarshalData(nil)
	if err != nil {
		return nil, err
	}
	if len(data)%4 != 0 {
		// An invariant of our formats; checked so a mistake cannot reach
		// the wire as RTCP padding.
		return nil, fmt.Errorf("%w: subtype %d body of %d bytes is not whole words",
			ErrRelayAppInvalid, m.SubType(), len(data))
	}
	return &rtcp.ApplicationDefined{SubType: m.SubType(), SSRC: ssrc, Name: RelayAppName, Data: data}, nil
}

// MarshalRelayApp encodes m as a stand-alone CRLY APP packet (a
// reduced-size RTCP packet, RFC 5506), ready to send.
func MarshalRelayApp(ssrc uint32, m RelayMessage) ([]byte, error) {
	app, err := NewRelayApp(ssrc, m)
	if err != nil {
		return nil, err
	}
	return app.Marshal()
}

// DecodeRelayApp decodes the message in an APP packet that rtcp.Unmarshal
// already parsed. It fails, wrapping ErrRelayAppNotFound, when the name is
// not CRLY, ErrRelayAppSubType on an unknown subtype, or the message's
// UnmarshalData error.
func DecodeRelayApp(app *rtcp.ApplicationDefined) (RelayMessage, error) {
	if app.Name != RelayAppName {
		return nil, fmt.Errorf("%w: APP name %q", ErrRelayAppNotFound, app.Name)
	}
	m, err := newRelayMessage(app.SubType)
	if err != nil {
		return nil, err
	}
	if err := m.UnmarshalData(app.Data); err != nil {
		return nil, fmt.Errorf("subtype %d: %w", app.SubType, err)
	}
	return m, nil
}

// ParseRelayApp reads an RTCP datagram, a single packet or a compound one,
// and decodes the first CRLY APP packet in it, returning the message and
// the APP packet's SSRC. It skips other RTCP packets without decoding them.
// Errors wrap ErrRelayAppMalformed (RTCP framing broken before a CRLY packet
// was found), ErrRelayAppNotFound, ErrRelayAppSubType or the message's
// UnmarshalData error. It never panics.
func ParseRelayApp(b []byte) (RelayMessage, uint32, error) {
	for off := 0; off < len(b); {
		rest := b[off:]
		var hdr rtcp.Header
		if err := hdr.Unmarshal(rest); err != nil {
			return nil, 0, fmt.Errorf("%w: at offset %d: %w", ErrRelayAppMalformed, off, err)
		}
		if hdr.Type < demuxRTCPTypeLow || hdr.Type > demuxRTCPTypeHigh {
			return nil, 0, fmt.Errorf("%w: at offset %d: packet type %d is not RTCP",
				ErrRelayAppMalformed, off, hdr.Type)
		}
		size := (int(hdr.Length) + 1) * 4
		if size > len(rest) {
			return nil, 0, fmt.Errorf("%w: at offset %d: length %d bytes, %d left",
				ErrRelayAppMalformed, off, size, len(rest))
		}
		pkt := rest[:size]
		off += size
		if hdr.Type != rtcp.TypeApplicationDefined || size < relayAppHeaderLen ||
			string(pkt[8:12]) != RelayAppName {
			continue
		}
		var app rtcp.ApplicationDefined
		if err := app.Unmarshal(pkt); err != nil {
			return nil, 0, fmt.Errorf("%w: CRLY packet: %w", ErrRelayAppMalformed, err)
		}
		m, err := DecodeRelayApp(&app)
		if err != nil {
			return nil, 0, err
		}
		return m, app.SSRC, nil
	}
	if len(b) == 0 {
		return nil, 0, fmt.Errorf("%w: empty datagram", ErrRelayAppMalformed)
	}
	return nil, 0, ErrRelayAppNotFound
}

// relayCheckLen checks that a body has exactly want bytes.
func relayCheckLen(what string, b []byte, want int) error {
	switch {
	case len(b) < want:
		return fmt.Errorf("%w: %s needs %d bytes, got %d", ErrRelayAppTruncated, what, want, len(b))
	case len(b) > want:
		return fmt.Errorf("%w: %s needs %d bytes, got %d", ErrRelayAppOversized, what, want, len(b))
	}
	return nil
}
