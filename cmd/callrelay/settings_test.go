package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// These tests hold every key of every declared process to settings.go's
// rule: they walk the flags the processes register, so a flag added
// tomorrow is covered by them (or fails them, if the tests cannot give it
// values) without anyone listing it here.

// clearEnv unsets every CALLRELAY_ variable for the test (restored after).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CALLRELAY_") {
			t.Setenv(k, "") // registers the restore
			require.NoError(t, os.Unsetenv(k))
		}
	}
}

// layerValues are three values f accepts, for the file, the environment
// and the command line, each different from the one before (and the
// first from the default), so every step of the precedence shows.
func layerValues(t *testing.T, proc string, f *flag.Flag) [3]string {
	t.Helper()
	typ, _ := flag.UnquoteUsage(f)
	var cands []string
	switch typ {
	case "": // bool
		not := strconv.FormatBool(f.DefValue != "true")
		return [3]string{not, f.DefValue, not}
	case "string":
		cands = []string{"from-file", "from-env", "from-flag", "spare"}
	case "int", "uint":
		cands = []string{"11", "12", "13", "14"}
	case "float":
		cands = []string{"0.25", "0.5", "0.75", "0.125"}
	case "duration":
		cands = []string{"11s", "12s", "13s", "14s"}
	case "level": // a throttle level, by number or name
		cands = []string{"1", "2", "3", "4"}
	case "name=pid":
		cands = []string{"p=11", "p=12", "p=13", "p=14"}
	case "name=command":
		cands = []string{"s=echo 11", "s=echo 12", "s=echo 13", "s=echo 14"}
	default:
		t.Fatalf("%s --%s: the precedence test has no values for type %q: add them to layerValues", proc, f.Name, typ)
	}
	var out [3]string
	i := 0
	for _, c := range cands {
		if i < 3 && c != f.DefValue {
			out[i] = c
			i++
		}
	}
	return out
}

// normalized is v as the flag prints it once set (1h, not 60m).
func normalized(t *testing.T, p declared, name, v string) string {
	t.Helper()
	fs := p.flagSet()
	require.NoError(t, fs.Set(name, v))
	return fs.Lookup(name).Value.String()
}

// valueAfter parses args over the file body (when the process takes one)
// and the environment set, and returns the flag's effective value.
func valueAfter(t *testing.T, p declared, name, fileBody string, environ map[string]string, args ...string) string {
	t.Helper()
	clearEnv(t)
	for k, v := range environ {
		t.Setenv(k, v)
	}
	if fileBody != "" {
		path := filepath.Join(t.TempDir(), "config.yaml")
		require.NoError(t, os.WriteFile(path, []byte(fileBody), 0o600))
		args = append([]string{"--config", path}, args...)
	}
	fs, err := p.parseFlagSet(args)
	require.NoError(t, err)
	return fs.Lookup(name).Value.String()
}

// Defaults < config file < environment < command line, for every key of
// every process.
func TestPrecedenceForEveryKeyOfEveryProcess(t *testing.T) {
	for _, p := range processes {
		name, _, file := p.spec()
		p.flagSet().VisitAll(func(f *flag.Flag) {
			if f.Name == "print-config" || f.Name == "config" {
				return // an action, and the file itself: TestConfigFileFromEnvOrFlag
			}
			t.Run(name+"/"+f.Name, func(t *testing.T) {
				v := layerValues(t, name, f)
				env := envName(name, f.Name)
				require.NotEmpty(t, env, "every setting has a variable")
				fileV, envV, flagV := normalized(t, p, f.Name, v[0]), normalized(t, p, f.Name, v[1]), normalized(t, p, f.Name, v[2])
				require.Equal(t, f.DefValue, valueAfter(t, p, f.Name, "", nil), "the default")
				body := ""
				if file {
					body = fmt.Sprintf("%s: %q\n", f.Name, v[0])
					require.Equal(t, fileV, valueAfter(t, p, f.Name, body, nil), "the file beats the default")
				}
				require.Equal(t, envV, valueAfter(t, p, f.Name, body, map[string]string{env: v[1]}), "%s beats the file and the default", env)
				require.Equal(t, flagV, valueAfter(t, p, f.Name, body, map[string]string{env: v[1]}, "--"+f.Name+"="+v[2]),
					"the command line beats %s", env)
				if file {
					// Set but empty, the variable still beats the file.
					emptied := valueAfter(t, p, f.Name, body, map[string]string{env: ""})
					require.NotEqual(t, fileV, emptied, "%s= (empty) beats the file", env)
				}
			})
		})
	}
}

