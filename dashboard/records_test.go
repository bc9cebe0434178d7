package dashboard

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Records in Redis that do not decode (a call record, a lease holder) are
// answered with a clear error where they are read and counted by record on
// /metrics; the dashboard goes on serving. (Malformed checkpoints:
// TestDashboardCall.) The garbage is written with a plain Redis client
// under statestore's key names: if those names changed, the dashboard
// would find nothing malformed and this test would fail.
func TestDashboardMalformedRecords(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	opts, err := redis.ParseURL(e.redis.URL())
	require.NoError(t, err)
	raw := redis.NewClient(opts)
	t.Cleanup(func() { _ = raw.Close() })

	// A call whose record is garbage: 502 with the reason.
	call := protocol.NewID()
	require.NoError(t, raw.Set(ctx, "{call:"+call.String()+"}:state", "not a call record", 0).Err())
	r, err := e.client.Get(e.base + "/api/call?id=" + call.String())
	require.NoError(t, err)
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusBadGateway, r.StatusCode, string(body))
	require.Contains(t, string(body), "its record in Redis is malformed")
	require.Contains(t, string(body), "corrupt record")

	// A partition lease whose holder is garbage: the partitions view says
	// which one, and the next poll still runs.
	require.NoError(t, raw.Set(ctx, "{lease:"+statestore.PartitionLease(3)+"}:holder", "garbage", 0).Err())
	e.waitState(t, func(s Snapshot) error {
		if !strings.Contains(s.Partitions.Error, "partition 3") || !strings.Contains(s.Partitions.Error, "corrupt record") {
			return fmt.Errorf("partitions error %q", s.Partitions.Error)
		}
		return nil
	})

	r, err = e.client.Get(e.base + "/metrics")
	require.NoError(t, err)
	body, err = io.ReadAll(r.Body)
	r.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(body), `callrelay_dashboard_malformed_records_total{record="call"} 1`)
	require.Contains(t, string(body), `callrelay_dashboard_malformed_records_total{record="checkpoint"} 0`)
	require.Regexp(t, `callrelay_dashboard_malformed_records_total\{record="lease"\} [1-9]`, string(body))
}
