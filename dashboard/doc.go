// Package dashboard is the live throttling dashboard for on-call engineers:
// one page that says at a glance whether the relay is throttling, where, and
// whom it is refusing.
//
// It listens to the forwarders' heartbeats on NATS (ForwarderAnnounce and
// LoadReport on <prefix>.forwarders, whose adaptation section gives the
// NACK, retransmission and probe rates), reads the conductor partitions'
// lease holders and single calls from the state store, and serves a page, a
// JSON snapshot (/api/state), server-sent events (/events) and a call
// drill-down (/api/call). A drill-down also listens on the call's subject,
// <prefix>.call.<call id>, for the conductor's next CallDecision (its video
// layers), for at most DecisionWait and at most MaxDecisionLookups calls at
// once.
//
// It reads what other processes wrote through the packages that own those
// formats, never through their writers: NATS subjects and messages from
// protocol, the conductor's lease names and checkpoint layout from
// statestore (PartitionLease, ConductorCheckpoint). It never imports
// conductor or forwarder (internal/testkit/layering checks it). A record in
// Redis that does not decode is said where it shows (the drill-down, the
// partitions view) and counted (callrelay_dashboard_malformed_records_total).
//
// It only observes: it never publishes on NATS, never writes to the state
// store, never takes a lease, and never sees media or media keys. Messages
// that do not authenticate with the cluster key are counted and dropped.
//
// It never shows a device's address (ip:port, what a spoofed MigrateTo is
// aimed at) to a request without the admin token, and never serves a
// non-loopback address without a token (auth.go). Its HTTP server is
// bounded like every process's (internal/httpserve: timeouts, a connection
// cap counted in /metrics).
package dashboard
