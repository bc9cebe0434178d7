package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// These tests run the real binary: built once by TestMain, started as a
// process, stopped by real signals, talked to over loopback UDP.

const (
	buildTimeout = 5 * time.Minute
	// cmdTimeout bounds a command expected to finish on its own (a token
	// command, a refused start, a demo with --duration).
	cmdTimeout = 30 * time.Second
	// readyTimeout bounds waiting for a started process to do something.
	readyTimeout = 20 * time.Second
	// exitTimeout bounds how long a process may take to exit after SIGINT or
	// SIGTERM, on a loaded machine under -race.
	exitTimeout = 10 * time.Second
)

// binary is the callrelay executable under test.
var binary string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "callrelay-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "callrelay")
	args := []string{"build", "-o", binary}
	if raceEnabled() {
		args = append(args, "-race") // the process under test is checked too
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building callrelay: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if code == 0 {
		// Every in-process client and process waiter must be gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return code
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// env is the test process's environment without any CALLRELAY_ variable,
// plus extra. A -race binary sleeps a second before exiting unless told not
// to; that would only slow the tests and blur how fast shutdown is.
func env(extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CALLRELAY_") && !strings.HasPrefix(kv, "GORACE=") {
			e = append(e, kv)
		}
	}
	e = append(e, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return append(e, extra...)
}

// result is how a finished command ended.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the binary to completion with the given environment.
func run(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	return runIn(t, "", environ, args...)
}

// runIn is run in the working directory dir ("": the test's).
func runIn(t *testing.T, dir string, environ []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env, cmd.Dir = environ, dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "callrelay %s did not finish within %v; stderr:\n%s", strings.Join(args, " "), cmdTimeout, &stderr)
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running callrelay %s: %v", strings.Join(args, " "), err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// proc is a started callrelay process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *testenv.SyncBuffer
	done           chan struct{} // closed when Wait has returned
}

// start starts the binary and registers a cleanup that kills it if the test
// left it running, and logs its output if the test failed.
func start(t *testing.T, environ []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), stdout: new(testenv.SyncBuffer), stderr: new(testenv.SyncBuffer), done: make(chan struct{})}
	p.cmd.Env = environ
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.WaitDelay = time.Second
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("callrelay %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), p.stdout, p.stderr)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to exitTimeout for the process to exit,
// returning its exit code and how long it took.
func (p *proc) stop(t *testing.T, sig syscall.Signal) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	require.NoError(t, p.cmd.Process.Signal(sig))
	select {
	case <-p.done:
	case <-time.After(exitTimeout):
		t.Fatalf("callrelay did not exit within %v of %v", exitTimeout, sig)
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(start)
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"-h"}} {
		t.Run(fmt.Sprint(args), func(t *testing.T) {
			r := run(t, env(), args...)
			require.Equal(t, 2, r.code)
			require.Empty(t, r.stdout)
			require.Contains(t, r.stderr, "usage: callrelay <command> [flags]")
			for _, cmd := range []string{"demo", "forwarder", "conductor", "token"} {
				require.Regexp(t, `(?m)^  `+cmd+` +\S`, r.stderr, "usage lists %s with its help", cmd)
			}
		})
	}
}

// Every command and subcommand answers -h with its help on stderr, every
// flag with its variable, and exit 0: never a key pair, a token or a run.
func TestCommandHelpExitsZero(t *testing.T) {
	for _, p := range processes {
		name, about, _ := p.spec()
		for _, h := range []string{"-h", "--help"} {
			t.Run(name+" "+h, func(t *testing.T) {
				r := run(t, env(), append(strings.Fields(name), h)...)
				require.Equal(t, 0, r.code, r.stderr)
				require.Empty(t, r.stdout)
				require.Contains(t, r.stderr, "usage: callrelay "+name)
				require.Contains(t, r.stderr, about)
				require.NotRegexp(t, `KEY=\S`, r.stderr, "no key printed")
				p.flagSet().VisitAll(func(f *flag.Flag) {
					require.Regexp(t, `(?m)^  -`+regexp.QuoteMeta(f.Name)+`\b`, r.stderr)
					if env := envName(name, f.Name); env != "" {
						require.Contains(t, r.stderr, "(env "+env+")")
					}
				})
			})
		}
	}
	for _, args := range [][]string{{"token", "-h"}, {"token", "--help"}, {"token", "help"}} {
		r := run(t, env(), args...)
		require.Equal(t, 0, r.code, r.stderr)
		require.Empty(t, r.stdout)
		for _, sub := range []string{"keygen", "mint", "cluster-key", "dashboard"} {
			require.Regexp(t, `(?m)^  `+sub+` +\S`, r.stderr)
		}
	}
	// A stray argument is refused rather than ignored.
	r := run(t, env(), "token", "keygen", "help")
	require.NotEqual(t, 0, r.code)
	require.Empty(t, r.stdout)
	require.Contains(t, r.stderr, `unexpected argument "help"`)
}