// The file is named by --config over CALLRELAY_CONFIG; neither may be a
// key of the file.
func TestConfigFileFromEnvOrFlag(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	require.NoError(t, os.WriteFile(a, []byte("down-after: 11s\n"), 0o600))
	require.NoError(t, os.WriteFile(b, []byte("down-after: 12s\n"), 0o600))
	clearEnv(t)
	t.Setenv("CALLRELAY_CONFIG", a)
	fs, err := dashboardProc.parseFlagSet(nil)
	require.NoError(t, err)
	require.Equal(t, "11s", fs.Lookup("down-after").Value.String(), "CALLRELAY_CONFIG names the file")
	fs, err = dashboardProc.parseFlagSet([]string{"--config", b})
	require.NoError(t, err)
	require.Equal(t, "12s", fs.Lookup("down-after").Value.String(), "--config beats CALLRELAY_CONFIG")
}

// The variables users, deploy/ and the README already set keep their
// names, and the four keys the help-text mechanism missed have the
// documented ones.
func TestEnvNamesKept(t *testing.T) {
	for _, tc := range []struct{ proc, key, env string }{
		{"forwarder", "listen", "CALLRELAY_LISTEN"},
		{"forwarder", "public-key", "CALLRELAY_PUBLIC_KEY"},
		{"forwarder", "readers", "CALLRELAY_READERS"},
		{"forwarder", "max-sessions", "CALLRELAY_MAX_SESSIONS"},
		{"forwarder", "alternate", "CALLRELAY_ALTERNATE"},
		{"forwarder", "id", "CALLRELAY_ID"},
		{"forwarder", "trunk-listen", "CALLRELAY_TRUNK_LISTEN"},
		{"forwarder", "trunk-advertise", "CALLRELAY_TRUNK_ADVERTISE"},
		{"forwarder", "media-advertise", "CALLRELAY_MEDIA_ADVERTISE"},
		{"forwarder", "metrics-listen", "CALLRELAY_METRICS_LISTEN"},
		{"conductor", "id", "CALLRELAY_ID"},
		{"conductor", "subject", "CALLRELAY_SUBJECT"},
		{"conductor", "metrics-listen", "CALLRELAY_METRICS_LISTEN"},
		{"dashboard", "listen", "CALLRELAY_DASHBOARD_LISTEN"},
		{"dashboard", "subject", "CALLRELAY_SUBJECT"},
		{"loadtest", "forwarders", "CALLRELAY_FORWARDERS"},
		{"loadtest", "signing-key", "CALLRELAY_SIGNING_KEY"},
		{"loadtest agent", "signing-key", "CALLRELAY_SIGNING_KEY"},
		{"token mint", "signing-key", "CALLRELAY_SIGNING_KEY"},
		{"conductor", "config", "CALLRELAY_CONFIG"},
		{"conductor", "lease-ttl", "CALLRELAY_CONDUCTOR_LEASE_TTL"},
		{"token mint", "ttl", "CALLRELAY_TOKEN_MINT_TTL"},
		{"loadtest agent", "once", "CALLRELAY_LOADTEST_AGENT_ONCE"},
	} {
		require.Equal(t, tc.env, envName(tc.proc, tc.key), "%s %s", tc.proc, tc.key)
	}
	for _, p := range []string{"forwarder", "conductor", "dashboard", "loadtest", "loadtest agent"} {
		for _, s := range []string{"cluster-key", "redis-url", "log-level", "nats-url", "nats-password", "nats-tls-key"} {
			require.Equal(t, "CALLRELAY_"+strings.ToUpper(strings.ReplaceAll(s, "-", "_")), envName(p, s))
		}
	}
}

