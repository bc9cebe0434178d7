package testenv

import (
	"fmt"
	"runtime"
	"testing"

	"go.uber.org/goleak"
)

// Every package's tests will run these helpers under goleak, so the helpers
// themselves must leave no goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fatalRecorder is a testing.TB whose Fatalf records the message and ends the
// calling goroutine, as the real one does, so that the helpers' failure paths
// can be tested without failing the test running them.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runFatal runs fn with a fatalRecorder on its own goroutine and reports the
// Fatalf message, if fn called Fatalf.
func runFatal(t *testing.T, fn func(tb testing.TB)) (msg string, fatal bool) {
	t.Helper()
	rec := &fatalRecorder{TB: t}
	returned := make(chan bool)
	go func() {
		ok := false
		defer func() { returned <- ok }() // runs on Goexit too
		fn(rec)
		ok = true
	}()
	if <-returned {
		return "", false
	}
	return rec.msg, true
}
