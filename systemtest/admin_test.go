package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/dashboard"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

const (
	adminTok  = "admin-0123456789abcdef"
	viewerTok = "viewer-0123456789abcdef"
)

// adminEnv is a cluster of two forwarders, a dashboard serving the admin
// API, and its audit log.
type adminEnv struct {
	*env
	fa, fb *forwarder.Forwarder
	url    string
	audit  *observer.ObservedLogs
}

func newAdminEnv(t *testing.T) *adminEnv {
	e := &adminEnv{env: newEnv(t)}
	e.fa, e.fb = e.forwarder(t, "fwd-a"), e.forwarder(t, "fwd-b")
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := dashboard.Default()
	cfg.NATS, cfg.Key, cfg.Listen = e.natsConn(t), e.key, "127.0.0.1:0"
	cfg.AdminAPI, cfg.AdminToken, cfg.ViewerToken = true, adminTok, viewerTok
	cfg.Logger = zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core())).Named("dashboard")
	d, err := dashboard.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; cfg.NATS.Close() })
	e.url, e.audit = "http://"+d.Addr().String(), logs
	// The dashboard knows a forwarder once it heard its heartbeat.
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var v dashboard.AdminCallsView
		if st := e.do(t, adminTok, "GET", "/api/admin/calls", nil, &v); st != 200 || len(v.Forwarders) != 2 {
			return fmt.Errorf("status %d, %d forwarders answered", st, len(v.Forwarders))
		}
		return nil
	})
	return e
}

// do sends one request with token ("" for none), decodes a JSON answer
// into out and returns the status.
func (e *adminEnv) do(t *testing.T, token, method, path string, body any, out any) int {
	t.Helper()
	raw, status := e.raw(t, token, method, path, body)
	if out != nil && status == http.StatusOK {
		require.NoError(t, json.Unmarshal(raw, out), string(raw))
	}
	return status
}

func (e *adminEnv) raw(t *testing.T, token, method, path string, body any) ([]byte, int) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return raw, resp.StatusCode
}

// steadyJoin joins fwd-a with a failover delay long enough that a device
// on a loaded machine (-race) does not leave its socket for another on a
// late answer: the actions under test, not failovers, must move it.
func (e *adminEnv) steadyJoin(t *testing.T, call protocol.ID, ssrc uint32) *calltest.Member {
	t.Helper()
	p := protocol.NewID()
	tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: p,
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	m := calltest.JoinConfig(t, client.Config{Forwarders: []netip.AddrPort{e.fa.Addr()}, Token: tok,
		FailoverAfter: 3 * time.Second, JoinTimeout: 5 * time.Second}, ssrc)
	m.ID = p
	return m
}

// callView is one call as the admin API shows it.
func (e *adminEnv) callView(t *testing.T, call protocol.ID) dashboard.AdminCallView {
	t.Helper()
	var v dashboard.AdminCallView
	e.do(t, adminTok, "GET", "/api/admin/call?id="+call.String(), nil, &v)
	return v
}

// servedBy is the forwarder serving participant p of the call, "" if none.
func (e *adminEnv) servedBy(t *testing.T, call, p protocol.ID) string {
	for _, v := range e.callView(t, call).Views {
		for _, m := range v.Members {
			if m.Participant == p.String() {
				return v.Forwarder
			}
		}
	}
	return ""
}

// grows waits until m has heard more than n more packets from ssrc.
func grows(t *testing.T, m *calltest.Member, ssrc uint32, n int) {
	t.Helper()
	base := m.Count(ssrc)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := m.Count(ssrc) - base; got <= n {
			return fmt.Errorf("%d packets from %x since, want more than %d", got, ssrc, n)
		}
		return nil
	})
}

// silentWhile waits until other grows by 25 packets while m hears nothing
// more from ssrc: the packets in flight when it began are let arrive first.
func silentWhile(t *testing.T, m *calltest.Member, ssrc uint32, other *calltest.Member, otherSSRC uint32) {
	t.Helper()
	grows(t, other, otherSSRC, 5) // in-flight packets arrive
	before := m.Count(ssrc)
	grows(t, other, otherSSRC, 25)
	require.Equal(t, before, m.Count(ssrc), "packets from %x still arrive", ssrc)
}

