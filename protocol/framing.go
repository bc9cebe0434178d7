package protocol

import (
	"encoding/binary"
	"errors"
	"io"
)

// Stream framing (protocol/README.md section 9): over TCP and TLS every
// datagram of the UDP protocol (STUN, RTP, RTCP, relay messages) travels as
// one frame, RFC 4571: a 16-bit big-endian length, then that many bytes.
// tshark dissects it as RFC 4571 ("Decode As" rfc4571 on the port).
const (
	// FrameHeaderLen is the size of a frame's length prefix.
	FrameHeaderLen = 2
	// MaxFrame is the largest payload a frame may carry: the largest
	// datagram a forwarder accepts on UDP. A longer prefix is a protocol
	// error and ends the connection.
	MaxFrame = 1500
)

// Framing errors. Either ends the connection: a stream whose framing is
// lost cannot be resynchronised.
var (
	ErrFrameEmpty    = errors.New("protocol: frame of length 0")
	ErrFrameTooLarge = errors.New("protocol: frame longer than 1500 bytes")
)

// NextFrame finds the first complete frame at the start of b. It returns
// the payload (aliasing b) and the bytes consumed; n == 0 with a nil error
// means b holds no complete frame yet. A zero or oversized length is an
// error whatever follows.
func NextFrame(b []byte) (payload []byte, n int, err error) {
	if len(b) < FrameHeaderLen {
		return nil, 0, nil
	}
	l := int(binary.BigEndian.Uint16(b))
	switch {
	case l == 0:
		return nil, 0, ErrFrameEmpty
	case l > MaxFrame:
		return nil, 0, ErrFrameTooLarge
	case len(b) < FrameHeaderLen+l:
		return nil, 0, nil
	}
	return b[FrameHeaderLen : FrameHeaderLen+l], FrameHeaderLen + l, nil
}

// AppendFrame appends p as one frame to dst.
func AppendFrame(dst, p []byte) ([]byte, error) {
	if len(p) == 0 {
		return dst, ErrFrameEmpty
	}
	if len(p) > MaxFrame {
		return dst, ErrFrameTooLarge
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p)))
	return append(dst, p...), nil
}

// FrameReader splits a byte stream into frames through a fixed buffer: it
// allocates nothing after NewFrameReader, and a frame's payload stays
// valid until the next call to Next.
type FrameReader struct {
	r    io.Reader
	buf  []byte
	head int // start of unread bytes
	tail int // end of unread bytes
}

// frameReaderBuf holds two largest frames, so a read is rarely short of
// room and at most one copy moves a partial frame to the front.
const frameReaderBuf = 2 * (FrameHeaderLen + MaxFrame)

// NewFrameReader reads frames from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: r, buf: make([]byte, frameReaderBuf)}
}

// Buffered reports whether a complete frame is already buffered, so Next
// would return it without reading.
func (fr *FrameReader) Buffered() bool {
	p, _, err := NextFrame(fr.buf[fr.head:fr.tail])
	return p != nil || err != nil
}

// Next returns the next frame's payload. Errors: the reader's (io.EOF on a
// clean end between frames, io.ErrUnexpectedEOF inside one), or a framing
// error (ErrFrameEmpty, ErrFrameTooLarge) as soon as the prefix is read.
func (fr *FrameReader) Next() ([]byte, error) {
	for {
		p, n, err := NextFrame(fr.buf[fr.head:fr.tail])
		if err != nil {
			return nil, err
		}
		if n > 0 {
			fr.head += n
			return p, nil
		}
		if fr.head > 0 && len(fr.buf)-fr.head < FrameHeaderLen+MaxFrame {
			fr.tail = copy(fr.buf, fr.buf[fr.head:fr.tail])
			fr.head = 0
		}
		m, err := fr.r.Read(fr.buf[fr.tail:])
		fr.tail += m
		if err != nil && m == 0 {
			if errors.Is(err, io.EOF) && fr.tail > fr.head {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}
