package client

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func TestRTTTableReport(t *testing.T) {
	var tb rttTable
	now := time.Unix(1_800_000_000, 0)
	via := netip.MustParseAddrPort("192.0.2.1:3478")
	require.Nil(t, tb.report(via, now), "nothing measured to via: no report")
	for i := range 12 {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), 3478)
		require.NoError(t, tb.observe(a, time.Duration(20+i)*time.Millisecond, now.Add(time.Duration(i)*time.Second)))
	}
	require.NoError(t, tb.observe(via, 30*time.Millisecond, now))
	r := tb.report(via, now.Add(20*time.Second))
	require.NotNil(t, r)
	require.NoError(t, r.Check())
	require.EqualValues(t, protocol.MaxCandidateRTTs, r.N)
	require.Equal(t, protocol.CandidateRTT{Addr: via, RTT: 30 * time.Millisecond, Via: true}, r.Entries[0])
	require.Equal(t, netip.MustParseAddrPort("192.0.2.21:3478"), r.Entries[1].Addr, "the freshest others next")

	// Smoothing, and a jump taken at once.
	require.NoError(t, tb.observe(via, 38*time.Millisecond, now.Add(time.Second)))
	require.Equal(t, 31*time.Millisecond, tb.snapshot()[via])
	require.NoError(t, tb.observe(via, 150*time.Millisecond, now.Add(2*time.Second)))
	require.Equal(t, 150*time.Millisecond, tb.snapshot()[via])
	require.NoError(t, tb.observe(via, 30*time.Millisecond, now.Add(3*time.Second)))
	require.Equal(t, 30*time.Millisecond, tb.snapshot()[via], "and back at once")
	// Out of range samples are refused; stale entries are not reported.
	require.ErrorIs(t, tb.observe(via, -time.Millisecond, now), errBadRTT)
	require.ErrorIs(t, tb.observe(via, time.Minute, now), errBadRTT)
	require.Nil(t, tb.report(via, now.Add(rttKeep+time.Minute)))
	require.LessOrEqual(t, len(tb.snapshot()), rttMax)
}

// TestRTTTableReportSequence: every report carries a sequence above the
// last one, the Unix time in ms while reports are rarer than one a ms, and
// one more when the clock stands still or steps back; a report not built
// (nothing to say) takes none.
func TestRTTTableReportSequence(t *testing.T) {
	var tb rttTable
	now := time.UnixMilli(1_800_000_000_123)
	via := netip.MustParseAddrPort("192.0.2.1:3478")
	require.Nil(t, tb.report(via, now))
	require.Zero(t, tb.seq, "no report, no sequence")
	require.NoError(t, tb.observe(via, 30*time.Millisecond, now))
	var seqs []uint64
	for _, at := range []time.Time{now, now, now.Add(time.Second), now.Add(-time.Hour), now.Add(2 * time.Second)} {
		r := tb.report(via, at)
		require.NotNil(t, r)
		b, err := r.Append(nil)
		require.NoError(t, err)
		require.Equal(t, byte(0x81), b[0], "sequenced, 1 entry")
		seqs = append(seqs, r.Seq)
	}
	require.Equal(t, []uint64{1_800_000_000_123, 1_800_000_000_124, 1_800_000_001_123, 1_800_000_001_124, 1_800_000_002_123}, seqs)
	// Another Session of the same device, later: above what this one sent.
	var restarted rttTable
	require.NoError(t, restarted.observe(via, 30*time.Millisecond, now.Add(3*time.Second)))
	require.Greater(t, restarted.report(via, now.Add(3*time.Second)).Seq, seqs[len(seqs)-1])
}

func TestLocateApply(t *testing.T) {
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.String()
		if r.URL.Query().Get("region") == "nowhere" {
			http.Error(w, `{"error":"unknown region"}`, http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, `{"region":"eu","forwarders":[
			{"id":"fra-1","region":"eu","udp":"192.0.2.1:3478","udp6":"[2001:db8::1]:3478","tcp":"192.0.2.1:443","level":0,"region_rtt_ms":0},
			{"id":"lon-1","region":"uk","udp":"192.0.2.2:3478","level":1,"region_rtt_ms":15.5},
			{"id":"bad","region":"uk","udp":"not an address","level":0}]}`)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := Locate(ctx, srv.Client(), srv.URL, "eu")
	require.NoError(t, err)
	require.Equal(t, "/v1/locate?region=eu", asked)
	require.Len(t, l.Forwarders, 3)
	cfg := Config{Forwarders: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:3478")}}
	require.Equal(t, 2, l.Apply(&cfg))
	require.Equal(t, []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.2:3478"), netip.MustParseAddrPort("192.0.2.1:3478"), netip.MustParseAddrPort("[2001:db8::1]:3478"),
	}, cfg.Forwarders)
	require.Equal(t, StreamEndpoints{TCP: netip.MustParseAddrPort("192.0.2.1:443")}, cfg.Streams[netip.MustParseAddrPort("192.0.2.1:3478")])

	_, err = Locate(ctx, srv.Client(), srv.URL, "nowhere")
	require.ErrorContains(t, err, "400")
}