// keygen runs `token keygen` and returns the printed public key and seed.
func keygen(t *testing.T) (pub, seed string) {
	t.Helper()
	r := run(t, env(), "token", "keygen")
	require.Equal(t, 0, r.code, r.stderr)
	m := regexp.MustCompile(`\ACALLRELAY_PUBLIC_KEY=(\S+)\nCALLRELAY_SIGNING_KEY=(\S+)\n\z`).FindStringSubmatch(r.stdout)
	require.NotNil(t, m, "keygen output:\n%s", r.stdout)
	return m[1], m[2]
}

// verify checks a printed token against the printed public key.
func verify(t *testing.T, pub, printed string) protocol.Token {
	t.Helper()
	pk, err := protocol.ParsePublicKey(pub)
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(pk)
	require.NoError(t, err)
	b, err := protocol.DecodeTokenString(printed)
	require.NoError(t, err)
	tok, err := v.Verify(b, time.Now())
	require.NoError(t, err)
	return tok
}

func TestTokenKeygenAndMint(t *testing.T) {
	pub, seed := keygen(t)
	pub2, _ := keygen(t)
	require.NotEqual(t, pub, pub2, "each keygen makes a new key")

	r := run(t, env(), "token", "mint", "--signing-key", seed, "--class", "one-to-one")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, 1, strings.Count(r.stdout, "\n"), "stdout is the token alone: %q", r.stdout)
	tok := verify(t, pub, r.stdout)
	require.Equal(t, protocol.ClassOneToOne, tok.Class)
	require.EqualValues(t, 2, tok.MaxSize)
	require.False(t, tok.CallID.IsZero())
	require.False(t, tok.ParticipantID.IsZero())
	require.WithinDuration(t, time.Now().Add(time.Hour), tok.Expiry, 5*time.Minute, "default ttl is an hour")
	require.Contains(t, r.stderr, "call "+tok.CallID.String()+" participant "+tok.ParticipantID.String()+" class one-to-one max-size 2")

	// The key from the environment, ids given (one as a UUID), group defaults.
	call, part := protocol.NewID(), protocol.NewID()
	ps := part.String()
	uuid := ps[:8] + "-" + ps[8:12] + "-" + ps[12:16] + "-" + ps[16:20] + "-" + ps[20:]
	r = run(t, env("CALLRELAY_SIGNING_KEY="+seed), "token", "mint", "--call", call.String(), "--participant", uuid, "--ttl", "10m")
	require.Equal(t, 0, r.code, r.stderr)
	tok = verify(t, pub, r.stdout)
	require.Equal(t, protocol.Token{CallID: call, ParticipantID: part, Class: protocol.ClassGroup, MaxSize: 8, Expiry: tok.Expiry}, tok)
	require.WithinDuration(t, time.Now().Add(10*time.Minute), tok.Expiry, 2*time.Minute)
}

func TestTokenErrorsSayWhatToFix(t *testing.T) {
	_, seed := keygen(t)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no subcommand", []string{"token"}, []string{"keygen | mint"}},
		{"unknown subcommand", []string{"token", "frob"}, []string{`"frob"`, "want keygen, mint, cluster-key or dashboard"}},
		{"no key", []string{"token", "mint"}, []string{"no signing key", "--signing-key", "CALLRELAY_SIGNING_KEY", "callrelay token keygen"}},
		{"key not base64", []string{"token", "mint", "--signing-key", "not*base64"}, []string{"--signing-key", "bad key"}},
		{"key too short", []string{"token", "mint", "--signing-key", "AAAA"}, []string{"--signing-key", "want 64 or 32"}},
		{"bogus class", []string{"token", "mint", "--signing-key", seed, "--class", "bogus"}, []string{"--class", `"bogus"`, "want one-to-one or group"}},
		{"call not hex", []string{"token", "mint", "--signing-key", seed, "--call", "not-hex"}, []string{"--call", `"not-hex"`, "want 32"}},
		{"max size too small", []string{"token", "mint", "--signing-key", seed, "--max-size", "1"}, []string{"max size 1", "at least 2"}},
		{"unknown flag", []string{"token", "mint", "--bogus"}, []string{"flag provided but not defined: -bogus"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, env(), tc.args...)
			require.NotEqual(t, 0, r.code)
			require.Empty(t, r.stdout, "no token on failure")
			for _, w := range tc.want {
				require.Contains(t, r.stderr, w)
			}
		})
	}
}

