package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Real processes (a forwarder, a conductor, a dashboard with --admin-api):
// a dominant speaker switch in a live call appears in `callrelay admin
// call`'s timeline, from the conductor's report; the admin requests made
// (refused without and with a wrong token, done with the admin token) are
// counted in the dashboard's /metrics, the commands the forwarder took and
// refused (forged, replayed, stale) in the forwarder's, and the
// conductor's decision latency in the conductor's.
func TestAdminTimelineAndCountersOverRealProcesses(t *testing.T) {
	c := newCluster(t)
	a := c.node(t, "fwd-a")
	c.conductor(t, "cnd")
	condMetrics := c.metricsOf[len(c.metricsOf)-1]
	viewer, admin := "viewer-tok-0123456789", "admin-tok-0123456789ab"
	environ := env("CALLRELAY_CLUSTER_KEY="+c.key, "CALLRELAY_NATS_URL="+c.nats.ClientURL(),
		"CALLRELAY_DASHBOARD_VIEWER_TOKEN="+viewer, "CALLRELAY_DASHBOARD_ADMIN_TOKEN="+admin)
	_, base := dashboardAt(t, environ, "--listen", "127.0.0.1:0", "--admin-api")

	call := protocol.NewID()
	member := func(ssrc uint32) *calltest.Member {
		id := protocol.NewID()
		tok, err := protocol.SignToken(c.priv, protocol.Token{CallID: call, ParticipantID: id,
			Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
		require.NoError(t, err)
		m := calltest.Join(t, tok, ssrc, a.media)
		m.ID = id
		return m
	}
	m1, m2 := member(1), member(2)
	var speaker atomic.Int32 // the member who talks: 0 m1, 1 m2
	stop := make(chan struct{})
	defer close(stop)
	calltest.Speak(t, []*calltest.Member{m1, m2}, func(i int, _ time.Duration) bool { return int32(i) == speaker.Load() }, stop)

	cli := func(token string, args ...string) result {
		return run(t, env("CALLRELAY_ADMIN_URL="+base, "CALLRELAY_ADMIN_TOKEN="+token), append([]string{"admin"}, args...)...)
	}
	require.Contains(t, cli(viewer, "call", "--call", call.String()).stderr, "403")
	require.Contains(t, cli("wrong-token-0123456789", "calls").stderr, "403")

	// speakerEvents lists the timeline's speaker switches (participant ids).
	speakerEvents := func() ([]string, error) {
		r := cli(admin, "call", "--call", call.String())
		if r.code != 0 {
			return nil, fmt.Errorf("admin call: %d %s", r.code, r.stderr)
		}
		var v struct {
			Timeline []protocol.AdminEvent `json:"timeline"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			return nil, fmt.Errorf("admin call output: %w: %s", err, r.stdout)
		}
		var out []string
		for _, e := range v.Timeline {
			if e.Kind == "speaker" && e.Conductor != "" {
				out = append(out, e.Participant)
			}
		}
		return out, nil
	}
	want := func(p protocol.ID) func() error {
		return func() error {
			evs, err := speakerEvents()
			if err != nil {
				return err
			}
			if len(evs) == 0 || evs[len(evs)-1] != p.String() {
				return fmt.Errorf("speaker switches in the timeline %v, want the last to %s", evs, p)
			}
			return nil
		}
	}
	testenv.CheckFor(t, 30*time.Second, 250*time.Millisecond, want(m1.ID))
	speaker.Store(1) // m2 talks now: the conductor switches
	testenv.CheckFor(t, 30*time.Second, 250*time.Millisecond, want(m2.ID))

	// Commands the forwarder refuses: forged, replayed, stale.
	key, err := protocol.ParseClusterKey(c.key)
	require.NoError(t, err)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	nc, err := nats.Connect(c.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	command := func(k protocol.ClusterKey, at time.Time) []byte {
		cmd := protocol.AdminCommand{At: at, Op: protocol.AdminOpCalls, Target: "fwd-a", Actor: "test", Args: []byte("{}")}
		_, _ = rand.Read(cmd.Nonce[:])
		b, err := protocol.MarshalAdminCommand(&cmd, k)
		require.NoError(t, err)
		return b
	}
	subject := protocol.AdminSubject("callrelay", "fwd-a")
	good := command(key, time.Now())
	for _, b := range [][]byte{command(other, time.Now()), good, good, command(key, time.Now().Add(-time.Minute))} {
		_, _ = nc.Request(subject, b, 2*time.Second) // the forged one is not answered
	}

	// The counters, read from each process's /metrics. Polled: the
	// dashboard's conductor figures are those of the last report (one a
	// second), and a report's interval may hold no decision sent.
	type check struct {
		url, series string
		ok          func(float64) bool
		want        string
	}
	atLeast := func(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
	exactly := func(n float64) func(float64) bool { return func(v float64) bool { return v == n } }
	fwdURL, dashURL, condURL := "http://"+a.metrics+"/metrics", base+"/metrics", "http://"+condMetrics+"/metrics"
	checks := []check{
		{fwdURL, `callrelay_forwarder_admin_commands_total{op="call",result="ok"}`, atLeast(2), ">= 2"},
		{fwdURL, `callrelay_forwarder_admin_commands_total{op="calls",result="ok"}`, atLeast(1), ">= 1"},
		{fwdURL, `callrelay_forwarder_admin_refused_total{reason="bad_signature"}`, exactly(1), "1"},
		{fwdURL, `callrelay_forwarder_admin_refused_total{reason="replayed"}`, exactly(1), "1"},
		{fwdURL, `callrelay_forwarder_admin_refused_total{reason="stale"}`, exactly(1), "1"},
		{dashURL, `callrelay_dashboard_admin_requests_total{action="call",result="403"}`, exactly(1), "1"},
		{dashURL, `callrelay_dashboard_admin_requests_total{action="calls",result="403"}`, exactly(1), "1"},
		{dashURL, `callrelay_dashboard_admin_requests_total{action="call",result="ok"}`, atLeast(2), ">= 2"},
		{dashURL, `callrelay_dashboard_conductors{state="up"}`, exactly(1), "1"},
		{dashURL, `callrelay_dashboard_conductor_decisions_per_second{region="(none)"}`, atLeast(0.5), ">= 0.5"},
		{condURL, `callrelay_conductor_decision_latency_seconds_count`, atLeast(1), ">= 1"},
		{condURL, `callrelay_conductor_reports_total`, atLeast(1), ">= 1"},
		{condURL, `callrelay_conductor_timeline_events_total{kind="speaker"}`, atLeast(2), ">= 2"},
	}
	testenv.CheckFor(t, 15*time.Second, 200*time.Millisecond, func() error {
		pages := map[string]map[string]float64{}
		for _, c := range checks {
			if pages[c.url] == nil {
				pages[c.url] = scrape(t, c.url)
			}
			v, ok := pages[c.url][c.series]
			if !ok || !c.ok(v) {
				return fmt.Errorf("%s: %s = %v (present %v), want %s", c.url, c.series, v, ok, c.want)
			}
		}
		return nil
	})
	d := scrape(t, dashURL)
	t.Logf("decision latency of the live call's conductor, from its last report: p50 %.1f ms, p99 %.1f ms, %.1f decisions/s",
		1000*d[`callrelay_dashboard_conductor_decision_latency_seconds{quantile="0.5",region="(none)"}`],
		1000*d[`callrelay_dashboard_conductor_decision_latency_seconds{quantile="0.99",region="(none)"}`],
		d[`callrelay_dashboard_conductor_decisions_per_second{region="(none)"}`])
}

// scrape reads a /metrics page into series -> value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for _, m := range regexp.MustCompile(`(?m)^([a-z_]+(?:\{[^}]*\})?) (\S+)$`).FindAllStringSubmatch(string(body), -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err, m[0])
		out[m[1]] = v
	}
	return out
}
