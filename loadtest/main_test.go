package loadtest

import (
	"testing"

	"go.uber.org/goleak"
)

// Every run ends by itself: no goroutine outlives the tests. go-redis
// keeps redialling a Redis that went down (the chaos tests take one
// down) from a background goroutine that ends on its own after the client
// is closed; it is go-redis's, not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}
