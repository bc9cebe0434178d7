package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// The admin API (off unless Config.AdminAPI): an operator's actions on the
// fleet, relayed to forwarders as signed commands over NATS
// (protocol.AdminCommand, protocol/README.md section 8). Only a request
// with "Authorization: Bearer <admin token>" is let in: none is answered
// 401, any other token (the viewer's, a wrong one) 403. No cookie is
// taken, so no page of another site can make a browser act. Every request
// let in or refused is written to the log as an audit line: who (the
// client address and a digest of the token), what, and the outcome.
//
//	GET  /api/admin/calls?forwarder=&region=&class=   list calls
//	GET  /api/admin/call?id=                           one call, every forwarder's view merged
//	POST /api/admin/remove   {call, participant, ban_seconds}
//	POST /api/admin/hold     {call, participant, media: audio|video, hold}
//	POST /api/admin/move     {call, participant (empty: the whole call), to}
//	POST /api/admin/drain    {forwarder}
//	POST /api/admin/pin      {forwarder, level (empty releases)}
//	POST /api/admin/capture  {call, seconds, forwarder (optional)} -> pcapng

// adminRequest is the JSON body of the POST routes.
type adminRequest struct {
	protocol.AdminArgs
	Forwarder string `json:"forwarder,omitempty"`
}

// adminTarget is a forwarder commands can go to.
type adminTarget struct{ id, region string }

// adminRoutes adds the admin API to mux when it is on.
func (s *Server) adminRoutes(mux *http.ServeMux) {
	if !s.cfg.AdminAPI {
		return
	}
	mux.Handle("GET /api/admin/calls", s.adminOnly("calls", s.handleAdminCalls))
	mux.Handle("GET /api/admin/call", s.adminOnly("call", s.handleAdminCall))
	for _, op := range []struct {
		name string
		op   protocol.AdminOp
	}{{"remove", protocol.AdminOpRemove}, {"hold", protocol.AdminOpHold}, {"move", protocol.AdminOpMove},
		{"drain", protocol.AdminOpDrain}, {"pin", protocol.AdminOpPin}, {"capture", protocol.AdminOpCapture}} {
		mux.Handle("POST /api/admin/"+op.name, s.adminOnly(op.name, func(w http.ResponseWriter, r *http.Request, actor string) {
			s.handleAdminAction(w, r, actor, op.op)
		}))
	}
}

// adminOnly lets in admin bearer tokens only, and writes the audit line.
func (s *Server) adminOnly(action string, h func(http.ResponseWriter, *http.Request, string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, _, _ := net.SplitHostPort(r.RemoteAddr)
		hdr := r.Header.Get("Authorization")
		scheme, tok, _ := strings.Cut(hdr, " ")
		tok = strings.TrimSpace(tok)
		audit := s.log.With(zap.String("audit", "admin"), zap.String("action", action), zap.String("client", who),
			zap.String("query", r.URL.RawQuery))
		if hdr == "" {
			s.adminReqs.WithLabelValues(action, "401").Inc()
			audit.Warn("admin request refused: no credentials")
			w.Header().Set("WWW-Authenticate", `Bearer realm="callrelay admin"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "send Authorization: Bearer <admin token>"})
			return
		}
		d := sha256.Sum256([]byte(tok))
		actor := "token:" + hex.EncodeToString(d[:4]) + "@" + who
		if !strings.EqualFold(scheme, "Bearer") || s.auth.tokenRole(tok) != roleAdmin {
			s.adminReqs.WithLabelValues(action, "403").Inc()
			audit.Warn("admin request refused: not an admin token", zap.String("actor", actor))
			writeJSON(w, http.StatusForbidden, apiError{Error: "this token may not use the admin API"})
			return
		}
		rec := &statusRecorder{ResponseWriter: w}
		h(rec, r, actor)
		result := "ok"
		if rec.status != 0 && (rec.status < 200 || rec.status > 299) {
			result = "error"
		}
		s.adminReqs.WithLabelValues(action, result).Inc()
		audit.Info("admin request", zap.String("actor", actor), zap.Int("status", rec.status), zap.String("detail", rec.detail))
	})
}

// adminActions are the admin API's actions, the label values of
// callrelay_dashboard_admin_requests_total with the results ok, 401, 403
// and error (any other status: a bad request, no forwarder serving the
// call, a forwarder that did not answer).
var adminActions = []string{"calls", "call", "remove", "hold", "move", "drain", "pin", "capture"}

// newAdminRequests makes the admin request counter, every action and
// result present from the start at 0 (alerts on rate() see the first).
func newAdminRequests() *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_dashboard_admin_requests_total",
		Help: "Admin API requests by action and result: ok, 401 (no credentials), 403 (not the admin token), error (any other failure)."},
		[]string{"action", "result"})
	for _, a := range adminActions {
		for _, r := range []string{"ok", "401", "403", "error"} {
			v.WithLabelValues(a, r)
		}
	}
	return v
}

// statusRecorder keeps the status and a short detail for the audit line.
type statusRecorder struct {
	http.ResponseWriter
	status int
	detail string
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// targets are the forwarders heard from within DownAfter, by id.
func (s *Server) targets() []adminTarget {
	now := s.cfg.Now()
	t := s.fwd
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]adminTarget, 0, len(t.fwds))
	for id, f := range t.fwds {
		if now.Sub(f.lastSeen) > s.cfg.DownAfter {
			continue
		}
		region := ""
		if f.hasReport && f.report.HasOps {
			region = f.report.Ops.Region
		}
		out = append(out, adminTarget{id: id, region: region})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// adminReply is one forwarder's answer.
type adminReply struct {
	target adminTarget
	status int
	body   []byte
	err    error
}

// send signs one command to one forwarder and waits for its answer.
func (s *Server) send(ctx context.Context, t adminTarget, op protocol.AdminOp, actor string, args *protocol.AdminArgs) adminReply {
	out := adminReply{target: t}
	raw, err := json.Marshal(args)
	if err != nil {
		out.err = err
		return out
	}
	cmd := protocol.AdminCommand{At: s.cfg.Now(), Op: op, Target: t.id, Actor: actor, Args: raw}
	if _, err := rand.Read(cmd.Nonce[:]); err != nil {
		out.err = err
		return out
	}
	b, err := protocol.MarshalAdminCommand(&cmd, s.cfg.Key)
	if err != nil {
		out.err = err
		return out
	}
	msg, err := s.cfg.NATS.RequestWithContext(ctx, protocol.AdminSubject(s.cfg.Subject, t.id), b)
	if err != nil {
		out.err = fmt.Errorf("forwarder %s: %w", t.id, err)
		return out
	}
	rep, err := protocol.UnmarshalAdminReply(msg.Data, s.cfg.Key)
	if err == nil && rep.Nonce != cmd.Nonce {
		err = errors.New("answer to another command")
	}
	if err != nil {
		s.adminBadReplies.Add(1)
		out.err = fmt.Errorf("forwarder %s: %w", t.id, err)
		return out
	}
	out.status, out.body = int(rep.Status), rep.Body
	return out
}

// fanOut sends the command to every target at once.
func (s *Server) fanOut(ctx context.Context, ts []adminTarget, op protocol.AdminOp, actor string, args *protocol.AdminArgs) []adminReply {
	out := make([]adminReply, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Add(1)
		go func() { defer wg.Done(); out[i] = s.send(ctx, t, op, actor, args) }()
	}
	wg.Wait()
	return out
}

func (s *Server) adminCtx(r *http.Request, extra time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.AdminTimeout+extra)
}
