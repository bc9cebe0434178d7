package forwarder

import (
	"testing"

	"go.uber.org/goleak"
)

// Every forwarder a test starts must leave no goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
