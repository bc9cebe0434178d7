package natsauth

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
)

// The written block is one nats-server reads, with the users and
// permissions ServerUsers gives an embedded server.
func TestConfigParses(t *testing.T) {
	fwd, err := NewUser("forwarder", Perms{Publish: []string{"cr.call.*"}, Subscribe: []string{"cr.call.*", "cr.admin.*"}, Replies: true})
	require.NoError(t, err)
	dash, err := NewUser("dashboard", Perms{Subscribe: []string{"cr.forwarders"}})
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, WriteDir(dir, []User{fwd, dash}))
	seed, err := os.ReadFile(filepath.Join(dir, "forwarder.nk"))
	require.NoError(t, err)
	require.Equal(t, string(fwd.Seed)+"\n", string(seed))
	st, err := os.Stat(filepath.Join(dir, "forwarder.nk"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "a seed is readable by its owner only")

	conf := filepath.Join(dir, "server.conf")
	require.NoError(t, os.WriteFile(conf, []byte("port: -1\ninclude ./auth.conf\n"), 0o644))
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	want := ServerUsers([]User{dash, fwd})
	require.Len(t, opts.Nkeys, 2)
	for i, u := range opts.Nkeys {
		require.Equal(t, want[i].Nkey, u.Nkey)
		require.Equal(t, want[i].Permissions.Publish, u.Permissions.Publish)
		require.Equal(t, want[i].Permissions.Subscribe, u.Permissions.Subscribe)
		require.Equal(t, want[i].Permissions.Response != nil, u.Permissions.Response != nil)
	}
	_, err = Option([]byte("not a seed"))
	require.Error(t, err)
}
