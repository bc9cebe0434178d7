package protocol

import "strconv"

// NATS subjects. Every cluster message travels on one of these, under the
// cluster's prefix (such as "callrelay"); README.md sections 7.5 and 7.6
// list which message goes where. They are part of the wire: a forwarder,
// a conductor and a dashboard that built them differently would not hear
// each other, so every process takes them from here.

// MetadataSubject is <prefix>.meta.<partition>, where forwarders publish
// the MetadataBatch of one partition (PartitionOf) for its conductor.
func MetadataSubject(prefix string, partition int) string {
	return prefix + ".meta." + strconv.Itoa(partition)
}

// CallSubject is <prefix>.call.<call id> (32 lowercase hex digits), shared
// by the call's MemberNotices and its conductor's CallDecisions.
func CallSubject(prefix string, call ID) string { return prefix + ".call." + call.String() }

// ForwardersSubject is <prefix>.forwarders, where every forwarder publishes
// its ForwarderAnnounce heartbeat and its LoadReport.
func ForwardersSubject(prefix string) string { return prefix + ".forwarders" }
