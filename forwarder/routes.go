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
	dests       []dest                // the other members of the call on this forwarder
	trunks      []sockaddr            // one per other forwarder serving members of the call
	media       *mediaInfo            // the session's, where the data path notes SSRCs
	group       bool                  // a group call: its video is shed first under overload
	cr          *callRoute            // the call's, for NACKs and key-frame requests
	rxPairs     map[protocol.ID]*pair // as a receiver: the video pair from each sender (nil: not subscribed)
	hold        uint8                 // media an operator holds (holdAudio, holdVideo): not forwarded
}

// dest is one receiver of a sender's packets.
type dest struct {
	sa   sockaddr
	rx   *mediaInfo // the receiver's: its leg's accounting and feedback
	pair *pair      // the sender's video to this receiver; nil: not subscribed
	leg  *streamLeg // a TCP or TLS member's send queue (stream_leg.go); nil: UDP
}

// callRoute is where a trunk frame of the call goes: every local member but
// its sender. senders are the call's senders whose packets this forwarder
// sees (local members, and remote ones through the trunk), for NACKs.
type callRoute struct {
	members []memberDest
	remote  map[protocol.ID]*trunkSender // by remote participant
	senders []senderRef
}

type senderRef struct {
	id    protocol.ID
	media *mediaInfo
}

type memberDest struct {
	participant protocol.ID
	sa          sockaddr
	rx          *mediaInfo
	leg         *streamLeg // nil: UDP
}

// trunkSender is a remote member as the trunk reader sees it: its media
// (NACK cache, video meter) and its video pair to each local member, in
// the order of callRoute.members (nil: not subscribed).
type trunkSender struct {
	media *mediaInfo
	pairs []*pair
}

// addCallRoutes (re)writes the routes of one call's members into r. Cost is
// the call's size squared: fine for calls of tens, paid on changes only.
func addCallRoutes(r *routes, c *call, trunks []netip.AddrPort, v6socket, trunkV6 bool) {
	cr := &callRoute{members: make([]memberDest, 0, len(c.members))}
	local := make([]*session, 0, len(c.members))
	for _, s := range c.members {
		cr.members = append(cr.members, memberDest{s.participant, encodeSockaddr(s.addr, v6socket), s.media, streamLegAt(s.addr)})
		cr.senders = append(cr.senders, senderRef{s.participant, s.media})
		local = append(local, s)
	}
	for id, m := range c.remoteMedia {
		ts := &trunkSender{media: m, pairs: make([]*pair, len(local))}
		for i, rx := range local {
			if rx.participant != id { // a member also served here, moving (syncRemoteSenders): no pair to itself
				ts.pairs[i] = rx.pairFor(id)
			}
		}
		if cr.remote == nil {
			cr.remote = make(map[protocol.ID]*trunkSender, len(c.remoteMedia))
		}
		cr.remote[id] = ts
		cr.senders = append(cr.senders, senderRef{id, m})
	}
	var ts []sockaddr
	for _, t := range trunks {
		ts = append(ts, encodeSockaddr(t, trunkV6))
	}
	for _, s := range local {
		dests := make([]dest, 0, len(cr.members)-1)
		for i, m := range cr.members {
			if m.sa.ap != s.addr {
				dests = append(dests, dest{sa: m.sa, rx: m.rx, pair: local[i].pairFor(s.participant), leg: m.leg})
			}
		}
		rx := make(map[protocol.ID]*pair, len(cr.senders))
		for _, sr := range cr.senders {
			if sr.id != s.participant {
				if p := s.pairFor(sr.id); p != nil {
					rx[sr.id] = p
				}
			}
		}
		r.bySrc[s.addr] = &route{call: c.id, participant: s.participant, dests: dests, trunks: ts, media: s.media,
			group: c.class == protocol.ClassGroup, cr: cr, rxPairs: rx, hold: s.hold}
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
		syncMoveTracks(c)
		addCallRoutes(r, c, nil, v6socket, false)
	}
	return r
}
