package loadtest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/callrelay/callrelay/client"
)

// Devices behind a network that blocks UDP (issue 19): a share of the
// devices (Transports.TCPShare, drawn per device from its call's seed, so
// a run is repeatable) reaches the forwarders over TCP or TLS only. Such a
// device is given, for each forwarder, a UDP address that swallows
// everything (a socket this process holds and never reads, as a firewall
// that drops UDP), with the forwarder's TCP or TLS listener as that
// address's stream endpoint: the client library tries UDP first, hears
// nothing within its head start, and joins over the stream, as it would
// on such a network; its later tries to go back to UDP fail the same way.

// Transport keys of Result.Transports.
const (
	TransportUDP4 = "udp4"
	TransportUDP6 = "udp6"
	TransportTCP  = "tcp"
	TransportTLS  = "tls"
)

// Transport indexes (member.tr, runner.trans).
const (
	trUDP4 = iota
	trUDP6
	trTCP
	trTLS
	nTransports
)

var transportKeys = [nTransports]string{TransportUDP4, TransportUDP6, TransportTCP, TransportTLS}

// Transports puts a share of the devices on TCP and TLS.
type Transports struct {
	// TCPShare is the fraction, 0..1, of devices whose network blocks UDP:
	// they reach the forwarders over TCP or TLS only. Full engine only.
	TCPShare float64 `json:"tcp_share,omitempty" yaml:"tcp_share,omitempty"`
	// TLSShare is the fraction, 0..1, of those devices that use TLS (as
	// behind a network that passes only 443); the rest use TCP.
	TLSShare float64 `json:"tls_share,omitempty" yaml:"tls_share,omitempty"`
	// Streams are the forwarders' TCP and TLS listeners, one entry per
	// address in Plan.Forwarders (forwarder --tcp-listen, --tls-listen):
	// each needs a TCP listener when TLSShare < 1 and a TLS one when
	// TLSShare > 0.
	Streams []ForwarderStreams `json:"streams,omitempty" yaml:"streams,omitempty"`
	// TLSServerName is the name the TLS listeners' certificates must
	// carry (empty: the listener's IP address).
	TLSServerName string `json:"tls_server_name,omitempty" yaml:"tls_server_name,omitempty"`
	// TLSRoots are the PEM certificates that the TLS listeners'
	// certificates must chain to (empty: the system's roots). Public
	// certificates: they travel to agents with the plan.
	TLSRoots string `json:"tls_roots,omitempty" yaml:"tls_roots,omitempty"`
	// Metrics are the forwarders' Prometheus endpoints (forwarder
	// --metrics-listen), read before and after the run for what their TCP
	// and TLS legs dropped from their send queues (Result.StreamQueue).
	Metrics []string `json:"metrics,omitempty" yaml:"metrics,omitempty"`
}

// ForwarderStreams are one forwarder's stream listeners.
type ForwarderStreams struct {
	// Forwarder is the forwarder's UDP address, as in Plan.Forwarders.
	Forwarder netip.AddrPort `json:"forwarder" yaml:"forwarder"`
	TCP       netip.AddrPort `json:"tcp,omitzero" yaml:"tcp,omitempty"`
	TLS       netip.AddrPort `json:"tls,omitzero" yaml:"tls,omitempty"`
}

// validateTransports checks the transports part of the plan.
func (p Plan) validateTransports() []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrPlan}, a...)...))
	}
	t := p.Transports
	if t.TCPShare < 0 || t.TCPShare > 1 {
		bad("transports.tcp_share (--tcp-share) = %v, want 0..1 (the fraction of devices that reach the forwarders over TCP or TLS only)", t.TCPShare)
	}
	if t.TLSShare < 0 || t.TLSShare > 1 {
		bad("transports.tls_share (--tls-share) = %v, want 0..1 (the fraction of the TCP devices that use TLS)", t.TLSShare)
	}
	if t.TLSShare > 0 && t.TCPShare == 0 {
		bad("transports.tls_share (--tls-share) splits the tcp_share devices between TCP and TLS: give tcp_share (--tcp-share) too")
	}
	if t.TCPShare > 0 && p.Engine == EngineFast {
		bad("transports.tcp_share (--tcp-share) needs the full engine: the fast engine speaks UDP only (drop --engine fast or --tcp-share)")
	}
	if t.TLSRoots != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(t.TLSRoots)) {
		bad("transports.tls_roots (--tls-ca) holds no PEM certificate")
	}
	for i, u := range t.Metrics {
		if err := validMetricsURL(u); err != nil {
			bad("transports.metrics[%d] (--forwarder-metrics) = %q: %v", i, u, err)
		}
	}
	byFwd := make(map[netip.AddrPort]ForwarderStreams, len(t.Streams))
	for i, s := range t.Streams {
		if !s.Forwarder.IsValid() || !p.hasForwarder(s.Forwarder) {
			bad("transports.streams[%d].forwarder = %q is not one of the forwarders", i, s.Forwarder)
		}
		if (s.TCP.IsValid() && s.TCP.Port() == 0) || (s.TLS.IsValid() && s.TLS.Port() == 0) {
			bad("transports.streams[%d]: tcp and tls need a port", i)
		}
		byFwd[s.Forwarder] = s
	}
	if t.TCPShare == 0 {
		return errs
	}
	for _, f := range p.Forwarders {
		s := byFwd[f]
		if t.TLSShare < 1 && !s.TCP.IsValid() {
			bad("forwarder %s has no TCP listener in transports.streams (--tcp-addrs), needed with tcp_share > 0 and tls_share < 1", f)
		}
		if t.TLSShare > 0 && !s.TLS.IsValid() {
			bad("forwarder %s has no TLS listener in transports.streams (--tls-addrs), needed with tls_share > 0", f)
		}
	}
	return errs
}

