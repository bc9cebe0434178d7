package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// `callrelay nats-auth` writes one seed per role, readable by its owner
// only, and an auth.conf a real nats-server loads as its configuration
// file: each role's public key with the permissions protocol.RolePermissions
// gives it, a process given its role's seed connects, and a role is held to
// its subjects.
func TestNATSAuthCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nats-auth")
	r := run(t, env(), "nats-auth", "--dir", dir, "--subject", "cr")
	require.Equal(t, 0, r.code, r.stderr)
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	roleOf := map[string]protocol.NATSRole{}
	var seeds []string
	for _, role := range protocol.NATSRoles {
		f := filepath.Join(dir, string(role)+".nk")
		st, err := os.Stat(f)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "%s is a secret", f)
		seed, err := os.ReadFile(f)
		require.NoError(t, err)
		seeds = append(seeds, strings.TrimSpace(string(seed)))
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		roleOf[pub] = role
	}
	conf, err := os.ReadFile(filepath.Join(dir, "auth.conf"))
	require.NoError(t, err)
	for _, seed := range seeds {
		require.NotContains(t, string(conf), seed, "auth.conf holds no seed")
	}

	again := run(t, env(), "nats-auth", "--dir", dir)
	require.NotEqual(t, 0, again.code, "replacing seeds needs --force")
	require.Contains(t, again.stderr, "--force")

	opts, err := server.ProcessConfigFile(filepath.Join(dir, "auth.conf"))
	require.NoError(t, err)
	require.Len(t, opts.Nkeys, len(protocol.NATSRoles))
	for _, u := range opts.Nkeys {
		role, ok := roleOf[u.Nkey]
		require.True(t, ok, "user %s is none of the seeds", u.Nkey)
		want, err := protocol.RolePermissions("cr", role)
		require.NoError(t, err)
		if len(want.Publish) > 0 {
			require.Equal(t, want.Publish, u.Permissions.Publish.Allow, role)
		} else {
			require.Equal(t, []string{">"}, u.Permissions.Publish.Deny, role)
		}
		require.Equal(t, want.Subscribe, u.Permissions.Subscribe.Allow, role)
		require.Equal(t, want.Replies, u.Permissions.Response != nil, role)
	}

	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, true, true
	s, u := authNATS(t, func(o *server.Options) { *o = *opts })
	dashboardConnects(t, s, env(), "--nats-url", u, "--subject", "cr", "--nats-nkey", filepath.Join(dir, "dashboard.nk"))
	refused(t, env(), seeds[2], "dashboard", "--nats-url", u, "--subject", "cr")

	// The conductor may not hear the admin commands to forwarders (it may
	// hear their heartbeats: placement).
	denied := make(chan error, 1)
	creds, err := nats.NkeyOptionFromSeed(filepath.Join(dir, "conductor.nk"))
	require.NoError(t, err)
	nc, err := nats.Connect(u, creds,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case denied <- err:
			default:
			}
		}))
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.SubscribeSync(protocol.AdminSubject("cr", "fwd-a"))
	require.NoError(t, err)
	select {
	case err := <-denied:
		require.ErrorIs(t, err, nats.ErrPermissionViolation)
	case <-time.After(10 * time.Second):
		t.Fatal("the conductor's subscription to the admin commands was not refused")
	}
}
