package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

const (
	viewerToken = "viewer-0123456789abcdef"
	adminToken  = "admin-0123456789abcdef+/="
)

// get asks path of the dashboard with the given headers (alternating
// names and values), without following a redirect.
func (e *env) get(t *testing.T, path string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.base+path, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	r, err := e.client.Transport.RoundTrip(req)
	require.NoError(t, err)
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	return r, string(b)
}

// twoMembers puts a call with two members at known addresses in Redis.
func (e *env) twoMembers(t *testing.T) protocol.ID {
	t.Helper()
	call := protocol.NewID()
	for i, addr := range []string{"198.51.100.1:5000", "198.51.100.2:5000"} {
		_, err := e.store.AddMember(context.Background(), call, protocol.ClassGroup, 5, protocol.NewID(), statestore.Member{
			Forwarder: "fwd-a", Addr: netip.MustParseAddrPort(addr), JoinedAt: time.Unix(1_800_000_000+int64(i), 0)})
		require.NoError(t, err)
	}
	return call
}

func addrsOf(t *testing.T, body string) ([]string, bool) {
	t.Helper()
	var v CallView
	require.NoError(t, json.Unmarshal([]byte(body), &v), body)
	var addrs []string
	for _, m := range v.Members {
		addrs = append(addrs, m.Addr)
	}
	return addrs, v.AddrsHidden
}

// The call drill-down over real HTTP with tokens set: 401 without a token
// or with a wrong one; a viewer gets the call with the device addresses
// left out; the admin gets them. The same through the browser's way in: a
// ?token= link sets a session cookie and sends the browser back without
// the token in the address.
func TestDashboardCallDrillDownTokens(t *testing.T) {
	e := start(t, func(c *Config) {
		c.ViewerToken, c.AdminToken, c.DecisionWait = viewerToken, adminToken, 10*time.Millisecond
	})
	call := e.twoMembers(t)
	path := "/api/call?id=" + call.String()
	both := []string{"198.51.100.1:5000", "198.51.100.2:5000"}

	for _, h := range [][]string{nil, {"Authorization", "Bearer " + viewerToken + "x"}, {"Authorization", "Basic " + adminToken},
		{"Authorization", "Bearer"}, {"Cookie", sessionCookie + "=" + strings.Repeat("0", 64)}} {
		r, body := e.get(t, path, h...)
		require.Equal(t, http.StatusUnauthorized, r.StatusCode, "%q: %s", h, body)
		require.Equal(t, `Bearer realm="callrelay dashboard"`, r.Header.Get("WWW-Authenticate"))
		require.Contains(t, body, "this dashboard needs a token")
		require.NotContains(t, body, "198.51.100")
	}

	r, body := e.get(t, path, "Authorization", "Bearer "+viewerToken)
	require.Equal(t, http.StatusOK, r.StatusCode, body)
	addrs, hidden := addrsOf(t, body)
	require.Equal(t, []string{"", ""}, addrs, "a viewer sees no device address")
	require.True(t, hidden)
	require.NotContains(t, body, "198.51.100")

	r, body = e.get(t, path, "Authorization", "bearer "+adminToken)
	require.Equal(t, http.StatusOK, r.StatusCode, body)
	addrs, hidden = addrsOf(t, body)
	require.Equal(t, both, addrs, "the admin sees them")
	require.False(t, hidden)

	// The browser's way: a link with the token, a cookie, the page.
	r, body = e.get(t, "/")
	require.Equal(t, http.StatusUnauthorized, r.StatusCode)
	require.Contains(t, body, "/?token=")
	r, _ = e.get(t, "/?token="+adminToken+"x")
	require.Equal(t, http.StatusUnauthorized, r.StatusCode, "a wrong token in the link")
	require.Empty(t, r.Cookies())
	cookies := map[string]string{}
	for who, tok := range map[string]string{"viewer": viewerToken, "admin": adminToken} {
		r, _ = e.get(t, "/?token="+strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(tok))
		require.Equal(t, http.StatusSeeOther, r.StatusCode, who)
		require.Equal(t, "./", r.Header.Get("Location"), "back to the page, without the token")
		require.Len(t, r.Cookies(), 1)
		c := r.Cookies()[0]
		require.Equal(t, sessionCookie, c.Name)
		require.True(t, c.HttpOnly)
		require.Equal(t, http.SameSiteLaxMode, c.SameSite)
		require.NotContains(t, c.Value, tok, "the cookie is not the token")
		cookies[who] = sessionCookie + "=" + c.Value
	}
	r, body = e.get(t, "/", "Cookie", cookies["viewer"])
	require.Equal(t, http.StatusOK, r.StatusCode)
	require.Contains(t, body, `id="verdict"`)
	_, body = e.get(t, path, "Cookie", cookies["viewer"])
	addrs, _ = addrsOf(t, body)
	require.Equal(t, []string{"", ""}, addrs)
	_, body = e.get(t, path, "Cookie", cookies["admin"])
	addrs, _ = addrsOf(t, body)
	require.Equal(t, both, addrs)
	r, _ = e.get(t, "/api/call?token="+viewerToken+"&id="+call.String())
	require.Equal(t, http.StatusSeeOther, r.StatusCode)
	require.Equal(t, "./call?id="+call.String(), r.Header.Get("Location"), "the rest of the query kept")

	// The state and the event stream need a token too; probes and
	// Prometheus do not.
	for _, p := range []string{"/api/state", "/events", "/app.js"} {
		r, _ = e.get(t, p)
		require.Equal(t, http.StatusUnauthorized, r.StatusCode, p)
	}
	for p, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "callrelay_http_connections_max 256\n"} {
		r, body = e.get(t, p)
		require.Equal(t, http.StatusOK, r.StatusCode, p)
		require.Contains(t, body, want, p)
	}
}

