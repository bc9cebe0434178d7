package embedredis

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartWarnsAndServes(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := Start(zap.New(core))
	require.NoError(t, err)
	defer s.Close()

	warn := logs.FilterLevelExact(zapcore.WarnLevel).All()
	require.Len(t, warn, 1)
	require.Contains(t, warn[0].Message, "DEMO ONLY")
	require.Contains(t, warn[0].Message, "IN-PROCESS REDIS STAND-IN")
	require.Equal(t, s.URL(), warn[0].ContextMap()["url"])

	opt, err := redis.ParseURL(s.URL())
	require.NoError(t, err)
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.Set(ctx, "k", "v", 50*time.Millisecond).Err())
	require.Equal(t, "v", c.Get(ctx, "k").Val())
	// TTLs run on the wall clock, as on a real Redis.
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := c.Exists(ctx, "k").Val(); n != 0 {
			return errors.New("key not expired")
		}
		return nil
	})
}

func TestStartWithoutLogger(t *testing.T) {
	s, err := Start(nil)
	require.NoError(t, err)
	s.Close()
}
