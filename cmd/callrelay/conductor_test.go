package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// conductor starts a conductor process of the cluster, with the default
// settings (lease TTL 2 s); the address of its /metrics is appended to
// c.metricsOf.
func (c *cluster) conductor(t *testing.T, id string) *proc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metrics := l.Addr().String()
	require.NoError(t, l.Close())
	defer func() { c.metricsOf = append(c.metricsOf, metrics) }()
	return start(t, env("CALLRELAY_LOG_LEVEL=info", "CALLRELAY_CLUSTER_KEY="+c.key),
		"conductor", "--id", id, "--redis-url", c.redis.URL(), "--nats-url", c.nats.ClientURL(),
		"--metrics-listen", metrics)
}

// decisionLog records the decisions published for one call.
type decisionLog struct {
	mu sync.Mutex
	ds []protocol.CallDecision
	at []time.Time
}

func (c *cluster) watchDecisions(t *testing.T, call protocol.ID) *decisionLog {
	t.Helper()
	key, err := protocol.ParseClusterKey(c.key)
	require.NoError(t, err)
	nc, err := nats.Connect(c.nats.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	d := &decisionLog{}
	_, err = nc.Subscribe("callrelay.call."+call.String(), func(m *nats.Msg) {
		var dec protocol.CallDecision
		if typ, err := protocol.PeekClusterMsgType(m.Data); err != nil || typ != protocol.ClusterMsgDecision || dec.Unmarshal(m.Data, key) != nil {
			return
		}
		dec.Forward = slices.Clone(dec.Forward)
		d.mu.Lock()
		d.ds, d.at = append(d.ds, dec), append(d.at, time.Now())
		d.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return d
}

// since returns the decisions published after t0.
func (d *decisionLog) since(t0 time.Time) ([]protocol.CallDecision, []time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, _ := slices.BinarySearchFunc(d.at, t0, func(a, b time.Time) int { return a.Compare(b) })
	return slices.Clone(d.ds[i:]), slices.Clone(d.at[i:])
}

// SIGKILL the conductor that decides a call, five times, while one member
// talks across two forwarder processes, every process with its default
// settings: the other conductor process takes the partition over with a
// higher epoch within 2.5 s, resumes with the same dominant speaker, the
// forwarders keep the last decision in the gap (the speaker is heard
// throughout, the silent member stays muted: the gap is shorter than their
// decision timeout), and no decision of the dead conductor's epoch is
// applied after the takeover.
func TestConductorSIGKILLTakeover(t *testing.T) {
	c := newCluster(t)
	a, b := c.node(t, "fwd-a"), c.node(t, "fwd-b")
	conds := map[string]*proc{"cond-1": c.conductor(t, "cond-1"), "cond-2": c.conductor(t, "cond-2")}
	call := protocol.NewID()
	var ms []*calltest.Member
	for i, fwd := range []*node{a, b, b} {
		p := protocol.NewID()
		tok, err := protocol.SignToken(c.priv, protocol.Token{CallID: call, ParticipantID: p,
			Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
		require.NoError(t, err)
		m := calltest.Join(t, tok, uint32(10+i), fwd.media)
		m.ID = p
		ms = append(ms, m)
	}
	log := c.watchDecisions(t, call)
	stop := make(chan struct{})
	defer close(stop)
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	lease := fmt.Sprintf("conductor/partition/%d", protocol.PartitionOf(call, 64))
	holder := func() string {
		l, err := c.store.LeaseHolder(context.Background(), lease)
		if err != nil {
			return ""
		}
		return strings.SplitN(l.Owner, "/", 2)[0]
	}
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if len(ms[1].Speakers()) == 0 || len(ms[2].Speakers()) == 0 || holder() == "" {
			return fmt.Errorf("no decision yet")
		}
		return nil
	})

	const trials = 5
	var gaps []time.Duration
	for trial := range trials {
		victim := holder()
		require.Contains(t, conds, victim)
		before, _ := log.since(time.Time{})
		oldEpoch := before[len(before)-1].Epoch
		heard, muted := ms[1].Count(ms[0].SSRC), ms[1].Count(ms[2].SSRC)
		ms[1].ResetGaps()
		killed := time.Now()
		require.NoError(t, conds[victim].cmd.Process.Signal(syscall.SIGKILL))
		<-conds[victim].done
		var first time.Time
		testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			ds, at := log.since(killed)
			for i, d := range ds {
				if d.Epoch > oldEpoch {
					first = at[i]
					return nil
				}
			}
			return fmt.Errorf("trial %d: no decision of a newer epoch yet", trial)
		})
		gaps = append(gaps, first.Sub(killed))
		ds, _ := log.since(killed)
		for _, d := range ds {
			require.Equal(t, ms[0].ID, d.Dominant, "trial %d: the successor resumed with the same speaker", trial)
			require.NotEqual(t, oldEpoch, d.Epoch, "trial %d: the dead conductor's epoch after the kill", trial)
		}
		// Heard on through the takeover (which can be quick: the lease may
		// have been near its end), counted, not timed.
		testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			if n := ms[1].Count(ms[0].SSRC); n <= heard+25 {
				return fmt.Errorf("trial %d: %d packets of the speaker heard since the kill", trial, n-heard)
			}
			return nil
		})
		// The speaker's audio does not pause while the conductor is gone:
		// forwarders keep the last decision. (At the end of session 3 about
		// half the runs paused it for the whole takeover, 2.0-2.1 s; it did
		// not come back in 45 trials at 195d553, load 10-11, longest 227 ms,
		// so the strict bound is back, and a failure says where the silence
		// fell against the kill and the successor's first decision.)
		gap, ended := ms[1].MaxGap(ms[0].SSRC), ms[1].MaxGapEnd(ms[0].SSRC)
		require.Less(t, gap, 300*time.Millisecond, "trial %d: the speaker's longest silence, %v, ended %v after the kill; the successor's first decision came %v after it",
			trial, gap, ended.Sub(killed), first.Sub(killed))
		require.Equal(t, muted, ms[1].Count(ms[2].SSRC), "trial %d: the silent member stayed muted", trial)
		conds[victim] = c.conductor(t, victim) // back, as a new lease holder
	}
	for i, m := range ms {
		require.Equal(t, []protocol.ID{ms[0].ID}, ids(m.Speakers()), "member %d saw the speaker change", i)
	}
	scrapeConductor(t, c.metricsOf[len(c.metricsOf)-1])
	t.Logf("conductor SIGKILL, default settings (lease TTL 2 s): decision gap over %d trials: p50 %v, max %v (gaps %v)",
		trials, percentile(gaps, 0.5), slices.Max(gaps), gaps)
	require.Less(t, slices.Max(gaps), 2500*time.Millisecond, "the lease's remaining life (at most its TTL) + a metadata tick + a store read")
}

