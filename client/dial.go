package client

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Dial joins the call named by cfg.Token on the first of cfg.Forwarders that
// accepts, and returns the joined Conn.
//
// The join goes to every candidate at once (duplicates in cfg.Forwarders
// count once), each from its own UDP socket, and is retransmitted with
// exponential backoff (RetransmitInitial, doubling up to RetransmitMax) until
// an authenticated answer, ctx's end or JoinTimeout, whichever comes first.
// The first success wins; the other sockets are closed, and a candidate that
// also accepts (now or within LoserGrace) is sent a leave so it frees the
// session. Answers:
//   - 401 with a COOKIE is the forwarder's address check: the join is
//     repeated at once, as a new transaction, with that cookie (kept per
//     socket for later requests). At most maxCookieRounds in a row; one more
//     is a refusal, so a broken forwarder cannot loop the device;
//   - 300 Try Alternate adds ALTERNATE-SERVER as a new candidate, at most
//     MaxAlternates times per Dial and never an address already tried;
//   - 508 retries that forwarder with a new transaction after its
//     retry-after (capped by MaxRetryAfter) plus up to 20% jitter;
//   - 400, 401 without a cookie, 403 end that candidate. When every
//     candidate has ended, Dial fails with ErrJoinRejected wrapping one
//     *JoinError per refusal.
//
// Answers that fail MESSAGE-INTEGRITY are ignored and counted
// (Stats.Unauthenticated). On timeout Dial fails with ErrJoinTimeout,
// wrapping any refusal seen meanwhile. Dial leaves no goroutine behind when
// it fails.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(cfg.Streams) > 0 {
		return dialRace(ctx, cfg) // UDP first, then TCP and TLS (transport.go)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w (%w): not started", ErrJoinTimeout, err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.JoinTimeout)
	defer cancel()
	d := newDialer(cfg)
	go d.run(ctx)
	res := <-d.result
	if res.err != nil {
		<-d.done
		return nil, res.err
	}
	return newConn(cfg, d, res), nil
}

type dialEvent struct {
	c     *candidate
	tid   [stun.TransactionIDSize]byte // the transaction resp answers
	token []byte                       // the token that transaction carried
	resp  protocol.JoinResponse
	err   error // the socket failed
	at    time.Time
}

type dialResult struct {
	win    *candidate
	resp   protocol.JoinResponse
	cookie []byte // the winner socket's address cookie
	// joinTID is the transaction the winner accepted, joinToken the token
	// it carried (a MigrateTo may echo it).
	joinTID   [stun.TransactionIDSize]byte
	joinToken []byte
	err       error
}

// dialer runs the multi-connect state machine in one goroutine (run); one
// reader goroutine per candidate socket feeds it authenticated answers.
// Candidate state is touched only by run.
type dialer struct {
	cfg        Config
	log        *zap.Logger
	stats      *counters
	cands      []*candidate
	winner     *candidate
	alternates int
	held       *dialEvent // a success held while IPv6 or a nearer candidate may answer (ipv6.go)
	heldUntil  time.Time
	rttSeen    map[*candidate]time.Duration // each candidate's least RTT in this Dial (nearer.go)

	events   chan dialEvent
	result   chan dialResult // exactly one value
	quit     chan struct{}   // closed when run ends: readers stop
	stop     chan struct{}   // closed by Conn.Close: end the loser grace now
	stopOnce sync.Once
	done     chan struct{} // closed when run has returned and readers exited
	readers  sync.WaitGroup

	// losersMeasured is closed once no loser's join is unanswered and at
	// least one answered with its RTT measured (loserRTTs): the Conn then
	// sends a keepalive at once, so that the RTTs to every candidate reach
	// the conductor about a round trip after the join, not a keepalive
	// interval later (the first keepalive, sent as the race is won, can
	// carry only the winner's).
	losersMeasured     chan struct{}
	loserRTTs, pointed bool
}

func newDialer(cfg Config) *dialer {
	tok, _ := protocol.DecodeToken(cfg.Token) // checked by withDefaults
	return &dialer{
		cfg:    cfg,
		log:    cfg.Logger.With(zap.Stringer("call", tok.CallID), zap.Stringer("participant", tok.ParticipantID)),
		stats:  new(counters),
		events: make(chan dialEvent),
		result: make(chan dialResult, 1),
		quit:   make(chan struct{}),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),

		losersMeasured: make(chan struct{}),
	}
}

// cancelGrace ends the loser grace early and waits for run to return.
func (d *dialer) cancelGrace() {
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.done
}

