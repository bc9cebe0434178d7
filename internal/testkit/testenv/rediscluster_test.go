package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestRedisClusterFailover(t *testing.T) {
	c := RedisCluster(t, 3, 1)
	require.Len(t, c.Addrs(), 6)
	require.True(t, strings.HasPrefix(c.URL(), "redis+cluster://127.0.0.1:"))

	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: -1, ClusterStateReloadInterval: 200 * time.Millisecond})
	defer cl.Close()
	require.NoError(t, cl.Set(ctx(t), "{k}", "v", 0).Err())

	m, err := c.MasterOf("{k}")
	require.NoError(t, err)
	c.WaitReplicated(t, m) // else the replica may never have received the SET
	c.Kill(m)
	CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		i, err := c.MasterOf("{k}")
		if err == nil && i == m {
			return context.DeadlineExceeded
		}
		return err
	})
	CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		return cl.Get(ctx(t), "{k}").Err()
	})
}

func TestRedisSentinelFailover(t *testing.T) {
	s := RedisSentinel(t)
	require.Equal(t, "redis+sentinel://"+strings.Join(s.SentinelAddrs(), ",")+"/mymaster", s.URL())
	p, err := s.CurrentPrimary()
	require.NoError(t, err)
	require.Equal(t, s.PrimaryAddr(), p)

	s.WaitReplicated(t)
	s.KillPrimary()
	CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		p, err := s.CurrentPrimary()
		if err == nil && p != s.ReplicaAddr() {
			return context.DeadlineExceeded
		}
		return err
	})
}
