package forwarder

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// memConn is an in-memory packetConn: it lets the per-packet path be
// measured and checked without system calls. The same scenarios run over
// real sockets in forwarder_test.go.
type memConn struct {
	queued, sent int
}

func (m *memConn) ReadBatch() (int, error)            { return 0, nil }
func (m *memConn) Buf(int) []byte                     { return nil }
func (m *memConn) Src(int) netip.AddrPort             { return netip.AddrPort{} }
func (m *memConn) Truncated(int) bool                 { return false }
func (m *memConn) Dropped() uint64                    { return 0 }
func (m *memConn) Close() error                       { return nil }
func (m *memConn) Queue(b []byte, dst *sockaddr) bool { m.queued++; return m.queued <= writeBatch }
func (m *memConn) Flush() (int, int)                  { n := m.queued; m.sent += n; m.queued = 0; return n, 0 }

// hotPathFixture is a reader with a 5-member call in its routes.
func hotPathFixture(t testing.TB) (*reader, *routes, netip.AddrPort, *memConn) {
	cl := &call{id: protocol.NewID(), members: map[protocol.ID]*session{}}
	var first netip.AddrPort
	for i := 0; i < 5; i++ {
		ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(20000+i))
		if i == 0 {
			first = ap
		}
		id := protocol.NewID()
		cl.members[id] = &session{call: cl, participant: id, addr: ap, media: new(mediaInfo)}
	}
	rt := buildRoutes(map[protocol.ID]*call{cl.id: cl}, false)
	require.Len(t, rt.bySrc[first].dests, 4)
	mc := &memConn{}
	f := &Forwarder{cfg: Default(), audio: audioParamsOf(DefaultAudio()), adapt: adaptParamsOf(DefaultAdapt())}
	r := &reader{f: f, pc: mc, c: new(counters), knownLimiter: newSTUNLimiter(20, 40), newLimiter: newSTUNLimiter(20, 40)}
	return r, rt, first, mc
}

// audioPacket is a 5-member call's typical audio packet: RTP with the
// RFC 6464 audio level in a one-byte header extension and ~100 opaque bytes.
var audioPacket = append([]byte{
	0x90, 111, 0x12, 0x34, // V=2, X=1, PT 111, seq
	0, 0, 0x03, 0xc0, // timestamp
	0xde, 0xad, 0xbe, 0xef, // SSRC
	0xbe, 0xde, 0x00, 0x01, // one-byte extension profile, 1 word
	0x10, 0x85, 0x00, 0x00, // id 1 len 1: voice, -5 dBov; padding
}, make([]byte, 100)...)

func TestHotPathAllocatesNothing(t *testing.T) {
	r, rt, src, mc := hotPathFixture(t)
	allocs := testing.AllocsPerRun(1000, func() {
		r.handle(rt, audioPacket, src, 0)
		r.flush()
	})
	require.Zero(t, allocs)
	require.Equal(t, 4*1001, mc.sent) // fan-out to the 4 others, AllocsPerRun warms up once
}

// BenchmarkHotPath is the per-packet path without syscalls: classify, parse
// the RTP header, look up the route, queue the fan-out to 4.
func BenchmarkHotPath(b *testing.B) {
	r, rt, src, _ := hotPathFixture(b)
	benchHandle(b, r, rt, src)
}

// hotPathTrunkFixture is hotPathFixture with the call spanning two other
// forwarders: every packet is also sealed once and sent to both trunks.
func hotPathTrunkFixture(t testing.TB) (*reader, *routes, netip.AddrPort, *memConn, *memConn) {
	r, _, first, mc := hotPathFixture(t)
	cl := &call{id: protocol.NewID(), members: map[protocol.ID]*session{}}
	for i := 0; i < 5; i++ {
		ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(20000+i))
		id := protocol.NewID()
		cl.members[id] = &session{call: cl, participant: id, addr: ap, media: new(mediaInfo)}
	}
	rt := &routes{bySrc: map[netip.AddrPort]*route{}, byCall: map[protocol.ID]*callRoute{}}
	trunks := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:7000"), netip.MustParseAddrPort("127.0.0.3:7000")}
	addCallRoutes(rt, cl, trunks, false, false)
	require.Len(t, rt.bySrc[first].trunks, 2)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	tc := &memConn{}
	r.tpc, r.tcodec = tc, protocol.NewTrunkCodec(key)
	r.tbufs = new([readBatch][maxDatagram + protocol.TrunkOverhead]byte)
	return r, rt, first, mc, tc
}

func TestHotPathWithTrunksAllocatesNothing(t *testing.T) {
	r, rt, src, mc, tc := hotPathTrunkFixture(t)
	allocs := testing.AllocsPerRun(1000, func() {
		r.handle(rt, audioPacket, src, 0)
		r.flush()
	})
	require.Zero(t, allocs)
	require.Equal(t, 4*1001, mc.sent)
	require.Equal(t, 2*1001, tc.sent, "one sealed copy per other forwarder")
	require.Equal(t, []uint32{0xdeadbeef}, rt.bySrc[src].media.ssrcList(), "the data path noted the SSRC")
}

// BenchmarkHotPathTrunk: BenchmarkHotPath plus sealing each packet once for
// two other forwarders.
func BenchmarkHotPathTrunk(b *testing.B) {
	r, rt, src, _, _ := hotPathTrunkFixture(b)
	benchHandle(b, r, rt, src)
}

// benchHandle feeds audioPacket from src through r, flushing once per read
// batch as the reader does.
func benchHandle(b *testing.B, r *reader, rt *routes, src netip.AddrPort) {
	b.ReportAllocs()
	b.SetBytes(int64(len(audioPacket)))
	for i := 0; i < b.N; i++ {
		r.handle(rt, audioPacket, src, 0)
		if i%readBatch == readBatch-1 {
			r.flush()
		}
	}
	r.flush()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}
