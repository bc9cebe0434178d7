package forwarder

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Resumption (protocol/README.md 2.1). A join token gates starting a
// session; once admitted, a session is given a resumption ticket in its
// join answer and a fresh one in a keepalive answer every TicketLifetime/5.
// A device whose token has expired comes back (failover, MigrateTo, Rejoin,
// drain) with its token and its latest ticket, on any forwarder of the
// cluster: the ticket admits exactly the participant it was issued to, into
// the call it was issued for, as a rejoin (never refused by the throttle),
// and only while that call lives: here, or in the store. It never starts a
// call. Tickets are sealed with the cluster key's ticket subkey; a
// forwarder without a cluster key seals them with a random key of its own,
// so they resume sessions on that process only.

// resumeRefusal says why a resumption was refused (answered 401).
type resumeRefusal uint8

const (
	resumeMalformed resumeRefusal = iota
	resumeForeign
	resumeForged
	resumeExpired
	resumeMismatch
	resumeCallEnded // the ticket is good but its call is gone: it cannot start one
	resumeNoTicket  // the token has expired and no ticket came with it
	numResumeRefusals
)

var resumeRefusalNames = [numResumeRefusals]string{"malformed", "foreign", "forged", "expired", "mismatch", "call_ended", "no_ticket"}

// resumeRefusalText is the reason phrase of each 401: fixed, nothing of the
// request echoed.
var resumeRefusalText = [numResumeRefusals]string{
	"resumption ticket malformed",
	"resumption ticket from another cluster or a restarted forwarder",
	"resumption ticket forged",
	"resumption ticket expired",
	"resumption ticket is for another participant or token",
	"call has ended: a resumption ticket cannot start a call",
	"token expired and no resumption ticket",
}

func refusalOf(reason string) resumeRefusal {
	for i, n := range resumeRefusalNames {
		if n == reason {
			return resumeRefusal(i)
		}
	}
	return resumeMalformed
}

// resumeCounters are the control goroutine's, read by Stats.
type resumeCounters struct {
	issued, resumed, rejoins, ignored atomic.Uint64
	refused                           [numResumeRefusals]atomic.Uint64
	device                            deviceCounters // device proofs (device.go)
}

// ResumeStats count resumption tickets and what they did.
type ResumeStats struct {
	TicketsIssued uint64 // tickets sent in join and keepalive answers
	Resumed       uint64 // sessions admitted by a ticket, their token expired
	TicketRejoins uint64 // joins with a valid token whose ticket made them rejoins
	// TicketsIgnored: tickets refused beside a valid token (the token alone
	// admitted the join).
	TicketsIgnored uint64
	// Refused counts resumptions refused, by reason (ResumeRefusalNames).
	Refused [numResumeRefusals]uint64
	// Device counts device proofs of version 2 tokens (device.go).
	Device DeviceStats
}

// ResumeRefusalNames are the reasons of ResumeStats.Refused, in order.
func ResumeRefusalNames() []string { return resumeRefusalNames[:] }

func (r *resumeCounters) stats() ResumeStats {
	s := ResumeStats{TicketsIssued: r.issued.Load(), Resumed: r.resumed.Load(),
		TicketRejoins: r.rejoins.Load(), TicketsIgnored: r.ignored.Load()}
	for i := range s.Refused {
		s.Refused[i] = r.refused[i].Load()
	}
	s.Device = r.device.stats()
	return s
}

// joinGrant is what a verified join may be admitted as.
type joinGrant struct {
	ticket bool // an authentic ticket for this participant and token came with it: a rejoin
	resume bool // the token has expired: only the ticket admits it, and only into a live call
	looked bool // resume: the store has been asked whether the call lives
	live   bool // looked: it does, or the store could not say
}

// ticketKeyOf is the cluster key's ticket subkey, or a random key of this
// process when there is no cluster key.
func ticketKeyOf(cfg *Config) *protocol.TicketKey {
	if !cfg.Cluster.Key.IsZero() {
		return cfg.Cluster.Key.TicketKey()
	}
	k, err := protocol.NewTicketKey()
	if err != nil {
		panic("forwarder: " + err.Error()) // crypto/rand failed: nothing is safe
	}
	return k
}

// verifyJoin verifies a request's token or, when the token has expired,
// its resumption ticket. When it returns false it has answered the refusal.
func (c *control) verifyJoin(src netip.AddrPort, req protocol.JoinRequest, now time.Time) (protocol.Token, joinGrant, bool) {
	f := c.f
	tok, err := protocol.VerifyJoin(req, f.cfg.Verifier, now)
	switch {
	case err == nil && len(req.Ticket) == 0:
		return tok, joinGrant{}, true
	case err == nil:
		if _, terr := protocol.CheckTicket(req, tok, c.tickets, now); terr != nil {
			f.resume.ignored.Add(1) // the token alone admits it, as a join of its own
			return tok, joinGrant{}, true
		}
		return tok, joinGrant{ticket: true}, true
	case errors.Is(err, protocol.ErrTokenExpired) && len(req.Ticket) == 0:
		c.refuseResume(src, req, resumeNoTicket)
		return tok, joinGrant{}, false
	case errors.Is(err, protocol.ErrTokenExpired):
		tok, _, err = protocol.VerifyResume(req, f.cfg.Verifier, c.tickets, now)
		if err == nil {
			return tok, joinGrant{ticket: true, resume: true}, true
		}
		if reason := protocol.TicketRefusal(err); reason != "" {
			c.refuseResume(src, req, refusalOf(reason))
			return tok, joinGrant{}, false
		}
	}
	c.refuseFor(src, req, err)
	return tok, joinGrant{}, false
}

