package conductor

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func testLocator(t *testing.T, table string) (*Locator, time.Time) {
	t.Helper()
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	now := time.Unix(1_800_000_000, 0)
	f := NewFleet(k, 5*time.Second, nil)
	for _, fw := range []struct {
		id, addr, region string
		level            uint8
		rtts             []protocol.RegionRTT
	}{
		{"fra-2", "192.0.2.2:3478", "eu", 1, []protocol.RegionRTT{{Region: "uk", RTT: 15 * time.Millisecond}, {Region: "za", RTT: 160 * time.Millisecond}}},
		{"fra-1", "192.0.2.1:3478", "eu", 2, nil},
		{"lon-1", "192.0.2.3:3478", "uk", 0, nil},
		{"jnb-1", "192.0.2.4:3478", "za", 0, nil},
	} {
		f.Take(sealedAnnounce(t, k, fw.id, fw.addr, now), now)
		f.Take(sealedReport(t, k, fw.id, fw.region, fw.level, fw.rtts, now), now)
	}
	var nb map[string][]string
	if table != "" {
		nb, err = ParseRegionTable(table)
		require.NoError(t, err)
	}
	return NewLocator(f, LocatorConfig{Neighbours: nb, MaxNeighbours: 1, Registerer: prometheus.NewRegistry(), Now: func() time.Time { return now }}), now
}

func get(t *testing.T, l *Locator, method, target string) (*httptest.ResponseRecorder, located) {
	t.Helper()
	rec := httptest.NewRecorder()
	l.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	var ans located
	if rec.Code == http.StatusOK {
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &ans))
	}
	return rec, ans
}

func TestLocatorAnswersRegionAndNeighbours(t *testing.T) {
	// Without a table: the nearest measured region (uk at 15 ms) follows.
	l, _ := testLocator(t, "")
	rec, ans := get(t, l, "GET", "/v1/locate?region=eu")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var ids []string
	for _, f := range ans.Forwarders {
		ids = append(ids, f.ID)
	}
	require.Equal(t, []string{"fra-2", "fra-1", "lon-1"}, ids, "eu first, least throttled first; then uk")
	require.Equal(t, "192.0.2.2:3478", ans.Forwarders[0].UDP)
	require.Equal(t, 2, ans.Forwarders[1].Level)
	require.InDelta(t, 15, ans.Forwarders[2].RegionRTTMs, 0.001)

	// With a table, its neighbours.
	l, _ = testLocator(t, "eu:za,uk; za:eu")
	_, ans = get(t, l, "GET", "/v1/locate?region=za")
	require.Equal(t, "jnb-1", ans.Forwarders[0].ID)
	require.Len(t, ans.Forwarders, 3)
	require.Equal(t, 1.0, testutil.ToFloat64(l.reqs.WithLabelValues("ok")))
}

func TestLocatorRefusesBadInput(t *testing.T) {
	l, _ := testLocator(t, "")
	for _, tc := range []struct {
		method, target string
		code           int
		outcome        string
	}{
		{"POST", "/v1/locate?region=eu", 405, "method"},
		{"GET", "/v1/locate", 400, "bad_request"},
		{"GET", "/v1/locate?region=", 400, "bad_request"},
		{"GET", "/v1/locate?region=eu&region=uk", 400, "bad_request"},
		{"GET", "/v1/locate?region=eu&x=1", 400, "bad_request"},
		{"GET", "/v1/locate?region=a%20b", 400, "bad_request"},
		{"GET", "/v1/locate?region=" + strings.Repeat("x", 33), 400, "bad_request"},
		{"GET", "/v1/locate?region=" + strings.Repeat("x", 300), 400, "bad_request"},
		{"GET", "/v2/locate?region=eu", 404, "bad_request"},
		{"GET", "/v1/locate?region=mars", 404, "unknown_region"},
	} {
		rec, _ := get(t, l, tc.method, tc.target)
		require.Equal(t, tc.code, rec.Code, "%s %s: %s", tc.method, tc.target, rec.Body.String())
		require.Contains(t, rec.Body.String(), `"error"`)
	}
	require.Equal(t, 8.0, testutil.ToFloat64(l.reqs.WithLabelValues("bad_request")))
	require.Equal(t, 1.0, testutil.ToFloat64(l.reqs.WithLabelValues("method")))
	require.Equal(t, 1.0, testutil.ToFloat64(l.reqs.WithLabelValues("unknown_region")))
}

func TestParseRegionTable(t *testing.T) {
	m, err := ParseRegionTable(" eu:uk, za ;za:eu;uk:")
	require.NoError(t, err)
	require.Equal(t, map[string][]string{"eu": {"uk", "za"}, "za": {"eu"}, "uk": nil}, m)
	for _, bad := range []string{"eu", "eu:uk;eu:za", "eu:eu", "eu:uk,uk", "e u:uk", ":uk"} {
		_, err := ParseRegionTable(bad)
		require.Error(t, err, bad)
	}
}
