package statestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/embedredis"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// newTestRedis starts a redis-server for t and returns a store on it and a
// plain client for looking under the hood.
func newTestRedis(t testing.TB, cfg Config) (*Redis, *redis.Client) {
	t.Helper()
	srv := testenv.Redis(t)
	return openTestRedis(t, srv, cfg)
}

func openTestRedis(t testing.TB, srv *testenv.RedisServer, cfg Config) (*Redis, *redis.Client) {
	t.Helper()
	s, err := OpenRedis(srv.URL(), cfg)
	require.NoError(t, err)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() {
		require.NoError(t, s.Close())
		require.NoError(t, raw.Close())
	})
	return s, raw
}

func TestRedisKeysShareHashTagAndEndWithCall(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx, call, p1, p2 := testCtx(t), protocol.NewID(), protocol.NewID(), protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, p1, testMember(1))
	require.NoError(t, err)
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, p2, testMember(2))
	require.NoError(t, err)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "bwe", []byte("x"), time.Minute))

	tag := "{call:" + call.String() + "}"
	keys, err := raw.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{tag + ":state", tag + ":ckpt"}, keys)

	_, err = s.RemoveMember(ctx, call, p1)
	require.NoError(t, err)
	n, err := raw.Exists(ctx, tag+":state", tag+":ckpt").Result()
	require.NoError(t, err)
	require.Equal(t, int64(2), n)

	_, err = s.RemoveMember(ctx, call, p2)
	require.NoError(t, err)
	n, err = raw.Exists(ctx, tag+":state", tag+":ckpt").Result()
	require.NoError(t, err)
	require.Zero(t, n, "the last member leaving deletes every key of the call")
	keys, err = raw.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.Empty(t, keys)
}

func TestRedisTTLSetAndRefreshed(t *testing.T) {
	const ttl = 90 * time.Second
	s, raw := newTestRedis(t, Config{TTL: ttl})
	ctx, call := testCtx(t), protocol.NewID()
	state := stateKey(call)
	requireTTL := func(key string, lo, hi time.Duration) {
		t.Helper()
		got, err := raw.PTTL(ctx, key).Result()
		require.NoError(t, err)
		require.True(t, got > lo && got <= hi, "TTL of %s is %v, want in (%v, %v]", key, got, lo, hi)
	}

	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1))
	require.NoError(t, err)
	requireTTL(state, ttl-10*time.Second, ttl)

	require.NoError(t, raw.PExpire(ctx, state, 5*time.Second).Err())
	require.NoError(t, s.Touch(ctx, call))
	requireTTL(state, ttl-10*time.Second, ttl)

	require.NoError(t, raw.PExpire(ctx, state, 5*time.Second).Err())
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(2))
	require.NoError(t, err)
	requireTTL(state, ttl-10*time.Second, ttl)

	// The checkpoint hash lives as long as its longest-lived checkpoint.
	require.NoError(t, s.SaveCheckpoint(ctx, call, "a", []byte("x"), 30*time.Second))
	requireTTL(ckptKey(call), 20*time.Second, 30*time.Second)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "b", []byte("y"), time.Hour))
	requireTTL(ckptKey(call), 59*time.Minute, time.Hour)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "c", []byte("z"), time.Second))
	requireTTL(ckptKey(call), 59*time.Minute, time.Hour)
}

// TestRedisExpiry lets a call and a checkpoint expire on the server's clock,
// on a real redis-server and on the demo's stand-in.
func TestRedisExpiry(t *testing.T) {
	for name, url := range map[string]func(t *testing.T) string{
		"redis-server": func(t *testing.T) string { return testenv.Redis(t).URL() },
		"embedredis": func(t *testing.T) string {
			srv, err := embedredis.Start(nil)
			require.NoError(t, err)
			t.Cleanup(srv.Close)
			return srv.URL()
		},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := OpenRedis(url(t), Config{TTL: 100 * time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, s.Close()) })
			ctx, call := testCtx(t), protocol.NewID()
			_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1))
			require.NoError(t, err)
			require.NoError(t, s.SaveCheckpoint(ctx, call, "short", []byte("x"), 50*time.Millisecond))
			require.NoError(t, s.SaveCheckpoint(ctx, call, "long", []byte("y"), time.Minute))
			testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				_, err := s.Get(ctx, call)
				if !errors.Is(err, ErrNotFound) {
					return fmt.Errorf("call not expired: %v", err)
				}
				return nil
			})
			_, err = s.LoadCheckpoint(ctx, call, "short")
			require.ErrorIs(t, err, ErrNotFound)
			got, err := s.LoadCheckpoint(ctx, call, "long")
			require.NoError(t, err)
			require.Equal(t, []byte("y"), got)
		})
	}
}

