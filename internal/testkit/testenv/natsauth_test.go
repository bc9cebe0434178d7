package testenv

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// The server enforces the roles: a client without a key is refused, a
// role that publishes or subscribes where it may not gets a permissions
// violation and the message reaches nobody, and what a role may do works.
func TestNATSWithAuthEnforcesRoles(t *testing.T) {
	a := NATSWithAuth(t, "callrelay")
	_, err := nats.Connect(a.ClientURL(), nats.Timeout(5*time.Second))
	require.Error(t, err, "a keyless client is refused")
	require.Contains(t, strings.ToLower(err.Error()), "authorization violation")

	call := protocol.CallSubject("callrelay", protocol.NewID())
	var mu sync.Mutex
	var violations []string
	onErr := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			mu.Lock()
			violations = append(violations, err.Error())
			mu.Unlock()
		}
	})
	fwd := a.Connect(t, protocol.RoleForwarder)
	sub, err := fwd.SubscribeSync(call)
	require.NoError(t, err)
	require.NoError(t, fwd.Flush())

	// The dashboard may hear a call's subject but not speak on it; the
	// conductor may hear heartbeats (placement) but not admin commands.
	dash := a.Connect(t, protocol.RoleDashboard, onErr)
	require.NoError(t, dash.Publish(call, []byte("forged decision")))
	cond := a.Connect(t, protocol.RoleConductor, onErr)
	_, err = cond.SubscribeSync(protocol.AdminSubject("callrelay", "*"))
	require.NoError(t, err) // refused asynchronously
	require.NoError(t, dash.Flush())
	require.NoError(t, cond.Flush())
	CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(violations) < 2 {
			return errors.New("permission violations not reported yet")
		}
		return nil
	})
	mu.Lock()
	require.Contains(t, strings.Join(violations, "\n"), "Publish to \""+call+"\"")
	require.Contains(t, strings.Join(violations, "\n"), "Subscription to \"callrelay.admin.*\"")
	mu.Unlock()
	_, err = sub.NextMsg(200 * time.Millisecond)
	require.ErrorIs(t, err, nats.ErrTimeout, "the dashboard's message reached nobody")

	// The conductor's decision does reach the forwarder.
	require.NoError(t, cond.Publish(call, []byte("decision")))
	m, err := sub.NextMsg(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, "decision", string(m.Data))
}
