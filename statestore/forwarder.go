package statestore

// What a forwarder keeps in the state store for other forwarders to read,
// besides call records: the name of its liveness lease. Forwarders read
// it before removing another forwarder's members from a call record, so a
// forwarder that is only unheard (NATS down, a lossy trunk) keeps its
// members. It lives here, once, so the holder and every reader agree.

// ForwarderLease is the lease name (see Leases) forwarder id holds while
// it runs, renewing it every heartbeat: "forwarder/<id>", stored on Redis
// under the hash tag {lease:forwarder/<id>}. An id with '{' or '}' makes
// an invalid name: such a forwarder holds no lease, and no other forwarder
// ever removes its members.
func ForwarderLease(id string) string { return "forwarder/" + id }
