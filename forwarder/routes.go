package forwarder

import (
	"net/netip"

	"github.com/callrelay/callrelay/protocol"
)

// routes is an immutable snapshot of who forwards to whom. Readers load it
// through an atomic pointer for every batch and never lock; the control path
// builds a new one on every membership or address change (copy-on-write).
type routes struct {
	bySrc map[netip.AddrPort]*route
}

// route is one joined session as the data path sees it.
type route struct {
	call  protocol.ID
	dests []sockaddr // the other members of the call on this forwarder
}

// buildRoutes derives a whole snapshot from the session table.
func buildRoutes(calls map[protocol.ID]*call, v6socket bool) *routes {
	r := &routes{bySrc: make(map[netip.AddrPort]*route)}
	for _, c := range calls {
		addCallRoutes(r.bySrc, c, v6socket)
	}
	return r
}

// addCallRoutes (re)writes the routes of one call's members into m. Cost is
// the call's size squared: fine for calls of tens, paid on changes only.
func addCallRoutes(m map[netip.AddrPort]*route, c *call, v6socket bool) {
	addrs := make([]sockaddr, 0, len(c.members))
	for _, s := range c.members {
		addrs = append(addrs, encodeSockaddr(s.addr, v6socket))
	}
	for _, s := range c.members {
		dests := make([]sockaddr, 0, len(addrs)-1)
		for _, a := range addrs {
			if a.ap != s.addr {
				dests = append(dests, a)
			}
		}
		m[s.addr] = &route{call: c.id, dests: dests}
	}
}