func (p Plan) hasForwarder(a netip.AddrPort) bool {
	for _, f := range p.Forwarders {
		if f == a {
			return true
		}
	}
	return false
}

// drawNets is, by member index, how each member of a call reaches the
// forwarders: trTCP or trTLS for a device whose network blocks UDP, else
// trUDP4 (its family is known only once it joined, see udpIndex); nil
// when every device uses UDP. Drawn from the call's seed alone.
func drawNets(seed uint64, size int, t Transports) []uint8 {
	if t.TCPShare <= 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x7c9))
	nets := make([]uint8, size)
	for i := range nets {
		stream, secure := rng.Float64() < t.TCPShare, rng.Float64() < t.TLSShare // two draws each, always
		switch {
		case stream && secure:
			nets[i] = trTLS
		case stream:
			nets[i] = trTCP
		}
	}
	return nets
}

// streamNet is what the devices behind a UDP-blocking network use: the
// swallowing UDP addresses (one per forwarder) and, per stream transport,
// the client configuration's Forwarders and Streams.
type streamNet struct {
	holes []*net.UDPConn
	// fwds are the swallowing addresses, in Plan.Forwarders' order;
	// streams[i] maps each to forwarder i's listener of transport
	// trTCP+i.
	fwds    []netip.AddrPort
	streams [2]map[netip.AddrPort]client.StreamEndpoints
	tls     *tls.Config
}

// openStreamNet opens the swallowing sockets for p (nil when no device
// uses TCP or TLS); close releases them.
func openStreamNet(p Plan) (*streamNet, error) {
	t := p.Transports
	if t.TCPShare <= 0 {
		return nil, nil
	}
	host := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if p.LocalAddr.IsValid() && !p.LocalAddr.IsUnspecified() {
		host = p.LocalAddr // reachable from sockets bound there
	}
	sn := &streamNet{streams: [2]map[netip.AddrPort]client.StreamEndpoints{{}, {}},
		tls: &tls.Config{ServerName: t.TLSServerName, MinVersion: tls.VersionTLS12}}
	if t.TLSRoots != "" {
		sn.tls.RootCAs = x509.NewCertPool()
		sn.tls.RootCAs.AppendCertsFromPEM([]byte(t.TLSRoots))
	}
	byFwd := make(map[netip.AddrPort]ForwarderStreams, len(t.Streams))
	for _, s := range t.Streams {
		byFwd[s.Forwarder] = s
	}
	for _, f := range p.Forwarders {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(host, 0)))
		if err != nil {
			sn.close()
			return nil, fmt.Errorf("loadtest: a UDP address for the devices without UDP: %w", err)
		}
		sn.holes = append(sn.holes, c)
		hole := c.LocalAddr().(*net.UDPAddr).AddrPort()
		sn.fwds = append(sn.fwds, hole)
		s := byFwd[f]
		if s.TCP.IsValid() {
			sn.streams[0][hole] = client.StreamEndpoints{TCP: s.TCP}
		}
		if s.TLS.IsValid() {
			sn.streams[1][hole] = client.StreamEndpoints{TLS: s.TLS}
		}
	}
	return sn, nil
}

func (sn *streamNet) close() {
	if sn == nil {
		return
	}
	for _, c := range sn.holes {
		_ = c.Close()
	}
}

// configure makes cfg a device's on net tr: a stream device's forwarders
// are the swallowing addresses, with the listeners of its transport.
func (sn *streamNet) configure(cfg *client.Config, tr uint8) {
	if sn == nil || (tr != trTCP && tr != trTLS) {
		return
	}
	cfg.Forwarders = sn.fwds
	cfg.Streams = sn.streams[tr-trTCP]
	cfg.TLSConfig = sn.tls
}

// joinedOn is the transport index a device of net tr is filed under once
// its join ended (sess nil: refused), and whether it joined over another
// transport than its network allows.
func joinedOn(tr uint8, sess *client.Session, fwds []netip.AddrPort) (uint8, bool) {
	if tr == trTCP || tr == trTLS {
		if sess == nil {
			return tr, false
		}
		got := map[client.Transport]uint8{client.TransportTCP: trTCP, client.TransportTLS: trTLS}[sess.Transport()]
		return tr, got != tr
	}
	if sess == nil {
		return udpIndex(fwds), false
	}
	off := sess.Transport() != client.TransportUDP
	if sess.Forwarder().Addr().Unmap().Is4() {
		return trUDP4, off
	}
	return trUDP6, off
}

