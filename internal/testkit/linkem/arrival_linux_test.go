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
	// is read. One exchange first gives that work time to run.
	_, err := a.WriteToUDPAddrPort([]byte("w"), addrOf(b))
	require.NoError(t, err)
	_, _, _, err = r.read(buf)
	require.NoError(t, err)

	sent := time.Now()
	_, err = a.WriteToUDPAddrPort([]byte("x"), addrOf(b))
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
