package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// `callrelay admin` against real processes: two forwarders, a dashboard
// with --admin-api, a live call. Without the admin token the CLI fails
// (401, 403) and nothing happens; with it, calls are listed, a level is
// pinned and released, a capture is written, and a member is moved.
func TestAdminCLIOverRealProcesses(t *testing.T) {
	c := newCluster(t)
	a, b := c.node(t, "fwd-a"), c.node(t, "fwd-b")
	viewer, admin := "viewer-tok-0123456789", "admin-tok-0123456789ab"
	environ := env("CALLRELAY_CLUSTER_KEY="+c.key, "CALLRELAY_NATS_URL="+c.nats.ClientURL(),
		"CALLRELAY_DASHBOARD_VIEWER_TOKEN="+viewer, "CALLRELAY_DASHBOARD_ADMIN_TOKEN="+admin)
	p, base := dashboardAt(t, environ, "--listen", "127.0.0.1:0", "--admin-api")

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
	stop := make(chan struct{})
	defer close(stop)
	calltest.Talk(t, []*calltest.Member{m1, m2}, stop)

	cli := func(token string, args ...string) result {
		return run(t, env("CALLRELAY_ADMIN_URL="+base, "CALLRELAY_ADMIN_TOKEN="+token), append([]string{"admin"}, args...)...)
	}
	r := cli("", "calls")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "no token")
	r = cli(viewer, "pin", "--forwarder", "fwd-a", "--level", "second_party")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "403")
	r = cli("wrong-token-0123456789", "calls")
	require.Contains(t, r.stderr, "403")

	testenv.CheckFor(t, readyTimeout, 100*time.Millisecond, func() error {
		if r = cli(admin, "calls", "--class", "group"); r.code != 0 || !strings.Contains(r.stdout, call.String()) {
			return fmt.Errorf("calls: %d %s %s", r.code, r.stdout, r.stderr)
		}
		return nil
	})
	r = cli(admin, "pin", "--forwarder", "fwd-a", "--level", "new_group")
	require.Equal(t, 0, r.code, r.stderr)
	r = cli(admin, "calls", "--forwarder", "fwd-a")
	require.Contains(t, r.stdout, `"throttle_level": "new_group"`)
	require.Contains(t, r.stdout, `"pinned": true`)
	r = cli(admin, "unpin", "--forwarder", "fwd-a")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, cli(admin, "calls", "--forwarder", "fwd-a").stdout, `"pinned": false`)

	out := filepath.Join(t.TempDir(), "c.pcapng")
	r = cli(admin, "capture", "--call", call.String(), "--seconds", "1", "--out", out)
	require.Equal(t, 0, r.code, r.stderr)
	file, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(file, []byte{0x0a, 0x0d, 0x0d, 0x0a}), "not a pcapng file")
	require.Greater(t, len(file), 1000, "a second of two talkers")

	r = cli(admin, "move", "--call", call.String(), "--participant", m2.ID.String(), "--to", "fwd-b")
	require.Equal(t, 0, r.code, r.stderr)
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		if got := m2.S.Forwarder(); got != b.media {
			return fmt.Errorf("m2 on %s", got)
		}
		return nil
	})
	base1 := m1.Count(0x2)
	testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
		if n := m1.Count(0x2) - base1; n < 20 {
			return fmt.Errorf("%d packets from the moved member", n)
		}
		return nil
	})
	testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
		if !strings.Contains(p.stderr.String()+p.stdout.String(), "admin request refused: not an admin token") ||
			!strings.Contains(p.stderr.String()+p.stdout.String(), "admin request") {
			return fmt.Errorf("no audit lines in the dashboard's log")
		}
		return nil
	})
}
