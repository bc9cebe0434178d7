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

// buildRoutes derives the snapshot from the session table. Cost is the sum
// of call sizes squared: fine for calls of tens, paid on changes only.
func buildRoutes(calls map[protocol.ID]*call, v6socket bool) *routes {
	r := &routes{bySrc: make(map[netip.AddrPort]*route)}
	for id, c := range calls {
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
			r.bySrc[s.addr] = &route{call: id, dests: dests}
		}
	}
	return r
}
