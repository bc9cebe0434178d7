package forwarder

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// listenNetwork is the Go network a listen address is bound with:
//   - an IPv4 address: "udp4", an AF_INET socket (IPv4 only);
//   - the IPv6 unspecified address [::]: "udp", which Go binds as one AF_INET6
//     socket with IPV6_V6ONLY off, so the one port serves both families:
//     IPv4 peers appear as v4-mapped addresses (mmsg.DecodeSockaddr unmaps them,
//     encodeSockaddr maps them back);
//   - any other IPv6 address: "udp6", IPv6 only (an IPv4 peer cannot reach a
//     specific IPv6 address anyway).
//
// One socket rather than one per family: the product has one UDP port per
// forwarder, its readers share it with SO_REUSEPORT, and a device keeps one
// key in the routes whatever its family (docs/architecture.md).
func listenNetwork(ap netip.AddrPort) string {
	a := ap.Addr()
	switch {
	case a.Is4() || a.Is4In6():
		return "udp4"
	case a.IsUnspecified():
		return "udp"
	}
	return "udp6"
}

// isV6Socket reports whether a socket bound to bound is an AF_INET6 socket,
// whose destinations take the sockaddr_in6 layout (v4-mapped for IPv4 peers).
func isV6Socket(bound netip.AddrPort) bool {
	return bound.Addr().Is6() && !bound.Addr().Is4In6()
}

// reachableFrom reports whether a socket of that family can send to ap: an
// IPv4 socket reaches IPv4 addresses only.
func reachableFrom(ap netip.AddrPort, v6socket bool) bool {
	return v6socket || ap.Addr().Unmap().Is4()
}

// setupMedia6 checks a dual-stack forwarder's IPv6 media address: an IPv6
// address beside an IPv4 media address, served by a socket on [::].
func (f *Forwarder) setupMedia6(ap netip.AddrPort) error {
	if !ap.IsValid() {
		return nil
	}
	a := ap.Addr()
	switch {
	case !a.Is6() || a.Is4In6() || a.IsUnspecified() || a.Zone() != "" || ap.Port() == 0:
		return fmt.Errorf("forwarder: IPv6 media address %s (--media-advertise6): want [ipv6]:port, not unspecified", ap)
	case !f.mediaAdvertise.Addr().Is4():
		return fmt.Errorf("forwarder: --media-advertise6 %s goes beside an IPv4 --media-advertise (it is %s)", ap, f.mediaAdvertise)
	case !f.v6 || !f.addr.Addr().IsUnspecified():
		return fmt.Errorf("forwarder: --media-advertise6 %s needs the media socket on both families: listen on [::]:port (it is %s)", ap, f.addr)
	}
	f.mediaAdv6 = ap
	return nil
}

// mediaFor is the media address of a peer for the device at dev: its IPv6
// one for an IPv6 device when it has one, else its media address (a device
// on one family may still reach the other).
func mediaFor(a *protocol.ForwarderAnnounce, dev netip.AddrPort) netip.AddrPort {
	if a.Media6.IsValid() && !dev.Addr().Unmap().Is4() {
		return a.Media6
	}
	return a.Media
}

var mTrunkFamily = prometheus.NewDesc("callrelay_forwarder_trunk_family_unreachable_total",
	"Trunk routes left out: a peer's trunk address is IPv6 and this forwarder's trunk socket IPv4 only (listen on [::] to reach both).", nil, nil)

// A device may reach one forwarder at two addresses (its IPv4 and its IPv6
// one, both listed, or a name with both records): its multi-connect join
// then arrives twice, and the second, from the other path, moves the new
// session there before the device has chosen. The device keeps one path and
// sends a leave from the other; if that leave comes from the path the
// second join took, it must not end the session the device kept: it moves
// the session back to the path it came from. Only for a move within
// raceWindow of the admission, while the move's request is the last one
// accepted for the session (a device that sent a keepalive from the new
// path since has chosen it, and its leave ends the session as always), and
// within raceWindow of the move (a losing path's leave comes right after
// its answer, within the device's loser grace and leave timeout: under a
// second with this client).
const raceWindow = 3 * time.Second

// racedPath is where a racing join moved a session from: a move within
// raceWindow of the session's admission (a losing path's join may arrive
// before or after the device has chosen, its leave right after its answer).
type racedPath struct {
	admitted time.Time
	from     netip.AddrPort
	at       time.Time
	tid      [12]byte // the racing join's transaction
}

// noteRace, called as s moves, remembers where from if s was admitted
// moments ago.
func (c *control) noteRace(s *session) {
	if c.f.cfg.Now().Sub(s.raced.admitted) <= raceWindow {
		s.raced.from, s.raced.at, s.raced.tid = s.addr, c.f.cfg.Now(), c.msg.TransactionID
		return
	}
	s.raced.from = netip.AddrPort{}
}

// moveBack answers a leave from s's own address: if a racing join moved s
// here moments ago, s goes back to where it came from and stays.
func (c *control) moveBack(s *session) bool {
	r := s.raced
	s.raced.from = netip.AddrPort{}
	if !r.from.IsValid() || s.lastTID != r.tid || c.f.cfg.Now().Sub(r.at) > raceWindow {
		return false
	}
	left := s.addr
	if !c.move(s, r.from) {
		return false
	}
	s.raced.from = netip.AddrPort{}
	s.log.Info("leave from the path a racing join took: the session stays on the other", zap.Stringer("left", left),
		zap.Stringer("kept", r.from))
	return true
}
