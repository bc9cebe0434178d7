package client

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test must leave no goroutine behind: Conn.Close and a failed Dial
// wait for all of theirs.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
