package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Settings. Every setting of every process is a flag, declared once in
// the process's flags function below; the flag's name is also its key in a
// config file and names its environment variable by one rule:
//
//	CALLRELAY_<KEY>            a shared key (sharedKeys), or any key of the forwarder
//	CALLRELAY_<PROCESS>_<KEY>  any other process's own key
//
// upper-cased, '-' and ' ' written '_': the conductor's lease-ttl is
// CALLRELAY_CONDUCTOR_LEASE_TTL, `token mint`'s ttl CALLRELAY_TOKEN_MINT_TTL,
// every process's nats-url CALLRELAY_NATS_URL. The forwarder's own keys
// carry no process name: it is the relay, and its variables have been
// CALLRELAY_LISTEN, CALLRELAY_READERS... since the first release. The one
// key without a variable is print-config (an action, not a setting).
//
// Precedence, lowest first, the same for every key: the flag's default, the
// config file (processes with file), the environment, the command line.
// docs/configuration.md is generated from these declarations
// (`go generate ./cmd/callrelay`), and settings_test.go holds every key of
// every process to the rule and the precedence.

//go:generate go run . config-doc ../../docs/configuration.md

// A process is one command of the binary (or a subcommand: "loadtest
// agent", "token mint") with its flags. O holds what the flags set.
type process[O any] struct {
	name  string // as typed after callrelay
	about string // one line for -h and the docs
	file  bool   // takes --config and --print-config
	// flags registers the process's flags on fs, bound to fresh options
	// holding the defaults.
	flags func(fs *flag.FlagSet) *O
}

// declared is a process whatever its options: what the docs and the tests
// see of it.
type declared interface {
	spec() (name, about string, file bool)
	// flagSet is the process's flag set, as registered.
	flagSet() *flag.FlagSet
	// parseFlagSet parses args over the config file and the environment,
	// as the process does, and returns the flags.
	parseFlagSet(args []string) (*flag.FlagSet, error)
}

// processes is every process and subcommand of the binary, in the docs'
// order.
var processes = []declared{
	forwarderProc, conductorProc, locateProc, dashboardProc, demoProc, loadtestProc, loadtestAgentProc,
	reflectorProc,
	tokenKeygenProc, tokenMintProc, tokenClusterKeyProc, tokenDashboardProc, adminProc,
	natsAuthProc,
}

// sharedKeys mean the same in every process that has them, so one variable
// (CALLRELAY_<KEY>) serves them all: one environment file configures a
// cluster.
var sharedKeys = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range []string{"config", "id", "log-level", "cluster-key", "public-key", "signing-key",
		"redis-url", "subject", "partitions", "metrics-listen", "metrics-max-conns", "forwarders"} {
		m[k] = true
	}
	for _, s := range natsSettings {
		m[s.flag] = true
	}
	return m
}()

// flagOnlyKeys have no variable.
var flagOnlyKeys = map[string]bool{"print-config": true}

// unprefixedProcess is the process whose own keys carry no process name.
const unprefixedProcess = "forwarder"

// envName is the variable of proc's key, "" for none.
func envName(proc, key string) string {
	upper := func(s string) string {
		return strings.ToUpper(strings.NewReplacer("-", "_", " ", "_").Replace(s))
	}
	switch {
	case flagOnlyKeys[key]:
		return ""
	case sharedKeys[key] || proc == unprefixedProcess:
		return "CALLRELAY_" + upper(key)
	}
	return "CALLRELAY_" + upper(proc) + "_" + upper(key)
}

func (p process[O]) spec() (string, string, bool) { return p.name, p.about, p.file }

func (p process[O]) flagSet() *flag.FlagSet {
	fs, _ := p.newFlagSet()
	return fs
}

func (p process[O]) parseFlagSet(args []string) (*flag.FlagSet, error) {
	fs, _ := p.newFlagSet()
	_, err := parseLayers(p.name, p.file, fs, args, io.Discard)
	return fs, err
}

