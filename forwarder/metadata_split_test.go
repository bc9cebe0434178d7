package forwarder

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A forwarder with more to say for one partition in one tick than one
// message holds (1,500 six-person calls, every member speaking: about
// 320 kB) splits it over several batches, each under the envelope's
// limit, with one `at` and rising sequences, and every call in exactly one
// of them (protocol/README.md 7.3). Before, the whole tick was refused by
// the encoder and no call of the partition was reported.
func TestMetadataSplitsOverSeveralBatches(t *testing.T) {
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	f := &Forwarder{cfg: Default()}
	f.cfg.Cluster.ID, f.cfg.Cluster.NATS, f.cfg.Cluster.Key, f.cfg.Cluster.Partitions = "split", nc, key, 1
	c := newControl(f)

	var mu sync.Mutex
	var got []protocol.MetadataBatch
	var sizes []int
	sub, err := nc.Subscribe(f.cfg.Cluster.metaSubject(0), func(m *nats.Msg) {
		var b protocol.MetadataBatch
		if err := b.Unmarshal(m.Data, key); err != nil {
			t.Errorf("a batch that does not decode: %v", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		got, sizes = append(got, b), append(sizes, len(m.Data))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, nc.Flush())

	const calls = 1500
	for i := range calls {
		cl := &call{id: protocol.NewID(), members: map[protocol.ID]*session{}}
		for j := range 6 {
			s := &session{call: cl, participant: protocol.NewID(), media: new(mediaInfo),
				addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), uint16(1000+j))}
			cl.members[s.participant] = s
			s.media.audio.levels.Add(5 | 5<<16 | 5*40<<32) // 5 packets of speech
			s.media.audio.bytes.Add(5*90 | 5*110<<32)
		}
		c.calls[cl.id] = cl
	}
	c.metaTick(time.Now())
	require.NoError(t, nc.Flush())

	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, b := range got {
			n += len(b.Calls)
		}
		if n < calls {
			return fmt.Errorf("calls reported so far: %d in %d batches", n, len(got))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	require.GreaterOrEqual(t, len(got), 5, "320 kB in batches of at most 64 KiB")
	seen := map[protocol.ID]bool{}
	for i, b := range got {
		require.LessOrEqual(t, sizes[i], 65559)
		require.Equal(t, uint64(i+1), b.Seq, "sequences rise batch by batch")
		require.True(t, b.At.Equal(got[0].At), "one tick, one at")
		for _, cm := range b.Calls {
			require.False(t, seen[cm.Call], "a call in two batches")
			seen[cm.Call] = true
			require.Len(t, cm.Members, 6)
		}
	}
	require.Len(t, seen, calls)
	require.Equal(t, uint64(len(got)), f.metaSent.Load())
}
