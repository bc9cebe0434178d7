package conductor

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// FuzzLocateQuery: whatever query a stranger sends to GET /v1/locate, the
// locator answers JSON with 200 (only for one valid region it knows, with
// at most MaxForwarders forwarders), 400 or 404, and never panics.
// Seeds: testdata/fuzz/FuzzLocateQuery.
func FuzzLocateQuery(f *testing.F) {
	k, err := protocol.NewClusterKey()
	require.NoError(f, err)
	fleet := NewFleet(k, 5*time.Second, nil)
	now := time.Unix(1_800_000_000, 0)
	for _, fw := range []struct{ id, addr, region string }{{"fra-1", "192.0.2.1:3478", "eu"}, {"jnb-1", "192.0.2.2:3478", "za"}} {
		a := protocol.ForwarderAnnounce{ID: fw.id, Media: netip.MustParseAddrPort(fw.addr), Trunk: netip.MustParseAddrPort("127.0.0.1:9"),
			Seq: 1, Started: now.Add(-time.Minute), At: now}
		b, err := a.Marshal(nil, k)
		require.NoError(f, err)
		fleet.Take(b, now)
		r := protocol.LoadReport{Forwarder: fw.id, Seq: 1, Started: now.Add(-time.Minute), At: now,
			HasOps: true, Ops: protocol.LoadOps{Region: fw.region}, RTTs: []protocol.RegionRTT{{Region: "xx", RTT: time.Millisecond}}}
		b, err = r.Marshal(nil, k)
		require.NoError(f, err)
		fleet.Take(b, now)
	}
	require.Len(f, fleet.View(now).Forwarders, 2)
	loc := NewLocator(fleet, LocatorConfig{Neighbours: map[string][]string{"eu": {"za"}}, MaxForwarders: 1,
		Registerer: prometheus.NewRegistry(), Now: func() time.Time { return now }})
	for _, s := range []string{"region=eu", "region=za", "region=", "region=eu&region=za", "region=a%20b", "x=1", "",
		"region=%zz", "region=eu;x=1", "region=" + string(make([]byte, 300))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		r := httptest.NewRequest(http.MethodGet, "/v1/locate", nil)
		r.URL.RawQuery = q
		w := httptest.NewRecorder()
		loc.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusOK:
			var ans located
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &ans))
			require.NoError(t, protocol.ValidRegion(ans.Region))
			require.NotEmpty(t, ans.Region)
			require.NotEmpty(t, ans.Forwarders)
			require.LessOrEqual(t, len(ans.Forwarders), 1, "MaxForwarders")
		case http.StatusBadRequest, http.StatusNotFound:
			var e map[string]string
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e))
			require.NotEmpty(t, e["error"])
		default:
			t.Fatalf("answered %d to %q", w.Code, q)
		}
	})
}

// FuzzParseRegionTable: a table that parses names only valid regions,
// none its own neighbour or listed twice; anything else is an error.
// Seeds: testdata/fuzz/FuzzParseRegionTable.
func FuzzParseRegionTable(f *testing.F) {
	for _, s := range []string{"eu:uk,za;za:eu;uk:eu", "", ";;", "eu:", "eu:eu", "eu:za,za", "eu:za;eu:uk", ":za", "e u:za", "eu:z a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tab, err := ParseRegionTable(s)
		if err != nil {
			require.Nil(t, tab)
			return
		}
		for region, ns := range tab {
			require.NotEmpty(t, region)
			require.NoError(t, protocol.ValidRegion(region))
			seen := map[string]bool{}
			for _, n := range ns {
				require.NoError(t, protocol.ValidRegion(n))
				require.NotEqual(t, region, n)
				require.False(t, seen[n], "%q twice", n)
				seen[n] = true
			}
		}
	})
}
