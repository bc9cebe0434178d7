package statestore

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis replicates asynchronously: a master answers a write before any
// replica has it, and a master killed in that instant takes the write with
// it when a replica is promoted. On replicated deployments (Cluster and
// Sentinel URLs) every critical write (a call's compare-and-set, a lease
// operation) is therefore sent in one pipeline with WAIT 1 on the same
// connection to the key's master, so it is acknowledged only once a
// replica has it too.
//
// WAIT never fails the write: when no replica answers within waitTimeout
// (a shard whose replica was just promoted has none until the old master
// returns) the write stands, is counted (UnderReplicated), and for the next
// underReplicatedFor the wait is cut to a millisecond, so a shard without
// a replica costs durability, not throughput.

const (
	defaultWaitTimeout = 50 * time.Millisecond
	underReplicatedFor = 2 * time.Second
	shortWait          = time.Millisecond
)

// replicated reports whether a URL names a replicated deployment.
func replicated(url string) bool {
	scheme, _, _ := strings.Cut(url, "://")
	return strings.HasSuffix(scheme, "+cluster") || strings.HasSuffix(scheme, "+sentinel")
}

type pipeliner interface {
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// runScript runs s on keys (one slot), durably on replicated deployments.
func (r *Redis) runScript(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	if r.waitReplicas == 0 {
		return s.Run(ctx, r.c, keys, args...)
	}
	var node pipeliner = r.c
	if cc, ok := r.c.(*redis.ClusterClient); ok {
		// WAIT has no key: it must go to the connection of the key's master.
		m, err := cc.MasterForKey(ctx, keys[0])
		if err != nil {
			cmd := redis.NewCmd(ctx)
			cmd.SetErr(err)
			return cmd
		}
		node = m
	}
	timeout := r.waitTimeout
	if time.Now().UnixNano()-r.lastUnder.Load() < int64(underReplicatedFor) {
		timeout = shortWait
	}
	var eval *redis.Cmd
	var wait *redis.Cmd
	_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
		// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT.
		eval = s.Eval(ctx, p, keys, args...)
		wait = p.Do(ctx, "wait", r.waitReplicas, timeout.Milliseconds())
		return nil
	})
	if n, err := wait.Int(); eval.Err() == nil && (err != nil || n < r.waitReplicas) {
		r.underReplicated.Add(1)
		r.lastUnder.Store(time.Now().UnixNano())
	}
	return eval
}

// UnderReplicated counts critical writes no replica acknowledged within
// the wait (0 on a single server, which has none to wait for).
func (r *Redis) UnderReplicated() uint64 { return r.underReplicated.Load() }
