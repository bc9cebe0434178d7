package testenv

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A SIGSTOPped Redis keeps connections open but never answers: the client
// must see a timeout, not a refusal, and recover after SIGCONT.
func TestRedisPausedLooksHung(t *testing.T) {
	r := Redis(t)
	c := newClient(t, r)
	require.NoError(t, c.Ping(ctx(t)).Err())

	require.NoError(t, r.Signal(syscall.SIGSTOP))
	err := c.Ping(ctx(t)).Err()
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "want a timeout from a hung server, got %v", err)

	require.NoError(t, r.Signal(syscall.SIGCONT))
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error { return c.Ping(ctx(t)).Err() })
}

// Cleanup must end a server even if the test left it stopped, and let it exit
// gracefully on SIGTERM rather than wait out the grace period for SIGKILL.
func TestRedisCleanupEndsPausedServer(t *testing.T) {
	var r *RedisServer
	t.Run("leaves-server-paused", func(t *testing.T) {
		r = Redis(t)
		require.NoError(t, r.Signal(syscall.SIGSTOP))
	})
	requireDown(t, r.Addr)
	require.Contains(t, r.out.String(), gracefulExitLog, "a paused server must be continued so it can act on SIGTERM")
}
