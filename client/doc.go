// Package client is the device side of callrelay: the library that apps,
// tests, the demo and the load tester use to join a call on a forwarder and
// exchange media through it.
//
// What it does:
//
//   - Dial joins with a signed token (protocol.BuildJoinRequest, a STUN
//     Binding request protected by MESSAGE-INTEGRITY, RFC 8489) on every
//     candidate forwarder at once, retransmitting with exponential backoff,
//     keeps the first that answers with success and drops the others (a loser
//     that also said yes is sent a leave). It passes the forwarder's
//     return-routability check: a 401 carrying a COOKIE is answered by
//     repeating the request with it at once (bounded), and each socket keeps
//     its own latest cookie for its later keepalives, rebind join and leave.
//     It follows 300 Try Alternate
//     (bounded, never back to an address it already tried), honours 508's
//     retry-after with jitter, and fails with a *JoinError when every
//     forwarder refuses.
//   - A Conn then owns one UDP socket to its forwarder: one reader goroutine
//     demultiplexes datagrams by their first byte (RFC 7983; RTCP by the
//     second, RFC 5761), answers its own STUN transactions and hands RTP/RTCP
//     to the application through the bounded channel Media, except the
//     relay's session-control CRLY APP messages (Rejoin, MigrateTo), which go
//     to the bounded channel Control; ICMP port unreachable is a hint on
//     Unreachable. A keepalive goroutine re-sends the join at the forwarder's
//     interval (the first at once after Dial: the forwarder takes it as the
//     device's choice among multi-connect winners) and reports the session
//     lost (Done, Err) when no authenticated answer came within the idle
//     timeout. A Rejoin makes the Conn re-send the join at once (at most
//     once a second). Rebind moves the session to a new local socket (WiFi
//     to cellular); Close sends a leave.
//   - A Session (Join) keeps a participant's place in the call across
//     forwarders: it replaces its Conn through a new multi-connect join when
//     the forwarder dies (silence for FailoverAfter, the Conn's end, or port
//     unreachable), re-joins when nudged, and migrates make-before-break on
//     MigrateTo. Media from every Conn it had arrives on one channel.
//   - Sender and Receiver (e2ee.go, receiver.go) protect media end to end
//     with SRTP (RFC 3711, AES128_CM_HMAC_SHA1_80), one master key per
//     sender. The RTP header and its RFC 8285 extensions, including the RFC
//     6464 audio level the relay reads, stay in clear; the payload is opaque
//     to the relay. Every packet carries its SRTP rollover counter in clear
//     (protocol/README.md 4), so a Receiver that joins late, or is switched
//     to a simulcast layer after it rolled over, decrypts from its first
//     packet; it tries at most two rollover counters per packet and the auth
//     tag decides, so a forged one costs a packet, never the stream.
//
// What it must never do:
//
//   - Trust an unauthenticated response. Every STUN answer is checked against
//     the transaction it answers and the token's integrity key; anything else
//     is ignored and counted (Stats.Unauthenticated, Stats.Stray), so a forged
//     401 or a forged success changes nothing.
//   - Hand media keys to the relay or see other participants' keys beyond
//     what the application gives Receiver.AddSender: keys travel out of band,
//     end to end, and the relay only ever sees ciphertext payloads.
//   - Accept media from anyone but its forwarder: each socket is connected to
//     exactly one forwarder address, so the kernel drops other sources.
//   - Send its token to an address because a packet from its forwarder's
//     address said so: a MigrateTo is followed only if it echoes one of the
//     Conn's recent requests and its MAC verifies with that request's token
//     key (protocol/README.md 5.7); others are counted (Stats.MigrateStale,
//     Stats.MigrateForged) and dropped. A Rejoin, which the forwarder cannot
//     sign, names no address: a forged one costs one keepalive to the
//     current forwarder (a second), and at worst a re-join of the forwarders
//     the application configured. The Session acts on at most one of either
//     a second.
//   - Block its reader on a slow consumer: when the Media channel is full the
//     packet is dropped and counted (Stats.MediaDropped).
//   - Log per packet.
package client
