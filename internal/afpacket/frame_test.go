package afpacket

import (
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

var testLink = Link{Src: MAC{2, 0, 0, 0, 0, 1}, Dst: MAC{2, 0, 0, 0, 0, 2}}

// A datagram of 4 bytes from 198.18.1.1:20000 to 10.200.0.1:17911, built
// by hand from RFC 791 and RFC 768 (IPv4 header checksum worked out independently with a few lines of Python).
const wantFrame = "020000000002" + "020000000001" + "0800" + // Ethernet: dst, src, IPv4
	"4500" + "0020" + "0000" + "4000" + "4011" + "68f1" + "c6120101" + "0ac80001" + // IPv4: 32 bytes, DF, TTL 64, UDP
	"4e20" + "45f7" + "000c" + "0000" + // UDP: ports, length 12, no checksum
	"deadbeef"

func TestPutHeadersBytes(t *testing.T) {
	from, to := netip.MustParseAddrPort("198.18.1.1:20000"), netip.MustParseAddrPort("10.200.0.1:17911")
	payload := []byte{0xde, 0xad, 0xbe, 0xef}
	f := make([]byte, HeaderLen+len(payload))
	PutHeaders(f, testLink, from, to, payload, false)
	copy(f[HeaderLen:], payload)
	require.Equal(t, wantFrame, hex.EncodeToString(f))

	PutHeaders(f, testLink, from, to, payload, true)
	require.NotZero(t, f[HeaderLen-2:HeaderLen])
	require.True(t, UDPChecksumOK(f))
	f[HeaderLen] ^= 1 // a payload bit flipped
	require.False(t, UDPChecksumOK(f))
}

func TestParseRoundTrip(t *testing.T) {
	from, to := netip.MustParseAddrPort("198.18.200.7:20001"), netip.MustParseAddrPort("10.200.0.1:9")
	for _, n := range []int{0, 1, 5, 172, 1200} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		f := make([]byte, HeaderLen+n, HeaderLen+n+20)
		PutHeaders(f, testLink, from, to, payload, true)
		copy(f[HeaderLen:], payload)
		d, ok := Parse(f)
		require.True(t, ok, n)
		require.Equal(t, from, d.Src)
		require.Equal(t, to, d.Dst)
		require.Equal(t, payload, d.Payload)
		require.True(t, UDPChecksumOK(f))
		// Trailing padding (a frame padded to Ethernet's minimum) is fine.
		d, ok = Parse(append(f, make([]byte, 20)...))
		require.True(t, ok)
		require.Equal(t, payload, d.Payload)
	}
}

func TestParseRefuses(t *testing.T) {
	good, _ := hex.DecodeString(wantFrame)
	_, ok := Parse(good)
	require.True(t, ok)
	for name, spoil := range map[string]func(f []byte) []byte{
		"short":          func(f []byte) []byte { return f[:HeaderLen-1] },
		"truncated":      func(f []byte) []byte { return f[:len(f)-1] },
		"not IPv4":       func(f []byte) []byte { f[12] = 0x86; return f },
		"VLAN":           func(f []byte) []byte { f[12], f[13] = 0x81, 0x00; return f },
		"IPv6 version":   func(f []byte) []byte { f[14] = 0x65; return f },
		"short IHL":      func(f []byte) []byte { f[14] = 0x44; return f },
		"TCP":            func(f []byte) []byte { f[23] = 6; return f },
		"bad checksum":   func(f []byte) []byte { f[25] ^= 1; return f },
		"fragment":       func(f []byte) []byte { f[20] = 0x20; f[24]--; return f },
		"UDP length 7":   func(f []byte) []byte { f[39] = 7; return f },
		"UDP length big": func(f []byte) []byte { f[39] = 13; return f },
	} {
		f := spoil(append([]byte(nil), good...))
		_, ok := Parse(f)
		require.False(t, ok, name)
	}
}

func TestFrameAllocatesNothing(t *testing.T) {
	from, to := netip.MustParseAddrPort("198.18.1.1:20000"), netip.MustParseAddrPort("10.200.0.1:17911")
	payload := make([]byte, 172)
	f := make([]byte, HeaderLen+len(payload))
	copy(f[HeaderLen:], payload)
	allocs := testing.AllocsPerRun(100, func() {
		PutHeaders(f, testLink, from, to, payload, true)
		if _, ok := Parse(f); !ok {
			t.Fatal("parse")
		}
	})
	require.Zero(t, allocs)
}

func TestParseMAC(t *testing.T) {
	m, ok := ParseMAC("02:0a:FF:00:10:9b")
	require.True(t, ok)
	require.Equal(t, MAC{2, 0x0a, 0xff, 0, 0x10, 0x9b}, m)
	require.Equal(t, "02:0a:ff:00:10:9b", m.String())
	for _, s := range []string{"", "02:0a:ff:00:10", "02-0a-ff-00-10-9b", "02:0a:ff:00:10:9g"} {
		_, ok := ParseMAC(s)
		require.False(t, ok, s)
	}
}
