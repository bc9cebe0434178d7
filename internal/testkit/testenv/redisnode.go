package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisNode is one redis-server process of a Redis Cluster or Sentinel
// deployment: a data node or a sentinel. Unlike RedisServer it takes extra
// arguments and is never restarted.
type redisNode struct {
	Addr string
	port int
	dir  string
	out  *SyncBuffer

	mu   sync.Mutex
	proc *redisProc // nil once killed or stopped
}

// startRedisNode starts redis-server on a free loopback port in its own
// temporary directory with the usual test settings (no persistence, log to
// stdout) plus whatever args(port, dir) returns appended, and returns once
// it answers PING. t.Cleanup stops it. If the first argument args returns
// does not start with "--" it is a config file path, passed first as
// redis-server wants (sentinels need a config file they can rewrite).
func startRedisNode(t testing.TB, bin string, args func(port int, dir string) []string) (*redisNode, error) {
	t.Helper()
	n := &redisNode{dir: t.TempDir(), out: &SyncBuffer{}}
	t.Cleanup(func() {
		n.halt(true)
		if t.Failed() && n.out.Len() > 0 {
			t.Logf("redis node %s output:\n%s", n.Addr, n.out)
		}
	})
	var err error
	for range redisPortAttempts {
		var port int
		if port, err = freePort(); err != nil {
			return nil, err
		}
		var p *redisProc
		if p, err = n.start(bin, port, args(port, n.dir)); err == nil {
			n.mu.Lock()
			n.port, n.proc = port, p
			n.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			n.mu.Unlock()
			return n, nil
		}
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	return nil, err
}

func (n *redisNode) start(bin string, port int, extra []string) (*redisProc, error) {
	var args []string
	// A config file, if any, must come first.
	if len(extra) > 0 && !strings.HasPrefix(extra[0], "--") {
		args, extra = append(args, extra[0]), extra[1:]
	}
	args = append(args,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", n.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
		"--logfile", "",
	)
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	fmt.Fprintf(n.out, "--- start on port %d\n", port)
	p := &redisProc{cmd: cmd, out: &SyncBuffer{}, done: make(chan struct{})}
	w := io.MultiWriter(p.out, n.out)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = sysProcAttr()
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

// halt stops the node: SIGTERM then SIGKILL after a grace period if
// graceful, SIGKILL at once otherwise. It waits for the process to exit.
func (n *redisNode) halt(graceful bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.proc
	if p == nil {
		return
	}
	n.proc = nil
	if graceful {
		_ = p.cmd.Process.Signal(termSignal)
		resume(p.cmd.Process)
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

func (n *redisNode) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc != nil
}

// nodeClient is a client for polling one node: no retries, short timeouts.
func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:        addr,
		MaxRetries:  -1,
		PoolSize:    1,
		DialTimeout: time.Second,
		ReadTimeout: time.Second,
	})
}

// infoFields parses the "key:value" lines of INFO or CLUSTER INFO.
func infoFields(text string) map[string]string {
	m := make(map[string]string)
	for line := range strings.Lines(text) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// pollCtx bounds one polling round trip.
func pollCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

// replicasSynced reports whether every replica the master at addr lists has
// processed the master's whole replication stream (its slave_repl_offset
// equals the master's master_repl_offset), asking the replicas themselves so
// as not to wait for their once-a-second acknowledgements.
func replicasSynced(addr string) error {
	m := nodeClient(addr)
	defer m.Close()
	ctx, cancel := pollCtx()
	defer cancel()
	text, err := m.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("master %s: %w", addr, err)
	}
	f := infoFields(text)
	want := f["master_repl_offset"]
	n, _ := strconv.Atoi(f["connected_slaves"])
	if n == 0 {
		return fmt.Errorf("master %s has no connected replica", addr)
	}
	for i := range n {
		var ip, port string
		for kv := range strings.SplitSeq(f["slave"+strconv.Itoa(i)], ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "ip":
				ip = v
			case "port":
				port = v
			}
		}
		r := nodeClient(net.JoinHostPort(ip, port))
		text, err := r.Info(ctx, "replication").Result()
		r.Close()
		if err != nil {
			return fmt.Errorf("replica %s:%s: %w", ip, port, err)
		}
		if got := infoFields(text)["slave_repl_offset"]; got != want {
			return fmt.Errorf("replica %s:%s at offset %s, master %s at %s", ip, port, got, addr, want)
		}
	}
	return nil
}
