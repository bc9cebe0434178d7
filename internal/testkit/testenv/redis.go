package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// redisStartTimeout bounds how long a fresh redis-server may take to
	// answer PING. It normally takes a few milliseconds; the slack is for
	// loaded CI machines running many test binaries under -race.
	redisStartTimeout = 10 * time.Second
	// redisStopGrace is how long Stop waits after SIGTERM before SIGKILL.
	// Redis exits within a cron tick (100 ms) of SIGTERM, but a starved CPU
	// can stretch that to seconds; a real hang is rare, so waiting is cheap.
	redisStopGrace = 10 * time.Second
	// redisPortAttempts bounds retries when another process takes the port
	// between freePort closing it and redis-server binding it.
	redisPortAttempts = 5
)

// errPortInUse marks a start that failed only because the port was taken,
// which Redis retries on a new port.
var errPortInUse = errors.New("port already in use")

// RedisServer is a redis-server process owned by one test. It listens on
// 127.0.0.1 only, persists nothing (no RDB, no AOF) and lives in its own
// temporary directory.
type RedisServer struct {
	// Addr is the host:port the server listens on. It stays the same across
	// Restart, so clients can reconnect to it.
	Addr string

	bin  string
	dir  string
	port int
	out  *SyncBuffer // combined output of every incarnation, for failures

	mu   sync.Mutex // serialises start, stop and signals
	proc *redisProc // nil while the server is down
}

// redisProc is one incarnation of the server process.
type redisProc struct {
	cmd  *exec.Cmd
	out  *SyncBuffer   // this incarnation's output only
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // cmd.Wait's result; read only after done is closed
}

// Redis starts a redis-server for t on a free loopback port and returns once
// it answers PING. t.Cleanup stops it (SIGTERM, then SIGKILL) and waits for
// the process to exit. If redis-server is not on PATH the test fails; run
// `make deps` to install it.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (%v): run `make deps` to install it", err)
		return nil
	}
	r := &RedisServer{bin: bin, dir: t.TempDir(), out: &SyncBuffer{}}
	// Registered after t.TempDir so it runs first: the process is gone
	// before its directory is removed.
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() && r.out.Len() > 0 {
			t.Logf("redis-server %s output:\n%s", r.Addr, r.out)
		}
	})

	for range redisPortAttempts {
		var port int
		port, err = freePort()
		if err != nil {
			break
		}
		var p *redisProc
		if p, err = r.start(port); err == nil {
			r.port, r.proc = port, p
			r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			return r
		}
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	t.Fatalf("testenv: starting redis-server: %v", err)
	return nil
}

// URL returns the server's address as a redis:// URL for database 0, the form
// redis.ParseURL and the command-line flags accept.
func (r *RedisServer) URL() string {
	return "redis://" + r.Addr + "/0"
}

// Stop shuts the server down gracefully (SIGTERM; SIGKILL if it has not exited
// after a grace period) and waits for the process to exit. Stopping a server
// that is already down does nothing.
func (r *RedisServer) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.haltLocked(true)
}

// Kill ends the server with SIGKILL, the way a crashed or OOM-killed Redis
// disappears: connections drop with no goodbye. It waits for the process to
// exit.
func (r *RedisServer) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.haltLocked(false)
}

// Signal sends sig to the running server. SIGSTOP and SIGCONT are the
// interesting ones: a stopped Redis keeps its connections open but never
// answers, which is how a hung or partitioned Redis looks to a client.
// Cleanup resumes a stopped server before shutting it down.
func (r *RedisServer) Signal(sig os.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return fmt.Errorf("testenv: redis-server %s is not running", r.Addr)
	}
	return r.proc.cmd.Process.Signal(sig)
}

// Restart stops the server if it is running and starts a new one on the same
// address. The new server is empty, since nothing is persisted: it is a Redis
// that came back after losing its memory.
func (r *RedisServer) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.haltLocked(true)
	p, err := r.start(r.port)
	if err != nil {
		return fmt.Errorf("testenv: restarting redis-server on %s: %w", r.Addr, err)
	}
	r.proc = p
	return nil
}

func (r *RedisServer) haltLocked(graceful bool) {
	p := r.proc
	if p == nil {
		return
	}
	r.proc = nil
	if graceful {
		_ = p.cmd.Process.Signal(termSignal)
		resume(p.cmd.Process) // a SIGSTOPped server handles SIGTERM only once continued
		timer := time.NewTimer(redisStopGrace)
		defer timer.Stop()
		select {
		case <-p.done:
			return
		case <-timer.C:
		}
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// start launches redis-server on port and waits until it answers. On failure
// the process has been reaped.
func (r *RedisServer) start(port int) (*redisProc, error) {
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
		"--logfile", "", // log to stdout, which we capture
	)
	fmt.Fprintf(r.out, "--- start on port %d\n", port)
	p := &redisProc{cmd: cmd, out: &SyncBuffer{}, done: make(chan struct{})}
	w := io.MultiWriter(p.out, r.out)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = sysProcAttr()
	// Redis never forks here (nothing to save), but if a child ever kept the
	// output pipe open, Wait would hang without this.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitRedisReady(p, addr); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, err
	}
	return p, nil
}

// waitRedisReady waits until the process p answers PING on addr, p exits, or
// redisStartTimeout passes. Transient errors are retried until the deadline:
// under -race on a loaded CI machine a single round trip can take seconds.
func waitRedisReady(p *redisProc, addr string) error {
	deadline := time.Now().Add(redisStartTimeout)

	// Wait for the port with plain dials first: go-redis logs each failed
	// dial of its pool, which would fill every test's output with noise.
	for {
		if p.exited() {
			return exitError(p)
		}
		conn, err := net.DialTimeout("tcp", addr, 250*time.Millisecond)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server not listening on %s after %v: %w", addr, redisStartTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	c := redis.NewClient(&redis.Options{
		Addr:       addr,
		MaxRetries: -1, // we retry ourselves, against our own deadline
		PoolSize:   1,
	})
	defer c.Close()
	for {
		if p.exited() {
			return exitError(p)
		}
		err := pingOwn(c, p.cmd.Process.Pid)
		if err == nil || errors.Is(err, errPortInUse) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not answering after %v: %w", addr, redisStartTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pingOwn checks that the server behind c answers and is the one with process
// id want: when our bind loses a race for the port, another test's Redis
// answers instead, and that is reported as errPortInUse.
func pingOwn(c *redis.Client, want int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("PING: %w", err)
	}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return fmt.Errorf("INFO server: %w", err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			if v == strconv.Itoa(want) {
				return nil
			}
			return fmt.Errorf("%w: a different redis-server (pid %s) answers, not ours (pid %d)", errPortInUse, v, want)
		}
	}
	return errors.New("INFO server has no process_id")
}

func (p *redisProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError explains why p exited before becoming ready.
func exitError(p *redisProc) error {
	out := p.out.String()
	if strings.Contains(out, "Address already in use") {
		return fmt.Errorf("%w: %v", errPortInUse, p.err)
	}
	return fmt.Errorf("redis-server exited before answering (%v); output:\n%s", p.err, out)
}

// freePort asks the kernel for a free loopback port. The port is released
// before redis-server binds it, so another process can take it meanwhile;
// callers retry on errPortInUse.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// SyncBuffer is a bytes.Buffer safe for the concurrent writes of a process's
// stdout and stderr copiers and reads from the test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *SyncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}
