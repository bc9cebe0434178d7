package forwarder

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/callrelay/callrelay/protocol"
)

// captureMarker fills payloads: a capture must never contain it.
var captureMarker = bytes.Repeat([]byte{0xC7, 0x3A, 0x5E, 0x91}, 40)

func testRTP(t testing.TB, ssrc uint32, seq uint16) []byte {
	p := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: 960, SSRC: ssrc}, Payload: captureMarker}
	if err := p.Header.SetExtension(1, []byte{0x85}); err != nil {
		t.Fatal(err)
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testCaptureToken(t testing.TB) []byte {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := protocol.SignToken(priv, protocol.Token{CallID: protocol.ID{1}, ParticipantID: protocol.ID{2},
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCaptureKeepsHeadersOnly(t *testing.T) {
	self := netip.MustParseAddrPort("127.0.0.1:3478")
	dev := netip.MustParseAddrPort("127.0.0.1:40000")
	cp := newCapture(protocol.ID{1}, time.Now().Add(time.Second), self, 1)
	pkt := testRTP(t, 0x1234, 7)
	cp.bufs[0].record(1e9, false, dev, pkt)

	tok := testCaptureToken(t)
	m, err := protocol.BuildJoinRequest(tok, protocol.JoinOptions{Cookie: bytes.Repeat([]byte{0xCD}, 24)})
	if err != nil {
		t.Fatal(err)
	}
	cp.bufs[1].record(2e9, false, dev, m.Raw)
	if bytes.Contains(cp.bufs[1].b, tok[len(tok)-16:]) || bytes.Contains(cp.bufs[1].b, bytes.Repeat([]byte{0xCD}, 8)) {
		t.Fatal("the join token or cookie is in the capture")
	}
	file := cp.pcapng()
	if bytes.Contains(file, captureMarker[:8]) {
		t.Fatal("payload bytes in the capture")
	}
	// Walk the blocks: SHB, IDB, then two EPBs whose captured length is
	// the IP/UDP header plus what was kept, original the whole datagram.
	le := binary.LittleEndian
	var types []uint32
	for p := file; len(p) > 0; {
		if len(p) < 12 {
			t.Fatalf("%d bytes left, not a block", len(p))
		}
		n := le.Uint32(p[4:])
		if n%4 != 0 || int(n) > len(p) || le.Uint32(p[n-4:]) != n {
			t.Fatalf("block of %d bytes: lengths do not match", n)
		}
		types = append(types, le.Uint32(p))
		if le.Uint32(p) == pcapngEPB && len(types) == 3 {
			capLen, origLen := le.Uint32(p[20:]), le.Uint32(p[24:])
			var h protocol.RTPHeader
			if err := h.Parse(pkt); err != nil {
				t.Fatal(err)
			}
			if capLen != uint32(28+h.HeaderLen) || origLen != uint32(28+len(pkt)) {
				t.Fatalf("RTP kept %d of %d bytes, want %d of %d", capLen, origLen, 28+h.HeaderLen, 28+len(pkt))
			}
		}
		p = p[n:]
	}
	if len(types) != 4 || types[0] != pcapngSHB || types[1] != pcapngIDB || types[2] != pcapngEPB || types[3] != pcapngEPB {
		t.Fatalf("blocks %x", types)
	}
}

func TestCaptureBounded(t *testing.T) {
	cp := newCapture(protocol.ID{1}, time.Now(), netip.MustParseAddrPort("127.0.0.1:1"), 1)
	pkt := testRTP(t, 1, 1)
	for i := 0; i < 100000; i++ {
		cp.bufs[0].record(int64(i), false, netip.MustParseAddrPort("127.0.0.1:2"), pkt)
	}
	if len(cp.bufs[0].b) > cp.bufs[0].max || cp.dropped() == 0 {
		t.Fatalf("%d bytes kept (max %d), %d dropped", len(cp.bufs[0].b), cp.bufs[0].max, cp.dropped())
	}
	if n := len(cp.pcapng()); n > captureMaxBytes*2 {
		t.Fatalf("pcapng of %d bytes", n)
	}
}

// FuzzCaptureRecord: whatever a device sends, a capture keeps no more than
// its headers, its pcapng blocks are consistent, and STUN headers survive
// redaction unchanged.
func FuzzCaptureRecord(f *testing.F) {
	f.Add(testRTP(f, 5, 9))
	m, err := protocol.BuildJoinRequest(testCaptureToken(f), protocol.JoinOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(m.Raw)
	f.Add([]byte{0x81, 0xC9, 0x00, 0x01, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxDatagram {
			return
		}
		cp := newCapture(protocol.ID{1}, time.Now(), netip.MustParseAddrPort("[::1]:1"), 0)
		cp.bufs[0].record(1, true, netip.MustParseAddrPort("[::1]:2"), b)
		keep := captureLen(b)
		if len(cp.bufs[0].b) != captureRecFixed+keep {
			t.Fatalf("kept %d, want %d", len(cp.bufs[0].b)-captureRecFixed, keep)
		}
		if protocol.Classify(b) == protocol.KindSTUN && !bytes.Equal(cp.bufs[0].b[captureRecFixed:captureRecFixed+20], b[:20]) {
			t.Fatal("STUN header changed by redaction")
		}
		file := cp.pcapng()
		le := binary.LittleEndian
		for p := file; len(p) > 0; {
			n := le.Uint32(p[4:])
			if n%4 != 0 || int(n) > len(p) || le.Uint32(p[n-4:]) != n {
				t.Fatalf("block of %d bytes: lengths do not match", n)
			}
			p = p[n:]
		}
	})
}
