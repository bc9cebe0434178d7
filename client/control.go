package client

import (
	"encoding/binary"
	"errors"
	"syscall"
	"time"

	"github.com/pion/rtcp"

	"github.com/callrelay/callrelay/protocol"
)

// controlQueue is the capacity of a Conn's Control channel. The relay sends
// session-control messages rarely (a rejoin nudge, a migration); when the
// consumer does not keep up, newer ones are dropped and counted.
const controlQueue = 16

// nudgeInterval rate-limits a Conn's answer to Rejoin nudges: at most one
// immediate keepalive per interval. Nudges are not authenticated (anyone who
// can spoof the forwarder's address can send one), so a flood of them costs
// the device at most one extra keepalive a second.
const nudgeInterval = time.Second

// controlSubType reports whether a CRLY APP packet of this subtype is the
// Conn's business: the relay's session-control messages (MigrateTo, Rejoin)
// and the reserved subtypes, which a receiver drops (protocol/README.md 5.1).
// The other subtypes (bitrate, simulcast, dominant speaker, and device
// messages an older forwarder relays) stay in the datagram for the
// application.
func controlSubType(st uint8) bool {
	switch st {
	case protocol.SubTypeTargetBitrate, protocol.SubTypeSimulcastControl, protocol.SubTypeDominantSpeaker,
		protocol.SubTypeSubscription, protocol.SubTypeLoudOnset:
		return false
	}
	return true
}

// takeControl removes the session-control CRLY APP packets from the RTCP
// datagram b, a single or compound packet, in place, and returns what is
// left for the Media channel (empty when nothing is). Each removed packet is
// decoded: a valid Rejoin, or a MigrateTo that verifies (authentic), goes
// to Control (dropped and counted when Control is full); a MigrateTo that
// does not is counted as MigrateStale or MigrateForged, anything else as
// ControlMalformed, and dropped. Datagrams without a CRLY packet, the common case, are walked
// header by header and returned unchanged, without allocating. When the
// RTCP framing breaks, the rest of the datagram is left as it is (for the
// application to judge), unless it starts like a CRLY packet: then it is
// counted as malformed and dropped.
func (c *Conn) takeControl(b []byte) []byte {
	out := b[:0] // compacts forward in place: out never overtakes off
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < 4 || rest[0]>>6 != 2 {
			return append(out, rest...)
		}
		size := (int(binary.BigEndian.Uint16(rest[2:4])) + 1) * 4
		crly := rest[1] == byte(rtcp.TypeApplicationDefined) && len(rest) >= 12 &&
			string(rest[8:12]) == protocol.RelayAppName
		if size > len(rest) {
			if crly && controlSubType(rest[0]&0x1f) {
				c.stats.controlMalformed.Add(1)
				return out
			}
			return append(out, rest...)
		}
		pkt := rest[:size]
		off += size
		if !crly || size < 12 || !controlSubType(pkt[0]&0x1f) {
			out = append(out, pkt...)
			continue
		}
		c.onControl(pkt)
	}
	return out
}

// onControl decodes one session-control CRLY packet and passes it on.
func (c *Conn) onControl(pkt []byte) {
	var app rtcp.ApplicationDefined
	if err := app.Unmarshal(pkt); err != nil {
		c.stats.controlMalformed.Add(1)
		return
	}
	m, err := protocol.DecodeRelayApp(&app)
	if err != nil {
		c.stats.controlMalformed.Add(1)
		return
	}
	switch m := m.(type) {
	case *protocol.Rejoin:
		c.nudged()
	case *protocol.MigrateTo:
		if !c.authentic(m, pkt) {
			return
		}
	}
	c.stats.controlReceived.Add(1)
	select {
	case c.control <- m:
	default:
		c.stats.controlDropped.Add(1)
	}
}

// authentic reports whether a MigrateTo, pkt as received, is the
// forwarder's (protocol/README.md 5.7): its echo is one of the Conn's recent
// requests (the join, a keepalive, a rebind), and its MAC verifies with the
// integrity key of the token that request carried. Without both, the
// message is counted and must not be acted upon: whoever can send from the
// forwarder's address could otherwise have the device send its token
// anywhere.
func (c *Conn) authentic(m *protocol.MigrateTo, pkt []byte) bool {
	c.mu.Lock()
	key := c.requestKey(m.Echo)
	c.mu.Unlock()
	switch {
	case key == nil:
		c.stats.migrateStale.Add(1)
		return false
	case !protocol.VerifyMigrateTo(pkt, key):
		c.stats.migrateForged.Add(1)
		return false
	}
	return true
}

// nudged answers a Rejoin as the protocol asks: an authenticated Binding
// (a keepalive, which is the join) at once from this socket, the address the
// nudge reached. A forwarder that lost the session (it restarted, or a load
// balancer moved the flow to a peer behind the same address) answers it with
// the address check's 401 and then admits the repeat. Rate-limited to one
// per nudgeInterval.
func (c *Conn) nudged() {
	c.stats.rejoinNudges.Add(1)
	now := time.Now()
	c.mu.Lock()
	if !c.nudgedAt.IsZero() && now.Sub(c.nudgedAt) < nudgeInterval {
		c.mu.Unlock()
		c.stats.nudgesLimited.Add(1)
		return
	}
	c.nudgedAt = now
	c.kaCookieRounds = 0 // a fresh exchange: the forwarder may ask for a cookie again
	c.mu.Unlock()
	c.sendKeepalive(now)
}

// refused notes a socket error; ECONNREFUSED (ICMP port unreachable on the
// connected socket) is passed on as a hint on Unreachable.
func (c *Conn) refused(err error) {
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return
	}
	c.stats.portUnreachable.Add(1)
	select {
	case c.unreachable <- struct{}{}:
	default:
	}
}

// Control returns the channel of the relay's session-control instructions:
// *protocol.Rejoin and *protocol.MigrateTo, taken out of the RTCP that the
// forwarder sends (alone or inside a compound packet), so they never appear
// on Media. Other CRLY messages (TargetBitrate, SimulcastControl,
// DominantSpeaker) stay on Media for the application. It holds at most 16
// messages; when full, newer ones are dropped (Stats.ControlDropped). It is
// closed after the session ends.
//
// A MigrateTo arrives here only if it is authenticated (protocol/README.md
// 5.7: it echoes one of the Conn's recent requests and carries a MAC under
// that request's token key), so its address is the forwarder's word; others
// are counted (Stats.MigrateStale, MigrateForged) and dropped. A Rejoin is
// not authenticated (the forwarder has no session, so no key, for the
// address it answers): the connected socket only lets the forwarder's
// address through, but an attacker who can spoof that address can forge
// one. It names no address; the Conn acts on it only by sending a keepalive
// to its own forwarder at once (at most one a second), and Session re-joins
// only forwarders it already knows.
func (c *Conn) Control() <-chan protocol.RelayMessage { return c.control }

// Unreachable receives a value (coalesced, capacity 1) whenever the socket
// reports ICMP port unreachable (ECONNREFUSED on a read or a write): the
// forwarder's host is up but nothing listens on its port any more, which
// usually means the forwarder process died. It is a hint, not an end: ICMP
// is not authenticated and a restarting forwarder is briefly unreachable
// too, so the Conn itself goes on until its idle timeout; Session fails over
// at once.
func (c *Conn) Unreachable() <-chan struct{} { return c.unreachable }

// lastAnswer is when the forwarder last answered a keepalive (or the join)
// with an authenticated success.
func (c *Conn) lastAnswer() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastAlive
}

// lastNudge is when the Conn last sent a keepalive because of a Rejoin.
func (c *Conn) lastNudge() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nudgedAt
}