func (d *dialer) run(ctx context.Context) {
	defer close(d.done)
	defer d.shutdown()
	d.log.Debug("joining", zap.Int("candidates", len(d.cfg.Forwarders)))
	for _, a := range d.cfg.Forwarders {
		d.add(a)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for d.winner == nil {
		if d.heldWins(time.Now()) {
			break
		}
		if err := d.finalError(ctx); err != nil {
			d.result <- dialResult{err: err}
			return
		}
		timer.Reset(time.Until(d.nextDue()))
		select {
		case <-ctx.Done():
			d.result <- dialResult{err: d.timeoutError(ctx.Err())}
			return
		case ev := <-d.events:
			d.handle(ev)
		case <-timer.C:
			d.tick(time.Now())
		}
	}
	d.drainLosers()
}

// add opens a socket to addr, sends the join and starts its reader.
func (d *dialer) add(addr netip.AddrPort) {
	c := &candidate{addr: addr, resume: make(chan struct{}, 1)}
	d.cands = append(d.cands, c)
	sock, err := openSocket(d.cfg.LocalAddr, d.cfg.route(addr))
	if err != nil {
		c.state, c.closed, c.err = candDone, true, fmt.Errorf("client: forwarder %s: %w", addr, err)
		d.log.Info("cannot try forwarder", zap.Stringer("forwarder", addr), zap.Error(err))
		return
	}
	c.sock = sock
	tx, err := newTransaction(d.cfg.creds, protocol.JoinOptions{}, nil)
	if err != nil {
		d.drop(c, err)
		return
	}
	c.tx.Store(tx) // before the reader starts: it parses answers against it
	d.readers.Add(1)
	go d.read(c)
	d.begin(c, tx)
}

// start begins a new transaction on c (a retry after 508, a repeat with a
// new cookie, a leave) and sends it at once. On failure c is dropped.
func (d *dialer) start(c *candidate, o protocol.JoinOptions) bool {
	tx, err := newTransaction(d.cfg.creds, o, nil) // with a v2 token, every request of Dial's carries a proof
	if err != nil {
		d.drop(c, fmt.Errorf("client: forwarder %s: %w", c.addr, err))
		return false
	}
	c.tx.Store(tx)
	d.begin(c, tx)
	return true
}

// begin sends tx, c's current transaction, for the first time.
func (d *dialer) begin(c *candidate, tx *transaction) {
	now := time.Now()
	c.rto, c.sentAt = d.cfg.RetransmitInitial, now
	c.due = now.Add(c.rto)
	d.send(c, tx.raw)
}

func (d *dialer) send(c *candidate, raw []byte) {
	if _, err := c.sock.Write(raw); err != nil {
		// ICMP errors surface here on a connected socket; keep trying until
		// the deadline, the forwarder may be starting.
		d.stats.sendErrors.Add(1)
	}
}

// tick sends every retransmission (or 508 retry) that is due.
func (d *dialer) tick(now time.Time) {
	for _, c := range d.cands {
		if (c.state != candPending && c.state != candWaiting) || now.Before(c.due) {
			continue
		}
		if c.state == candWaiting {
			c.state = candPending
			d.start(c, protocol.JoinOptions{Cookie: c.cookie})
			continue
		}
		d.retransmit(c, now)
	}
}

// retransmit resends c's current transaction and backs off.
func (d *dialer) retransmit(c *candidate, now time.Time) {
	c.rto = min(2*c.rto, d.cfg.RetransmitMax)
	c.due = now.Add(c.rto)
	d.send(c, c.tx.Load().raw)
}

func (d *dialer) nextDue() time.Time {
	next := time.Now().Add(time.Hour)
	for _, c := range d.cands {
		if (c.state == candPending || c.state == candWaiting) && c.due.Before(next) {
			next = c.due
		}
	}
	if d.held != nil && d.heldUntil.Before(next) {
		next = d.heldUntil
	}
	return next
}

// handle applies one authenticated answer (or socket failure).
func (d *dialer) handle(ev dialEvent) {
	c := ev.c
	if c.state != candPending && c.state != candWaiting {
		return // a late duplicate for an ended candidate
	}
	d.sample(ev)
	switch {
	case ev.err != nil:
		d.log.Info("forwarder socket failed", zap.Stringer("forwarder", c.addr), zap.Error(ev.err))
		d.drop(c, fmt.Errorf("client: forwarder %s: %w", c.addr, ev.err))
	case ev.resp.OK: // the first success (IPv6 preferred): run stops here, later ones meet drainLosers
		if !d.hold(ev) {
			d.win(ev)
		}
	case c.state == candWaiting, ev.tid != c.tx.Load().tid:
		// a duplicate refusal of a retransmission (already waiting), or an
		// answer to a transaction we have moved on from
	case cookieChallenge(ev.resp):
		d.challenged(c, ev.resp, protocol.JoinOptions{})
	default:
		d.refused(c, ev.resp)
	}
}

// sample keeps the RTT of an authenticated answer to the candidate's
// current transaction, if it was sent once (locate.go), and says whether
// it did.
func (d *dialer) sample(ev dialEvent) bool {
	c := ev.c
	if ev.err != nil || ev.tid != c.tx.Load().tid || c.rto != d.cfg.RetransmitInitial {
		return false
	}
	err := d.cfg.creds.rtts.observe(c.addr, ev.at.Sub(c.sentAt), ev.at)
	d.saw(c, ev.at.Sub(c.sentAt))
	return err == nil
}

// reportLosers closes losersMeasured once a loser's RTT was sampled and
// no loser's join is still unanswered (at the end: whatever is).
func (d *dialer) reportLosers(end bool) {
	if d.pointed || !d.loserRTTs {
		return
	}
	if !end {
		for _, c := range d.cands {
			if c != d.winner && c.state == candPending {
				return
			}
		}
	}
	d.pointed = true
	close(d.losersMeasured)
}

// win makes ev's candidate the winner.
func (d *dialer) win(ev dialEvent) {
	c := ev.c
	c.state, d.winner = candJoined, c
	d.releaseHeld(c)
	// The winner's ticket only: a loser's (which a lone forwarder
	// seals with its own key) would resume nothing once it has left.
	d.cfg.creds.keep(ev.resp.Ticket, ev.token)
	d.stats.rtt.Store(int64(ev.at.Sub(c.sentAt)))
	d.log.Info("joined", zap.Stringer("forwarder", c.addr), zap.Stringer("mapped", ev.resp.Mapped),
		zap.Duration("keepalive", ev.resp.Params.KeepaliveInterval), zap.Duration("idle_timeout", ev.resp.Params.IdleTimeout))
	d.result <- dialResult{win: c, resp: ev.resp, cookie: c.cookie, joinTID: ev.tid, joinToken: ev.token}
}

// challenged repeats c's request (a join, or with o.Leave a leave) with the
// cookie of a 401 address check, unless the forwarder has already asked
// maxCookieRounds times in a row: then c is dropped as refused.
func (d *dialer) challenged(c *candidate, r protocol.JoinResponse, o protocol.JoinOptions) {
	c.cookie = r.Cookie // this socket's cookie, even if we give up
	if c.cookieRounds >= maxCookieRounds {
		je := cookieLoopError(c.addr, r)
		d.log.Info("address check failed", zap.Stringer("forwarder", c.addr), zap.Bool("leave", o.Leave), zap.Error(je))
		d.drop(c, je)
		return
	}
	c.cookieRounds++
	d.stats.cookieRetries.Add(1)
	o.Cookie = c.cookie
	d.start(c, o)
}

func (d *dialer) refused(c *candidate, r protocol.JoinResponse) {
	je := &JoinError{Forwarder: c.addr, Code: r.Code, Reason: r.Reason, Alternate: r.Alternate, RetryAfter: r.RetryAfter}
	d.log.Debug("join refused", zap.Stringer("forwarder", c.addr), zap.Int("code", int(r.Code)), zap.String("reason", r.Reason))
	switch r.Code {
	case protocol.CodeInsufficientCapacity:
		c.err, c.state = je, candWaiting
		c.cookieRounds = 0 // the address check passed: progress
		c.due = time.Now().Add(d.retryDelay(r.RetryAfter))
	case protocol.CodeTryAlternate:
		d.drop(c, je)
		if r.Alternate.IsValid() {
			d.follow(unmap(r.Alternate))
		}
	default:
		d.drop(c, je)
	}
}

// retryDelay is a 508's retry-after (1s if absent), capped, plus up to 20%
// jitter so that refused devices do not all return at the same instant.
func (d *dialer) retryDelay(ra time.Duration) time.Duration {
	if ra <= 0 {
		ra = time.Second
	}
	ra = min(ra, d.cfg.MaxRetryAfter)
	return ra + rand.N(ra/5+1)
}

// follow adds a 300's alternate as a candidate, unless already tried or the
// alternates budget is spent: redirections cannot loop.
func (d *dialer) follow(alt netip.AddrPort) {
	for _, c := range d.cands {
		if c.addr == alt {
			d.log.Info("alternate already tried, not following", zap.Stringer("alternate", alt))
			return
		}
	}
	if limit := max(d.cfg.MaxAlternates, 0); d.alternates >= limit {
		d.log.Info("too many alternates, not following", zap.Stringer("alternate", alt), zap.Int("max", limit))
		return
	}
	d.alternates++
	d.log.Info("following alternate", zap.Stringer("alternate", alt))
	d.add(alt)
}

// leave tells a losing candidate that accepted to free the session: a leave
// from the socket it accepted, with that socket's cookie, retransmitted (and
// repeated after a 401 with a new cookie) until answered, for at most
// LeaveTimeout. drainLosers drops it then.
func (d *dialer) leave(c *candidate) {
	d.log.Debug("leaving losing forwarder", zap.Stringer("forwarder", c.addr))
	c.state, c.cookieRounds = candLeaving, 0
	c.until = time.Now().Add(d.cfg.LeaveTimeout)
	if d.start(c, protocol.JoinOptions{Leave: true, Cookie: c.cookie}) {
		c.resume <- struct{}{} // the reader waits since the success; cap 1, never blocks
	}
}

func (d *dialer) drop(c *candidate, err error) {
	if err != nil {
		c.err = err
	}
	if c != d.winner {
		c.state = candDone
	}
	if !c.closed && c != d.winner {
		c.closed = true
		_ = c.sock.Close()
	}
}

// drainLosers, after Dial has its winner, keeps listening for LoserGrace on
// candidates whose join is unanswered, and sends a leave to any that accepts
// (each leave gets up to LeaveTimeout, even past the grace). Conn.Close cuts
// it all short.
func (d *dialer) drainLosers() {
	graceEnd := time.Now().Add(d.cfg.LoserGrace)
	for _, c := range d.cands {
		if c != d.winner && c.state != candPending {
			d.drop(c, nil) // waiting after a 508 or ended: no session there
		}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer d.reportLosers(true)
	for {
		now := time.Now()
		next, busy := now.Add(time.Hour), false
		d.reportLosers(false)
		for _, c := range d.cands {
			switch {
			case c.state == candPending && now.Before(graceEnd):
				next, busy = minTime(next, graceEnd), true
			case c.state == candLeaving && now.Before(c.until):
				if !now.Before(c.due) {
					d.retransmit(c, now)
				}
				next, busy = minTime(next, minTime(c.due, c.until)), true
			case c != d.winner:
				d.drop(c, nil) // its grace or leave time is over
			}
		}
		if !busy {
			return
		}
		timer.Reset(next.Sub(now))
		select {
		case ev := <-d.events:
			d.handleLoser(ev)
		case <-timer.C:
		case <-d.stop:
			return
		}
	}
}

// handleLoser applies an answer (or socket failure) after the winner: a
// pending join that succeeds is sent a leave; a leave's answer ends it.
func (d *dialer) handleLoser(ev dialEvent) {
	c := ev.c
	if c.state == candPending || c.state == candLeaving {
		d.loserRTTs = d.sample(ev) || d.loserRTTs
	}
	switch {
	case c.state != candPending && c.state != candLeaving:
	case ev.err != nil:
		d.drop(c, nil)
	case c.state == candPending && ev.resp.OK:
		d.leave(c)
	case ev.tid != c.tx.Load().tid:
		// an answer to a transaction we have moved on from
	case c.state == candLeaving && cookieChallenge(ev.resp):
		d.challenged(c, ev.resp, protocol.JoinOptions{Leave: true})
	default:
		// a pending join refused (a 401 with a cookie too: nothing was
		// admitted), or the leave answered
		d.drop(c, nil)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// shutdown closes every socket but the winner's and waits for the readers.
func (d *dialer) shutdown() {
	for _, c := range d.cands {
		d.drop(c, nil)
	}
	close(d.quit)
	d.readers.Wait()
}

// finalError is the error Dial fails with when no candidate can still
// succeed before ctx's deadline, else nil.
func (d *dialer) finalError(ctx context.Context) error {
	deadline, hasDeadline := ctx.Deadline()
	alive, late := 0, 0
	for _, c := range d.cands {
		switch c.state {
		case candPending:
			alive++
		case candWaiting:
			alive++
			if hasDeadline && c.due.After(deadline) {
				late++
			}
		}
	}
	switch {
	case alive == 0:
		return fmt.Errorf("%w (%d tried): %w", ErrJoinRejected, len(d.cands), d.causes())
	case alive == late:
		return d.timeoutError(fmt.Errorf("%w: every retry-after ends past it", context.DeadlineExceeded))
	}
	return nil
}

func (d *dialer) timeoutError(cause error) error {
	if errs := d.causes(); len(errs) > 0 {
		return fmt.Errorf("%w (%w): %w", ErrJoinTimeout, cause, errs)
	}
	return fmt.Errorf("%w (%w): no authenticated answer from %d forwarders", ErrJoinTimeout, cause, len(d.cands))
}

func (d *dialer) causes() multiError {
	var errs multiError
	for _, c := range d.cands {
		if c.err != nil {
			errs = append(errs, c.err)
		}
	}
	return errs
}
