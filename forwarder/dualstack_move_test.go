package forwarder_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestClusterOperatorMoveToIPv6: an operator's move (callrelay admin move,
// and a conductor's PlacementMove, which takes the same path) names the
// target by its id, whose first address is its IPv4 media address; the
// IPv6 device of the moved call is sent to the target's IPv6 address and
// the IPv4 one to the IPv4 address, as a drain does, and they still talk
// byte for byte. Before, both were sent to the IPv4 address.
func TestClusterOperatorMoveToIPv6(t *testing.T) {
	e := newClusterEnv(t)
	a, a4, a6 := e.dualNode(t, "fwd-a")
	b, b4, b6 := e.dualNode(t, "fwd-b")
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if a.f.Stats().Peers < 1 {
			return fmt.Errorf("fwd-a has not heard fwd-b yet")
		}
		return nil
	})
	call := protocol.NewID()
	tok4, _ := e.token(t, call, 4)
	tok6, _ := e.token(t, call, 4)
	s4 := joinFrom(t, tok4, loopback, a4)
	s6 := joinFrom(t, tok6, loopback6, a6)
	t4, t6 := tapMedia(s4), tapMedia(s6)
	warm(t, s4, 1004, t6)
	warm(t, s6, 1006, t4)

	adminMoveCall(t, e, a, b, call)
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if s4.Forwarder() != b4 || s6.Forwarder() != b6 {
			return fmt.Errorf("IPv4 device on %s, IPv6 device on %s", s4.Forwarder(), s6.Forwarder())
		}
		return nil
	})
	require.Equal(t, uint64(1), s6.Stats().Migrations, "one move, straight to the IPv6 address")
	require.Equal(t, uint64(1), s4.Stats().Migrations)
	warm(t, s4, 2004, t6)
	warm(t, s6, 2006, t4)
	exchangeExact(t, s4, 4, 50, t6)
	exchangeExact(t, s6, 6, 50, t4)
}

// adminMoveCall moves every member of call on a to b as an operator does.
func adminMoveCall(t *testing.T, e *clusterEnv, a, b *clusterNode, call protocol.ID) {
	args, err := json.Marshal(protocol.AdminArgs{Call: call.String(), To: b.id})
	require.NoError(t, err)
	cmd := protocol.AdminCommand{At: time.Now(), Op: protocol.AdminOpMove, Target: a.id, Actor: "test", Args: args}
	_, err = rand.Read(cmd.Nonce[:])
	require.NoError(t, err)
	raw, err := protocol.MarshalAdminCommand(&cmd, e.key)
	require.NoError(t, err)
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	msg, err := nc.Request(protocol.AdminSubject(forwarder.Default().Cluster.Subject, a.id), raw, 5*time.Second)
	require.NoError(t, err)
	reply, err := protocol.UnmarshalAdminReply(msg.Data, e.key)
	require.NoError(t, err)
	require.Equal(t, uint16(200), reply.Status, "%s", reply.Body)
}
