package forwarder_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// A join's answer waits for its store write, also when the device repeats
// the join meanwhile: each device here repeats its join every 200 µs until
// answered, and when the success arrives the call's record already holds
// it. Before, a repetition that reached the forwarder between the admission
// and the write landing was answered at once (TestClusterConcurrentJoins
// then saw fewer members in the record than joins returned, under load).
func TestJoinRetransmissionWaitsForStoreWrite(t *testing.T) {
	e := newClusterEnv(t)
	node := e.start(t, "fwd-a")
	call := protocol.NewID()
	const devices = 10
	for i := range devices {
		tok, participant := e.token(t, call, devices)
		sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		defer sock.Close()
		relay := net.UDPAddrFromAddrPort(node.f.Addr())
		key := protocol.IntegrityKey(tok)
		buf := make([]byte, 2048)

		// The address check first.
		m, err := protocol.BuildJoinRequest(tok, protocol.JoinOptions{})
		require.NoError(t, err)
		_, err = sock.WriteToUDP(m.Raw, relay)
		require.NoError(t, err)
		require.NoError(t, sock.SetReadDeadline(time.Now().Add(5*time.Second)))
		n, err := sock.Read(buf)
		require.NoError(t, err)
		resp, err := protocol.ParseJoinResponse(buf[:n], m.TransactionID, key)
		require.NoError(t, err)
		require.NotEmpty(t, resp.Cookie, "device %d: the address check", i)

		// The join, repeated every 200 µs (at most 3 s) until answered.
		m, err = protocol.BuildJoinRequest(tok, protocol.JoinOptions{Cookie: resp.Cookie})
		require.NoError(t, err)
		answered := make(chan []byte, 1)
		go func() {
			b := make([]byte, 2048)
			_ = sock.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := sock.Read(b)
			if err != nil {
				answered <- nil
				return
			}
			answered <- b[:n]
		}()
		var raw []byte
		for sent := 0; raw == nil && sent < 15000; sent++ {
			_, err = sock.WriteToUDP(m.Raw, relay)
			require.NoError(t, err)
			select {
			case raw = <-answered:
			case <-time.After(200 * time.Microsecond):
			}
		}
		if raw == nil {
			raw = <-answered
		}
		require.NotNil(t, raw, "device %d: no answer to its join", i)
		resp, err = protocol.ParseJoinResponse(raw, m.TransactionID, key)
		require.NoError(t, err)
		require.True(t, resp.OK, "device %d: join refused: %d %s", i, resp.Code, resp.Reason)
		rec, err := e.store.Get(context.Background(), call)
		require.NoError(t, err)
		require.Contains(t, rec.Members, participant, "device %d was answered before its store write landed", i)
	}
}
