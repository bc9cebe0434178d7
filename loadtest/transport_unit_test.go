package loadtest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
)

// A device's transport is drawn from its call's seed alone: the same
// seed gives the same devices the same transports, and over many devices
// the shares are the plan's.
func TestDrawNets(t *testing.T) {
	tr := Transports{TCPShare: 0.4, TLSShare: 0.25}
	require.Nil(t, drawNets(7, 10, Transports{}), "no share: every device on UDP")
	require.Equal(t, drawNets(7, 10, tr), drawNets(7, 10, tr))
	require.NotEqual(t, drawNets(7, 10, tr), drawNets(8, 10, tr))
	var n [nTransports]int
	const calls, size = 400, 10
	for seed := range uint64(calls) {
		for _, v := range drawNets(seed, size, tr) {
			n[v]++
		}
	}
	total := float64(calls * size)
	require.InDelta(t, 0.6, float64(n[trUDP4])/total, 0.03)
	require.InDelta(t, 0.4*0.75, float64(n[trTCP])/total, 0.03)
	require.InDelta(t, 0.4*0.25, float64(n[trTLS])/total, 0.03)
	all := drawNets(3, 20, Transports{TCPShare: 1, TLSShare: 1})
	for _, v := range all {
		require.Equal(t, uint8(trTLS), v)
	}
}

