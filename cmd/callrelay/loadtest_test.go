package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/loadtest"
)

// A short New Year's Eve spike against a cluster of two forwarder
// processes and a conductor: `callrelay loadtest` runs by itself to the
// end, writes a JSON result with the fields a planner reads, and an HTML
// report that renders in headless Chromium without a console error.
func TestLoadtestSpikeAgainstCluster(t *testing.T) {
	c := newCluster(t)
	a, b := c.node(t, "fwd-a"), c.node(t, "fwd-b")
	c.conductor(t, "cond-1")
	seed := c.seed
	dir := t.TempDir()
	plan := filepath.Join(dir, "plan.yml")
	require.NoError(t, os.WriteFile(plan, []byte(`
profile:
  kind: spike
  spike: {base: 1, peak: 4, lead: 1s, ramp_up: 2s, hold: 2s, decay: 1s, tail: 1s}
call_duration: {mean: 3s, min: 1s, max: 5s}
mix: {one_to_one: 0.5, group_min: 3, group_max: 6}
bounds: {max_duration: 25s, max_concurrent_calls: 20, max_calls: 60}
local_addr: 127.0.0.1
`), 0o644))
	out, html := filepath.Join(dir, "result.json"), filepath.Join(dir, "report.html")
	r := run(t, env("CALLRELAY_SIGNING_KEY="+seed), "loadtest", "--plan", plan,
		"--forwarders", a.media.String()+","+b.media.String(), "--out", out, "--report", html)
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	require.Contains(t, r.stdout, "loadtest: ")

	raw, err := os.ReadFile(out)
	require.NoError(t, err)
	var res loadtest.Result
	require.NoError(t, json.Unmarshal(raw, &res))
	require.Equal(t, "spike", res.Plan.Profile.Kind)
	require.Equal(t, "profile_done", res.Stopped)
	require.NotEmpty(t, res.Seconds)
	all := res.Totals.All
	require.Positive(t, all.Setups.Admitted, "calls were set up")
	require.Positive(t, res.Totals.OneToOne.Setups.Attempted)
	require.Positive(t, res.Totals.Group.Setups.Attempted)
	require.NotEmpty(t, res.Verdict.Checks)
	require.NotContains(t, string(raw), seed, "the signing key never reaches the result")
	t.Logf("spike: %d setups admitted of %d; verdict pass=%v", all.Setups.Admitted, all.Setups.Attempted, res.Verdict.Pass)

	// Served over loopback HTTP, as a planner's browser would open it.
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	shot := renderInChromium(t, srv.URL+"/report.html", "loadtest-report.png")
	t.Logf("report screenshot: %s", shot)
}

// renderInChromium opens url in headless Chromium, fails on a console
// error or an uncaught exception, and saves a full-page screenshot as name
// in $CALLRELAY_ARTIFACTS (default: the temp directory).
func renderInChromium(t *testing.T, url, name string) string {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	require.NoError(t, err, "chromium not on PATH: run `make deps` (it installs Debian's chromium)")
	ctx, problems := newBrowser(t, chromium)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(url)))
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	dir := os.Getenv("CALLRELAY_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, png, 0o644))
	require.Empty(t, problems(), "console errors or exceptions")
	text, err := chromedp.Run(ctx, chromedp.Text("body"))
	require.NoError(t, err)
	require.True(t, strings.Contains(text, "PASS") || strings.Contains(text, "FAIL"), "a verdict banner: %.200q", text)
	return fmt.Sprint(path)
}

// Bigger than one machine: two `loadtest agent` processes take their
// shares of a controller's plan over NATS and report back; the controller
// merges them, and with the cluster key it also records the forwarders'
// throttle levels from their load reports.
func TestLoadtestAgentsMerge(t *testing.T) {
	c := newCluster(t)
	a := c.node(t, "fwd-a")
	environ := env("CALLRELAY_SIGNING_KEY="+c.seed, "CALLRELAY_NATS_URL="+c.nats.ClientURL())
	agents := []*proc{start(t, environ, "loadtest", "agent", "--once"), start(t, environ, "loadtest", "agent", "--once")}
	// Run in an empty directory with neither --out nor --report: the
	// result goes to loadtest-result.json, and no report is written unless
	// asked for.
	dir := t.TempDir()
	r := runIn(t, dir, env("CALLRELAY_SIGNING_KEY="+c.seed, "CALLRELAY_CLUSTER_KEY="+c.key), "loadtest",
		"--forwarders", a.media.String(), "--nats-url", c.nats.ClientURL(), "--agents", "2", "--agents-wait", "10s",
		"--profile", "steady", "--rate", "3", "--duration", "3s")
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.Equal(t, []string{"loadtest-result.json"}, names, "no report unless --report names one")
	require.NotContains(t, r.stdout, "report")
	raw, err := os.ReadFile(filepath.Join(dir, "loadtest-result.json"))
	require.NoError(t, err)
	var res loadtest.Result
	require.NoError(t, json.Unmarshal(raw, &res))
	require.Len(t, res.Agents, 2, "both agents' shares merged")
	require.Positive(t, res.Totals.All.Setups.Admitted)
	require.Positive(t, res.Totals.All.PacketsReceived)
	require.NotNil(t, res.Relay, "the forwarders' load reports were read")
	for _, p := range agents {
		select {
		case <-p.done:
		case <-time.After(readyTimeout):
			t.Fatal("an agent did not exit after its share")
		}
	}
	t.Logf("merged: %d setups admitted, %d packets received, agents %d", res.Totals.All.Setups.Admitted, res.Totals.All.PacketsReceived, len(res.Agents))
}