// TestRedisDown checks that a dead or hung Redis yields errors within the
// caller's deadline, never a hang or a panic.
func TestRedisDown(t *testing.T) {
	for name, down := range map[string]func(*testing.T, *testenv.RedisServer){
		"killed": func(_ *testing.T, srv *testenv.RedisServer) { srv.Kill() },
		"hung": func(t *testing.T, srv *testenv.RedisServer) {
			require.NoError(t, srv.Signal(syscall.SIGSTOP))
			t.Cleanup(func() { _ = srv.Signal(syscall.SIGCONT) })
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := testenv.Redis(t)
			s, _ := openTestRedis(t, srv, Config{})
			call, p := protocol.NewID(), protocol.NewID()
			_, err := s.AddMember(testCtx(t), call, protocol.ClassGroup, 3, p, testMember(1))
			require.NoError(t, err)
			down(t, srv)

			ops := map[string]func(context.Context) error{
				"Get": func(ctx context.Context) error { _, err := s.Get(ctx, call); return err },
				"AddMember": func(ctx context.Context) error {
					_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(2))
					return err
				},
				"RemoveMember":   func(ctx context.Context) error { _, err := s.RemoveMember(ctx, call, p); return err },
				"Touch":          func(ctx context.Context) error { return s.Touch(ctx, call) },
				"SaveCheckpoint": func(ctx context.Context) error { return s.SaveCheckpoint(ctx, call, "k", nil, time.Second) },
			}
			for op, f := range ops {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				start := time.Now()
				err := f(ctx)
				cancel()
				require.ErrorIs(t, err, ErrUnavailable, op)
				require.Less(t, time.Since(start), 2*time.Second, "%s took too long", op)
			}
		})
	}
}

func TestRedisCorruptRecords(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx := testCtx(t)
	valid := func(id protocol.ID) []byte {
		rec, err := encodeCall(nil, Call{ID: id, Class: protocol.ClassGroup, MaxSize: 4, Version: 3,
			Members: map[protocol.ID]Member{protocol.NewID(): testMember(1)}})
		require.NoError(t, err)
		return rec
	}
	for name, plant := range map[string]func(key string, id protocol.ID) error{
		"garbage": func(k string, _ protocol.ID) error {
			return raw.Set(ctx, k, "\x00\xffnot a record at all, really", 0).Err()
		},
		"empty": func(k string, _ protocol.ID) error { return raw.Set(ctx, k, "", 0).Err() },
		"JSON":  func(k string, _ protocol.ID) error { return raw.Set(ctx, k, `{"id":"x","members":[]}`, 0).Err() },
		"future format": func(k string, id protocol.ID) error {
			r := valid(id)
			r[0] = recordFormat + 1
			return raw.Set(ctx, k, r, 0).Err()
		},
		"truncated":      func(k string, id protocol.ID) error { r := valid(id); return raw.Set(ctx, k, r[:len(r)-3], 0).Err() },
		"trailing bytes": func(k string, id protocol.ID) error { return raw.Set(ctx, k, append(valid(id), 0), 0).Err() },
		"foreign call":   func(k string, _ protocol.ID) error { return raw.Set(ctx, k, valid(protocol.NewID()), 0).Err() },
		"wrong type":     func(k string, _ protocol.ID) error { return raw.HSet(ctx, k, "f", "v").Err() },
	} {
		t.Run(name, func(t *testing.T) {
			call := protocol.NewID()
			key := stateKey(call)
			require.NoError(t, plant(key, call))
			before, err := raw.Dump(ctx, key).Result()
			require.NoError(t, err)

			_, err = s.Get(ctx, call)
			require.ErrorIs(t, err, ErrCorrupt)
			_, err = s.AddMember(ctx, call, protocol.ClassGroup, 4, protocol.NewID(), testMember(2))
			require.ErrorIs(t, err, ErrCorrupt)
			_, err = s.UpdateMember(ctx, call, protocol.NewID(), testMember(2))
			require.ErrorIs(t, err, ErrCorrupt)
			_, err = s.RemoveMember(ctx, call, protocol.NewID())
			require.ErrorIs(t, err, ErrCorrupt)

			after, err := raw.Dump(ctx, key).Result()
			require.NoError(t, err)
			require.Equal(t, before, after, "a corrupt record is left for an operator")
		})
	}
}

