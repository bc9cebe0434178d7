package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

// defaults < file < environment < flags, and secrets masked in
// --print-config.
func TestConfigFilePrecedenceAndMasking(t *testing.T) {
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	cfg := writeConfig(t, fmt.Sprintf(`
id: from-file
lease-ttl: 3s
max-forwarded: 4
redis-url: redis://:s3cret-pw@127.0.0.1:6379/0
nats-url: [nats://127.0.0.1:4222, nats://127.0.0.1:4223]
cluster-key: %s
`, key))
	r := run(t, env("CALLRELAY_ID=from-env"), "conductor", "--config", cfg, "--lease-ttl", "4s", "--print-config")
	require.Equal(t, 0, r.code, r.stderr)
	for _, want := range []string{
		"id: from-env",     // the environment beats the file
		"lease-ttl: 4s",    // the flag beats the file
		"max-forwarded: 4", // the file beats the default
		"nats-url: nats://127.0.0.1:4222,nats://127.0.0.1:4223",
		"redis-url: redis://:****@127.0.0.1:6379/0",
		"partitions: 64", // untouched default
	} {
		require.Contains(t, r.stdout, want)
	}
	require.NotContains(t, r.stdout, "s3cret-pw")
	require.NotContains(t, r.stdout, key.String())
	require.Regexp(t, regexp.MustCompile(`cluster-key: .?\*\*\*\*`+key.String()[60:]), r.stdout)

	// The printed configuration is itself a valid configuration file.
	again := writeConfig(t, strings.ReplaceAll(r.stdout, "'****", "'"))
	r2 := run(t, env(), "conductor", "--config", again, "--print-config", "--cluster-key", key.String())
	require.Equal(t, 0, r2.code, r2.stderr)
}

// Unknown keys and bad values are errors naming the key and its line.
func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct {
		cmd, body string
		want      []string
	}{
		{"conductor", "lease-tll: 3s\n", []string{`line 1: unknown key "lease-tll"`}},
		{"conductor", "id: c\nmax-forwarded: many\n", []string{"line 2: max-forwarded: invalid value \"many\""}},
		{"forwarder", "listen: [a, {b: c}]\n", []string{"line 1: listen: a list of plain values only"}},
		{"dashboard", "- not\n- a mapping\n", []string{"want a mapping of flag names to values"}},
		{"dashboard", "config: other.yaml\n", []string{`unknown key "config"`}},
	} {
		r := run(t, env(), tc.cmd, "--config", writeConfig(t, tc.body))
		require.NotEqual(t, 0, r.code, "%s %q", tc.cmd, tc.body)
		for _, w := range tc.want {
			require.Contains(t, r.stderr, w)
		}
	}
	r := run(t, env(), "forwarder", "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "--config")
}

// A forwarder configured only by its file serves devices.
func TestForwarderFromConfigFile(t *testing.T) {
	pub, seed := keygen(t)
	priv, err := protocol.ParsePrivateKey(seed)
	require.NoError(t, err)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(freeUDPPort(t)))
	cfg := writeConfig(t, fmt.Sprintf("listen: %s\npublic-key: %s\nreaders: 1\nkeepalive: 200ms\nidle-timeout: 2s\n", addr, pub))
	p := start(t, env(), "forwarder", "--config", cfg)
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		if p.exited() {
			t.Fatalf("forwarder exited:\n%s", p.stderr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		defer cancel()
		c, err := dial(ctx, addr, mint(t, priv, protocol.NewID(), protocol.ClassOneToOne))
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// Through the binary: a variable beats the config file for every key of
// every process that takes one (among them the conductor's subject and
// metrics-listen and the forwarder's trunk-advertise and media-advertise,
// which the file used to override).
func TestEnvBeatsConfigFileForEveryKey(t *testing.T) {
	for _, p := range []declared{forwarderProc, conductorProc, dashboardProc} {
		name, _, _ := p.spec()
		t.Run(name, func(t *testing.T) {
			var body strings.Builder
			environ := env()
			want := map[string]string{}
			p.flagSet().VisitAll(func(f *flag.Flag) {
				if f.Name == "config" || f.Name == "print-config" {
					return
				}
				v := layerValues(t, name, f)
				fmt.Fprintf(&body, "%s: %q\n", f.Name, v[0])
				environ = append(environ, envName(name, f.Name)+"="+v[1])
				want[f.Name] = maskFlagValue(f.Name, normalized(t, p, f.Name, v[1]))
			})
			r := run(t, environ, name, "--config", writeConfig(t, body.String()), "--print-config")
			require.Equal(t, 0, r.code, r.stderr)
			var got map[string]string
			require.NoError(t, yaml.Unmarshal([]byte(r.stdout), &got), r.stdout)
			require.Equal(t, want, got)
		})
	}
}