// movedOff reports whether a Session event put a device filed under tr
// on another transport than its network allows: a TCP or TLS device
// moved to UDP (a MigrateTo names a forwarder by its UDP address only),
// or a UDP device onto a stream. Counted as OtherTransport.
func movedOff(tr uint8, ev client.SessionEvent) bool {
	switch ev.Kind {
	case client.EventFailover, client.EventRejoined, client.EventMigrated, client.EventTransport:
	default:
		return false
	}
	switch tr {
	case trTCP:
		return ev.Transport != client.TransportTCP
	case trTLS:
		return ev.Transport != client.TransportTLS
	}
	return ev.Transport != client.TransportUDP
}

// udpIndex is where a refused UDP join is filed: udp6 when every
// forwarder is IPv6, else udp4.
func udpIndex(fwds []netip.AddrPort) uint8 {
	for _, f := range fwds {
		if f.Addr().Unmap().Is4() {
			return trUDP4
		}
	}
	if len(fwds) == 0 {
		return trUDP4
	}
	return trUDP6
}

// TransportMeasures are the figures of the devices on one transport over
// the run: their joins and what they received (a device's receiving side
// is filed under its own transport).
type TransportMeasures struct {
	// Setups counts the devices' joins by outcome; SetupSuccessPct and
	// SetupMs as in Measures. A TCP or TLS device's join time includes the
	// client's UDP head start (250 ms): it tries UDP first.
	Setups          Setups      `json:"setups"`
	SetupSuccessPct float64     `json:"setup_success_pct"`
	SetupMs         Percentiles `json:"setup_ms"`
	// OtherTransport counts joins admitted, and later moves (failover,
	// re-join, migration, transport change) made, over another transport
	// than the device's network allows (a fault of the run: 0).
	OtherTransport int         `json:"other_transport"`
	FirstAudioMs   Percentiles `json:"first_audio_ms"`
	// PacketsReceived, PacketsExpected, PacketsLost, LossPct (after NACK)
	// and RawLossPct (before) as in Measures, for the devices' receiving
	// sides; NACKs counts the NACK packets they sent (the forwarders
	// resend nothing over TCP or TLS, which lose nothing on the way; the
	// client's Feedback NACKs a gap there all the same).
	PacketsReceived  uint64  `json:"packets_received"`
	PacketsExpected  uint64  `json:"packets_expected"`
	PacketsLost      uint64  `json:"packets_lost"`
	LossPct          float64 `json:"loss_pct"`
	PacketsRecovered uint64  `json:"packets_recovered"`
	RawLossPct       float64 `json:"raw_loss_pct"`
	NACKs            uint64  `json:"nacks"`
	// DelayMs is the one-way delay to these devices; JitterMs the mean
	// interarrival jitter, MaxGapMs the longest gap in a stream.
	DelayMs         Percentiles `json:"delay_ms"`
	JitterMs        float64     `json:"jitter_ms"`
	MaxGapMs        float64     `json:"max_gap_ms"`
	DecryptFailures uint64      `json:"decrypt_failures"`
}

func (w *window) transportMeasures() TransportMeasures {
	m := w.measures(0)
	return TransportMeasures{Setups: m.Setups, SetupSuccessPct: m.SetupSuccessPct, SetupMs: m.SetupMs,
		OtherTransport: w.offTransport, FirstAudioMs: m.FirstAudioMs,
		PacketsReceived: m.PacketsReceived, PacketsExpected: m.PacketsExpected, PacketsLost: m.PacketsLost,
		LossPct: m.LossPct, PacketsRecovered: m.PacketsRecovered, RawLossPct: m.RawLossPct, NACKs: m.Feedback.NACKs,
		DelayMs: m.DelayMs, JitterMs: m.JitterMs, MaxGapMs: m.MaxGapMs, DecryptFailures: m.DecryptFailures}
}

// transportWindows are the run's windows per transport.
type transportWindows [nTransports]window

// result is the transports that had devices, by key (nil: none).
func (t *transportWindows) result() map[string]TransportMeasures {
	var out map[string]TransportMeasures
	for i := range t {
		if t[i].setups.Attempted == 0 {
			continue
		}
		if out == nil {
			out = make(map[string]TransportMeasures)
		}
		out[transportKeys[i]] = t[i].transportMeasures()
	}
	return out
}

// data is t in mergeable form, by key (nil: no device).
func (t *transportWindows) data() map[string]WindowData {
	var out map[string]WindowData
	for i := range t {
		if t[i].setups.Attempted == 0 {
			continue
		}
		if out == nil {
			out = make(map[string]WindowData)
		}
		out[transportKeys[i]] = t[i].data()
	}
	return out
}

// add merges an agent's transports into t (a key this version does not
// know, from a newer agent, is left out).
func (t *transportWindows) add(d map[string]WindowData) {
	for k, wd := range d {
		if i := indexOf(k); i >= 0 {
			w := wd.window()
			t[i].merge(&w)
		}
	}
}

func indexOf(key string) int {
	for i, k := range transportKeys {
		if k == key {
			return i
		}
	}
	return -1
}
