package loadtest

import (
	"testing"

	"go.uber.org/goleak"
)

// Every run ends by itself: no goroutine outlives the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
