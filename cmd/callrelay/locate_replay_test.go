package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestLocateIgnoresReplayedHeartbeats: an attacker who captured a
// forwarder's heartbeat and load report on NATS sends them again after the
// forwarder began to drain. `callrelay locate` (a real process loop, real
// NATS, asked over HTTP) must keep the forwarder out of its answers:
// replayed messages are not newer by (started, sequence) than the drain
// (protocol/README.md 7, Freshness), so devices are not steered to it.
func TestLocateIgnoresReplayedHeartbeats(t *testing.T) {
	ns := testenv.NATS(t)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runLocate(ctx, []string{"--listen", addr, "--nats-url", ns.ClientURL(), "--cluster-key", key.String(),
			"--regions", "eu:za;za:eu", "--log-level", "error"})
	}()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	defer nc.Close()

	started := time.Now().Add(-time.Minute)
	var seq uint64
	// seal makes a forwarder's heartbeat and load report as it would.
	seal := func(id, media, region string, level uint8, draining bool) [2][]byte {
		seq++
		now := time.Now()
		a := protocol.ForwarderAnnounce{ID: id, Media: netip.MustParseAddrPort(media), Trunk: netip.MustParseAddrPort("127.0.0.1:9"),
			Seq: seq, Started: started, At: now, Draining: draining}
		ab, err := a.Marshal(nil, key)
		require.NoError(t, err)
		r := protocol.LoadReport{Forwarder: id, Seq: seq, Started: started, At: now, Level: level, Draining: draining,
			HasOps: true, Ops: protocol.LoadOps{Region: region}}
		rb, err := r.Marshal(nil, key)
		require.NoError(t, err)
		return [2][]byte{ab, rb}
	}
	publish := func(msgs ...[2][]byte) {
		for _, m := range msgs {
			for _, b := range m {
				require.NoError(t, nc.Publish(protocol.ForwardersSubject("callrelay"), b))
			}
		}
		require.NoError(t, nc.Flush())
	}
	locate := func() (*client.Located, error) {
		lctx, lcancel := context.WithTimeout(ctx, time.Second)
		defer lcancel()
		return client.Locate(lctx, nil, "http://"+addr, "eu")
	}
	ids := func(l *client.Located) []string {
		var out []string
		for _, f := range l.Forwarders {
			out = append(out, f.ID)
		}
		return out
	}

	var captured [2][]byte
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		captured = seal("fra-1", "192.0.2.1:3478", "eu", 0, false)
		publish(captured, seal("jnb-1", "192.0.2.2:3478", "za", 0, false))
		l, err := locate()
		if err != nil {
			return err
		}
		if !slices.Equal(ids(l), []string{"fra-1", "jnb-1"}) {
			return fmt.Errorf("answered %v", ids(l))
		}
		return nil
	})

	// fra-1 drains; the attacker sends its captured messages again, then
	// jnb-1's next report says level 1. NATS keeps one connection's order,
	// so once the locator answers level 1 it has taken the replay.
	publish(seal("fra-1", "192.0.2.1:3478", "eu", 0, true), captured, captured)
	var l *client.Located
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		publish(seal("jnb-1", "192.0.2.2:3478", "za", 1, false))
		var err error
		if l, err = locate(); err != nil {
			return err
		}
		if i := slices.Index(ids(l), "jnb-1"); i < 0 || l.Forwarders[i].Level != 1 {
			return fmt.Errorf("answered %+v, waiting for jnb-1 at level 1", l.Forwarders)
		}
		return nil
	})
	require.Equal(t, []string{"jnb-1"}, ids(l), "a replayed heartbeat put the draining forwarder back in the answer")
}
