package testenv

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// gracefulExitLog is what redis-server logs when it shuts down on SIGTERM;
// after a SIGKILL it logs nothing.
const gracefulExitLog = "ready to exit"

func newClient(t *testing.T, r *RedisServer) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(r.URL())
	require.NoError(t, err)
	opts.MaxRetries = -1 // report a dead server at once instead of retrying
	opts.DialTimeout = 500 * time.Millisecond
	opts.ReadTimeout = 500 * time.Millisecond
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// requireDown checks that nothing listens on addr any more.
func requireDown(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
}

func TestRedisSetGet(t *testing.T) {
	r := Redis(t)
	host, port, err := net.SplitHostPort(r.Addr)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.NotEqual(t, "6379", port, "tests must never use the machine's shared Redis")

	c := newClient(t, r)
	require.NoError(t, c.Set(ctx(t), "{call:c1}:members", "alice,bob", 0).Err())
	got, err := c.Get(ctx(t), "{call:c1}:members").Result()
	require.NoError(t, err)
	require.Equal(t, "alice,bob", got)

	cfg, err := c.ConfigGet(ctx(t), "*").Result()
	require.NoError(t, err)
	require.Equal(t, "", cfg["save"], "the test server must not write RDB snapshots")
	require.Equal(t, "no", cfg["appendonly"])
}

func TestRedisKillThenRestart(t *testing.T) {
	r := Redis(t)
	c := newClient(t, r)
	require.NoError(t, c.Set(ctx(t), "k", "v", 0).Err())

	r.Kill()
	require.Error(t, c.Ping(ctx(t)).Err(), "a killed server must not answer")
	requireDown(t, r.Addr)
	require.Error(t, r.Signal(os.Kill), "signalling a dead server is an error")

	require.NoError(t, r.Restart())
	require.NoError(t, c.Ping(ctx(t)).Err(), "the client reconnects to the same address")
	err := c.Get(ctx(t), "k").Err()
	require.True(t, errors.Is(err, redis.Nil), "a restarted server starts empty, got %v", err)
}

func TestRedisStopIsGracefulAndIdempotent(t *testing.T) {
	r := Redis(t)
	c := newClient(t, r)
	require.NoError(t, c.Ping(ctx(t)).Err())

	r.Stop()
	requireDown(t, r.Addr)
	require.Contains(t, r.out.String(), gracefulExitLog, "SIGTERM alone should stop Redis")
	r.Stop()
	r.Kill()
}

func TestRedisMissingBinaryFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	msg, fatal := runFatal(t, func(tb testing.TB) { Redis(tb) })
	require.True(t, fatal, "a missing redis-server must fail the test, not skip it")
	require.Contains(t, msg, "make deps")
}

// Many packages start servers at once; each must get its own port.
func TestRedisParallelStartsGetDistinctPorts(t *testing.T) {
	const n = 8
	addrs := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// runFatal turns a Fatalf into a returned message, since
			// FailNow may only be called from the test's own goroutine.
			msg, fatal := runFatal(t, func(tb testing.TB) { addrs <- Redis(tb).Addr })
			if fatal {
				t.Error(msg)
			}
		})
	}
	wg.Wait()
	close(addrs)
	seen := map[string]bool{}
	for a := range addrs {
		require.False(t, seen[a], "port %s handed out twice", a)
		seen[a] = true
	}
	require.Len(t, seen, n)
}

// The retry in Redis relies on a lost race for the port being reported as
// errPortInUse, whether our redis-server fails to bind or the other server
// answers our PING first.
func TestRedisStartOnTakenPortIsPortInUse(t *testing.T) {
	taken := Redis(t)
	other := &RedisServer{bin: taken.bin, dir: t.TempDir(), out: &SyncBuffer{}}
	p, err := other.start(taken.port)
	require.ErrorIs(t, err, errPortInUse)
	require.Nil(t, p)
	require.NoError(t, newClient(t, taken).Ping(ctx(t)).Err(), "the server owning the port is untouched")
}