func TestAdminAPIRefusesWithoutAdminToken(t *testing.T) {
	e := newAdminEnv(t)
	for _, tc := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {viewerTok, http.StatusForbidden}, {"wrong-0123456789abcdef", http.StatusForbidden}} {
		require.Equal(t, tc.want, e.do(t, tc.token, "GET", "/api/admin/calls", nil, nil), "token %q", tc.token)
		require.Equal(t, tc.want, e.do(t, tc.token, "POST", "/api/admin/drain", map[string]string{"forwarder": "fwd-a"}, nil))
		require.Equal(t, tc.want, e.do(t, tc.token, "POST", "/api/admin/pin", map[string]string{"forwarder": "fwd-a", "level": "second_party"}, nil))
	}
	require.False(t, e.fa.Stats().Draining, "a refused drain drained")
	require.Equal(t, forwarder.ThrottleNone, e.fa.Stats().ThrottleLevel, "a refused pin pinned")
	require.GreaterOrEqual(t, e.audit.FilterMessage("admin request refused: no credentials").Len(), 3)
	require.GreaterOrEqual(t, e.audit.FilterMessage("admin request refused: not an admin token").Len(), 6)
	// The page's cookie does not open the admin API either.
	req, err := http.NewRequest("GET", e.url+"/api/admin/calls", nil)
	require.NoError(t, err)
	req.AddCookie(&http.Cookie{Name: "callrelay_dashboard", Value: "anything"})
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

func TestAdminActionsOnALiveCall(t *testing.T) {
	e := newAdminEnv(t)
	call := protocol.NewID()
	a, b, c := e.steadyJoin(t, call, 0xA), e.steadyJoin(t, call, 0xB), e.steadyJoin(t, call, 0xC)
	stop := make(chan struct{})
	defer close(stop)
	calltest.Speak(t, []*calltest.Member{a, b, c}, func(int, time.Duration) bool { return true }, stop)
	grows(t, b, 0xA, 5)

	// List and show.
	var calls dashboard.AdminCallsView
	require.Equal(t, 200, e.do(t, adminTok, "GET", "/api/admin/calls?forwarder=fwd-a&class=group", nil, &calls))
	require.Equal(t, 1, calls.Calls)
	require.Equal(t, 3, calls.Forwarders[0].Calls[0].Members)
	require.Equal(t, 200, e.do(t, adminTok, "GET", "/api/admin/calls?class=one_to_one", nil, &calls))
	require.Equal(t, 0, calls.Calls)
	v := e.callView(t, call)
	require.Len(t, v.Views, 1)
	require.Len(t, v.Views[0].Members, 3)
	require.NotEmpty(t, v.Timeline)
	require.Equal(t, "join", v.Timeline[0].Kind)

	t.Run("capture", func(t *testing.T) { captureOpensInTshark(t, e, call) })

	// Hold A's audio: B stops hearing A while C goes on; release: back.
	hold := map[string]any{"call": call.String(), "participant": a.ID.String(), "media": "audio", "hold": true}
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/hold", hold, nil))
	silentWhile(t, b, 0xA, b, 0xC)
	hold["hold"] = false
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/hold", hold, nil))
	grows(t, b, 0xA, 10)

	// Remove C: the others stop hearing it, and it is told (its session
	// ends, refused 403).
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/remove",
		map[string]any{"call": call.String(), "participant": c.ID.String()}, nil))
	select {
	case <-c.S.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("the removed member's session did not end")
	}
	require.Contains(t, c.S.Err().Error(), "removed from the call by an operator")
	silentWhile(t, a, 0xC, a, 0xB)

	// Move B to fwd-b, make-before-break: A goes on hearing it.
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/move",
		map[string]any{"call": call.String(), "participant": b.ID.String(), "to": "fwd-b"}, nil))
	testenv.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if f := e.servedBy(t, call, b.ID); f != "fwd-b" {
			return fmt.Errorf("B on %q", f)
		}
		return nil
	})
	grows(t, a, 0xB, 10)
	grows(t, b, 0xA, 10)

	pinRefusesNewCalls(t, e)

	// Drain fwd-a: A moves to fwd-b and the call goes on there.
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/drain", map[string]string{"forwarder": "fwd-a"}, nil))
	require.True(t, e.fa.Stats().Draining)
	testenv.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if f := e.servedBy(t, call, a.ID); f != "fwd-b" {
			return fmt.Errorf("A on %q", f)
		}
		return nil
	})
	grows(t, b, 0xA, 10)
	require.GreaterOrEqual(t, e.audit.FilterMessage("admin request").Len(), 8, "every action audit-logged")
	for _, l := range e.audit.FilterMessage("admin request").All() {
		require.Contains(t, l.ContextMap()["actor"], "token:", "the audit line names who")
	}
}

