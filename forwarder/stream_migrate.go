package forwarder

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// Moving a TCP or TLS member (issue 19; protocol/README.md 5.7 and 7.2).
// A member on a connection cannot follow a MigrateTo to a UDP address (its
// network blocks UDP), so every forwarder announces its stream listeners,
// and a MigrateTo to a member on a connection names the target's listener
// of the member's transport (and family, when it has both). A target with
// no such listener is named by its UDP media address, as before, counted
// as a fallback: the device may still reach it, or fails over later.

// streamListeners are this forwarder's TCP and TLS listeners as devices
// reach them, for its heartbeat: a listener bound to an address is
// announced at it; one bound to an unspecified address at the media
// address (and, bound to [::], at the IPv6 media address too) with the
// listener's port. An advertised address (StreamConfig.Advertise) replaces
// what is derived for its transport and family.
func (f *Forwarder) streamListeners() protocol.StreamListeners {
	var l protocol.StreamListeners
	if !f.cfg.Stream.Announce {
		return l
	}
	for t := range l {
		a := f.stream.addr(t)
		if !a.IsValid() {
			continue
		}
		if !a.Addr().IsUnspecified() {
			l[t][familySlot(a.Addr())] = a
			continue
		}
		if m := f.mediaAdvertise; m.IsValid() && (a.Addr().Is6() || m.Addr().Is4()) {
			l[t][familySlot(m.Addr())] = netip.AddrPortFrom(m.Addr(), a.Port())
		}
		if m6 := f.mediaAdv6; m6.IsValid() && a.Addr().Is6() {
			l[t][1] = netip.AddrPortFrom(m6.Addr(), a.Port())
		}
	}
	for t := range l {
		for fam, a := range f.cfg.Stream.Advertise[t] {
			if a.IsValid() && f.stream.addr(t).IsValid() {
				l[t][fam] = a // --tcp-advertise, --tls-advertise(6)
			}
		}
	}
	return l
}

// familySlot is a StreamListeners family index: 0 IPv4, 1 IPv6.
func familySlot(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 0
	}
	return 1
}

// sendMigrate sends s a MigrateTo to the forwarder whose UDP media address
// is to (its address of s's family if it has one), signed for s's latest accepted request (README 5.7: a device
// follows no MigrateTo it cannot verify). It is the one place that builds
// one: drains, operators' and conductors' moves all come here.
func (c *control) sendMigrate(s *session, to netip.AddrPort, deadline time.Duration) error {
	dev, leg := s.addr, streamLegAt(s.addr)
	if leg != nil {
		dev = netip.AddrPortFrom(leg.c.ip, 0) // a stream address is no family
	}
	m := protocol.MigrateTo{Addr: c.ofFamily(to, dev), Deadline: deadline, Echo: s.lastTID}
	if leg != nil {
		m.Addr, m.Transport = c.streamTarget(leg.c, m.Addr)
	}
	raw, err := protocol.SignMigrateTo(0, &m, s.lastKey)
	if err != nil {
		return err
	}
	c.f.migrations.Add(1)
	c.reply(raw, s.addr)
	return nil
}

// ofFamily is the media address of the peer at to for the device at dev
// (mediaFor): an operator's or conductor's move names a peer by its IPv4
// media address, and an IPv6 device goes to its IPv6 one when it has one.
// Peers are looked up only when to is not of dev's family already (a
// drain picks by family).
func (c *control) ofFamily(to, dev netip.AddrPort) netip.AddrPort {
	if to.Addr().Unmap().Is4() == dev.Addr().Unmap().Is4() {
		return to
	}
	for _, p := range c.peers {
		if p.last.Media == to || p.last.Media6 == to {
			return mediaFor(&p.last, dev)
		}
	}
	return to
}

// streamTarget is where a member on connection sc moving to the forwarder
// at media address to joins: that forwarder's listener of sc's transport,
// of sc's family if it has one, else to itself over UDP (counted).
func (c *control) streamTarget(sc *streamConn, to netip.AddrPort) (netip.AddrPort, protocol.Transport) {
	t := protocol.TransportTCP
	if sc.transport == StreamTLS {
		t = protocol.TransportTLS
	}
	for _, p := range c.peers {
		if p.last.Media != to && p.last.Media6 != to {
			continue
		}
		if a := p.last.Streams.For(t, familySlot(sc.ip) == 1); a.IsValid() {
			c.f.stream.c.migrateTo[sc.transport].Add(1)
			return a, t
		}
		break
	}
	c.f.stream.c.migrateUDP.Add(1)
	return to, protocol.TransportUDP
}

var mStreamMigrate = prometheus.NewDesc("callrelay_forwarder_stream_migrate_total",
	"MigrateTo sent to members on TCP or TLS, by what they name: the target's listener of the member's transport (tcp, tls), or, the target having none, its UDP media address (udp_fallback).",
	[]string{"target"}, nil)

func collectStreamMigrate(ch chan<- prometheus.Metric, s StreamStats) {
	for i, label := range []string{"tcp", "tls"} {
		ch <- prometheus.MustNewConstMetric(mStreamMigrate, prometheus.CounterValue, float64(s.MigrateTo[i]), label)
	}
	ch <- prometheus.MustNewConstMetric(mStreamMigrate, prometheus.CounterValue, float64(s.MigrateUDPFallback), "udp_fallback")
}
