package forwarder

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// The operator's commands (protocol/README.md section 8), sent by the admin
// API on protocol.AdminSubject(prefix, id) and signed with the cluster key.
// The control goroutine takes each fresh command once, does it, logs it
// (who, what, the outcome: the audit trail on this side) and answers.
// Commands that do not authenticate, or are for another forwarder, are
// counted (callrelay_forwarder_admin_refused_total by reason) and not
// answered; stale and replayed ones are counted and answered 403.

// adminState is the control goroutine's part.
type adminState struct {
	guard   *protocol.AdminReplayGuard
	bans    map[sessionKey]time.Time // removed participants, refused until then
	pinned  bool
	pin     ThrottleLevel
	capture *captureJob
	events  map[protocol.ID]*timeline
}

// captureJob is a running capture and the request it answers when done.
type captureJob struct {
	cp    *capture
	reply string
	cmd   protocol.AdminCommand
}

const (
	adminQueue       = 64
	adminNonces      = 4096
	defaultBan       = 10 * time.Minute
	maxBan           = 24 * time.Hour
	adminMoveTimeout = 30 * time.Second
)

// Session hold bits (route.hold, session.hold).
const (
	holdAudio uint8 = 1 << iota
	holdVideo
)

// adminCounters count the commands this forwarder took, by op and result,
// and those it refused, by reason, for Prometheus (collectAdmin). The
// control goroutine writes them; a scrape reads them.
type adminCounters struct {
	byOp    [adminOpSlots][len(adminResults)]atomic.Uint64
	refused [len(adminRefusals)]atomic.Uint64
}

// adminOpSlots bounds the ops counted (protocol ops are 1..8; 0 others).
const adminOpSlots = 16

// Results of a command taken, by its answer's status: 2xx ok, 4xx
// client_error (bad arguments, no such call or member), else error.
var adminResults = [...]string{"ok", "client_error", "error"}

// Reasons a command is refused: the queue was full (a flood), its tag did
// not verify, it did not decode, it named another forwarder, it was signed
// outside the freshness window, its nonce was taken before, or more
// commands came within the window than the guard remembers.
var adminRefusals = [...]string{"queue_full", "bad_signature", "malformed", "wrong_target", "stale", "replayed", "too_many"}

const (
	refQueueFull = iota
	refBadSignature
	refMalformed
	refWrongTarget
	refStale
	refReplayed
	refTooMany
)

var errAdminWrongTarget = errors.New("for forwarder")

// refuse counts a refused command by err's reason.
func (a *adminCounters) refuse(err error) {
	r := refMalformed
	switch {
	case errors.Is(err, protocol.ErrAdminAuth):
		r = refBadSignature
	case errors.Is(err, errAdminWrongTarget):
		r = refWrongTarget
	case errors.Is(err, protocol.ErrAdminStale):
		r = refStale
	case errors.Is(err, protocol.ErrAdminReplayed):
		r = refReplayed
	case errors.Is(err, protocol.ErrAdminTooMany):
		r = refTooMany
	}
	a.refused[r].Add(1)
}

// took counts a command answered with status.
func (a *adminCounters) took(op protocol.AdminOp, status int) {
	res := 2
	switch {
	case status >= 200 && status < 300:
		res = 0
	case status >= 400 && status < 500:
		res = 1
	}
	a.byOp[min(int(op), adminOpSlots-1)][res].Add(1)
}

var (
	mAdminTook = prometheus.NewDesc("callrelay_forwarder_admin_commands_total",
		"Operators' admin commands this forwarder took, by op and result (ok, client_error: bad arguments or no such call or member, error).",
		[]string{"op", "result"}, nil)
	mAdminRefused = prometheus.NewDesc("callrelay_forwarder_admin_refused_total",
		"Admin commands refused, by reason: queue_full, bad_signature, malformed, wrong_target, stale, replayed, too_many.",
		[]string{"reason"}, nil)
)

func describeAdmin(ch chan<- *prometheus.Desc) {
	ch <- mAdminTook
	ch <- mAdminRefused
}

