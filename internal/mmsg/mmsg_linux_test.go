//go:build linux

package mmsg

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Many devices on one socket: each datagram leaves from its own address in
// 127.0.0.0/8 and is read with the address it was sent to.
func TestBatchWithAddresses(t *testing.T) {
	a, err := Open(netip.MustParseAddrPort("0.0.0.0:0"), Options{PktInfo: true, Buffer: 1 << 20})
	require.NoError(t, err)
	defer a.Close()
	b, err := Open(netip.MustParseAddrPort("0.0.0.0:0"), Options{PktInfo: true, Buffer: 1 << 20})
	require.NoError(t, err)
	defer b.Close()
	const n = 150 // more than one batch
	payloads := make([][]byte, n)
	for i := range n {
		payloads[i] = binary.BigEndian.AppendUint32(nil, uint32(i))
		src := netip.AddrFrom4([4]byte{127, 20, 0, byte(i + 1)})
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 30, 1, byte(i + 1)}), b.LocalAddr().Port())
		if !a.Queue(payloads[i], dst, src) {
			sent, failed := a.Flush()
			require.Equal(t, Batch, sent)
			require.Zero(t, failed)
			require.True(t, a.Queue(payloads[i], dst, src))
		}
	}
	sent, failed := a.Flush()
	require.Equal(t, n%Batch, sent)
	require.Zero(t, failed)

	got := 0
	deadline := time.Now().Add(10 * time.Second)
	for got < n {
		require.True(t, time.Now().Before(deadline), "only %d of %d datagrams arrived", got, n)
		k, err := b.ReadBatch()
		require.NoError(t, err)
		for j := range k {
			i := int(binary.BigEndian.Uint32(b.Buf(j)))
			require.Equal(t, netip.AddrFrom4([4]byte{127, 20, 0, byte(i + 1)}), b.Src(j).Addr(), "source of %d", i)
			require.Equal(t, a.LocalAddr().Port(), b.Src(j).Port())
			require.Equal(t, netip.AddrFrom4([4]byte{127, 30, 1, byte(i + 1)}), b.Dst(j), "destination of %d", i)
			got++
		}
	}
	require.Zero(t, b.Dropped())
}

// A write to a closed socket counts as failed, not sent.
func TestFlushOnClosed(t *testing.T) {
	a, err := Open(netip.MustParseAddrPort("127.0.0.1:0"), Options{})
	require.NoError(t, err)
	require.NoError(t, a.Close())
	require.True(t, a.Queue([]byte{1}, netip.MustParseAddrPort("127.0.0.1:9"), netip.Addr{}))
	sent, failed := a.Flush()
	require.Zero(t, sent)
	require.Equal(t, 1, failed)
}

// A flood into a socket nobody reads overflows it: the datagrams read and
// the drops reported add up to those sent, and once every datagram carries
// the count (in its control message) a read that parses it allocates
// nothing.
func TestDropCountWithoutAllocation(t *testing.T) {
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	require.NoError(t, uc.SetReadBuffer(1)) // the kernel's minimum: a few datagrams
	c, err := Wrap(uc, Options{WriteBatch: 8, BufSize: 2048})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, uc.SetReadDeadline(time.Now().Add(time.Minute))) // a safety net, never a wait
	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer tx.Close()
	to := c.LocalAddr()
	const n = 300
	for range n {
		_, err := tx.WriteToUDPAddrPort(make([]byte, 100), to)
		require.NoError(t, err)
	}
	read, err := c.ReadBatch() // all that fit: a few
	require.NoError(t, err)
	require.Less(t, read, Batch)
	// The probe is queued after the drops: it carries their count.
	_, err = tx.WriteToUDPAddrPort([]byte("end"), to)
	require.NoError(t, err)
	for seen := false; !seen; {
		k, err := c.ReadBatch()
		require.NoError(t, err)
		for i := range k {
			if string(c.Buf(i)) == "end" {
				seen = true
			} else {
				read++
			}
		}
	}
	dropped := c.Dropped()
	require.Positive(t, dropped)
	require.Equal(t, uint64(n), uint64(read)+dropped, "read %d, dropped %d", read, dropped)

	probe := []byte("probe")
	var more uint64
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := tx.WriteToUDPAddrPort(probe, to); err != nil {
			panic(err)
		}
		if k, err := c.ReadBatch(); err != nil || k != 1 || c.rhdrs[0].Hdr.Controllen == 0 {
			panic(fmt.Sprintf("read %d, %v, control %d bytes", k, err, c.rhdrs[0].Hdr.Controllen))
		}
		more += c.Dropped()
	})
	require.Zero(t, allocs)
	require.Zero(t, more, "no drops while reading one by one")
}

