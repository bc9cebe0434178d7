package forwarder

import (
	"testing"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// trunkReceiveFixture is a trunk reader whose routes hold one call of 5
// members here, and a codec sealing audio frames of a remote sender.
func trunkReceiveFixture(t testing.TB) (*trunkReader, *routes, *protocol.TrunkCodec, protocol.TrunkHeader) {
	r, rt, _, _ := hotPathFixture(t)
	key, err := protocol.NewClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	var id protocol.ID
	for k := range rt.byCall {
		id = k
	}
	tr := &trunkReader{f: r.f, in: &memConn{}, out: &memConn{}, c: r.c, codec: protocol.NewTrunkCodec(key)}
	h := protocol.TrunkHeader{Call: id, Sender: protocol.NewID(), Origin: 0x1234}
	sender := protocol.NewTrunkCodec(key)
	sender.Number(0, protocol.TrunkSeqStart(time.Now()))
	return tr, rt, sender, h
}

// BenchmarkHotPathTrunkReceive is the receiving side of a trunk: open,
// authenticate and check against the replay window each frame, and fan its
// audio out to 4 members here.
func BenchmarkHotPathTrunkReceive(b *testing.B) {
	tr, rt, sender, h := trunkReceiveFixture(b)
	frames := make([][]byte, readBatch*16)
	seal := func() {
		for i := range frames {
			frames[i] = sender.Seal(frames[i][:0], &h, audioPacket)
		}
	}
	seal()
	b.ReportAllocs()
	b.SetBytes(int64(len(audioPacket)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % len(frames)
		if j == 0 && i > 0 {
			b.StopTimer()
			seal()
			b.StartTimer()
		}
		tr.handle(rt, frames[j])
		if i%readBatch == readBatch-1 {
			tr.flush()
		}
	}
	tr.flush()
	if d := tr.c.drops[DropTrunkReplay].Load(); d != 0 {
		b.Fatalf("%d frames dropped as replays", d)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}
