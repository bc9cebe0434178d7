package testenv

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsStartTimeout bounds how long the embedded server may take to accept
// connections; JetStream initialisation dominates.
const natsStartTimeout = 10 * time.Second

// NATSServer is an embedded nats-server with JetStream, owned by one test and
// listening on a random 127.0.0.1 port.
type NATSServer struct {
	storeDir string
	port     int // fixed after the first start so Restart keeps the URL

	mu  sync.Mutex
	srv *server.Server
}

// NATS starts an embedded nats-server for t and returns once it accepts
// connections. t.Cleanup shuts it down and waits for it to finish.
func NATS(t testing.TB) *NATSServer {
	t.Helper()
	n := &NATSServer{storeDir: t.TempDir(), port: server.RANDOM_PORT}
	srv, err := n.start()
	if err != nil {
		t.Fatalf("testenv: %v", err)
		return nil
	}
	n.srv = srv
	n.port = srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(n.Shutdown)
	return n
}

// ClientURL returns the nats:// URL clients connect to. It stays the same
// across Restart.
func (n *NATSServer) ClientURL() string {
	return "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port))
}

// Server returns the running embedded server, for tests that inspect it (for
// example NumSubscriptions), or nil after Shutdown.
func (n *NATSServer) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Shutdown stops the server and waits until it has finished, dropping every
// client connection. Shutting down a stopped server does nothing.
func (n *NATSServer) Shutdown() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.shutdownLocked()
}

// Restart shuts the server down if it is running and starts a new one on the
// same port with the same JetStream store, so clients with reconnect enabled
// find it again and persisted streams survive.
func (n *NATSServer) Restart() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.shutdownLocked()
	srv, err := n.start()
	if err != nil {
		return fmt.Errorf("testenv: restarting: %w", err)
	}
	n.srv = srv
	return nil
}

func (n *NATSServer) shutdownLocked() {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}

func (n *NATSServer) start() (*server.Server, error) {
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      n.port,
		NoLog:     true,
		NoSigs:    true, // the test binary's signals are not the server's business
		JetStream: true,
		StoreDir:  n.storeDir,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("creating nats-server: %w", err)
	}
	srv.Start() // non-blocking: accept loops run in their own goroutines
	if !srv.ReadyForConnections(natsStartTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats-server on port %d not ready within %v", n.port, natsStartTimeout)
	}
	return srv, nil
}