// One variable never feeds two different keys, and a shared key (one
// variable for every process) has the same type everywhere.
func TestEnvNamesUnambiguous(t *testing.T) {
	keyOf := map[string]string{}  // variable -> key
	typeOf := map[string]string{} // shared key -> type
	for _, p := range processes {
		name, _, _ := p.spec()
		p.flagSet().VisitAll(func(f *flag.Flag) {
			env := envName(name, f.Name)
			if env == "" {
				require.True(t, flagOnlyKeys[f.Name], "%s --%s has no variable", name, f.Name)
				return
			}
			if k, ok := keyOf[env]; ok {
				require.Equal(t, k, f.Name, "%s feeds both %s and %s --%s", env, k, name, f.Name)
			}
			keyOf[env] = f.Name
			typ, _ := flag.UnquoteUsage(f)
			if t0, ok := typeOf[f.Name]; ok && sharedKeys[f.Name] {
				require.Equal(t, t0, typ, "shared key %s: %s takes a %s, others a %s", f.Name, name, typ, t0)
			}
			typeOf[f.Name] = typ
		})
	}
}

// Every command of the binary is declared (so documented and tested).
func TestEveryCommandDeclared(t *testing.T) {
	declaredNames := map[string]bool{}
	for _, p := range processes {
		name, _, _ := p.spec()
		declaredNames[strings.Fields(name)[0]] = true
	}
	for cmd := range commands {
		if cmd == "config-doc" {
			continue // writes this documentation; no settings
		}
		require.True(t, declaredNames[cmd], "command %s has no declared process in settings.go", cmd)
	}
}

func TestMachineDefaultsDeclared(t *testing.T) {
	fs := forwarderProc.flagSet()
	require.Equal(t, strconv.Itoa(runtime.NumCPU()), fs.Lookup("readers").DefValue)
	require.Equal(t, strconv.Itoa(runtime.NumCPU()), fs.Lookup("cpu-cores").DefValue)
	for k := range machineDefaults {
		proc, key, _ := strings.Cut(k, " ")
		var found bool
		for _, p := range processes {
			if name, _, _ := p.spec(); name == proc {
				found = p.flagSet().Lookup(key) != nil
			}
		}
		require.True(t, found, "machineDefaults names %q, not a key of a process", k)
	}
}

// docs/configuration.md is what the declarations generate.
func TestConfigurationDocIsGenerated(t *testing.T) {
	want, err := renderConfigDoc()
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	require.NoError(t, err)
	if !bytes.Equal(want, got) {
		t.Fatal("docs/configuration.md is stale: regenerate it with `go generate ./cmd/callrelay` " +
			"(or `go run ./cmd/callrelay config-doc docs/configuration.md`) and commit it")
	}
	for _, p := range processes {
		name, _, _ := p.spec()
		require.Contains(t, string(got), "## `callrelay "+name+"`")
		p.flagSet().VisitAll(func(f *flag.Flag) {
			require.Contains(t, string(got), "| `"+f.Name+"` | ", "%s --%s", name, f.Name)
		})
	}
}

// A bad value in a variable is an error that names the variable and says
// what the key takes.
func TestEnvBadValueNamesVariable(t *testing.T) {
	clearEnv(t)
	t.Setenv("CALLRELAY_CONDUCTOR_LEASE_TTL", "soon")
	t.Setenv("CALLRELAY_PARTITIONS", "many")
	_, err := conductorProc.parseFlagSet(nil)
	require.ErrorContains(t, err, `CALLRELAY_CONDUCTOR_LEASE_TTL="soon": want a duration`)
	require.ErrorContains(t, err, `CALLRELAY_PARTITIONS="many": want an integer (--partitions)`)
}
