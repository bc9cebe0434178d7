package testenv

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/callrelay/callrelay/internal/natsauth"
	"github.com/callrelay/callrelay/protocol"
)

// AuthNATS is an embedded nats-server that admits only the callrelay roles
// (protocol.NATSRoles), each with its own nkey made for the test and the
// permissions protocol.RolePermissions gives it under a prefix: the same
// authorization a deployment runs (natsauth.Config).
type AuthNATS struct {
	srv   *server.Server
	users map[protocol.NATSRole]natsauth.User
}

// NATSWithAuth starts an AuthNATS on a random 127.0.0.1 port for prefix;
// t.Cleanup shuts it down.
func NATSWithAuth(t testing.TB, prefix string) *AuthNATS {
	t.Helper()
	a := &AuthNATS{users: make(map[protocol.NATSRole]natsauth.User)}
	var users []natsauth.User
	for _, r := range protocol.NATSRoles {
		p, err := protocol.RolePermissions(prefix, r)
		if err != nil {
			t.Fatal(err)
		}
		u, err := natsauth.NewUser(string(r), natsauth.Perms(p))
		if err != nil {
			t.Fatal(err)
		}
		a.users[r] = u
		users = append(users, u)
	}
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		Nkeys: natsauth.ServerUsers(users)}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("testenv: creating nats-server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(natsStartTimeout) {
		srv.Shutdown()
		t.Fatalf("testenv: nats-server with auth not ready within %v", natsStartTimeout)
	}
	a.srv = srv
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return a
}

// ClientURL is the server's nats:// URL (without credentials).
func (a *AuthNATS) ClientURL() string {
	return "nats://" + a.srv.Addr().(*net.TCPAddr).String()
}

// Server is the embedded server.
func (a *AuthNATS) Server() *server.Server { return a.srv }

// Seed is role's nkey seed, what its processes read with --nats-nkey.
func (a *AuthNATS) Seed(role protocol.NATSRole) []byte { return a.users[role].Seed }

// Connect connects as role, with opts after the credentials; t.Cleanup
// closes the connection.
func (a *AuthNATS) Connect(t testing.TB, role protocol.NATSRole, opts ...nats.Option) *nats.Conn {
	t.Helper()
	o, err := natsauth.Option(a.Seed(role))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(a.ClientURL(), append([]nats.Option{o, nats.Timeout(5 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(fmt.Errorf("testenv: connecting as %s: %w", role, err))
	}
	t.Cleanup(nc.Close)
	return nc
}
