package testenv

import (
	"testing"
	"time"
)

// CheckFor calls f every interval until it returns nil, and fails the test
// with f's last error if that has not happened within timeout. It is the
// nats-server checkFor pattern: integration tests wait for a condition with a
// deadline rather than sleeping for a guessed duration.
//
// f is always called at least once, and once more at the deadline, so a
// condition that becomes true just before the deadline is not reported as a
// failure.
func CheckFor(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			t.Fatalf("testenv: condition not met after %v: %v", time.Since(start).Round(time.Millisecond), err)
			return
		}
		time.Sleep(min(interval, remaining))
	}
}
