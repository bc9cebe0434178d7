package testenv

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCheckForSucceedsOnceConditionHolds(t *testing.T) {
	calls := 0
	CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		calls++
		if calls < 3 {
			return fmt.Errorf("only %d calls", calls)
		}
		return nil
	})
	require.Equal(t, 3, calls, "CheckFor must stop polling as soon as f succeeds")
}

// With an interval longer than the timeout, the only calls are the first one
// and the last chance at the deadline.
func TestCheckForFailsWithLastErrorAfterFinalAttempt(t *testing.T) {
	calls := 0
	start := time.Now()
	msg, fatal := runFatal(t, func(tb testing.TB) {
		CheckFor(tb, 50*time.Millisecond, time.Hour, func() error {
			calls++
			return fmt.Errorf("still waiting (call %d)", calls)
		})
	})
	require.True(t, fatal, "CheckFor must fail the test when the condition never holds")
	require.Contains(t, msg, "still waiting (call 2)", "the message must carry the last error")
	require.Equal(t, 2, calls)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond, "must not give up before the timeout")
}

func TestCheckForZeroTimeoutCallsOnce(t *testing.T) {
	calls := 0
	CheckFor(t, 0, time.Second, func() error { calls++; return nil })
	require.Equal(t, 1, calls)

	calls = 0
	_, fatal := runFatal(t, func(tb testing.TB) {
		CheckFor(tb, 0, time.Second, func() error { calls++; return errors.New("no") })
	})
	require.True(t, fatal)
	require.Equal(t, 1, calls)
}
