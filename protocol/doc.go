// Package protocol holds callrelay's wire formats: everything a device and a
// forwarder say to each other on the forwarder's one UDP port, the join
// tokens that admit a device, and what forwarders say to each other (trunk
// frames, cluster messages). It does no I/O and imports nothing of ours.
//
// The standards each part follows:
//
//   - demux.go: RFC 7983 (first-byte demultiplexing) and RFC 5761 (RTP and
//     RTCP on one port).
//   - join.go: STUN Binding requests and responses, RFC 8489, built on
//     github.com/pion/stun (MESSAGE-INTEGRITY, FINGERPRINT, ERROR-CODE,
//     ALTERNATE-SERVER), with attributes of ours in the
//     comprehension-optional range.
//   - token.go: join tokens signed with Ed25519 (RFC 8032).
//   - rtp_header.go: a zero-copy RTP header view, RFC 3550, with header
//     extensions of RFC 8285 and the audio level of RFC 6464.
//   - rtp_video_frame.go, rtp_abs_send_time.go: the header extensions the
//     relay reads on video (callrelay's video frame extension) and on every
//     packet (WebRTC's abs-send-time, 6.18 fixed-point seconds taken from
//     the NTP timestamp of RFC 5905).
//   - rtcp_walk.go: a zero-allocation walk over RTCP compound packets (RFC
//     3550 6.1, reduced-size RFC 5506) reading reports, generic NACK and
//     PLI (RFC 4585) and REMB (draft-alvestrand-rmcat-remb).
//   - relay_*.go: the relay's instructions as RTCP APP packets (RFC 3550
//     6.7), carried with github.com/pion/rtcp.
//   - clusterkey.go: the cluster key shared by forwarders, its subkeys
//     (HMAC-SHA256, RFC 2104) and forwarder tags (SHA-256, FIPS 180-4).
//   - trunk.go: trunk frames, one media datagram between forwarders,
//     authenticated with HMAC-SHA256 truncated to 128 bits (as RFC 4868's
//     HMAC-SHA-256-128); trunk_keepalive.go and trunk_echo.go: keepalives
//     and the echoes that measure the RTT between forwarders (smoothed by
//     the forwarder as RFC 6298 does).
//   - cluster_msg.go: MemberNotice and ForwarderAnnounce, the authenticated
//     messages forwarders exchange over NATS; metadata.go, decision.go and
//     load_report.go: the other messages of that envelope; subject.go: the
//     NATS subjects they travel on.
//
// Formats that live processes exchange belong here, so every sender and
// receiver takes them from one place; records at rest in Redis (call
// records, leases, checkpoints) belong to statestore.
//
// README.md in this directory is the wire specification, written so that a
// client can be built from it alone.
package protocol