// collectAdmin exports the admin counters; every op and reason is there
// from the start, at 0.
func collectAdmin(ch chan<- prometheus.Metric, a *adminCounters) {
	for op := protocol.AdminOpCalls; op <= protocol.AdminOpCapture; op++ {
		for r, name := range adminResults {
			constCounter(ch, mAdminTook, a.byOp[op][r].Load(), op.String(), name)
		}
	}
	for r, name := range adminRefusals {
		constCounter(ch, mAdminRefused, a.refused[r].Load(), name)
	}
}

// subscribeAdmin listens for commands to this forwarder.
func (f *Forwarder) subscribeAdmin() *nats.Subscription {
	cc := &f.cfg.Cluster
	sub, err := cc.NATS.Subscribe(protocol.AdminSubject(cc.Subject, cc.ID), func(m *nats.Msg) {
		select {
		case f.adminIn <- m:
		default:
			f.adminCount.refused[refQueueFull].Add(1) // a flood: the control goroutine is not held up
		}
	})
	if err != nil {
		f.log.Warn("subscribing to admin commands", zap.Error(err))
		f.natsErrors.Add(1)
		return nil
	}
	return sub
}

// onAdmin takes one command.
func (c *control) onAdmin(m *nats.Msg, now time.Time) {
	f := c.f
	cmd, err := protocol.UnmarshalAdminCommand(m.Data, f.cfg.Cluster.Key)
	if err == nil && cmd.Target != f.cfg.Cluster.ID {
		err = fmt.Errorf("%w %q", errAdminWrongTarget, cmd.Target)
	}
	if err != nil {
		f.adminCount.refuse(err)
		f.log.Debug("admin command refused", zap.Error(err))
		return
	}
	if c.admin.guard == nil {
		c.admin.guard = protocol.NewAdminReplayGuard(adminNonces)
	}
	if err := c.admin.guard.Take(&cmd, now); err != nil {
		f.adminCount.refuse(err)
		f.log.Warn("admin command refused: stale or replayed", zap.String("actor", cmd.Actor), zap.Stringer("op", cmd.Op), zap.Error(err))
		raw, _ := json.Marshal(protocol.AdminError{Error: err.Error()})
		c.adminSend(m.Reply, &cmd, http.StatusForbidden, raw)
		return
	}
	var args protocol.AdminArgs
	if len(cmd.Args) > 0 {
		if err := json.Unmarshal(cmd.Args, &args); err != nil {
			c.adminAnswer(m.Reply, &cmd, http.StatusBadRequest, protocol.AdminError{Error: "arguments: " + err.Error()})
			return
		}
	}
	status, body := c.adminDo(&cmd, &args, m.Reply, now)
	if status == 0 {
		return // a capture: answered when it ends
	}
	c.adminAnswer(m.Reply, &cmd, status, body)
}

// adminDo does cmd and returns the answer; status 0: answered later.
func (c *control) adminDo(cmd *protocol.AdminCommand, a *protocol.AdminArgs, reply string, now time.Time) (int, any) {
	switch cmd.Op {
	case protocol.AdminOpCalls:
		return http.StatusOK, c.adminCalls()
	case protocol.AdminOpCall:
		cl, errStatus, err := c.adminCall(a)
		if cl == nil {
			return errStatus, err
		}
		return http.StatusOK, c.adminCallView(cl, now)
	case protocol.AdminOpRemove:
		return c.adminRemove(a, now)
	case protocol.AdminOpHold:
		return c.adminHold(a, now)
	case protocol.AdminOpMove:
		return c.adminMove(a, now)
	case protocol.AdminOpDrain:
		c.f.Drain()
		return http.StatusOK, c.done("draining: admitting no one, asking every session to move")
	case protocol.AdminOpPin:
		return c.adminPin(a, now)
	case protocol.AdminOpCapture:
		return c.adminCapture(cmd, a, reply, now)
	}
	return http.StatusBadRequest, protocol.AdminError{Error: "unknown op " + cmd.Op.String()}
}

// adminAnswer signs and sends the answer, and writes the audit line.
func (c *control) adminAnswer(reply string, cmd *protocol.AdminCommand, status int, body any) {
	f := c.f
	var raw []byte
	if b, ok := body.([]byte); ok {
		raw = b
	} else {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			status, raw = http.StatusInternalServerError, []byte(`{"error":"encoding the answer"}`)
		}
	}
	lvl := f.log.Info
	if status != http.StatusOK {
		lvl = f.log.Warn
	}
	lvl("admin command", zap.String("actor", cmd.Actor), zap.Stringer("op", cmd.Op), zap.ByteString("args", cmd.Args),
		zap.Int("status", status), zap.Int("answer_bytes", len(raw)))
	f.adminCount.took(cmd.Op, status)
	c.adminSend(reply, cmd, status, raw)
}

