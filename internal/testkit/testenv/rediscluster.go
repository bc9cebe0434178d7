package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// clusterNodeTimeout is the cluster-node-timeout of test clusters: how
	// long a master may be unreachable before it is failed. The default, 15
	// s, would make every failover test slow; one second is still far above
	// a loopback round trip.
	clusterNodeTimeout = time.Second
	// clusterReadyTimeout bounds cluster creation, from redis-cli --cluster
	// create to every node reporting cluster_state:ok.
	clusterReadyTimeout = 30 * time.Second
)

// RedisClusterServer is a Redis Cluster of real redis-server processes owned
// by one test, on free loopback ports, each node in its own temporary
// directory and persisting nothing.
type RedisClusterServer struct {
	nodes []*redisNode
}

// RedisCluster starts masters*(1+replicasPerMaster) redis-server processes
// with cluster mode on, joins them with `redis-cli --cluster create
// --cluster-replicas replicasPerMaster`, and returns once every node says
// cluster_state:ok, knows every other node, and every replica's link to its
// master is up. cluster-node-timeout is one second, so a killed master is
// failed over within a few seconds. t.Cleanup stops every node. masters must
// be at least 3, as redis-cli requires.
func RedisCluster(t testing.TB, masters, replicasPerMaster int) *RedisClusterServer {
	t.Helper()
	if masters < 3 || replicasPerMaster < 0 {
		t.Fatalf("testenv: RedisCluster(%d, %d): Redis Cluster needs at least 3 masters and no negative replica count", masters, replicasPerMaster)
		return nil
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (%v): run `make deps` to install it", err)
		return nil
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("testenv: redis-cli not found on PATH (%v): run `make deps` to install it", err)
		return nil
	}
	c := &RedisClusterServer{}
	for range masters * (1 + replicasPerMaster) {
		n, err := startRedisNode(t, bin, func(_ int, _ string) []string {
			return []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", "nodes.conf", // in the node's own dir
				"--cluster-node-timeout", strconv.FormatInt(clusterNodeTimeout.Milliseconds(), 10),
				// A replica may always take over, however long its link
				// was down: the tests want a failover, not a stuck slot.
				"--cluster-replica-validity-factor", "0",
			}
		})
		if err != nil {
			t.Fatalf("testenv: starting cluster node: %v", err)
			return nil
		}
		c.nodes = append(c.nodes, n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: redis-cli --cluster create: %v; output:\n%s", err, out)
		return nil
	}
	CheckFor(t, clusterReadyTimeout, 20*time.Millisecond, c.ready)
	return c
}

// Addrs returns the host:port of every node, in start order (running or
// not).
func (c *RedisClusterServer) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// URL returns the cluster as a redis+cluster:// URL listing every node, the
// form statestore.OpenRedis accepts.
func (c *RedisClusterServer) URL() string {
	return "redis+cluster://" + strings.Join(c.Addrs(), ",")
}

// Kill ends node i (an index into Addrs) with SIGKILL, as a crashed or
// OOM-killed Redis disappears, and waits for the process to exit.
func (c *RedisClusterServer) Kill(i int) {
	c.nodes[i].halt(false)
}

// WaitReplicated waits (up to five seconds) until every replica of node i,
// a master, has applied all the master has written, and fails t otherwise.
// Killing the master right after it guarantees that every write the master
// acknowledged before the call survives the failover; without it, Redis's
// asynchronous replication may lose the last few.
func (c *RedisClusterServer) WaitReplicated(t testing.TB, i int) {
	t.Helper()
	CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error { return replicasSynced(c.nodes[i].Addr) })
}

// MasterOf returns the index (into Addrs) of the running node that some
// running node believes serves key's slot as master. It asks CLUSTER NODES
// and CLUSTER KEYSLOT of the first running node that answers.
func (c *RedisClusterServer) MasterOf(key string) (int, error) {
	var lastErr error
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		i, err := c.masterOf(n.Addr, key)
		if err == nil {
			return i, nil
		}
		lastErr = err
	}
	return -1, fmt.Errorf("no node knows the master of %q: %v", key, lastErr)
}

func (c *RedisClusterServer) masterOf(addr, key string) (int, error) {
	cl := nodeClient(addr)
	defer cl.Close()
	ctx, cancel := pollCtx()
	defer cancel()
	slot, err := cl.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return -1, err
	}
	slots, err := cl.ClusterSlots(ctx).Result()
	if err != nil {
		return -1, err
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
			for i, n := range c.nodes {
				if n.Addr == s.Nodes[0].Addr {
					return i, nil
				}
			}
			return -1, fmt.Errorf("slot %d served by unknown node %s", slot, s.Nodes[0].Addr)
		}
	}
	return -1, fmt.Errorf("slot %d not served", slot)
}

// ready reports whether every running node sees a healthy cluster with all
// nodes known and every running replica in sync with its master.
func (c *RedisClusterServer) ready() error {
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		if err := c.nodeReady(n.Addr); err != nil {
			return fmt.Errorf("node %s: %w", n.Addr, err)
		}
	}
	return nil
}

func (c *RedisClusterServer) nodeReady(addr string) error {
	cl := nodeClient(addr)
	defer cl.Close()
	ctx, cancel := pollCtx()
	defer cancel()
	text, err := cl.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	f := infoFields(text)
	if f["cluster_state"] != "ok" {
		return fmt.Errorf("cluster_state:%s", f["cluster_state"])
	}
	if f["cluster_slots_ok"] != "16384" {
		return fmt.Errorf("cluster_slots_ok:%s", f["cluster_slots_ok"])
	}
	if f["cluster_known_nodes"] != strconv.Itoa(len(c.nodes)) {
		return fmt.Errorf("cluster_known_nodes:%s, want %d", f["cluster_known_nodes"], len(c.nodes))
	}
	text, err = cl.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	f = infoFields(text)
	if f["role"] == "slave" && f["master_link_status"] != "up" {
		return fmt.Errorf("replica link to master %s:%s is %s", f["master_host"], f["master_port"], f["master_link_status"])
	}
	return nil
}
