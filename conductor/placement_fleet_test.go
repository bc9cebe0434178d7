package conductor

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func sealedAnnounce(t *testing.T, k protocol.ClusterKey, id, media string, now time.Time) []byte {
	t.Helper()
	a := protocol.ForwarderAnnounce{ID: id, Media: netip.MustParseAddrPort(media), Trunk: netip.MustParseAddrPort("127.0.0.1:9"),
		Seq: 1, Started: now.Add(-time.Minute), At: now}
	b, err := a.Marshal(nil, k)
	require.NoError(t, err)
	return b
}

func sealedReport(t *testing.T, k protocol.ClusterKey, id, region string, level uint8, rtts []protocol.RegionRTT, now time.Time) []byte {
	t.Helper()
	r := protocol.LoadReport{Forwarder: id, Seq: 1, Started: now.Add(-time.Minute), At: now, Level: level,
		HasOps: true, Ops: protocol.LoadOps{Region: region}, RTTs: rtts}
	b, err := r.Marshal(nil, k)
	require.NoError(t, err)
	return b
}

func TestFleetView(t *testing.T) {
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	bad := prometheus.NewCounter(prometheus.CounterOpts{Name: "bad"})
	f := NewFleet(k, 5*time.Second, bad)
	now := time.Unix(1_800_000_000, 0)
	f.Take(sealedAnnounce(t, k, "fra-1", "192.0.2.1:3478", now), now)
	f.Take(sealedReport(t, k, "fra-1", "eu", 2, []protocol.RegionRTT{{Region: "za", RTT: 162 * time.Millisecond}}, now), now)
	f.Take(sealedAnnounce(t, k, "fra-2", "192.0.2.2:3478", now), now)
	f.Take(sealedReport(t, k, "fra-2", "eu", 0, []protocol.RegionRTT{{Region: "za", RTT: 158 * time.Millisecond}}, now), now)
	f.Take(sealedAnnounce(t, k, "jnb-1", "192.0.2.3:3478", now), now)
	f.Take(sealedReport(t, k, "jnb-1", "za", 3, nil, now), now)

	// Forged, garbled and foreign messages are counted, not taken.
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	f.Take(sealedReport(t, other, "evil-1", "eu", 0, nil, now), now)
	f.Take([]byte("not a cluster message"), now)
	require.InDelta(t, 2, testutil.ToFloat64(bad), 0)

	v := f.View(now)
	require.Len(t, v.Forwarders, 3)
	require.Equal(t, "fra-2", v.ByAddr[netip.MustParseAddrPort("192.0.2.2:3478")])
	require.Equal(t, 158*time.Millisecond, v.RegionRTT[[2]string{"eu", "za"}], "the best trunk between the regions")
	require.Equal(t, 158*time.Millisecond, v.RegionRTT[[2]string{"za", "eu"}])
	require.Equal(t, map[string]int{"eu": 0, "za": 3}, v.RegionLevels, "a region has room while one of its forwarders has")
	got := v.InRegions([]string{"za", "eu"})
	require.Equal(t, []string{"jnb-1", "fra-1", "fra-2"}, []string{got[0].ID, got[1].ID, got[2].ID})

	// Silent forwarders leave the view.
	later := now.Add(6 * time.Second)
	f.Take(sealedAnnounce(t, k, "fra-2", "192.0.2.2:3478", later), later)
	v = f.View(later)
	require.Len(t, v.Forwarders, 1)
	require.Contains(t, v.Forwarders, "fra-2")
}
