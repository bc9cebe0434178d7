package demo

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/dashboard"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/protocol"
)

// cluster is the demo's relay on this machine: the infra (Redis, NATS),
// the forwarders, a conductor and, if asked for, the dashboard.
type cluster struct {
	in            *infra
	fwds          []*forwarder.Forwarder
	stopFwds      func()
	stopConductor func()
	stopDashboard func()
}

// startCluster starts the relay for cfg, its forwarders verifying tokens
// with verifier, and prints what runs where. On an error, what it started
// is stopped again.
func startCluster(cfg Config, verifier *protocol.TokenVerifier, out io.Writer) (_ *cluster, err error) {
	in, err := startInfra(cfg.Logger)
	if err != nil {
		return nil, err
	}
	c := &cluster{in: in}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	key, err := protocol.NewClusterKey()
	if err != nil {
		return nil, err
	}
	if c.fwds, c.stopFwds, err = startForwarders(cfg, verifier, key, in); err != nil {
		return nil, err
	}
	if c.stopConductor, err = startConductor(cfg, key, in); err != nil {
		return nil, err
	}
	var addrs []string
	for _, f := range c.fwds {
		addrs = append(addrs, f.Addr().String())
	}
	fmt.Fprintf(out, "callrelay demo: %d forwarders on %s (trunk between them, embedded NATS, %s) and a conductor; %d one-to-one call(s), %d group call(s) of %d spread over them; media SRTP-encrypted end to end\n",
		len(c.fwds), strings.Join(addrs, ", "), in.kind, cfg.OneToOne, cfg.Groups, cfg.GroupSize)
	if cfg.Dashboard != "" {
		if c.stopDashboard, err = startDashboard(cfg, key, in, out); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// stopRelay stops the conductor and the forwarders (their counters are
// final then); the infra and the dashboard stay up until close.
func (c *cluster) stopRelay() {
	c.stopConductor()
	c.stopFwds()
}

// close stops everything started, in the reverse order: the dashboard,
// the conductor, the forwarders, the infra.
func (c *cluster) close() {
	for _, stop := range []func(){c.stopDashboard, c.stopConductor, c.stopFwds} {
		if stop != nil {
			stop()
		}
	}
	c.in.close()
}

// startForwarders runs cfg.Forwarders forwarders as one cluster sharing the
// infra; stop stops them all (it may be called twice).
func startForwarders(cfg Config, verifier *protocol.TokenVerifier, key protocol.ClusterKey, in *infra) ([]*forwarder.Forwarder, func(), error) {
	var fwds []*forwarder.Forwarder
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
	}
	for i := range cfg.Forwarders {
		id := fmt.Sprintf("demo-%d", i+1)
		nc, store, err := in.connect(protocol.RoleForwarder)
		if err != nil {
			stop()
			return nil, nil, err
		}
		fcfg := forwarder.Default()
		fcfg.Listen, fcfg.Verifier, fcfg.Logger = cfg.Listen, verifier, cfg.Logger.Named(id)
		fcfg.Load.CapacitySessions = cfg.CapacitySessions
		// The demo's forwarders share one process with each other, the
		// conductor, NATS and every participant: the process's CPU says
		// nothing about any one of them, and the first forwarder's first
		// samples take in everyone's start-up (a level 1 held past the
		// demo's first seconds, in a test at load ~1). CPU is no signal
		// here; --capacity-sessions is the demo's.
		fcfg.Load.CPUCores = 1e6 // as if unbounded
		fcfg.Cluster.ID, fcfg.Cluster.TrunkListen, fcfg.Cluster.Key = id, "127.0.0.1:0", key
		fcfg.Cluster.Store, fcfg.Cluster.NATS = store, nc
		f, err := forwarder.New(fcfg)
		if err != nil {
			nc.Close()
			_ = store.Close()
			stop()
			return nil, nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = f.Run(ctx) }()
		stops = append(stops, func() { cancel(); <-done; nc.Close(); _ = store.Close() })
		fwds = append(fwds, f)
	}
	return fwds, stop, nil
}

// startConductor runs one conductor for all partitions; stop stops it (it
// may be called twice).
func startConductor(cfg Config, key protocol.ClusterKey, in *infra) (func(), error) {
	nc, store, err := in.connect(protocol.RoleConductor)
	if err != nil {
		return nil, err
	}
	ccfg := conductor.Default()
	ccfg.ID, ccfg.NATS, ccfg.Key, ccfg.Store, ccfg.Leases = "demo-conductor", nc, key, store, store
	ccfg.Partitions, ccfg.Logger = forwarder.DefaultPartitions, cfg.Logger.Named("conductor")
	c, err := conductor.New(ccfg)
	if err != nil {
		nc.Close()
		_ = store.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done; nc.Close(); _ = store.Close() }) }, nil
}

// startDashboard serves the live dashboard for the demo's cluster and
// prints its address with a fresh admin token: whoever has the line sees
// everything, device addresses included; nobody else sees anything.
func startDashboard(cfg Config, key protocol.ClusterKey, in *infra, out io.Writer) (func(), error) {
	nc, store, err := in.connect(protocol.RoleDashboard)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 24)
	_, _ = rand.Read(tok) // never fails (crypto/rand)
	dcfg := dashboard.Default()
	dcfg.NATS, dcfg.Key, dcfg.Store, dcfg.Leases = nc, key, store, store
	dcfg.AdminToken = base64.RawURLEncoding.EncodeToString(tok)
	dcfg.Partitions, dcfg.Listen, dcfg.Logger = forwarder.DefaultPartitions, cfg.Dashboard, cfg.Logger.Named("dashboard")
	d, err := dashboard.New(dcfg)
	if err != nil && dcfg.Listen != "127.0.0.1:0" {
		// The port is taken (another demo, say): any free port will do.
		fmt.Fprintf(out, "dashboard: %s unavailable (%v); using a free port\n", dcfg.Listen, err)
		dcfg.Listen = "127.0.0.1:0"
		d, err = dashboard.New(dcfg)
	}
	if err != nil {
		nc.Close()
		_ = store.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	fmt.Fprintf(out, "dashboard: http://%s/?token=%s\n", d.Addr(), dcfg.AdminToken)
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done; nc.Close(); _ = store.Close() }) }, nil
}
