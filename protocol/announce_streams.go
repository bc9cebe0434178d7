package protocol

import (
	"fmt"
	"net/netip"
)

// Transport is how a device reaches a forwarder (README.md section 9): the
// transport byte of a MigrateTo (5.7), and the kind of a stream listener in
// a ForwarderAnnounce (7.2).
type Transport uint8

// Transports. Other values are invalid.
const (
	TransportUDP Transport = 0
	TransportTCP Transport = 1
	TransportTLS Transport = 2
)

func (t Transport) String() string {
	switch t {
	case TransportUDP:
		return "udp"
	case TransportTCP:
		return "tcp"
	case TransportTLS:
		return "tls"
	}
	return fmt.Sprintf("transport-%d", uint8(t))
}

// StreamListeners are a forwarder's TCP and TLS listeners as devices reach
// them, by [transport-1][family]: [0] TCP, [1] TLS; family 0 IPv4, 1 IPv6.
// A zero address: no such listener (or not on that family).
type StreamListeners [2][2]netip.AddrPort

// For is the listener of transport t (TCP or TLS) for a device on IPv6
// (v6) or IPv4: the one of the device's family if there is one, else the
// other family's, else the zero address.
func (l *StreamListeners) For(t Transport, v6 bool) netip.AddrPort {
	if t != TransportTCP && t != TransportTLS {
		return netip.AddrPort{}
	}
	pair := l[t-1]
	first, second := pair[0], pair[1]
	if v6 {
		first, second = second, first
	}
	if first.IsValid() {
		return first
	}
	return second
}

func (l *StreamListeners) count() int {
	n := 0
	for _, pair := range l {
		for _, a := range pair {
			if a.IsValid() {
				n++
			}
		}
	}
	return n
}

// announceFlagStreams (0x04): the stream listener section follows the
// media6 address (if any): a count n (1..4), then n entries, each a
// transport byte (1 TCP, 2 TLS) and an address (family, port, address), in
// ascending (transport, family) order, each pair at most once.
const announceFlagStreams = 0x04

func (l *StreamListeners) check() error {
	for t, pair := range l {
		for fam, a := range pair {
			if a == (netip.AddrPort{}) {
				continue
			}
			what := fmt.Sprintf("%s listener", Transport(t+1))
			if err := clusterCheckAddr(what, a, false, true); err != nil {
				return err
			}
			if a.Addr().Is4In6() || a.Addr().Is4() != (fam == 0) {
				return fmt.Errorf("%w: %s %s is in the wrong family slot", ErrClusterMsgInvalid, what, a)
			}
		}
	}
	return nil
}

func (l *StreamListeners) appendTo(b []byte) []byte {
	b = append(b, byte(l.count()))
	for t, pair := range l {
		for _, a := range pair {
			if a.IsValid() {
				b = appendClusterAddr(append(b, byte(t+1)), a)
			}
		}
	}
	return b
}

// readStreamListeners decodes the section and returns the rest.
func readStreamListeners(b []byte) (StreamListeners, []byte, error) {
	var l StreamListeners
	if len(b) < 1 {
		return l, nil, fmt.Errorf("%w: stream listeners truncated", ErrClusterMsgInvalid)
	}
	n, rest := int(b[0]), b[1:]
	if n < 1 || n > 4 {
		return l, nil, fmt.Errorf("%w: %d stream listeners, want 1 to 4", ErrClusterMsgInvalid, n)
	}
	last := -1
	for range n {
		if len(rest) < 2 {
			return l, nil, fmt.Errorf("%w: stream listener truncated", ErrClusterMsgInvalid)
		}
		t, family := Transport(rest[0]), rest[1]
		if t != TransportTCP && t != TransportTLS {
			return l, nil, fmt.Errorf("%w: stream listener transport %d", ErrClusterMsgInvalid, t)
		}
		a, r, err := readClusterAddr(t.String()+" listener", rest[1:])
		if err != nil {
			return l, nil, err
		}
		if !a.IsValid() || (family == clusterFamilyIPv6) == a.Addr().Is4() {
			return l, nil, fmt.Errorf("%w: %s listener %q: want IPv4 or (not v4-mapped) IPv6", ErrClusterMsgInvalid, t, a.String())
		}
		slot := 2*int(t-1) + int(family-1)
		if slot <= last {
			return l, nil, fmt.Errorf("%w: stream listeners out of order or repeated", ErrClusterMsgInvalid)
		}
		last = slot
		l[t-1][family-1] = a
		rest = r
	}
	return l, rest, l.check()
}
