package protocol

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Each role's subjects are the ones its process uses, and no role both
// publishes and hears another's decisions.
func TestRolePermissions(t *testing.T) {
	call := CallSubject("cr", NewID())
	for _, tt := range []struct {
		role     NATSRole
		pub, sub []string
		replies  bool
	}{
		{RoleForwarder, []string{"cr.meta.*", "cr.call.*", "cr.forwarders"}, []string{"cr.call.*", "cr.forwarders", "cr.admin.*"}, true},
		{RoleConductor, []string{"cr.call.*", "cr.conductors"}, []string{"cr.meta.*", "cr.forwarders"}, false},
		{RoleDashboard, []string{"cr.admin.*"}, []string{"cr.forwarders", "cr.conductors", "cr.call.*", "_INBOX.>"}, false},
		{RoleLoadtest, []string{"cr.loadtest.>"}, []string{"cr.loadtest.>", "cr.forwarders"}, false},
	} {
		p, err := RolePermissions("cr", tt.role)
		require.NoError(t, err)
		require.Equal(t, tt.pub, p.Publish, tt.role)
		require.Equal(t, tt.sub, p.Subscribe, tt.role)
		require.Equal(t, tt.replies, p.Replies, tt.role)
	}
	require.Len(t, NATSRoles, 4)
	_, err := RolePermissions("cr", "guest")
	require.ErrorContains(t, err, "unknown NATS role")
	// The subjects the code builds fall under the wildcards.
	require.Equal(t, "cr.call."+call[len("cr.call."):], call)
	require.Equal(t, "cr.meta.7", MetadataSubject("cr", 7))
	require.Equal(t, "cr.admin.fwd-a", AdminSubject("cr", "fwd-a"))
	require.Equal(t, "cr.conductors", ConductorsSubject("cr"))
}
