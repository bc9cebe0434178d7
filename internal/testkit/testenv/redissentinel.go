package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// SentinelMaster is the master name the sentinels of RedisSentinel
	// monitor.
	SentinelMaster = "mymaster"
	// sentinelReadyTimeout bounds the start of a Sentinel deployment, until
	// every sentinel knows the primary, its replica and the other sentinels.
	sentinelReadyTimeout = 30 * time.Second
	sentinelCount        = 3
)

// RedisSentinelServer is a Sentinel deployment owned by one test: a primary,
// one replica and three sentinels monitoring them as SentinelMaster with a
// quorum of 2, all real redis-server processes on free loopback ports.
type RedisSentinelServer struct {
	primary, replica *redisNode
	sentinels        []*redisNode
}

// RedisSentinel starts the deployment and returns once the replica is in
// sync and every sentinel sees the primary, the replica and both other
// sentinels. Sentinels declare the primary down after one second without an
// answer (down-after-milliseconds 1000, failover-timeout 3000), so a killed
// primary is replaced within a few seconds. t.Cleanup stops everything.
func RedisSentinel(t testing.TB) *RedisSentinelServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (%v): run `make deps` to install it", err)
		return nil
	}
	s := &RedisSentinelServer{}
	none := func(int, string) []string { return nil }
	if s.primary, err = startRedisNode(t, bin, none); err != nil {
		t.Fatalf("testenv: starting sentinel primary: %v", err)
		return nil
	}
	_, primaryPort, _ := strings.Cut(s.primary.Addr, ":")
	s.replica, err = startRedisNode(t, bin, func(int, string) []string {
		return []string{"--replicaof", "127.0.0.1", primaryPort}
	})
	if err != nil {
		t.Fatalf("testenv: starting sentinel replica: %v", err)
		return nil
	}
	for range sentinelCount {
		n, err := startRedisNode(t, bin, func(port int, dir string) []string {
			conf := filepath.Join(dir, "sentinel.conf")
			text := fmt.Sprintf(`port %d
sentinel monitor %[2]s 127.0.0.1 %[3]s 2
sentinel down-after-milliseconds %[2]s 1000
sentinel failover-timeout %[2]s 3000
`, port, SentinelMaster, primaryPort)
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				t.Logf("testenv: writing %s: %v", conf, err)
			}
			return []string{conf, "--sentinel"}
		})
		if err != nil {
			t.Fatalf("testenv: starting sentinel: %v", err)
			return nil
		}
		s.sentinels = append(s.sentinels, n)
	}
	CheckFor(t, sentinelReadyTimeout, 20*time.Millisecond, s.ready)
	return s
}

// SentinelAddrs returns the host:port of the three sentinels.
func (s *RedisSentinelServer) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, n := range s.sentinels {
		addrs[i] = n.Addr
	}
	return addrs
}

// PrimaryAddr returns the address of the primary the deployment started
// with (it stays that after KillPrimary).
func (s *RedisSentinelServer) PrimaryAddr() string { return s.primary.Addr }

// ReplicaAddr returns the address of the replica the deployment started
// with, the one promoted after KillPrimary.
func (s *RedisSentinelServer) ReplicaAddr() string { return s.replica.Addr }

// URL returns the deployment as a redis+sentinel:// URL naming the three
// sentinels and the master, the form statestore.OpenRedis accepts.
func (s *RedisSentinelServer) URL() string {
	return "redis+sentinel://" + strings.Join(s.SentinelAddrs(), ",") + "/" + SentinelMaster
}

// KillPrimary ends the primary with SIGKILL and waits for the process to
// exit. The sentinels then promote the replica.
func (s *RedisSentinelServer) KillPrimary() { s.primary.halt(false) }

// WaitReplicated waits (up to five seconds) until the replica has applied
// all the primary has written, and fails t otherwise. Killing the primary
// right after it guarantees that every write it acknowledged before the call
// survives the failover; without it, Redis's asynchronous replication may
// lose the last few.
func (s *RedisSentinelServer) WaitReplicated(t testing.TB) {
	t.Helper()
	CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error { return replicasSynced(s.primary.Addr) })
}

// CurrentPrimary returns the address the first sentinel that answers gives
// for SentinelMaster.
func (s *RedisSentinelServer) CurrentPrimary() (string, error) {
	var lastErr error
	for _, n := range s.sentinels {
		cl := nodeClient(n.Addr)
		ctx, cancel := pollCtx()
		addr, err := cl.Do(ctx, "SENTINEL", "get-master-addr-by-name", SentinelMaster).StringSlice()
		cancel()
		cl.Close()
		if err == nil && len(addr) == 2 {
			return addr[0] + ":" + addr[1], nil
		}
		lastErr = fmt.Errorf("sentinel %s: %v %v", n.Addr, addr, err)
	}
	return "", lastErr
}

func (s *RedisSentinelServer) ready() error {
	cl := nodeClient(s.replica.Addr)
	defer cl.Close()
	ctx, cancel := pollCtx()
	defer cancel()
	text, err := cl.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("replica %s: %w", s.replica.Addr, err)
	}
	if st := infoFields(text)["master_link_status"]; st != "up" {
		return fmt.Errorf("replica %s: master_link_status:%s", s.replica.Addr, st)
	}
	for _, n := range s.sentinels {
		if err := s.sentinelReady(n.Addr); err != nil {
			return fmt.Errorf("sentinel %s: %w", n.Addr, err)
		}
	}
	return nil
}

func (s *RedisSentinelServer) sentinelReady(addr string) error {
	cl := nodeClient(addr)
	defer cl.Close()
	ctx, cancel := pollCtx()
	defer cancel()
	m, err := cl.Do(ctx, "SENTINEL", "master", SentinelMaster).Result()
	if err != nil {
		return err
	}
	f := make(map[string]string)
	switch v := m.(type) {
	case []any: // RESP2: flat key, value list
		for i := 0; i+1 < len(v); i += 2 {
			f[fmt.Sprint(v[i])] = fmt.Sprint(v[i+1])
		}
	case map[any]any: // RESP3
		for k, val := range v {
			f[fmt.Sprint(k)] = fmt.Sprint(val)
		}
	default:
		return fmt.Errorf("SENTINEL master: unexpected reply %T", m)
	}
	want := map[string]string{
		"ip":                  "127.0.0.1",
		"port":                strings.TrimPrefix(s.primary.Addr, "127.0.0.1:"),
		"flags":               "master",
		"num-slaves":          "1",
		"num-other-sentinels": strconv.Itoa(sentinelCount - 1),
	}
	for k, v := range want {
		if f[k] != v {
			return fmt.Errorf("SENTINEL master %s: %s is %q, want %q", SentinelMaster, k, f[k], v)
		}
	}
	return nil
}
