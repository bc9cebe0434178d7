package linkem

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestArrivalReaderUsesKernelTime(t *testing.T) {
	a, b := udpSocket(t), udpSocket(t)
	r := newArrivalReader(b)
	require.NotNil(t, r.oob, "SO_TIMESTAMPNS is available on Linux")
	buf := make([]byte, 16)
	// The kernel switches receive timestamps on in deferred work when the
	// first socket asks for them; until then a datagram is stamped when it
	// is read. On a loaded machine that work may take a while to run, so
	// exchange warm-up datagrams until one comes back stamped before it was
	// read (bounded: a kernel that never stamps at arrival fails the test).
	stamped := false
	for i := 0; i < 200 && !stamped; i++ {
		_, err := a.WriteToUDPAddrPort([]byte("w"), addrOf(b))
		require.NoError(t, err)
		<-time.After(2 * time.Millisecond) // the datagram waits in the socket
		readAt := time.Now()
		_, _, at, err := r.read(buf)
		require.NoError(t, err)
		stamped = at.Before(readAt)
	}
	require.True(t, stamped, "no datagram was stamped on arrival in 200 tries")

	sent := time.Now()
	_, err := a.WriteToUDPAddrPort([]byte("x"), addrOf(b))
	require.NoError(t, err)
	<-time.After(50 * time.Millisecond) // the datagram waits in the socket
	readAt := time.Now()
	n, src, at, err := r.read(buf)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, addrOf(a), src)
	require.False(t, at.Before(sent.Add(-time.Millisecond)), "not before it was sent")
	require.True(t, at.Before(readAt), "the arrival, not the read: %v after sending, read %v after", at.Sub(sent), readAt.Sub(sent))
}
