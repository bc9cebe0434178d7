package regions

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

// Dial connects to addr from the site's namespace: the socket is made
// there, so the connection takes the emulated paths. Every (re)dial of a
// client given it (NATSDialer, RedisDialer) happens this way, whichever
// goroutine asks.
func (tp *Topology) Dial(ctx context.Context, site, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := tp.Do(site, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// nsDialer is a nats.CustomDialer dialling from a site.
type nsDialer struct {
	tp   *Topology
	site string
}

func (d nsDialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return d.tp.Dial(ctx, d.site, network, addr)
}

// NATSDialer is a nats.Option making the client dial from site.
func (tp *Topology) NATSDialer(site string) nats.Option {
	return nats.SetCustomDialer(nsDialer{tp, site})
}

// RedisDialer is a go-redis Options.Dialer dialling from site.
func (tp *Topology) RedisDialer(site string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return tp.Dial(ctx, site, network, addr)
	}
}

// Process is a program running in a site's namespace.
type Process struct {
	Cmd  *exec.Cmd
	Out  *testenv.SyncBuffer // its stderr (and stdout unless the caller took it)
	done chan struct{}
	err  error
}

// Command prepares name with args to run in site's namespace (`ip netns
// exec`), with a parent-death SIGKILL and its stderr in Out. The caller may
// set Stdin, Stdout and Env, then calls Start.
func (tp *Topology) Command(site, name string, args ...string) *Process {
	cmd := exec.Command("ip", append([]string{"netns", "exec", tp.Netns(site), name}, args...)...)
	p := &Process{Cmd: cmd, Out: &testenv.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.Out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	return p
}

// Start starts p; when the test ends it is sent SIGTERM, then SIGKILL
// after 3 s, and waited for (before the namespaces go). label names it in
// the test's log, where its output goes if the test failed.
func (p *Process) Start(t testing.TB, label string) {
	t.Helper()
	if p.Cmd.Stdout == nil {
		p.Cmd.Stdout = p.Out
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("regions: starting %s: %v", label, err)
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() && p.Out.Len() > 0 {
			t.Logf("%s output:\n%s", label, p.Out)
		}
	})
}

// Stop ends p (SIGTERM, SIGKILL after 3 s) and waits for it.
func (p *Process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether p has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Done is closed when p has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// ServiceAddr is where a service started in a site listens.
type ServiceAddr = netip.AddrPort

// StartRedis runs a redis-server process in site's namespace, listening on
// the site's address, and returns once it answers PING from there (10 s
// at most). It ends with the test.
func StartRedis(t testing.TB, tp *Topology, site string) ServiceAddr {
	t.Helper()
	addr := netip.AddrPortFrom(tp.Addr(site), 6379)
	p := tp.Command(site, "redis-server", "--port", "6379", "--bind", addr.Addr().String(), "--save", "",
		"--appendonly", "no", "--protected-mode", "no", "--dir", t.TempDir(), "--daemonize", "no", "--loglevel", "warning", "--logfile", "")
	p.Start(t, "redis-server in "+site)
	c := redis.NewClient(&redis.Options{Addr: addr.String(), Dialer: tp.RedisDialer(site), MaxRetries: -1})
	defer func() { _ = c.Close() }()
	waitServing(t, p, "redis-server in "+site, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err()
	})
	return addr
}

// StartNATS runs a nats-server process in site's namespace, listening on
// the site's address, and returns once a client from the site connects
// (10 s at most). It ends with the test.
func StartNATS(t testing.TB, tp *Topology, site string) ServiceAddr {
	t.Helper()
	addr := netip.AddrPortFrom(tp.Addr(site), 4222)
	p := tp.Command(site, "nats-server", "-a", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())))
	p.Start(t, "nats-server in "+site)
	waitServing(t, p, "nats-server in "+site, func() error {
		nc, err := nats.Connect(NATSURL(addr), tp.NATSDialer(site), nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		nc.Close()
		return nil
	})
	return addr
}

// NATSURL is the nats:// URL of a server at addr.
func NATSURL(addr ServiceAddr) string { return "nats://" + addr.String() }

// RedisURL is the redis:// URL of database 0 of a server at addr.
func RedisURL(addr ServiceAddr) string { return "redis://" + addr.String() + "/0" }

func waitServing(t testing.TB, p *Process, label string, ready func() error) {
	t.Helper()
	var last error
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		if done, err := p.Exited(); done {
			t.Fatalf("regions: %s ended: %v: %s", label, err, strings.TrimSpace(p.Out.String()))
		}
		if last = ready(); last == nil {
			return
		}
		select {
		case <-p.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("regions: %s not serving in 10 s: %v", label, fmt.Errorf("%w: %s", last, p.Out))
}
