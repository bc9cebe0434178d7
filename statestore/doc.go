// Package statestore holds the state a call needs to outlive one forwarder:
// the critical call record (who is in the call, on which forwarder, at which
// address, with which SSRCs) and ephemeral checkpoints (opaque bytes a
// forwarder saves now and then so a successor can resume with less
// re-negotiation).
//
// Forwarders and conductors use the Store interface. Redis is the production
// backend and Memory its in-memory twin with the same semantics; one
// conformance suite runs against both.
//
// Critical state is changed only by compare-and-set: the record is read,
// changed in Go, and written back by a Lua script (EVALSHA) that applies the
// write only if the record is still the one that was read. Two forwarders
// changing one call at once therefore lose nothing; the loser retries. Every
// change increments Call.Version. A call's keys share a Redis Cluster hash
// tag ({call:<hex id>}) so they live on one slot, carry a TTL refreshed on
// every change and by Touch, and are all deleted when the last member leaves.
//
// A member's placement names the forwarder serving it and that forwarder's
// trunk address. AddMember writes nothing when the placement is already the
// stored one, so re-asserting it (or retrying a lost answer) is free, and
// RemoveMemberServedBy removes a member only on behalf of the forwarder that
// holds it, so a forwarder that lost a participant to another can never
// remove the newer placement.
//
// Writer puts a queue in front of a Store for a control loop that must never
// wait on Redis: changes are applied in order in the background, kept
// (bounded) and retried while the store is unreachable, and reported back on
// a channel.
//
// The record format is documented in codec.go; format 1 records (before
// trunk addresses) are still read.
//
// Leases (lease.go) give conductors exclusive, expiring ownership of a named
// thing, such as a partition of calls. A lease carries a fencing epoch: taking
// a free lease (never held, expired or released) hands out the next epoch of
// that name, while the holder renewing keeps its epoch, so an epoch stands for
// one uninterrupted holding and receivers drop decisions with an older epoch
// than the newest they saw. On Redis a lease is two keys under the hash tag
// {lease:<name>}: the holder ("<epoch> <owner>", expiring with the lease, on
// the server's clock) and the epoch counter, which never expires, so epochs
// never go back. Each operation is one Lua script. The counter is only as
// durable as Redis itself: a Redis that loses its data starts epochs again
// at 1.
//
// Formats more than one process reads from Redis are owned here, once, and
// every writer and reader imports them: the call record (codec.go), lease
// values (lease_redis.go), the conductor's partition lease names and
// checkpoint layout (conductor.go: PartitionLease, ConductorCheckpoint,
// SpeakerState), read by the next lease holder and the dashboard. They
// live in statestore, not protocol, because they are records at rest,
// read back by whoever owns a call or a partition later (a successor
// conductor, an operator's dashboard), versioned with the store's keys
// and TTLs; protocol holds what travels between live processes (UDP, the
// trunk, NATS messages and subject names). A record that does not decode
// is an ErrCorrupt error saying what is wrong, never a panic; the readers
// count it.
//
// OpenRedis takes one URL for every deployment: redis:// (or rediss:// for
// TLS) for one server, redis+cluster://host:port,host:port,... for a Redis
// Cluster, and redis+sentinel://host:port,host:port,.../<master-name> for a
// primary and its replicas watched by Sentinel (the hosts are the
// sentinels). Each goes through a redis.UniversalClient, and every command
// goes to a master, never a replica. Because each script's keys share one
// hash tag and are passed in KEYS, every operation runs on one cluster slot.
// During a failover operations fail with ErrUnavailable until the replica
// has taken over (a few seconds with node or down-after timeouts of one
// second); a Writer keeps and retries its changes meanwhile. Redis
// replication is asynchronous, so on these deployments every critical
// write (a call's compare-and-set, a lease operation) is followed on the
// same master connection by WAIT for one replica (up to 50 ms), and is
// acknowledged only then: a master that dies right after answering cannot
// take an acknowledged change with it. A shard without a replica (just
// after a failover) still takes writes; they are counted
// (Redis.UnderReplicated) and for two seconds no longer wait. The failover
// tests kill a master the instant after an acknowledged write and find
// nothing lost.
//
// What statestore must never do:
//   - let go-redis types or errors leave the package: callers see Call,
//     Member and the sentinel errors in errors.go, never redis.Nil;
//   - block or fail a critical write because of an ephemeral checkpoint;
//   - overwrite a record it cannot decode (it reports ErrCorrupt and leaves
//     the record for an operator) or panic on one;
//   - wait on Redis beyond the caller's context.
package statestore
