package protocol

import "fmt"

// NATS roles. A cluster's NATS server lets each kind of process publish and
// subscribe to the subjects it needs and nothing else (README.md section
// 7.7): a process that holds one role's credentials cannot forge another
// role's messages where the server can tell, nor read what it has no use
// for, and a client with no credentials is refused. The subjects are the
// ones of subject.go (and the load generator's, under <prefix>.loadtest).

// NATSRole is a kind of process on the cluster's NATS.
type NATSRole string

// The roles.
const (
	RoleForwarder NATSRole = "forwarder"
	RoleConductor NATSRole = "conductor"
	RoleDashboard NATSRole = "dashboard"
	RoleLoadtest  NATSRole = "loadtest"
)

// NATSRoles is every role, in a fixed order.
var NATSRoles = []NATSRole{RoleForwarder, RoleConductor, RoleDashboard, RoleLoadtest}

// NATSPermissions is what one role may do on NATS, as nats-server
// permissions: subjects (with NATS wildcards) it may publish to and
// subscribe to, and whether it may answer the requests it receives (a
// reply goes to the requester's inbox, allowed for the one reply only).
type NATSPermissions struct {
	Publish, Subscribe []string
	Replies            bool
}

// RolePermissions returns what role may do under the subject prefix.
//
//	forwarder  publishes metadata, its calls' notices, heartbeats and load
//	           reports; hears calls' notices and decisions, heartbeats and
//	           admin commands, and answers the commands
//	conductor  publishes decisions, placement moves and its reports;
//	           hears metadata, heartbeats and load reports (placement,
//	           and `callrelay locate`, which runs with this role)
//	dashboard  publishes admin commands (requests); hears heartbeats, load
//	           reports, conductors' reports, calls' decisions and the
//	           answers in its inbox
//	loadtest   publishes and hears its agents' protocol; hears load reports
func RolePermissions(prefix string, role NATSRole) (NATSPermissions, error) {
	meta, call, fwds := prefix+".meta.*", prefix+".call.*", ForwardersSubject(prefix)
	admin, conds := AdminSubject(prefix, "*"), ConductorsSubject(prefix)
	switch role {
	case RoleForwarder:
		return NATSPermissions{Publish: []string{meta, call, fwds}, Subscribe: []string{call, fwds, admin}, Replies: true}, nil
	case RoleConductor:
		return NATSPermissions{Publish: []string{call, conds}, Subscribe: []string{meta, fwds}}, nil
	case RoleDashboard:
		return NATSPermissions{Publish: []string{admin}, Subscribe: []string{fwds, conds, call, "_INBOX.>"}}, nil
	case RoleLoadtest:
		lt := prefix + ".loadtest.>"
		return NATSPermissions{Publish: []string{lt}, Subscribe: []string{lt, fwds}}, nil
	}
	return NATSPermissions{}, fmt.Errorf("protocol: unknown NATS role %q (want forwarder, conductor, dashboard or loadtest)", role)
}
