package main

import (
	"flag"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// clusterFlags are the flags every cluster process shares: the cluster
// key, the state store and NATS.
type clusterFlags struct {
	key, redisURL *string
	nats          *natsConfig
}

// addClusterFlags registers them on fs; what the store is for goes into
// the help text.
func addClusterFlags(fs *flag.FlagSet, redisFor string) clusterFlags {
	return clusterFlags{
		key:      fs.String("cluster-key", "", "64 hex digits, the forwarders' cluster key"),
		redisURL: fs.String("redis-url", "", "redis:// or rediss:// URL of the state store, "+redisFor),
		nats:     addNATSFlags(fs),
	}
}

// clusterDeps is what the flags opened; close releases it.
type clusterDeps struct {
	log   *zap.Logger // flushed by close, when start made it
	key   protocol.ClusterKey
	store *statestore.Redis
	nats  *nats.Conn
}

func (d *clusterDeps) close() {
	if d.log != nil {
		defer func() { _ = d.log.Sync() }()
	}
	if d.nats != nil {
		d.nats.Close()
	}
	if d.store != nil {
		_ = d.store.Close()
	}
}

// open parses the key and connects to what the flags name (an empty flag
// opens nothing: Validate of the component says what is missing). cmd
// prefixes the errors.
func (f clusterFlags) open(cmd string, log *zap.Logger) (*clusterDeps, error) {
	d := &clusterDeps{}
	var err error
	if *f.key != "" {
		if d.key, err = protocol.ParseClusterKey(*f.key); err != nil {
			return nil, fmt.Errorf("%s: --cluster-key: %w", cmd, err)
		}
	}
	if *f.redisURL != "" {
		if d.store, err = statestore.OpenRedis(*f.redisURL, statestore.Config{}); err != nil {
			return nil, fmt.Errorf("%s: --redis-url: %w", cmd, err)
		}
	}
	if d.nats, err = connectNATS(f.nats, "callrelay "+cmd, log); err != nil {
		d.close()
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return d, nil
}

// connectNATS validates c and, when it names servers, connects with its
// credentials and TLS and reconnection for ever, logging each
// disconnection and reconnection once. No URL: nil, nil (what needs NATS
// says so).
func connectNATS(c *natsConfig, name string, log *zap.Logger) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.URL == "" {
		return nil, nil
	}
	return c.connect(name, log)
}

// start builds the process's logger at level and opens what the flags
// name; closing deps also flushes the logger.
func (f clusterFlags) start(cmd, level string) (*zap.Logger, *clusterDeps, error) {
	log, err := logging.New(level)
	if err != nil {
		return nil, nil, err
	}
	deps, err := f.open(cmd, log)
	if err != nil {
		_ = log.Sync()
		return nil, nil, err
	}
	deps.log = log
	return log, deps, nil
}
