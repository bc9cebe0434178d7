package protocol

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func TestNextFrame(t *testing.T) {
	cases := []struct {
		in      []byte
		payload []byte
		n       int
		err     error
	}{
		{nil, nil, 0, nil},
		{[]byte{0}, nil, 0, nil},
		{[]byte{0, 3, 1, 2}, nil, 0, nil},
		{[]byte{0, 3, 1, 2, 3, 9}, []byte{1, 2, 3}, 5, nil},
		{[]byte{0, 0, 1}, nil, 0, ErrFrameEmpty},
		{[]byte{0x05, 0xdd}, nil, 0, ErrFrameTooLarge}, // 1501
		{[]byte{0xff, 0xff}, nil, 0, ErrFrameTooLarge},
	}
	for i, c := range cases {
		p, n, err := NextFrame(c.in)
		if !bytes.Equal(p, c.payload) || n != c.n || !errors.Is(err, c.err) {
			t.Errorf("case %d: got %x, %d, %v; want %x, %d, %v", i, p, n, err, c.payload, c.n, c.err)
		}
	}
	if _, err := AppendFrame(nil, make([]byte, MaxFrame+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("AppendFrame of 1501 bytes: %v", err)
	}
	if _, err := AppendFrame(nil, nil); !errors.Is(err, ErrFrameEmpty) {
		t.Errorf("AppendFrame of nothing: %v", err)
	}
	f, _ := AppendFrame(nil, make([]byte, MaxFrame))
	if p, n, err := NextFrame(f); len(p) != MaxFrame || n != MaxFrame+2 || err != nil {
		t.Errorf("largest frame: %d, %d, %v", len(p), n, err)
	}
}

// TestFrameReaderOneByteAtATime: frames split across reads of one byte
// come out whole, and the stream's end inside a frame is an unexpected EOF.
func TestFrameReaderOneByteAtATime(t *testing.T) {
	var stream []byte
	var want [][]byte
	for i := 1; i <= 40; i++ {
		p := bytes.Repeat([]byte{byte(i)}, i*37%MaxFrame+1)
		want = append(want, p)
		stream, _ = AppendFrame(stream, p)
	}
	stream = append(stream, 0, 9, 1) // a cut frame
	fr := NewFrameReader(iotest.OneByteReader(bytes.NewReader(stream)))
	for i, w := range want {
		p, err := fr.Next()
		if err != nil || !bytes.Equal(p, w) {
			t.Fatalf("frame %d: %v, %d bytes, want %d", i, err, len(p), len(w))
		}
	}
	if _, err := fr.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut frame: %v", err)
	}
}

func TestFrameReaderAllocatesNothing(t *testing.T) {
	var stream []byte
	for i := 0; i < 100; i++ {
		stream, _ = AppendFrame(stream, make([]byte, 200))
	}
	r := bytes.NewReader(stream)
	fr := NewFrameReader(r)
	allocs := testing.AllocsPerRun(10, func() {
		r.Reset(stream)
		for {
			if _, err := fr.Next(); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 100 frames", allocs)
	}
}

// FuzzFrameReader: whatever the stream and however it is cut into reads,
// the reader yields exactly the frames NextFrame finds, each at most
// MaxFrame and never empty, then the same error, and never panics.
func FuzzFrameReader(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		var want [][]byte
		var wantErr error
		rest := stream
		for {
			p, n, err := NextFrame(rest)
			if err != nil {
				wantErr = err
				break
			}
			if n == 0 {
				wantErr = io.EOF
				if len(rest) > 0 {
					wantErr = io.ErrUnexpectedEOF
				}
				break
			}
			if len(p) == 0 || len(p) > MaxFrame {
				t.Fatalf("frame of %d bytes", len(p))
			}
			want = append(want, p)
			rest = rest[n:]
		}
		var r io.Reader = bytes.NewReader(stream)
		if chunk%4 == 1 {
			r = iotest.OneByteReader(r)
		} else if chunk%4 == 2 {
			r = iotest.HalfReader(r)
		}
		fr := NewFrameReader(r)
		for i, w := range want {
			p, err := fr.Next()
			if err != nil || !bytes.Equal(p, w) {
				t.Fatalf("frame %d: %v", i, err)
			}
			again, _ := AppendFrame(nil, p)
			if q, n, err := NextFrame(again); err != nil || n != len(again) || !bytes.Equal(q, p) {
				t.Fatalf("frame %d does not round-trip", i)
			}
		}
		if _, err := fr.Next(); !errors.Is(err, wantErr) {
			t.Fatalf("end: %v, want %v", err, wantErr)
		}
	})
}
