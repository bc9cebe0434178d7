package protocol

// DefaultRolloverCounterExtensionID is the RFC 8285 id of callrelay's SRTP
// rollover counter extension (README.md section 4) when signaling does not
// negotiate another.
const DefaultRolloverCounterExtensionID uint8 = 4

// MaxRolloverCounterLen is the longest data of the rollover counter
// element: the 32-bit ROC of RFC 3711 3.3.1.
const MaxRolloverCounterLen = 4

// RolloverCounterLen returns how many data bytes a sender writes for roc:
// the fewest that hold it, 1 to 4 (1 while roc < 256).
func RolloverCounterLen(roc uint32) int {
	switch {
	case roc < 1<<8:
		return 1
	case roc < 1<<16:
		return 2
	case roc < 1<<24:
		return 3
	default:
		return 4
	}
}

// AppendRolloverCounter appends the rollover counter element's data for
// roc to dst: roc big-endian in RolloverCounterLen(roc) bytes. It does not
// allocate when dst has room for 4 more bytes.
func AppendRolloverCounter(dst []byte, roc uint32) []byte {
	for i := RolloverCounterLen(roc) - 1; i >= 0; i-- {
		dst = append(dst, byte(roc>>(8*i)))
	}
	return dst
}

// ParseRolloverCounter reads a rollover counter element's data: an
// unsigned big-endian integer of 1 to 4 bytes (leading zero bytes are
// allowed). ok is false for data of any other length, which a receiver
// ignores as if the element were absent.
func ParseRolloverCounter(d []byte) (roc uint32, ok bool) {
	if len(d) < 1 || len(d) > MaxRolloverCounterLen {
		return 0, false
	}
	for _, b := range d {
		roc = roc<<8 | uint32(b)
	}
	return roc, true
}

// RolloverCounter reads the sender's SRTP rollover counter from the element
// with the given id (negotiated out of band; default
// DefaultRolloverCounterExtensionID). ok is false when the element is absent
// or its data is not 1 to 4 bytes. The value is a hint, in clear: only
// authenticating the packet with it proves it right. It does not allocate.
func (h *RTPHeader) RolloverCounter(id uint8) (uint32, bool) {
	d, found := h.ExtensionByID(id)
	if !found {
		return 0, false
	}
	return ParseRolloverCounter(d)
}
