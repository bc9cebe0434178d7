package testenv

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsClusterFormTimeout bounds how long the routes of a NATSCluster may take
// to form a full mesh.
const natsClusterFormTimeout = 10 * time.Second

// natsClusterName is the cluster name every node of a NATSCluster shares.
const natsClusterName = "callrelay-test"

// NATSClusterServers is a cluster of embedded nats-servers (no JetStream)
// owned by one test, every node listening for clients and routes on random
// 127.0.0.1 ports.
type NATSClusterServers struct {
	clientURLs  []string // fixed at start; a shut-down node keeps its URL
	clusterURLs []string

	mu   sync.Mutex
	srvs []*server.Server // nil once shut down
}

// NATSCluster starts n embedded nats-servers routed to each other (a full
// mesh) and returns once every node has a route to each of the others.
// t.Cleanup shuts every node down and waits for it to finish.
//
// Node i solicits routes to nodes 0..i-1, so every pair has one explicit
// route and no port has to be guessed before it is bound.
func NATSCluster(t testing.TB, n int) *NATSClusterServers {
	t.Helper()
	if n < 1 {
		t.Fatalf("testenv: NATSCluster needs at least one node, got %d", n)
		return nil
	}
	c := &NATSClusterServers{}
	t.Cleanup(c.shutdownAll)
	for i := range n {
		srv, err := startClusterNode(i, c.clusterURLs)
		if err != nil {
			t.Fatalf("testenv: %v", err)
			return nil
		}
		c.mu.Lock()
		c.srvs = append(c.srvs, srv)
		c.mu.Unlock()
		c.clientURLs = append(c.clientURLs, "nats://"+srv.Addr().String())
		c.clusterURLs = append(c.clusterURLs, "nats://"+srv.ClusterAddr().String())
	}
	CheckFor(t, natsClusterFormTimeout, 10*time.Millisecond, func() error {
		for i := range c.srvs {
			if got := c.RoutedPeers(i); got != n-1 {
				return fmt.Errorf("nats node %d is routed to %d other nodes, want %d", i, got, n-1)
			}
		}
		return nil
	})
	return c
}

func startClusterNode(i int, routes []string) (*server.Server, error) {
	var rs []*url.URL
	for _, r := range routes {
		u, err := url.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("parsing route %q: %w", r, err)
		}
		rs = append(rs, u)
	}
	opts := &server.Options{
		ServerName: "node-" + strconv.Itoa(i),
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		Cluster: server.ClusterOpts{
			Name: natsClusterName,
			Host: "127.0.0.1",
			Port: server.RANDOM_PORT,
		},
		Routes: rs,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("creating nats-server node %d: %w", i, err)
	}
	srv.Start()
	if !srv.ReadyForConnections(natsStartTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats-server node %d not ready within %v", i, natsStartTimeout)
	}
	if _, ok := srv.Addr().(*net.TCPAddr); !ok || srv.ClusterAddr() == nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats-server node %d has no client or cluster listener", i)
	}
	return srv, nil
}

// RoutedPeers is how many other nodes node i has a route to (0 when it is
// shut down). server.NumRoutes counts connections, and with route pooling
// (the default, several connections per peer) it overstates the peers, so
// this counts distinct remote server ids.
func (c *NATSClusterServers) RoutedPeers(i int) int {
	srv := c.Server(i)
	if srv == nil {
		return 0
	}
	rz, err := srv.Routez(nil)
	if err != nil {
		return 0
	}
	peers := map[string]bool{}
	for _, r := range rz.Routes {
		peers[r.RemoteID] = true
	}
	return len(peers)
}

// Len is the number of nodes, shut down or not.
func (c *NATSClusterServers) Len() int { return len(c.clientURLs) }

// ClientURL is the nats:// URL of node i's client port. It stays valid
// (refusing connections) after Shutdown(i).
func (c *NATSClusterServers) ClientURL(i int) string { return c.clientURLs[i] }

// ClientURLs is every node's client URL, comma-separated, as nats.Connect
// takes a server list.
func (c *NATSClusterServers) ClientURLs() string { return strings.Join(c.clientURLs, ",") }

// Server returns node i's embedded server, or nil after Shutdown(i).
func (c *NATSClusterServers) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srvs[i]
}

// Shutdown kills node i and waits until it has finished, dropping its
// clients and its routes. Shutting a stopped node down does nothing.
func (c *NATSClusterServers) Shutdown(i int) {
	c.mu.Lock()
	srv := c.srvs[i]
	c.srvs[i] = nil
	c.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Shutdown()
	srv.WaitForShutdown()
}

func (c *NATSClusterServers) shutdownAll() {
	c.mu.Lock()
	n := len(c.srvs)
	c.mu.Unlock()
	for i := range n {
		c.Shutdown(i)
	}
}
