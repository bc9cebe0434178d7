package forwarder

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"
)

// recConn is an in-memory packetConn that keeps what is queued.
type recConn struct {
	memConn
	bufs [][]byte
	dsts []netip.AddrPort
}

func (c *recConn) Queue(b []byte, dst *sockaddr) bool {
	c.bufs = append(c.bufs, append([]byte(nil), b...))
	c.dsts = append(c.dsts, dst.ap)
	return c.memConn.Queue(b, dst)
}

// cachedSeqs are the packets another member of the call sent before the
// fuzzed datagram (audioPacket's SSRC 0xdeadbeef; 0x1236 lost on its way
// in): they sit in that member's NACK cache.
var cachedSeqs = []uint16{0x1230, 0x1231, 0x1232, 0x1233, 0x1234, 0x1235, 0x1237}

func withSeq(seq uint16) []byte {
	p := append([]byte(nil), audioPacket...)
	binary.BigEndian.PutUint16(p[2:4], seq)
	return p
}

// nackFixture is hotPathFixture with every member's NACK cache made (as
// the control goroutine makes a sender's) and another member's packets
// (cachedSeqs) in its cache, so that a NACK from src reaches the cache
// and is answered.
func nackFixture(t testing.TB) (*reader, *routes, netip.AddrPort, *recConn) {
	r, rt, src, _ := hotPathFixture(t)
	for _, rte := range rt.bySrc {
		rte.media.cache.Store(newNackCache(DefaultAdapt().NackCacheBytes, &r.cw))
	}
	other := netip.AddrPortFrom(src.Addr(), src.Port()+1)
	require.NotNil(t, rt.bySrc[other])
	for _, seq := range cachedSeqs {
		r.handle(rt, withSeq(seq), other, 1)
	}
	r.flush()
	// src was sent plenty before: its share of retransmission (rtx.go)
	// covers whatever the seeds NACK.
	rt.bySrc[src].media.down.sent.Add(1 << 20)
	rc := &recConn{}
	r.pc = rc
	return r, rt, src, rc
}

// nackOf is a generic NACK (RFC 4585) from src for pid and the bitmask.
func nackOf(t testing.TB, ssrc uint32, pairs ...rtcp.NackPair) []byte {
	b, err := (&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc, Nacks: pairs}).Marshal()
	require.NoError(t, err)
	return b
}

// FuzzHandle feeds arbitrary datagrams to the per-packet path, from a member
// and from a stranger, while another member's packets sit in its NACK
// cache. It must never panic and never send a stranger anything; a
// member's datagram goes to all 4 others or to nobody, and anything else
// sent is a cached packet, byte for byte, resent to the member alone (one
// per NACKed packet answered).
func FuzzHandle(f *testing.F) {
	f.Add(audioPacket, true)
	f.Add(audioPacket[:12], false)
	f.Add([]byte{0x80, 0xc9, 0x00, 0x01, 0, 0, 0, 1}, true) // RTCP receiver report, no blocks
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, true)
	f.Add([]byte{0x17, 0xfe, 0xfd}, true) // DTLS: not ours
	f.Fuzz(func(t *testing.T, b []byte, member bool) {
		r, rt, src, rc := nackFixture(t)
		if !member {
			src = netip.MustParseAddrPort("127.0.0.9:9")
		}
		r.handle(rt, b, src, 1)
		sent := r.nackOut[nackSent]
		r.flush()
		fanOut, resent := 0, uint64(0)
		for i, dst := range rc.dsts {
			switch {
			case !member:
				t.Fatalf("a stranger was sent %d datagrams", len(rc.dsts))
			case dst != src && bytes.Equal(rc.bufs[i], b):
				fanOut++
			case dst == src && isCached(rc.bufs[i]):
				resent++
			default:
				t.Fatalf("datagram %d of %d bytes to %v is neither the fan-out nor a cached packet to the member", i, len(rc.bufs[i]), dst)
			}
		}
		if fanOut != 0 && fanOut != 4 {
			t.Fatalf("fan-out to %d, want 4", fanOut)
		}
		if resent != sent {
			t.Fatalf("%d packets resent, %d counted", resent, sent)
		}
	})
}

func isCached(b []byte) bool {
	for _, seq := range cachedSeqs {
		if bytes.Equal(b, withSeq(seq)) {
			return true
		}
	}
	return false
}

// The committed seed corpus reaches the NACK cache: its NACK seeds are
// answered from it (packets held, one lost before the cache, one asked for
// again at once).
func TestFuzzHandleSeedsReachTheNackCache(t *testing.T) {
	for _, tc := range []struct {
		seed                string
		sent, miss, bounded uint64
	}{
		{"adapt_nack", 3, 0, 0},                 // 0x1234, and 0x1235, 0x1237 by the bitmask
		{"nack_cache_hit_and_miss", 7, 1, 0},    // 0x1230..0x1237: 0x1236 never came in
		{"nack_twice_in_one_compound", 1, 0, 1}, // 0x1233 twice in one compound packet
	} {
		t.Run(tc.seed, func(t *testing.T) {
			b, member := readHandleSeed(t, tc.seed)
			require.True(t, member)
			r, rt, src, rc := nackFixture(t)
			r.handle(rt, b, src, 1)
			out := r.nackOut
			r.flush()
			require.Equal(t, tc.sent, out[nackSent])
			require.Equal(t, tc.miss, out[nackMiss])
			require.Equal(t, tc.bounded, out[nackBounded])
			require.Len(t, rc.bufs, int(tc.sent))
			for i := range rc.bufs {
				require.True(t, isCached(rc.bufs[i]))
				require.Equal(t, src, rc.dsts[i])
			}
		})
	}
}

// readHandleSeed reads a file of testdata/fuzz/FuzzHandle ("go test fuzz
// v1", then []byte(...) and bool(...)).
func readHandleSeed(t *testing.T, name string) ([]byte, bool) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzHandle", name))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	require.Len(t, lines, 3, name)
	require.Equal(t, "go test fuzz v1", lines[0])
	lit, ok := strings.CutPrefix(lines[1], "[]byte(")
	require.True(t, ok, name)
	b, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	require.NoError(t, err, name)
	return []byte(b), lines[2] == "bool(true)"
}
