//go:build linux

package mmsg

import (
	"encoding/binary"
	"net/netip"
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
