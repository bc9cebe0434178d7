package report

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/loadtest"
)

// A run with devices on UDP, TCP and TLS gets a transports section after
// the media: a row per transport in the joins and the media tables, in
// order, and the forwarders' stream queue drops; a UDP-only run has none.
func TestFromResultTransports(t *testing.T) {
	r := &loadtest.Result{DurationMs: 4000}
	r.Plan.Profile.Kind = "steady"
	r.Transports = map[string]loadtest.TransportMeasures{
		"tls":  {Setups: loadtest.Setups{Attempted: 6, Admitted: 6}, SetupSuccessPct: 100, SetupMs: loadtest.Percentiles{Count: 6, P50: 284.6, P95: 290, P99: 291}, DelayMs: loadtest.Percentiles{Count: 9, P50: 0.8, P95: 4.3, P99: 9.4}},
		"udp4": {Setups: loadtest.Setups{Attempted: 12, Admitted: 12}, SetupSuccessPct: 100, NACKs: 3, LossPct: 0.25, RawLossPct: 1.5},
		"tcp":  {Setups: loadtest.Setups{Attempted: 4, Admitted: 3}, SetupSuccessPct: 75, OtherTransport: 1},
	}
	r.StreamQueue = &loadtest.StreamQueue{Forwarders: 2, AudioDropped: 7, VideoDropped: 123, RetransmissionsSkipped: 5, Errors: []string{"loadtest: metrics http://x: 404"}}
	in := FromResult(r)
	var titles []string
	for _, s := range in.Sections {
		titles = append(titles, s.Title)
	}
	require.Equal(t, []string{"Calls", "Media quality", "Transports", "Load generator"}, titles)
	s := in.Sections[2]
	require.Len(t, s.Tables, 3)
	var order []string
	for _, row := range s.Tables[0].Rows {
		order = append(order, row[0])
	}
	require.Equal(t, []string{"udp4", "tcp", "tls"}, order)
	require.Equal(t, []string{"tcp", "4", "75.0 %", "—", "—", "—", "—", "1"}, s.Tables[0].Rows[1])
	require.Equal(t, "285", s.Tables[0].Rows[2][3], "three significant digits")
	require.Equal(t, []string{"udp4", "—", "—", "—", "0 ms", "0.250 %", "1.50 %", "3", "0 ms", "0"}, s.Tables[1].Rows[0])
	text := parsePage(t, render(t, in)).allText()
	for _, want := range []string{"Joins per transport", "Media per transport", "send queue drops", "123", "http://x: 404"} {
		require.Contains(t, text, want)
	}

	udp := &loadtest.Result{DurationMs: 1000, Transports: map[string]loadtest.TransportMeasures{"udp4": {}}}
	udp.Plan.Profile.Kind = "steady"
	for _, s := range FromResult(udp).Sections {
		require.NotEqual(t, "Transports", s.Title)
	}
}