// Bad transport settings are refused with a message that names the
// setting (and its flag) and says what to give.
func TestTransportsValidate(t *testing.T) {
	fwd := netip.MustParseAddrPort("127.0.0.1:3478")
	other := netip.MustParseAddrPort("127.0.0.1:3479")
	tcp := netip.MustParseAddrPort("127.0.0.1:3478")
	tlsAddr := netip.MustParseAddrPort("127.0.0.1:443")
	base := func() Plan {
		p := Plan{Forwarders: []netip.AddrPort{fwd}, SigningKey: make([]byte, 64), Seed: 1,
			Profile: Profile{Kind: ProfileSteady, Steady: Steady{Rate: 1, Duration: Duration(time.Second)}}}
		p.Transports.Streams = []ForwarderStreams{{Forwarder: fwd, TCP: tcp, TLS: tlsAddr}}
		return p.WithDefaults()
	}
	for name, tc := range map[string]struct {
		edit func(*Plan)
		want string
	}{
		"share over 1":    {func(p *Plan) { p.Transports.TCPShare = 1.5 }, "tcp_share (--tcp-share) = 1.5, want 0..1"},
		"share negative":  {func(p *Plan) { p.Transports.TCPShare = -0.1 }, "want 0..1"},
		"tls share over":  {func(p *Plan) { p.Transports.TCPShare, p.Transports.TLSShare = 0.5, 2 }, "tls_share (--tls-share) = 2, want 0..1"},
		"tls without tcp": {func(p *Plan) { p.Transports.TLSShare = 0.5 }, "give tcp_share (--tcp-share) too"},
		"fast engine": {func(p *Plan) { p.Transports.TCPShare = 0.5; p.Engine = EngineFast; p.Fast = p.Fast.withDefaults() },
			"needs the full engine"},
		"no tcp listener": {func(p *Plan) { p.Transports.TCPShare = 0.5; p.Transports.Streams[0].TCP = netip.AddrPort{} },
			"forwarder 127.0.0.1:3478 has no TCP listener"},
		"no tls listener": {func(p *Plan) {
			p.Transports.TCPShare, p.Transports.TLSShare = 0.5, 0.5
			p.Transports.Streams[0].TLS = netip.AddrPort{}
		}, "has no TLS listener"},
		"unknown forwarder": {func(p *Plan) { p.Transports.Streams[0].Forwarder = other }, "is not one of the forwarders"},
		"bad roots":         {func(p *Plan) { p.Transports.TLSRoots = "not a certificate" }, "holds no PEM certificate"},
		"bad metrics url":   {func(p *Plan) { p.Transports.Metrics = []string{"10.0.0.5:9100"} }, "(--forwarder-metrics) = \"10.0.0.5:9100\": want an http(s) URL"},
	} {
		t.Run(name, func(t *testing.T) {
			p := base()
			require.NoError(t, p.Validate())
			tc.edit(&p)
			err := p.Validate()
			require.ErrorIs(t, err, ErrPlan)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// Agents' per-transport windows add up in Merge as one process's would.
func TestMergeTransports(t *testing.T) {
	part := func(agent string, admitted int, delay float64) *Partial {
		var tw transportWindows
		w := &tw[trTCP]
		w.setups.Attempted, w.setups.Admitted = admitted, admitted
		w.setup.Add(300)
		w.delay.Add(delay)
		w.expected, w.speechRcvd, w.received = 100, 100, 150
		u := &tw[trUDP4]
		u.setups.Attempted, u.setups.Admitted = 2, 1
		u.setups.Refused.Timeout = 1
		return &Partial{Agent: agent, Of: 2, DurationMs: 1000, Transports: tw.data()}
	}
	res := Merge(part("a", 3, 10), part("b", 2, 30))
	require.Len(t, res.Transports, 2)
	tcp, udp := res.Transports[TransportTCP], res.Transports[TransportUDP4]
	require.Equal(t, 5, tcp.Setups.Admitted)
	require.Equal(t, uint64(2), tcp.DelayMs.Count)
	require.InDelta(t, 30, tcp.DelayMs.P99, 1.5)
	require.Equal(t, uint64(300), tcp.PacketsReceived)
	require.Equal(t, 4, udp.Setups.Attempted)
	require.Equal(t, 50.0, udp.SetupSuccessPct)
	require.Nil(t, Merge(&Partial{Agent: "old", DurationMs: 1000}).Transports, "older agents' partials have none")
}

// The forwarders' stream counters are read from their metrics; an
// endpoint that is not a forwarder's, or does not answer, is named in
// the errors and left out; a counter that went down was reset.
func TestStreamQueueScrape(t *testing.T) {
	var drops atomic.Uint64
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# TYPE callrelay_forwarder_stream_queue_drops_total counter\n"+
			"callrelay_forwarder_stream_queue_drops_total{kind=\"audio\"} %d\n"+
			"callrelay_forwarder_stream_queue_drops_total{kind=\"video\"} %d\n"+
			"# TYPE callrelay_forwarder_stream_retransmissions_skipped_total counter\n"+
			"callrelay_forwarder_stream_retransmissions_skipped_total 4\n"+
			"# TYPE callrelay_forwarder_stream_refused_total counter\n"+
			"callrelay_forwarder_stream_refused_total %d\n", drops.Load(), 2*drops.Load(), drops.Load()-10)
	}))
	defer fwd.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "# TYPE up gauge\nup 1")
	}))
	defer other.Close()
	drops.Store(10)
	w := watchQueues(context.Background(), []string{fwd.URL, other.URL, "http://127.0.0.1:9/metrics"})
	drops.Store(13)
	q := w.finish(context.Background())
	require.Equal(t, 1, q.Forwarders)
	require.Equal(t, uint64(3), q.AudioDropped)
	require.Equal(t, uint64(6), q.VideoDropped)
	require.Zero(t, q.RetransmissionsSkipped)
	require.Equal(t, uint64(3), q.ConnectionsRefused)
	require.Len(t, q.Errors, 2)
	require.Contains(t, q.Errors[0], "no callrelay_forwarder_stream_queue_drops_total")
	require.Contains(t, q.Errors[1], "127.0.0.1:9")
	require.Equal(t, uint64(5), grown(7, 5), "a restarted forwarder's counters start again")
	require.Nil(t, watchQueues(context.Background(), nil).finish(context.Background()))
}

// A device that a Session event puts on another transport than its
// network allows is counted; other events, and moves on its own
// transport, are not.
func TestMovedOff(t *testing.T) {
	ev := func(k client.EventKind, tr client.Transport) client.SessionEvent {
		return client.SessionEvent{Kind: k, Transport: tr}
	}
	for _, tc := range []struct {
		tr   uint8
		ev   client.SessionEvent
		want bool
	}{
		{trTCP, ev(client.EventMigrated, client.TransportUDP), true},
		{trTCP, ev(client.EventFailover, client.TransportTCP), false},
		{trTLS, ev(client.EventRejoined, client.TransportTCP), true},
		{trTLS, ev(client.EventTransport, client.TransportTLS), false},
		{trUDP4, ev(client.EventTransport, client.TransportTCP), true},
		{trUDP6, ev(client.EventMigrated, client.TransportUDP), false},
		{trTCP, ev(client.EventLost, client.TransportUDP), false},
		{trTLS, ev(client.EventMigrateFailed, client.TransportUDP), false},
	} {
		require.Equal(t, tc.want, movedOff(tc.tr, tc.ev), "%s device, %s to %s", transportKeys[tc.tr], tc.ev.Kind, tc.ev.Transport)
	}
}