// refuseResume answers 401 with the refusal's fixed reason, and counts it.
func (c *control) refuseResume(src netip.AddrPort, req protocol.JoinRequest, why resumeRefusal) {
	c.f.resume.refused[why].Add(1)
	c.refuse(src, req, protocol.CodeUnauthorized, resumeRefusalText[why])
}

// callLives decides whether a resumption may be admitted into call cl (nil:
// not served here): a ticket resumes a participant into a call that still
// has a member here or a record in the store, never into one that has
// ended. Without a record to read it asks the store (the join is answered
// when the answer is back) and returns false; a call the store cannot tell
// about counts as live: availability first, and the ticket's validity bounds
// the risk. On false it has answered or will answer.
func (c *control) callLives(src netip.AddrPort, req protocol.JoinRequest, tok protocol.Token, cl *call, g joinGrant) bool {
	switch {
	case cl != nil:
		return true
	case g.looked && g.live:
		return true
	case g.looked || c.f.cfg.Cluster.Store == nil:
		c.refuseResume(src, req, resumeCallEnded)
		return false
	}
	c.startLookup(src, req, tok, g)
	return false
}

// lookedUp completes a waiting resumption's grant with the store's answer.
func lookedUp(l *lookup) joinGrant {
	g := l.grant
	if g.resume {
		g.looked = true
		g.live = l.found && len(l.rec.Members) > 0 || !l.found && l.err != nil && !errors.Is(l.err, statestore.ErrNotFound)
	}
	return g
}

// admittedBy counts a session admitted with a ticket.
func (c *control) admittedBy(g joinGrant, s *session) {
	switch {
	case g.resume:
		c.f.resume.resumed.Add(1)
		s.log.Info("session resumed by ticket")
	case g.ticket:
		c.f.resume.rejoins.Add(1)
	}
}

// ticketRefresh is how old a session's ticket may grow before a keepalive
// answer carries a new one: a fifth of its lifetime, so that four lost
// answers in a row still leave the device a valid ticket.
func (c *control) ticketRefresh() time.Duration { return c.f.cfg.TicketLifetime / 5 }

// ticketFor is a new ticket for s when one is due (always with force: a
// join, or a keepalive with a new token), else nil.
func (c *control) ticketFor(s *session, now time.Time, force bool) []byte {
	if !force && !s.ticketAt.IsZero() && now.Sub(s.ticketAt) < c.ticketRefresh() {
		return nil
	}
	tok, err := protocol.DecodeToken(s.token) // verified when it was taken
	if err != nil {
		return nil
	}
	b, err := c.tickets.Seal(protocol.TicketFor(tok, s.token, now, c.f.cfg.TicketLifetime))
	if err != nil {
		s.log.Error("sealing a resumption ticket", zap.Error(err))
		return nil
	}
	s.ticketAt = now
	c.f.resume.issued.Add(1)
	return b
}

// acceptSession answers a member's keepalive or address change, with a new
// ticket when one is due or the session's token has just changed. A
// retransmission of the admitting join whose answer still waits for its
// store write is not answered (the held answer goes out when the write
// lands; answering it now would tell the device it joined before the call's
// record says so) and acceptSession reports false.
func (c *control) acceptSession(src netip.AddrPort, req protocol.JoinRequest, s *session, newToken bool, now time.Time) bool {
	if s.joinHeld && req.TransactionID == s.lastTID {
		return false
	}
	c.takeRTTs(s, &req) // authenticated: for the conductor (placement_move.go)
	if raw, err := c.successFor(src, req, s, c.ticketFor(s, now, newToken)); err == nil {
		s.lastTID, s.lastKey = req.TransactionID, s.key
		c.reply(raw, src)
	}
	return true
}

var (
	mTickets = prometheus.NewDesc("callrelay_forwarder_resume_tickets_issued_total",
		"Resumption tickets sent to sessions, in join answers and keepalive answers.", nil, nil)
	mResumed = prometheus.NewDesc("callrelay_forwarder_resumptions_total",
		"Sessions admitted by a resumption ticket: resumed (their token had expired) or rejoin (a valid token, made a rejoin by its ticket).", []string{"kind"}, nil)
	mResumeRefused = prometheus.NewDesc("callrelay_forwarder_resumption_refusals_total",
		"Resumptions refused (401), by reason: malformed, foreign (another cluster or a restarted forwarder), forged, expired, mismatch (another participant or token), call_ended, no_ticket (an expired token alone).", []string{"reason"}, nil)
	mTicketsIgnored = prometheus.NewDesc("callrelay_forwarder_resume_tickets_ignored_total",
		"Tickets refused beside a valid token: the token alone admitted the join.", nil, nil)
)

func describeResume(ch chan<- *prometheus.Desc) {
	ch <- mTickets
	ch <- mResumed
	ch <- mResumeRefused
	ch <- mTicketsIgnored
	describeDevice(ch)
}

func collectResume(ch chan<- prometheus.Metric, r ResumeStats) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(mTickets, r.TicketsIssued)
	counter(mResumed, r.Resumed, "resumed")
	counter(mResumed, r.TicketRejoins, "rejoin")
	counter(mTicketsIgnored, r.TicketsIgnored)
	for i, n := range r.Refused {
		counter(mResumeRefused, n, resumeRefusalNames[i])
	}
	collectDevice(ch, r.Device)
}
