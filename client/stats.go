package client

import (
	"sync/atomic"
	"time"
)

// Stats are a Conn's counters since Dial began. Media counts are of RTP and
// RTCP datagrams; STUN (join, keepalive, leave) is counted separately.
type Stats struct {
	PacketsSent     uint64 // media datagrams written
	BytesSent       uint64
	SendErrors      uint64 // writes the socket refused
	PacketsReceived uint64 // media datagrams received, including dropped ones
	BytesReceived   uint64
	// MediaDropped counts packets dropped because the Media channel was full.
	MediaDropped uint64
	// Unauthenticated counts STUN answers to our transactions that failed
	// MESSAGE-INTEGRITY: ignored, never acted upon.
	Unauthenticated uint64
	// Stray counts datagrams that were neither media nor an answer to one of
	// our transactions (unknown kind, unknown transaction, oversized).
	Stray              uint64
	ReadErrors         uint64 // transient socket read errors (e.g. ICMP unreachable)
	KeepalivesSent     uint64
	KeepalivesAnswered uint64 // authenticated successes
	KeepaliveErrors    uint64 // authenticated error answers to keepalives
	// CookieRetries counts requests (join, rebind, keepalive, leave)
	// repeated because the forwarder's address check answered 401 with a
	// new cookie.
	CookieRetries uint64
	// ControlReceived counts the relay's session-control messages (Rejoin,
	// MigrateTo) decoded from RTCP and passed to Control; ControlDropped
	// those of them dropped because Control was full; ControlMalformed the
	// session-control CRLY APP packets that failed to decode (bad body,
	// reserved subtype, broken length), dropped.
	ControlReceived  uint64
	ControlDropped   uint64
	ControlMalformed uint64
	// MigrateStale counts MigrateTo messages dropped because their echo is
	// not one of the Conn's recent requests (a replay, or a forgery);
	// MigrateForged those whose echo is but whose MAC does not verify
	// (protocol/README.md 5.7). Neither reaches Control.
	MigrateStale  uint64
	MigrateForged uint64
	// RejoinNudges counts Rejoin messages; NudgesLimited those that sent no
	// keepalive because one had gone out for a nudge less than a second
	// before.
	RejoinNudges  uint64
	NudgesLimited uint64
	// PortUnreachable counts ECONNREFUSED on the socket (ICMP port
	// unreachable from the forwarder's host), each also a hint on
	// Conn.Unreachable.
	PortUnreachable uint64
	// RTT is the round-trip time of the last answered keepalive (or of the
	// join, before any keepalive).
	RTT time.Duration
}

// counters are shared by the dialer's readers and the Conn; every field is
// updated atomically.
type counters struct {
	packetsSent, bytesSent, sendErrors         atomic.Uint64
	packetsReceived, bytesReceived, dropped    atomic.Uint64
	unauthenticated, stray, readErrors         atomic.Uint64
	keepalivesSent, keepalivesAnswered, kaErrs atomic.Uint64
	cookieRetries                              atomic.Uint64
	controlReceived, controlDropped            atomic.Uint64
	controlMalformed, rejoinNudges             atomic.Uint64
	migrateStale, migrateForged                atomic.Uint64
	nudgesLimited, portUnreachable             atomic.Uint64
	rtt                                        atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		PacketsSent:        c.packetsSent.Load(),
		BytesSent:          c.bytesSent.Load(),
		SendErrors:         c.sendErrors.Load(),
		PacketsReceived:    c.packetsReceived.Load(),
		BytesReceived:      c.bytesReceived.Load(),
		MediaDropped:       c.dropped.Load(),
		Unauthenticated:    c.unauthenticated.Load(),
		Stray:              c.stray.Load(),
		ReadErrors:         c.readErrors.Load(),
		KeepalivesSent:     c.keepalivesSent.Load(),
		KeepalivesAnswered: c.keepalivesAnswered.Load(),
		KeepaliveErrors:    c.kaErrs.Load(),
		CookieRetries:      c.cookieRetries.Load(),
		ControlReceived:    c.controlReceived.Load(),
		ControlDropped:     c.controlDropped.Load(),
		ControlMalformed:   c.controlMalformed.Load(),
		MigrateStale:       c.migrateStale.Load(),
		MigrateForged:      c.migrateForged.Load(),
		RejoinNudges:       c.rejoinNudges.Load(),
		NudgesLimited:      c.nudgesLimited.Load(),
		PortUnreachable:    c.portUnreachable.Load(),
		RTT:                time.Duration(c.rtt.Load()),
	}
}