// pinRefusesNewCalls pins fwd-a at new_group: a new group call's join
// there is refused (it is sent to fwd-b), counted by class; released, such
// a join is admitted on fwd-a again.
func pinRefusesNewCalls(t *testing.T, e *adminEnv) {
	t.Helper()
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/pin", map[string]string{"forwarder": "fwd-a", "level": "new_group"}, nil))
	require.Equal(t, forwarder.ThrottleNewGroup, e.fa.Stats().ThrottleLevel)
	refused := e.fa.Stats().Refusals[forwarder.JoinNewGroup]
	tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: protocol.NewID(), ParticipantID: protocol.NewID(),
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{e.fa.Addr()}, Token: tok, LocalAddr: calltest.Loopback})
	cancel()
	if err == nil { // sent on to fwd-b by the refusal's alternate
		require.NotEqual(t, e.fa.Addr(), s.Forwarder(), "a new group call was admitted on the pinned forwarder")
		_ = s.Close()
	} else {
		require.Contains(t, err.Error(), "508", "refused for the throttle level")
	}
	var sum, before uint64
	for _, r := range e.fa.Stats().Refusals[forwarder.JoinNewGroup] {
		sum += r
	}
	for _, r := range refused {
		before += r
	}
	require.Greater(t, sum, before, "the refusal is counted as a new group call's")
	require.Equal(t, 200, e.do(t, adminTok, "POST", "/api/admin/pin", map[string]string{"forwarder": "fwd-a"}, nil))
	m := e.steadyJoin(t, protocol.NewID(), 0xE)
	require.Equal(t, e.fa.Addr(), m.S.Forwarder(), "released, the forwarder admits new calls again")
	_ = m.S.Close()
}

// captureOpensInTshark captures the call for 2 s and reads it with tshark:
// RTP, no malformed packet, no payload byte.
func captureOpensInTshark(t *testing.T, e *adminEnv, call protocol.ID) {
	tshark, err := exec.LookPath("tshark")
	require.NoError(t, err, "tshark is needed (make deps installs it)")
	raw, status := e.raw(t, adminTok, "POST", "/api/admin/capture", map[string]any{"call": call.String(), "seconds": 2})
	require.Equal(t, 200, status, string(raw))
	file := filepath.Join(t.TempDir(), "call.pcapng")
	require.NoError(t, os.WriteFile(file, raw, 0o600))
	run := func(args ...string) string {
		cmd := exec.Command(tshark, append([]string{"-r", file, "--enable-heuristic", "rtp_udp"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr // tshark warns there when run as root
		out, err := cmd.Output()
		require.NoError(t, err, stderr.String())
		return string(out)
	}
	all := run("-T", "fields", "-e", "frame.number")
	require.GreaterOrEqual(t, len(strings.Fields(all)), 100, "2 s of 3 talkers")
	require.Empty(t, strings.TrimSpace(run("-Y", "_ws.malformed || _ws.expert.severity == error")), "malformed packets")
	require.NotEmpty(t, strings.TrimSpace(run("-Y", "stun")), "the members' keepalives")
	require.Empty(t, strings.TrimSpace(run("-Y", "stun.att.username != \"\"")), "a USERNAME left in clear")
	rtp := run("-Y", "rtp", "-T", "fields", "-e", "rtp.ssrc", "-e", "frame.cap_len", "-e", "frame.len", "-e", "rtp.payload")
	lines := strings.Split(strings.TrimSpace(rtp), "\n")
	require.GreaterOrEqual(t, len(lines), 100)
	for _, l := range lines {
		f := strings.Split(l, "\t")
		require.Len(t, f, 4, l)
		// 28 bytes of IPv4 and UDP, the 12-byte header and its 8-byte
		// extension: nothing of the 90-byte payload.
		require.Equal(t, "48", f[1], "captured bytes of %q", l)
		require.Equal(t, "138", f[2], "original length of %q", l)
		require.Contains(t, []string{"", "<MISSING>"}, f[3], "payload bytes in %q", l) // tshark: cut off
	}
}
