package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// keptAlive is one raw TCP connection speaking HTTP/1.1 with keep-alive,
// as a scraper (or someone holding connections open) does.
type keptAlive struct {
	net.Conn
	r *bufio.Reader
}

// get sends one request and returns the answer's body.
func (c *keptAlive) get(path string, header ...string) (int, string, error) {
	if err := c.SetDeadline(time.Now().Add(readyTimeout)); err != nil {
		return 0, "", err
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: test\r\n"
	for i := 0; i+1 < len(header); i += 2 {
		req += header[i] + ": " + header[i+1] + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// closedAtOnce dials addr and waits for the server to close the
// connection (EOF or a reset, maybe before the dial returns) within
// readyTimeout, a deadline and not a figure asserted.
func closedAtOnce(addr string) error {
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	} else if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(readyTimeout)); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case err == nil:
		return errors.New("the server answered instead of closing")
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("still open after %v", readyTimeout)
	}
	return nil
}

// sample reads one sample's value from a Prometheus text exposition.
func sample(t *testing.T, body, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	require.NotNil(t, m, "no %s in /metrics", series)
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// Idle keep-alive connections to a real forwarder's metrics listener, twice
// its cap: those over the cap are closed at once and counted in /metrics,
// the listener holds no more than the cap, the throttle level stays 0 with
// memory a load signal, and a device still joins. (Before the cap, each
// idle connection held its buffers for good: 3,000 of them raised the
// forwarder's memory by 50 MiB and its throttle level to 2.)
func TestForwarderMetricsListenerCapsIdleConnections(t *testing.T) {
	const maxConns = 8
	pub, seed := keygen(t)
	priv, err := protocol.ParsePrivateKey(seed)
	require.NoError(t, err)
	metrics := freeTCPAddr(t)
	_, media := startForwarder(t, pub, priv, "--metrics-listen", metrics,
		"--metrics-max-conns", strconv.Itoa(maxConns), "--memory-limit", strconv.Itoa(512<<20))

	kept := make([]*keptAlive, maxConns)
	for i := range kept {
		c, err := net.Dial("tcp", metrics)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		kept[i] = &keptAlive{Conn: c, r: bufio.NewReader(c)}
		code, _, err := kept[i].get("/metrics")
		require.NoError(t, err, "connection %d is under the cap", i)
		require.Equal(t, http.StatusOK, code)
	}
	for i := range maxConns {
		require.NoError(t, closedAtOnce(metrics), "connection %d over the cap", maxConns+i)
	}
	for i, c := range kept {
		code, body, err := c.get("/healthz")
		require.NoError(t, err, "kept-alive connection %d still served", i)
		require.Equal(t, "ok\n", body)
		require.Equal(t, http.StatusOK, code)
	}
	var body string
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		_, body, err = kept[0].get("/metrics")
		require.NoError(t, err)
		if sample(t, body, `callrelay_forwarder_load{signal="memory"}`) == 0 {
			return errors.New("no load sample yet (every 250 ms)")
		}
		return nil
	})
	require.EqualValues(t, maxConns, sample(t, body, "callrelay_http_connections_refused_total"))
	require.EqualValues(t, maxConns, sample(t, body, "callrelay_http_connections"), "no more held than the cap")
	require.EqualValues(t, maxConns, sample(t, body, "callrelay_http_connections_max"))
	require.EqualValues(t, 0, sample(t, body, "callrelay_forwarder_throttle_level"))
	mem := sample(t, body, `callrelay_forwarder_load{signal="memory"}`)
	require.Less(t, mem, 0.7, "memory below level 1's 70 %")
	t.Logf("memory load %.3f of --memory-limit 512 MiB with %d connections held, %d refused", mem, maxConns, maxConns)

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	dev, err := dial(ctx, media, mint(t, priv, protocol.NewID(), protocol.ClassGroup))
	require.NoError(t, err, "a new group call is admitted")
	require.NoError(t, dev.Close())
}

