package forwarder

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// BenchmarkMetadataPer1000Calls measures the metadata a forwarder
// publishes for 1,000 six-person calls in which one member speaks and five
// are silent (comfort noise), through a real embedded NATS server: NATS
// messages and bytes per second (at the default 100 ms tick), and the
// control goroutine's time per tick.
func BenchmarkMetadataPer1000Calls(b *testing.B) {
	ns := testenv.NATS(b)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(b, err)
	defer nc.Close()
	key, err := protocol.NewClusterKey()
	require.NoError(b, err)
	f := &Forwarder{cfg: Default()}
	f.cfg.Cluster.ID, f.cfg.Cluster.NATS, f.cfg.Cluster.Key = "bench", nc, key
	c := newControl(f)
	var speakers []*audioMeter
	var silent []*audioMeter
	for i := range 1000 {
		cl := &call{id: protocol.NewID(), members: map[protocol.ID]*session{}}
		for j := range 6 {
			s := &session{call: cl, participant: protocol.NewID(), media: new(mediaInfo),
				addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), uint16(1000+j))}
			cl.members[s.participant] = s
			if j == 0 {
				speakers = append(speakers, &s.media.audio)
			} else {
				silent = append(silent, &s.media.audio)
			}
		}
		c.calls[cl.id] = cl
	}
	tick := f.cfg.Cluster.MetadataEvery
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for _, m := range speakers { // 5 packets of speech in 100 ms
			m.levels.Add(5 | 5<<16 | 5*97<<32)
			m.bytes.Add(5*90 | 5*110<<32)
		}
		for _, m := range silent { // 5 packets of comfort noise
			m.levels.Add(5)
			m.bytes.Add(5*8 | 5*30<<32)
		}
		b.StartTimer()
		c.metaTick(time.Now())
	}
	b.StopTimer()
	require.NoError(b, nc.Flush())
	perTick := func(v uint64) float64 { return float64(v) / float64(b.N) }
	b.ReportMetric(perTick(f.metaSent.Load())*float64(time.Second/tick), "msgs/s")
	b.ReportMetric(perTick(f.metaBytes.Load())*float64(time.Second/tick), "bytes/s")
	if testing.Verbose() {
		fmt.Printf("metadata per 1000 calls: %.0f msgs/s, %.0f bytes/s\n",
			perTick(f.metaSent.Load())*float64(time.Second/tick), perTick(f.metaBytes.Load())*float64(time.Second/tick))
	}
}