func ids(cs []calltest.SpeakerChange) []protocol.ID {
	var out []protocol.ID
	for _, c := range cs {
		out = append(out, c.Speaker)
	}
	return out
}

// A conductor without its dependencies, or with a bad key, says what to
// fix and exits non-zero.
func TestConductorRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		environ []string
		args    []string
		want    []string
	}{
		{"nothing given", env(), nil, []string{"--nats-url", "--redis-url", "--cluster-key"}},
		{"bad cluster key", env(), []string{"--cluster-key", "abc"}, []string{"--cluster-key"}},
		{"bad partitions", env(), []string{"--partitions", "0"}, []string{"0 partitions, want 1..65535"}},
		{"unreachable redis", env(), []string{"--redis-url", "nonsense://x"}, []string{"--redis-url"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.environ, append([]string{"conductor"}, tc.args...)...)
			require.NotEqual(t, 0, r.code)
			for _, w := range tc.want {
				require.Contains(t, r.stderr, w)
			}
		})
	}
}

// scrapeConductor reads a conductor's /metrics, /healthz and /readyz: the
// metric names are there and no label carries an id.
func scrapeConductor(t *testing.T, addr string) {
	t.Helper()
	var body string
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if body = string(b); !strings.Contains(body, "callrelay_conductor_partitions_owned") {
			return fmt.Errorf("no conductor metrics yet")
		}
		return nil
	})
	for _, name := range []string{"callrelay_conductor_partition_takeovers_total", "callrelay_conductor_decisions_total",
		"callrelay_conductor_speaker_switches_total", "callrelay_conductor_speaker_switch_latency_seconds_bucket",
		"callrelay_conductor_metadata_batches_total", "callrelay_conductor_store_op_seconds_bucket",
		"callrelay_conductor_group_decision_stride", "process_cpu_seconds_total"} {
		require.Contains(t, body, name)
	}
	require.NotRegexp(t, callIDLike, body, "no ids as label values")
	resp, err := http.Get("http://" + addr + "/healthz")
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}