// dashboardAt starts `callrelay dashboard` with environ and args and
// returns its base URL, from the line it prints.
func dashboardAt(t *testing.T, environ []string, args ...string) (*proc, string) {
	t.Helper()
	p := start(t, environ, append([]string{"dashboard"}, args...)...)
	line := regexp.MustCompile(`callrelay dashboard on (http://\S+)`)
	var base string
	testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
		if p.exited() {
			t.Fatalf("dashboard exited:\n%s", p.stderr)
		}
		m := line.FindStringSubmatch(p.stdout.String())
		if m == nil {
			return errors.New("no address printed yet")
		}
		base = m[1]
		return nil
	})
	return p, base
}

// The tokens `callrelay token dashboard` prints, given to the dashboard
// through their variables: no token, 401; either token, served; the line
// printed says how to open the page; --print-config masks them. Without a
// token the dashboard refuses a non-loopback address.
func TestDashboardTokensFromTheirVariables(t *testing.T) {
	r := run(t, env(), "token", "dashboard")
	require.Equal(t, 0, r.code, r.stderr)
	m := regexp.MustCompile(`\ACALLRELAY_DASHBOARD_VIEWER_TOKEN=(\S+)\nCALLRELAY_DASHBOARD_ADMIN_TOKEN=(\S+)\n\z`).FindStringSubmatch(r.stdout)
	require.NotNil(t, m, "token dashboard printed:\n%s", r.stdout)
	viewer, admin := m[1], m[2]
	require.NotEqual(t, viewer, admin)

	ns := testenv.NATS(t)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	environ := env("CALLRELAY_CLUSTER_KEY="+key.String(), "CALLRELAY_NATS_URL="+ns.ClientURL(),
		"CALLRELAY_DASHBOARD_VIEWER_TOKEN="+viewer, "CALLRELAY_DASHBOARD_ADMIN_TOKEN="+admin)

	r = run(t, environ, "dashboard", "--print-config")
	require.Equal(t, 0, r.code, r.stderr)
	require.NotContains(t, r.stdout, viewer)
	require.NotContains(t, r.stdout, admin)
	require.Contains(t, r.stdout, "admin-token: '****"+admin[len(admin)-4:]+"'")

	p, base := dashboardAt(t, environ, "--listen", "127.0.0.1:0")
	require.Contains(t, p.stdout.String(), "/?token=<your token>")
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer c.Close()
	page := &keptAlive{Conn: c, r: bufio.NewReader(c)}
	for _, tc := range []struct {
		auth string
		code int
	}{{"", http.StatusUnauthorized}, {"Bearer " + viewer + "x", http.StatusUnauthorized},
		{"Bearer " + viewer, http.StatusOK}, {"Bearer " + admin, http.StatusOK}} {
		var h []string
		if tc.auth != "" {
			h = []string{"Authorization", tc.auth}
		}
		code, body, err := page.get("/api/state", h...)
		require.NoError(t, err)
		require.Equal(t, tc.code, code, "%q: %s", tc.auth, body)
	}
	code, _ := p.stop(t, syscall.SIGINT)
	require.Equal(t, 0, code)

	open := env("CALLRELAY_CLUSTER_KEY="+key.String(), "CALLRELAY_NATS_URL="+ns.ClientURL())
	r = run(t, open, "dashboard", "--listen", "0.0.0.0:0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "is not a loopback address and no token is set")
	p, _ = dashboardAt(t, open, "--listen", "127.0.0.1:0")
	require.Contains(t, p.stdout.String(), "(loopback only: no token set)")
	testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
		if !strings.Contains(p.stderr.String(), "dashboard listening on loopback only, without a token") {
			return errors.New("no log line saying so yet")
		}
		return nil
	})
	code, _ = p.stop(t, syscall.SIGINT)
	require.Equal(t, 0, code)
}