// Without a token the dashboard serves anyone, as a viewer, and only on
// loopback; it refuses to start anywhere else.
func TestDashboardWithoutTokenOnLoopbackOnly(t *testing.T) {
	e := start(t, func(c *Config) { c.DecisionWait = 10 * time.Millisecond })
	r, body := e.get(t, "/api/call?id="+e.twoMembers(t).String())
	require.Equal(t, http.StatusOK, r.StatusCode, body)
	addrs, hidden := addrsOf(t, body)
	require.Equal(t, []string{"", ""}, addrs, "no admin token, no addresses")
	require.True(t, hidden)

	cfg := e.srv.cfg
	cfg.Listen = "0.0.0.0:0"
	_, err := New(cfg)
	require.ErrorContains(t, err, "is not a loopback address and no token is set")
	cfg.ViewerToken = viewerToken
	s, err := New(cfg)
	require.NoError(t, err, "with a token any address will do")
	require.NoError(t, s.http.Close())
}

func TestConfigValidateTokens(t *testing.T) {
	c := Default()
	c.ViewerToken, c.AdminToken = "short", "with space 0123456789"
	err := c.Validate()
	require.ErrorContains(t, err, "--viewer-token is 5 characters: want at least 16")
	require.ErrorContains(t, err, `--admin-token has ' ' at 4`)
	require.ErrorContains(t, err, "callrelay token dashboard")
	c.ViewerToken, c.AdminToken = adminToken, adminToken
	require.ErrorContains(t, c.Validate(), "--viewer-token and --admin-token are the same")
	c.HTTP.MaxConns = 0
	require.ErrorContains(t, c.Validate(), "--max-conns 0: want at least 1")
}

// An event stream outlives the server's read timeout (it bounds reading
// the request only) and its write timeout (each snapshot moves the write
// deadline forward).
func TestDashboardEventsOutliveServerTimeouts(t *testing.T) {
	const timeout = 100 * time.Millisecond
	e := start(t, func(c *Config) {
		c.HTTP.ReadTimeout, c.HTTP.WriteTimeout, c.PushEvery = timeout, timeout, 20*time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/events", nil)
	require.NoError(t, err)
	r, err := e.client.Do(req)
	require.NoError(t, err)
	defer r.Body.Close()
	rd := bufio.NewReader(r.Body)
	start, n := time.Now(), 0
	for time.Since(start) < 5*timeout {
		line, err := rd.ReadString('\n')
		require.NoError(t, err, "the stream ended after %v and %d snapshots", time.Since(start), n)
		if strings.HasPrefix(line, "data: ") {
			n++
		}
	}
	require.Greater(t, n, 1)
}