func TestForwarderRefusesBadConfig(t *testing.T) {
	pub, _ := keygen(t)
	for _, tc := range []struct {
		name    string
		environ []string
		args    []string
		want    []string
	}{
		{"no public key", env(), []string{"--listen", "127.0.0.1:0"}, []string{"--public-key", "CALLRELAY_PUBLIC_KEY"}},
		{"bad public key", env(), []string{"--listen", "127.0.0.1:0", "--public-key", "AAAA"}, []string{"--public-key", "bad key"}},
		{"bad listen address", env(), []string{"--listen", "nonsense", "--public-key", pub}, []string{`listen address "nonsense"`, "want ip:port"}},
		{"bad listen from env", env("CALLRELAY_LISTEN=nonsense", "CALLRELAY_PUBLIC_KEY="+pub), nil, []string{`listen address "nonsense"`}},
		{"bad max sessions from env", env("CALLRELAY_MAX_SESSIONS=1O", "CALLRELAY_PUBLIC_KEY="+pub), []string{"--listen", "127.0.0.1:0"}, []string{`CALLRELAY_MAX_SESSIONS="1O"`, "want an integer"}},
		{"bad log level", env(), []string{"--listen", "127.0.0.1:0", "--public-key", pub, "--log-level", "loud"}, []string{`log level "loud"`, "want debug, info, warn or error"}},
		{"no metrics connection", env("CALLRELAY_METRICS_MAX_CONNS=0"), []string{"--listen", "127.0.0.1:0", "--public-key", pub, "--metrics-listen", "127.0.0.1:0"},
			[]string{"--metrics-max-conns 0: want at least 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.environ, append([]string{"forwarder"}, tc.args...)...)
			require.NotEqual(t, 0, r.code)
			for _, w := range tc.want {
				require.Contains(t, r.stderr, w)
			}
		})
	}
}

// freeUDPPort returns a loopback UDP port that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// mint signs a token for a participant of call.
func mint(t *testing.T, priv ed25519.PrivateKey, call protocol.ID, class protocol.CallClass) []byte {
	t.Helper()
	b, err := protocol.SignToken(priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(),
		Class: class, Expiry: time.Now().Add(time.Hour), MaxSize: 2})
	require.NoError(t, err)
	return b
}

func dial(ctx context.Context, addr netip.AddrPort, token []byte) (*client.Conn, error) {
	return client.Dial(ctx, client.Config{
		Forwarders:  []netip.AddrPort{addr},
		Token:       token,
		LocalAddr:   netip.AddrFrom4([4]byte{127, 0, 0, 1}),
		JoinTimeout: 2 * time.Second,
	})
}

// startForwarder starts `callrelay forwarder` on a free loopback port (and
// the extra flags) and returns once a device can join it. Another process may take the port
// between freeUDPPort and the forwarder's bind; that is retried.
func startForwarder(t *testing.T, pub string, priv ed25519.PrivateKey, extra ...string) (*proc, netip.AddrPort) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(freeUDPPort(t)))
		p := start(t, env("CALLRELAY_LOG_LEVEL=info"), append([]string{"forwarder", "--listen", addr.String(), "--public-key", pub}, extra...)...)
		ready := false
		testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
			if p.exited() {
				return nil // decided below
			}
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
			defer cancel()
			c, err := dial(ctx, addr, mint(t, priv, protocol.NewID(), protocol.ClassOneToOne))
			if err != nil {
				return fmt.Errorf("not serving on %s yet: %w", addr, err)
			}
			ready = true
			return c.Close()
		})
		if ready {
			return p, addr
		}
		if attempt < 3 && strings.Contains(p.stderr.String(), "address already in use") {
			t.Logf("port %d taken meanwhile, retrying", addr.Port())
			continue
		}
		t.Fatalf("forwarder exited before serving (code %d):\n%s", p.cmd.ProcessState.ExitCode(), p.stderr)
	}
}