// adminSend signs and sends an answer ("" reply: none asked).
func (c *control) adminSend(reply string, cmd *protocol.AdminCommand, status int, raw []byte) {
	f := c.f
	if reply == "" {
		return
	}
	out, err := protocol.MarshalAdminReply(&protocol.AdminReply{At: f.cfg.Now(), Nonce: cmd.Nonce, Status: uint16(status), Body: raw},
		f.cfg.Cluster.Key)
	if err != nil {
		f.log.Error("encoding admin answer", zap.Error(err))
		return
	}
	if err := f.cfg.Cluster.NATS.Publish(reply, out); err != nil {
		f.natsErrors.Add(1)
	}
}

func (c *control) done(what string) protocol.AdminResult {
	return protocol.AdminResult{Forwarder: c.f.cfg.Cluster.ID, Done: what}
}

func notFound(format string, args ...any) (int, any) {
	return http.StatusNotFound, protocol.AdminError{Error: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) (int, any) {
	return http.StatusBadRequest, protocol.AdminError{Error: fmt.Sprintf(format, args...)}
}

// adminCall finds the call a names.
func (c *control) adminCall(a *protocol.AdminArgs) (*call, int, any) {
	id, err := protocol.ParseID(a.Call)
	if err != nil {
		s, b := badRequest("call: %v", err)
		return nil, s, b
	}
	cl := c.calls[id]
	if cl == nil {
		s, b := notFound("call %s has no member on this forwarder", id)
		return nil, s, b
	}
	return cl, 0, nil
}

// adminSession finds the call and the local session a names.
func (c *control) adminSession(a *protocol.AdminArgs) (*session, int, any) {
	cl, status, body := c.adminCall(a)
	if cl == nil {
		return nil, status, body
	}
	p, err := protocol.ParseID(a.Participant)
	if err != nil {
		s, b := badRequest("participant: %v", err)
		return nil, s, b
	}
	s := cl.members[p]
	if s == nil {
		st, b := notFound("participant %s of call %s is not on this forwarder", p, cl.id)
		return nil, st, b
	}
	return s, 0, nil
}

func (c *control) adminCalls() protocol.AdminCalls {
	f := c.f
	out := protocol.AdminCalls{Forwarder: f.cfg.Cluster.ID, Level: ThrottleLevel(f.thr.level.Load()).String(),
		Pinned: c.admin.pinned, Draining: f.draining.Load(), Calls: []protocol.AdminCallSummary{}}
	for _, cl := range c.calls {
		sum := protocol.AdminCallSummary{Call: cl.id.String(), Class: className(cl.class), Members: len(cl.members),
			Remote: len(cl.remote), Forwarder: f.cfg.Cluster.ID}
		if cl.decision.applied && !cl.decision.d.Dominant.IsZero() {
			sum.Speaker = cl.decision.d.Dominant.String()
		}
		out.Calls = append(out.Calls, sum)
	}
	return out
}

func className(k protocol.CallClass) string {
	if k == protocol.ClassGroup {
		return "group"
	}
	return "one_to_one"
}

// adminRemove ends a participant's session here and refuses its joins
// (here, for the ban) with 403; the admin API sends the same command to
// every forwarder, so it is refused wherever it tries. The device is told
// at once: a Rejoin nudge makes it send a keepalive, which is answered 403
// "removed from the call by an operator" (a refusal for good).
func (c *control) adminRemove(a *protocol.AdminArgs, now time.Time) (int, any) {
	callID, err1 := protocol.ParseID(a.Call)
	p, err2 := protocol.ParseID(a.Participant)
	if err1 != nil || err2 != nil {
		return badRequest("call and participant: 32 hex digits each")
	}
	ban := defaultBan
	if a.Ban > 0 {
		ban = min(time.Duration(a.Ban)*time.Second, maxBan)
	}
	if c.admin.bans == nil {
		c.admin.bans = make(map[sessionKey]time.Time)
	}
	k := sessionKey{callID, p}
	c.admin.bans[k] = now.Add(ban)
	s := c.sessions[k]
	if s == nil {
		return http.StatusOK, c.done(fmt.Sprintf("not a member here; its joins are refused for %s", ban))
	}
	addr := s.addr
	s.log.Info("removed by an operator", zap.Duration("rejoin_refused_for", ban))
	c.event(s.call.id, now, "removed", p, "by an operator")
	c.remove(s)
	c.reply(c.f.nudge, addr)
	return http.StatusOK, c.done(fmt.Sprintf("removed; its joins are refused for %s", ban))
}

// banned reports whether a join of (call, participant) is refused because
// an operator removed it.
func (c *control) banned(call, participant protocol.ID, now time.Time) bool {
	until, ok := c.admin.bans[sessionKey{call, participant}]
	if ok && now.After(until) {
		delete(c.admin.bans, sessionKey{call, participant})
		return false
	}
	return ok
}

// adminHold holds (stops forwarding) or releases a participant's audio or
// video: its packets are dropped here, before any local member or trunk.
func (c *control) adminHold(a *protocol.AdminArgs, now time.Time) (int, any) {
	var bit uint8
	switch a.Media {
	case "audio":
		bit = holdAudio
	case "video":
		bit = holdVideo
	default:
		return badRequest("media %q: want audio or video", a.Media)
	}
	s, status, body := c.adminSession(a)
	if s == nil {
		return status, body
	}
	what := "released"
	if a.Hold {
		s.hold |= bit
		what = "held"
	} else {
		s.hold &^= bit
	}
	c.dirtyCalls[s.call.id] = struct{}{}
	c.event(s.call.id, now, "hold", s.participant, a.Media+" "+what)
	s.log.Info("media held by an operator", zap.String("media", a.Media), zap.Bool("held", a.Hold))
	return http.StatusOK, c.done(a.Media + " " + what)
}

// adminMove asks one participant, or every local member of a call, to move
// to forwarder a.To: make-before-break, by the same signed MigrateTo a
// drain sends, repeated each cluster tick until the session has left (it
// joins there first) or for adminMoveTimeout.
func (c *control) adminMove(a *protocol.AdminArgs, now time.Time) (int, any) {
	p := c.peers[a.To]
	if a.To == c.f.cfg.Cluster.ID {
		return badRequest("already on %s", a.To)
	}
	if p == nil || !p.last.Media.IsValid() || p.last.Draining {
		return http.StatusConflict, protocol.AdminError{Error: fmt.Sprintf("forwarder %q is not a live, non-draining peer of this one", a.To)}
	}
	var moving []*session
	if a.Participant == "" {
		cl, status, body := c.adminCall(a)
		if cl == nil {
			return status, body
		}
		for _, s := range cl.members {
			moving = append(moving, s)
		}
	} else {
		s, status, body := c.adminSession(a)
		if s == nil {
			return status, body
		}
		moving = append(moving, s)
	}
	for _, s := range moving {
		s.moveTo, s.moveUntil, s.migrateSent = p.last.Media, now.Add(adminMoveTimeout), time.Time{}
		c.event(s.call.id, now, "migrate", s.participant, "asked to move to "+a.To)
	}
	c.adminMoves(now)
	return http.StatusOK, c.done(fmt.Sprintf("%d session(s) asked to move to %s (%s)", len(moving), a.To, p.last.Media))
}

// adminMoves (re)sends MigrateTo to sessions an operator moves.
func (c *control) adminMoves(now time.Time) {
	for _, s := range c.sessions {
		if !s.moveTo.IsValid() {
			continue
		}
		if now.After(s.moveUntil) {
			s.log.Warn("did not move as an operator asked", zap.Stringer("to", s.moveTo))
			s.moveTo = netip.AddrPort{}
			continue
		}
		if !s.migrateSent.IsZero() && now.Sub(s.migrateSent) < migrateEvery {
			continue
		}
		if err := c.sendMigrate(s, s.moveTo, s.moveUntil.Sub(now)); err != nil {
			c.f.log.Error("building migrate", zap.Error(err))
			return
		}
		s.migrateSent = now
	}
}

// adminPin pins the throttle level (joins are admitted as if the load
// were at that level, whatever it is) or, with no level, releases it.
func (c *control) adminPin(a *protocol.AdminArgs, now time.Time) (int, any) {
	if a.Level == "" {
		if !c.admin.pinned {
			return http.StatusOK, c.done("no level was pinned")
		}
		c.admin.pinned = false
		c.adm.thr.pinned = false
		c.levelChanged(c.adm.thr.level(), now)
		return http.StatusOK, c.done("released: the level follows the load again (" + c.adm.thr.level().String() + ")")
	}
	lvl, ok := ThrottleLevel(0), false
	for i, n := range throttleNames {
		if n == a.Level {
			lvl, ok = ThrottleLevel(i), true
		}
	}
	if !ok {
		return badRequest("level %q: want one of %v", a.Level, throttleNames)
	}
	c.admin.pinned, c.admin.pin = true, lvl
	c.adm.thr.pinned, c.adm.thr.pin = true, lvl
	c.levelChanged(lvl, now)
	return http.StatusOK, c.done("pinned at " + lvl.String())
}

// adminCapture starts a headers-only capture of one call's legs, answered
// with the pcapng file when it ends (adminTick).
func (c *control) adminCapture(cmd *protocol.AdminCommand, a *protocol.AdminArgs, reply string, now time.Time) (int, any) {
	if c.admin.capture != nil {
		return http.StatusConflict, protocol.AdminError{Error: "a capture is running here already; one at a time"}
	}
	if a.Seconds < 1 || a.Seconds > protocol.AdminMaxCaptureSeconds {
		return badRequest("seconds %d: want 1..%d", a.Seconds, protocol.AdminMaxCaptureSeconds)
	}
	cl, status, body := c.adminCall(a)
	if cl == nil {
		return status, body
	}
	cp := newCapture(cl.id, now.Add(time.Duration(a.Seconds)*time.Second), c.f.addr, len(c.f.rdrs))
	c.admin.capture = &captureJob{cp: cp, reply: reply, cmd: *cmd}
	c.f.capture.Store(cp)
	cl.log(c.f.log).Info("capture started", zap.Int("seconds", a.Seconds), zap.String("actor", cmd.Actor))
	return 0, nil
}

// captureSTUN records a STUN datagram of the captured call (control
// goroutine): in from src, or out to it.
func (c *control) captureSTUN(call protocol.ID, out bool, peer netip.AddrPort, b []byte) {
	if j := c.admin.capture; j != nil && j.cp.call == call {
		j.cp.bufs[len(j.cp.bufs)-1].record(c.f.cfg.Now().UnixNano(), out, peer, b)
	}
}

// captureRequest records a request handed to the control goroutine if it
// is of the captured call: from a member's address, or a join naming it.
func (c *control) captureRequest(src netip.AddrPort, b []byte) {
	j := c.admin.capture
	if s := c.byAddr[src]; s != nil {
		c.captureSTUN(s.call.id, false, src, b)
		return
	}
	if len(b) == 0 || b[0] >= 4 {
		return
	}
	var m stun.Message
	m.Raw = append([]byte(nil), b...)
	if m.Decode() != nil {
		return
	}
	if req, err := protocol.ParseJoinRequest(&m); err == nil && req.CallID == j.cp.call {
		c.captureSTUN(req.CallID, false, src, b)
	}
}

// adminTick ends a capture that is due, repeats operators' moves, looks for
// NACK bursts and forgets the timelines of calls gone.
func (c *control) adminTick(now time.Time) {
	if j := c.admin.capture; j != nil && !now.Before(j.cp.until) {
		c.f.capture.Store(nil)
		for i := range j.cp.bufs {
			b := &j.cp.bufs[i]
			b.mu.Lock() // waits for a reader still recording; none records after
			b.closed = true
			b.mu.Unlock()
		}
		c.admin.capture = nil
		file := j.cp.pcapng()
		c.f.log.Info("capture done", zap.Stringer("call", j.cp.call), zap.Int("bytes", len(file)), zap.Uint64("records_not_kept", j.cp.dropped()))
		c.adminAnswer(j.reply, &j.cmd, http.StatusOK, file)
	}
	c.adminMoves(now)
	c.nackBursts(now)
	for id := range c.admin.events {
		if c.calls[id] == nil && now.Sub(c.admin.events[id].last) > 10*time.Minute {
			delete(c.admin.events, id)
		}
	}
}
