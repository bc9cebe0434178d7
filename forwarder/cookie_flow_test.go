package forwarder

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestJoinNeedsAddressCookie: a join without a cookie creates nothing and is
// answered 401 with a cookie; a cookie issued to another address is worth
// nothing; a captured request replayed from another address moves nothing.
func TestJoinNeedsAddressCookie(t *testing.T) {
	r := startRelay(t, nil)
	call := protocol.NewID()
	a := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))

	m, err := protocol.BuildJoinRequest(a.token, protocol.JoinOptions{})
	require.NoError(t, err)
	a.send(m.Raw)
	raw, ok := a.recvSTUN(2 * time.Second)
	require.True(t, ok)
	require.LessOrEqual(t, len(raw), len(m.Raw), "the answer to an unproven address must not be larger than the request")
	resp, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(a.token))
	require.NoError(t, err)
	require.Equal(t, protocol.CodeUnauthorized, resp.Code)
	require.NotEmpty(t, resp.Cookie)
	require.Zero(t, r.f.Stats().Sessions, "a session without an address check")

	// b presents a's cookie: refused, and given its own.
	b := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))
	m, err = protocol.BuildJoinRequest(b.token, protocol.JoinOptions{Cookie: resp.Cookie})
	require.NoError(t, err)
	b.send(m.Raw)
	raw, ok = b.recvSTUN(2 * time.Second)
	require.True(t, ok)
	bresp, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(b.token))
	require.NoError(t, err)
	require.Equal(t, protocol.CodeUnauthorized, bresp.Code)
	require.NotEqual(t, resp.Cookie, bresp.Cookie)
	require.Zero(t, r.f.Stats().Sessions)

	a.join()
	b.join()
	// A keepalive of a's, captured and replayed verbatim from elsewhere.
	m, err = protocol.BuildJoinRequest(a.token, protocol.JoinOptions{Cookie: a.cookie})
	require.NoError(t, err)
	replayer := newRawDevice(t, r.f.Addr(), a.token)
	replayer.send(m.Raw)
	_, _ = replayer.recvSTUN(2 * time.Second)
	require.Zero(t, r.f.Stats().AddressChanges)
	b.send(rtpPacket(2, 1, []byte("to a")))
	p, ok := a.recv(2 * time.Second)
	require.True(t, ok, "a lost its media to a replayer")
	require.Equal(t, rtpPacket(2, 1, []byte("to a")), p)
}

// TestKeepalivesSurviveAJoinFlood: one host floods joins from many ports
// while a member keeps alive; every keepalive must still be answered.
func TestKeepalivesSurviveAJoinFlood(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.JoinRate, c.JoinBurst = 50, 50 })
	call := protocol.NewID()
	member := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 5))
	member.join()

	forged := startRelay(t, nil).token(t, call, protocol.NewID(), protocol.ClassGroup, 5)
	req, err := protocol.BuildJoinRequest(forged, protocol.JoinOptions{Cookie: make([]byte, 16)})
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ { // 4 x 50 ports x 20 requests: bounded
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					return
				}
				for j := 0; j < 20; j++ {
					_, _ = c.WriteToUDPAddrPort(req.Raw, r.f.Addr())
				}
				_ = c.Close()
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	// Keep alive while the flood is being refused.
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if r.f.Stats().Drops[DropSTUNRateLimited] == 0 {
			return errors.New("the flood has not reached the limiter yet")
		}
		return nil
	})
	for i := 0; i < 20; i++ {
		require.True(t, member.bind(false).OK, "keepalive %d not answered during the flood", i)
	}
	close(stop)
	wg.Wait()
	require.Positive(t, r.f.Stats().Drops[DropSTUNRateLimited])
	require.Equal(t, 1, r.f.Stats().Sessions)
}

// TestShutdownDoesNotWaitForIdleQueues: with the control queue full, a
// cancelled forwarder stops after the message at hand instead of draining
// the queue first (under a flood the queue might never drain).
func TestShutdownDoesNotWaitForIdleQueues(t *testing.T) {
	pub, _, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	cfg := Default()
	cfg.Listen, cfg.Verifier, cfg.Readers = "127.0.0.1:0", v, 1
	f, err := New(cfg)
	require.NoError(t, err)
	for i := 0; i < ctrlQueue; i++ {
		m := <-f.newFree
		m.n = copy(m.buf[:], "not a STUN message at all, but queued")
		f.ctrlNew <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, f.Run(ctx))
	require.NotZero(t, len(f.ctrlNew), "Run drained the whole queue before noticing shutdown")
	require.Error(t, f.Run(context.Background()), "a second Run must be refused")
}