func TestRedisCorruptCheckpoint(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx, call := testCtx(t), protocol.NewID()
	require.NoError(t, raw.Set(ctx, ckptKey(call), "not a hash", 0).Err())
	_, err := s.LoadCheckpoint(ctx, call, "bwe")
	require.ErrorIs(t, err, ErrCorrupt)
	require.ErrorIs(t, s.SaveCheckpoint(ctx, call, "bwe", []byte("x"), time.Minute), ErrCorrupt)
	// Critical state does not care.
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1))
	require.NoError(t, err)

	call = protocol.NewID()
	require.NoError(t, raw.HSet(ctx, ckptKey(call), "d:bwe", "x", "e:bwe", "soon").Err())
	_, err = s.LoadCheckpoint(ctx, call, "bwe")
	require.ErrorIs(t, err, ErrNotFound, "an unreadable expiry counts as expired")
}

func TestOpenRedisURL(t *testing.T) {
	_, err := OpenRedis("http://nope", Config{})
	require.ErrorIs(t, err, ErrInvalid)

	srv := testenv.Redis(t)
	_, raw := openTestRedis(t, srv, Config{})
	ctx := testCtx(t)
	require.NoError(t, raw.ConfigSet(ctx, "requirepass", "s3cret").Err())

	noPass, err := OpenRedis(srv.URL(), Config{})
	require.NoError(t, err)
	defer noPass.Close()
	_, err = noPass.Get(ctx, protocol.NewID())
	require.ErrorIs(t, err, ErrUnavailable)

	withPass, err := OpenRedis("redis://:s3cret@"+srv.Addr+"/0", Config{})
	require.NoError(t, err)
	defer withPass.Close()
	_, err = withPass.Get(ctx, protocol.NewID())
	require.ErrorIs(t, err, ErrNotFound)
}

func TestNewRedisWithClient(t *testing.T) {
	srv := testenv.Redis(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	defer c.Close()
	s := NewRedis(c, Config{})
	ctx, call := testCtx(t), protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassOneToOne, 2, protocol.NewID(), testMember(1))
	require.NoError(t, err)
	require.NoError(t, s.Close(), "Close leaves a borrowed client alone")
	_, err = s.Get(ctx, call)
	require.NoError(t, err)
}

func BenchmarkAddRemoveMember(b *testing.B) {
	s, _ := newTestRedis(b, Config{})
	ctx := context.Background()
	call, p1, p2 := protocol.NewID(), protocol.NewID(), protocol.NewID()
	m := testMember(1)
	if _, err := s.AddMember(ctx, call, protocol.ClassGroup, 8, p1, m); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.AddMember(ctx, call, protocol.ClassGroup, 8, p2, m); err != nil {
			b.Fatal(err)
		}
		if _, err := s.RemoveMember(ctx, call, p2); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJoinWrite measures the write a join makes: AddMember of a new
// participant into a call of five, making it six, on a real redis-server.
// The participant is removed again outside the timed part. It reports the
// median and 99th percentile of the AddMember latency.
func BenchmarkJoinWrite(b *testing.B) {
	s, _ := newTestRedis(b, Config{})
	ctx := context.Background()
	calls := make([]protocol.ID, 64)
	for i := range calls {
		calls[i] = protocol.NewID()
		for j := range 5 {
			if _, err := s.AddMember(ctx, calls[i], protocol.ClassGroup, 6, protocol.NewID(), testMember(j)); err != nil {
				b.Fatal(err)
			}
		}
	}
	m := testMember(6)
	var lat []time.Duration
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		call, p := calls[i%len(calls)], protocol.NewID()
		i++
		start := time.Now()
		if _, err := s.AddMember(ctx, call, protocol.ClassGroup, 6, p, m); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		b.StopTimer()
		lat = append(lat, d)
		if _, err := s.RemoveMemberServedBy(ctx, call, p, m.Forwarder); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(lat)
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
