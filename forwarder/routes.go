package forwarder

import (
	"net/netip"

	"github.com/callrelay/callrelay/protocol"
)

// routes is an immutable snapshot of who forwards to whom. Readers load it
// through an atomic pointer for every batch and never lock; the control path
// builds a new one on every membership or address change (copy-on-write).
type routes struct {
	bySrc  map[netip.AddrPort]*route  // media from a local member
	byCall map[protocol.ID]*callRoute // trunk frames into a call
}

// route is one joined session as the data path sees it.
type route struct {
	call        protocol.ID
	participant protocol.ID
	dests       []sockaddr // the other members of the call on this forwarder
	trunks      []sockaddr // one per other forwarder serving members of the call
	media       *mediaInfo // the session's, where the data path notes SSRCs
	group       bool       // a group call: its video is shed first under overload
}

// callRoute is where a trunk frame of the call goes: every local member but
// its sender.
type callRoute struct {
	members []memberDest
}

type memberDest struct {
	participant protocol.ID
	sa          sockaddr
}

// addCallRoutes (re)writes the routes of one call's members into r. Cost is
// the call's size squared: fine for calls of tens, paid on changes only.
func addCallRoutes(r *routes, c *call, trunks []netip.AddrPort, v6socket, trunkV6 bool) {
	cr := &callRoute{members: make([]memberDest, 0, len(c.members))}
	for _, s := range c.members {
		cr.members = append(cr.members, memberDest{s.participant, encodeSockaddr(s.addr, v6socket)})
	}
	var ts []sockaddr
	for _, t := range trunks {
		ts = append(ts, encodeSockaddr(t, trunkV6))
	}
	for _, s := range c.members {
		dests := make([]sockaddr, 0, len(cr.members)-1)
		for _, m := range cr.members {
			if m.sa.ap != s.addr {
				dests = append(dests, m.sa)
			}
		}
		r.bySrc[s.addr] = &route{call: c.id, participant: s.participant, dests: dests, trunks: ts, media: s.media,
			group: c.class == protocol.ClassGroup}
	}
	if len(cr.members) > 0 {
		r.byCall[c.id] = cr
	}
}

// buildRoutes derives a whole snapshot from the session table, with no
// other forwarders (tests and benchmarks).
func buildRoutes(calls map[protocol.ID]*call, v6socket bool) *routes {
	r := &routes{bySrc: make(map[netip.AddrPort]*route), byCall: make(map[protocol.ID]*callRoute)}
	for _, c := range calls {
		addCallRoutes(r, c, nil, v6socket, false)
	}
	return r
}