func TestForwarderRelaysThenStopsOnSIGTERM(t *testing.T) {
	pub, seed := keygen(t)
	priv, err := protocol.ParsePrivateKey(seed)
	require.NoError(t, err)
	p, addr := startForwarder(t, pub, priv)

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	call := protocol.NewID()
	alice, err := dial(ctx, addr, mint(t, priv, call, protocol.ClassOneToOne))
	require.NoError(t, err)
	defer alice.Close()
	bob, err := dial(ctx, addr, mint(t, priv, call, protocol.ClassOneToOne))
	require.NoError(t, err)
	defer bob.Close()

	// The relay is opaque to media: any RTP packet must arrive byte-exact.
	// Send until one arrives, since UDP promises nothing.
	sent := map[uint16][]byte{}
	seq := uint16(1000)
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		seq++
		pkt, err := (&rtp.Packet{
			Header:  rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: uint32(seq) * 960, SSRC: 0xa11ce},
			Payload: []byte(fmt.Sprintf("opaque payload %d \x00\x01\x02\xff", seq)),
		}).Marshal()
		require.NoError(t, err)
		sent[seq] = pkt
		require.NoError(t, alice.WriteRTP(pkt))
		for {
			select {
			case got := <-bob.Media():
				require.NotNil(t, got, "bob's session ended: %v", bob.Err())
				var h rtp.Header
				_, err := h.Unmarshal(got.Data)
				require.NoError(t, err)
				require.Contains(t, sent, h.SequenceNumber, "bob got a packet alice never sent")
				require.Equal(t, sent[h.SequenceNumber], got.Data, "relayed packet must be byte-exact")
				require.Equal(t, protocol.KindRTP, got.Kind)
				got.Release()
				return nil
			default:
				return fmt.Errorf("bob has received none of alice's %d packets", len(sent))
			}
		}
	})
	require.NoError(t, alice.Close())
	require.NoError(t, bob.Close())

	code, took := p.stop(t, syscall.SIGTERM)
	t.Logf("forwarder exited %d, %v after SIGTERM", code, took)
	require.Equal(t, 0, code, "a drained forwarder exits 0")
	logs := p.stderr.String()
	require.Contains(t, logs, `"forwarder serving"`)
	require.Contains(t, logs, `"forwarder stopped"`)
	require.NotContains(t, logs, "second signal")
}

// summaryLine matches the demo's per-interval line.
var summaryLine = regexp.MustCompile(`(?m)^sessions \d+  calls \d+  throttle [0-4/]+  in .* decrypted (\d+)  failed (\d+)$`)

// checkDemoOutput checks the header, the summary lines and the final line.
func checkDemoOutput(t *testing.T, stdout string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	require.NotEmpty(t, lines)
	require.True(t, strings.HasPrefix(lines[0], "callrelay demo: 3 forwarders on 127.0.0.1:"), "header: %q", lines[0])
	require.Contains(t, lines[0], "2 one-to-one call(s), 1 group call(s) of 5")
	require.Contains(t, stdout, "\n9 participants joined")
	sums := summaryLine.FindAllStringSubmatch(stdout, -1)
	require.NotEmpty(t, sums, "no summary line in:\n%s", stdout)
	decrypted := false
	for _, m := range sums {
		require.Equal(t, "0", m[2], "failed count in %q", m[0])
		decrypted = decrypted || m[1] != "0"
	}
	require.True(t, decrypted, "a summary line must show decrypted packets:\n%s", stdout)
	last := lines[len(lines)-1]
	require.True(t, strings.HasPrefix(last, "done: 9 participants, "), "last line: %q", last)
	require.Contains(t, last, " 0 failed;")
	require.Regexp(t, `, [1-9]\d* decrypted byte-exact`, last)
}

func TestDemoRunsForDuration(t *testing.T) {
	start := time.Now()
	r := run(t, env(), "demo", "--duration", "3s", "--interval", "500ms")
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	require.GreaterOrEqual(t, time.Since(start), 3*time.Second, "--duration is honoured")
	checkDemoOutput(t, r.stdout)
}

// The first signal drains: the demo stops its calls, prints the totals and
// exits 0.
func TestDemoStopsOnSIGINT(t *testing.T) {
	p := start(t, env(), "demo", "--interval", "200ms")
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		if p.exited() {
			t.Fatalf("demo exited early (code %d)", p.cmd.ProcessState.ExitCode())
		}
		for _, m := range summaryLine.FindAllStringSubmatch(p.stdout.String(), -1) {
			if n, _ := strconv.Atoi(m[1]); n > 0 {
				return nil
			}
		}
		return fmt.Errorf("no decrypted packets reported yet")
	})
	code, took := p.stop(t, syscall.SIGINT)
	t.Logf("demo exited %d, %v after SIGINT", code, took)
	require.Equal(t, 0, code)
	checkDemoOutput(t, p.stdout.String())
	require.NotContains(t, p.stderr.String(), "second signal")
}
