package client

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The rebind's retransmission timer is a read deadline on the new socket;
// it must not outlive the rebind, or the session's reader times out on
// the new socket and the session is lost (RetransmitInitial is 20 ms in
// these tests). Two keepalive rounds later (a keepalive every second) the
// session is still up and media still arrives.
func TestRebindLeavesNoReadDeadline(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	x, y := e.dial(e.config(r)), e.dial(e.config(r))

	require.NoError(t, x.Rebind(testContext(t), netip.MustParseAddr("127.0.0.1")))
	answered := x.Stats().KeepalivesAnswered
	require.Eventually(t, func() bool {
		return x.Err() != nil || x.Stats().KeepalivesAnswered >= answered+2
	}, 10*time.Second, 10*time.Millisecond, "no keepalive answered after the rebind")
	require.NoError(t, x.Err(), "the session outlives the rebind")

	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 'n', 'e', 'w'}
	require.NoError(t, y.WriteRTP(pkt))
	p := recv(t, x)
	require.Equal(t, pkt, p.Data)
	p.Release()
}
