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
// noticing is fenced off as soon as its successor decides. A holder stops
// deciding on its own when it has not renewed for the lease's TTL (less a
// margin for clock rate differences).
//
// Takeover. A conductor that dies stops renewing; its leases expire after
// the TTL and another instance, which keeps trying to acquire every free
// partition, takes them over. It learns a call from the next metadata tick,
// checks that the call exists in the store (metadata for calls the store
// does not know is rejected and counted), restores the call's last
// checkpoint (dominant speaker, recent speakers, decision sequence) and
// decides. The decision gap is about TTL + AcquireEvery + one metadata tick.
//
// What the conductor stores is laid out by statestore, which the dashboard
// and the next lease holder read as well: the lease names
// (statestore.PartitionLease) and the checkpoint (ConductorCheckpoint, with
// the detector's SpeakerState). A record that does not decode is counted
// (callrelay_conductor_malformed_records_total) and the call is decided
// afresh. NATS subjects come from protocol (MetadataSubject, CallSubject).
//
// Fail-static. Forwarders keep applying the last decision when no conductor
// decides (and let loud onsets through at once); a call that never had a
// decision runs on the forwarder's default policy (all audio forwarded).
//
// The conductor never touches media, never blocks a forwarder (everything
// between them is asynchronous NATS), and never waits on Redis in its
// decision loop: store reads and checkpoint writes run on a bounded worker
// queue. It imports protocol and statestore (and internal leaf libraries),
// never forwarder or dashboard (internal/testkit/layering checks it).
package conductor
