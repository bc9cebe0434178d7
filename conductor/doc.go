// Package conductor is the decision plane: for every call it decides the
// dominant speaker and the audio forwarding set, from the metadata the
// forwarders publish over NATS, and sends the decisions back to the
// forwarders serving the call.
//
// Ownership. Calls hash into partitions (protocol.PartitionOf, the same
// number on every forwarder and conductor). A conductor instance decides for
// a partition only while it holds the partition's lease in the state store
// (statestore.Leases); every acquisition by a new holder raises the lease's
// epoch, and every decision carries it. Forwarders apply a decision only if
// it is newer (higher epoch, or same epoch and higher sequence) than the
// last one they applied, so a conductor that lost its lease without
// noticing is fenced off as soon as its successor decides. A holder whose
// lease the store says is lost stops deciding at once (or, if nobody holds
// it, because it lapsed while the store was away, takes it again in place
// at a new epoch). A holder that could not renew stops on its own after
// three quarters of the TTL, except while the store does not answer at
// all: then it decides on, under its epoch, for up to StoreGrace (a
// minute) after its last renewal. That is safe because of the fencing:
// nobody can take a lease from a store that does not answer, and a
// conductor that can reach a store this one cannot takes the partition at
// a higher epoch, after which every forwarder ignores this one's decisions
// (counted as stale). A Redis outage then costs no decision, and the
// forwarding sets follow the talkers throughout; checkpoints and calls'
// records are not read or written meanwhile (calls new to the conductor
// are decided without a checkpoint). When the store answers again, no
// conductor takes a partition it does not hold for a lease TTL, so the
// holders take theirs back in place, with their state.
//
// Takeover. A conductor that dies stops renewing; its leases expire after
// the TTL and another instance, which tries every free partition each
// AcquireEvery and, for one held by another, again the moment the store
// says its lease lapses, takes them over. It learns a call from the next
// metadata tick (every call a forwarder serves is in a batch at least
// once a second), checks that the call exists in the store (metadata for
// calls the store does not know is rejected and counted), restores the
// call's last checkpoint (dominant speaker, recent speakers, decision
// sequence) and decides at once. The decision gap after a kill -9 is the
// lease's remaining life (between three quarters of the TTL and the TTL:
// renewals come every quarter) plus one metadata tick and a store read:
// 1.4 to 2.1 s measured with the 2 s default (README, "Measuring").
//
// What the conductor stores is laid out by statestore, which the dashboard
// and the next lease holder read as well: the lease names
// (statestore.PartitionLease) and the checkpoint (ConductorCheckpoint, with
// the detector's SpeakerState). A record that does not decode is counted
// (callrelay_conductor_malformed_records_total) and the call is decided
// afresh. NATS subjects come from protocol (MetadataSubject, CallSubject).
//
// Fail-static. Forwarders keep applying the last decision while its
// conductor repeats it (every Republish, a second), and let loud onsets
// through at once; when no fresh decision came for their decision timeout
// (4 s by default: longer than a takeover), a call goes back to the
// forwarder's default policy, all audio forwarded, until one comes. A call
// that never had a decision runs on the default policy.
//
// The conductor never touches media, never blocks a forwarder (everything
// between them is asynchronous NATS), and never waits on Redis in its
// decision loop: store reads and checkpoint writes run on a bounded worker
// queue. It imports protocol and statestore (and internal leaf libraries),
// never forwarder or dashboard (internal/testkit/layering checks it).
package conductor
