package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestLocateCommand runs `callrelay locate` against NATS on which two
// forwarders' heartbeats and load reports are published, and asks it over
// HTTP with the client's Locate: the region's forwarder, then its
// neighbour's, go into the candidate list; bad input is refused 400.
func TestLocateCommand(t *testing.T) {
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
	fraTCP, fraTLS := netip.MustParseAddrPort("192.0.2.1:3478"), netip.MustParseAddrPort("192.0.2.1:443")
	publish := func() {
		now := time.Now()
		for _, f := range []struct{ id, media, region string }{{"fra-1", "192.0.2.1:3478", "eu"}, {"jnb-1", "192.0.2.2:3478", "za"}} {
			a := protocol.ForwarderAnnounce{ID: f.id, Media: netip.MustParseAddrPort(f.media), Trunk: netip.MustParseAddrPort("127.0.0.1:9"),
				Seq: uint64(now.UnixNano()), Started: now.Add(-time.Minute), At: now}
			if f.id == "fra-1" { // its TCP (both families) and TLS listeners
				a.Streams = protocol.StreamListeners{{fraTCP, netip.MustParseAddrPort("[2001:db8::1]:3478")}, {fraTLS}}
			}
			b, err := a.Marshal(nil, key)
			require.NoError(t, err)
			require.NoError(t, nc.Publish(protocol.ForwardersSubject("callrelay"), b))
			r := protocol.LoadReport{Forwarder: f.id, Seq: uint64(now.UnixNano()), Started: now.Add(-time.Minute), At: now,
				HasOps: true, Ops: protocol.LoadOps{Region: f.region}}
			b, err = r.Marshal(nil, key)
			require.NoError(t, err)
			require.NoError(t, nc.Publish(protocol.ForwardersSubject("callrelay"), b))
		}
		require.NoError(t, nc.Flush())
	}
	base := "http://" + addr
	var got *client.Located
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		publish()
		lctx, lcancel := context.WithTimeout(ctx, time.Second)
		defer lcancel()
		l, err := client.Locate(lctx, nil, base, "eu")
		if err != nil {
			return err
		}
		if len(l.Forwarders) != 2 {
			return fmt.Errorf("%d forwarders answered", len(l.Forwarders))
		}
		got = l
		return nil
	})
	require.Equal(t, "fra-1", got.Forwarders[0].ID)
	require.Equal(t, "jnb-1", got.Forwarders[1].ID)
	var cfg client.Config
	require.Equal(t, 2, got.Apply(&cfg))
	require.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:3478"), netip.MustParseAddrPort("192.0.2.2:3478")}, cfg.Forwarders)
	require.Equal(t, map[netip.AddrPort]client.StreamEndpoints{netip.MustParseAddrPort("192.0.2.1:3478"): {TCP: fraTCP, TLS: fraTLS}},
		cfg.Streams, "fra-1's stream listeners from its heartbeat (IPv4, as its UDP address); jnb-1 has none")

	resp, err := http.Get(base + "/v1/locate?region=no%20space")
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}
