package afpacket

import (
	"bytes"
	"testing"
)

// FuzzParse: Parse never panics nor reads past the frame, and what it
// accepts round-trips: the headers PutHeaders writes for the datagram
// parse back to the same addresses and payload, with valid checksums.
// Seeds in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, frame []byte) {
		d, ok := Parse(frame)
		if !ok {
			return
		}
		if !d.Src.Addr().Is4() || !d.Dst.Addr().Is4() || len(d.Payload) > len(frame)-HeaderLen {
			t.Fatalf("parsed %+v from %d bytes", d, len(frame))
		}
		out := make([]byte, HeaderLen+len(d.Payload))
		PutHeaders(out, testLink, d.Src, d.Dst, d.Payload, true)
		copy(out[HeaderLen:], d.Payload)
		again, ok := Parse(out)
		if !ok || again.Src != d.Src || again.Dst != d.Dst || !bytes.Equal(again.Payload, d.Payload) || !UDPChecksumOK(out) {
			t.Fatalf("round trip: %+v -> %+v (%v)", d, again, ok)
		}
	})
}