// newFlagSet registers the process's flags; -h prints "usage: callrelay
// <name> [flags]", about, and the flags.
func (p process[O]) newFlagSet() (*flag.FlagSet, *O) {
	fs := flag.NewFlagSet(p.name, flag.ContinueOnError)
	if p.file {
		fs.String("config", "", "YAML file whose keys are these flags' names; the environment and flags override it")
		fs.Bool("print-config", false, "print the effective configuration (secrets masked) and exit")
	}
	o := p.flags(fs)
	fs.Usage = func() {
		w := fs.Output()
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n == 0 {
			fmt.Fprintf(w, "usage: callrelay %s\n  %s\nIt takes no flags.\n", p.name, p.about)
			return
		}
		fmt.Fprintf(w, "usage: callrelay %s [flags]\n  %s\n", p.name, p.about)
		if p.file {
			fmt.Fprintln(w, "Flags, also keys of the --config file; the variable of each follows it (see docs/configuration.md):")
		} else {
			fmt.Fprintln(w, "Flags; the variable of each follows it (see docs/configuration.md):")
		}
		fs.PrintDefaults()
	}
	return fs, o
}

// parse builds the process's options from args over its config file and
// the environment. done: -h or --print-config printed what was asked (to
// stderr, or to out), and the process has nothing more to do.
func (p process[O]) parse(args []string, out io.Writer) (o *O, done bool, err error) {
	fs, o := p.newFlagSet()
	done, err = parseLayers(p.name, p.file, fs, args, out)
	return o, done, err
}

// parseLayers parses the command line first (so -h and a mistyped flag
// answer at once, and the flags it sets are known), then gives every other
// flag the config file's value (when file), then the environment's.
func parseLayers(proc string, file bool, fs *flag.FlagSet, args []string, out io.Writer) (done bool, err error) {
	fs.VisitAll(func(f *flag.Flag) { // -h names each flag's variable
		if env := envName(proc, f.Name); env != "" {
			f.Usage += " (env " + env + ")"
		}
	})
	if err := fs.Parse(args); err != nil {
		return errors.Is(err, flag.ErrHelp), err
	}
	if fs.NArg() > 0 {
		return false, fmt.Errorf("%s: unexpected argument %q (flags only; see callrelay %s -h)", proc, fs.Arg(0), proc)
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	if file {
		path := fs.Lookup("config").Value.String()
		if v, ok := os.LookupEnv(envName(proc, "config")); ok && !onCommandLine["config"] {
			path = v
		}
		if path != "" {
			if err := applyConfigFile(fs, path, onCommandLine); err != nil {
				return false, err
			}
		}
	}
	if err := applyEnv(proc, fs, onCommandLine); err != nil {
		return false, err
	}
	if !file || fs.Lookup("print-config").Value.String() != "true" {
		return false, nil
	}
	return true, printEffective(fs, out)
}

// applyEnv sets every flag not given on the command line whose variable is
// set. Set to "", a variable still wins over the file: an empty text, or
// the flag's default for a number, duration or switch.
func applyEnv(proc string, fs *flag.FlagSet, onCommandLine map[string]bool) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(proc, f.Name)
		v, set := os.LookupEnv(env)
		if env == "" || !set || onCommandLine[f.Name] || f.Name == "config" {
			return
		}
		err := f.Value.Set(v)
		if err != nil && v == "" {
			err = f.Value.Set(f.DefValue)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s=%q: %s (--%s)", proc, env, v, wantOf(f, err), f.Name))
		}
	})
	return errors.Join(errs...)
}

// wantOf says what value f takes, for an error about a value it refused.
func wantOf(f *flag.Flag, err error) string {
	typ, _ := flag.UnquoteUsage(f)
	switch typ {
	case "int", "uint":
		return "want an integer"
	case "float":
		return "want a number"
	case "duration":
		return "want a duration such as 500ms, 10s or 1m30s"
	case "":
		return "want true or false"
	}
	return err.Error()
}