// A datagram longer than the buffer is cut and marked truncated.
func TestTruncated(t *testing.T) {
	c, err := Open(netip.MustParseAddrPort("127.0.0.1:0"), Options{BufSize: 100})
	require.NoError(t, err)
	defer c.Close()
	require.True(t, c.Queue(make([]byte, 101), c.LocalAddr(), netip.Addr{}))
	require.True(t, c.Queue(make([]byte, 100), c.LocalAddr(), netip.Addr{}))
	sent, failed := c.Flush()
	require.Equal(t, 2, sent)
	require.Zero(t, failed)
	got := 0
	for got < 2 {
		require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		k, err := c.ReadBatch()
		require.NoError(t, err)
		for i := range k {
			require.Len(t, c.Buf(i), 100)
			require.Equal(t, got == 0, c.Truncated(i), "datagram %d", got)
			got++
		}
	}
}

// With RxTime each datagram carries the time the kernel queued it, not the
// time it was read: loopback delivers within sendmmsg, so every stamp lies
// between the moment before the Flush and the moment it returned, although
// the read comes 5 ms later. The kernel turns timestamping on
// asynchronously (a static key flipped by a work item) when the first
// socket asks, and stamps the datagrams queued before that at their read:
// rounds are repeated until one is stamped at arrival (5 s at most).
func TestRxTimeIsTheKernels(t *testing.T) {
	a, err := Open(netip.MustParseAddrPort("127.0.0.1:0"), Options{})
	require.NoError(t, err)
	defer a.Close()
	b, err := Open(netip.MustParseAddrPort("127.0.0.1:0"), Options{RxTime: true, PktInfo: true})
	require.NoError(t, err)
	defer b.Close()
	const n = 10
	round := func() (atArrival bool) {
		before := time.Now().UnixNano()
		for i := range n {
			require.True(t, a.Queue([]byte{byte(i)}, b.LocalAddr(), netip.Addr{}))
		}
		sent, failed := a.Flush()
		require.Equal(t, n, sent)
		require.Zero(t, failed)
		after := time.Now().UnixNano()
		for time.Now().UnixNano() < after+int64(5*time.Millisecond) {
			runtime.Gosched() // the read comes 5 ms after the arrival
		}
		atArrival = true
		for got := 0; got < n; {
			k, err := b.ReadBatch()
			require.NoError(t, err)
			for j := range k {
				rx := b.RxTime(j)
				require.GreaterOrEqual(t, rx, before, "datagram %d stamped before it was sent", j)
				require.Equal(t, netip.MustParseAddr("127.0.0.1"), b.Dst(j))
				atArrival = atArrival && rx <= after
				got++
			}
		}
		return atArrival
	}
	deadline := time.Now().Add(5 * time.Second)
	for !round() {
		require.True(t, time.Now().Before(deadline), "datagrams stamped at their read, not at their arrival")
	}
	c, err := Open(netip.MustParseAddrPort("127.0.0.1:0"), Options{})
	require.NoError(t, err)
	defer c.Close()
	require.Zero(t, c.RxTime(0), "no stamp without RxTime")
}
