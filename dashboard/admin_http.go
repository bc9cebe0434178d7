package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// AdminOutcome is one forwarder's answer to an action.
type AdminOutcome struct {
	Forwarder string          `json:"forwarder"`
	Status    int             `json:"status"`
	Answer    json.RawMessage `json:"answer,omitempty"`
	Error     string          `json:"error,omitempty"`
}

// AdminCallsView answers GET /api/admin/calls.
type AdminCallsView struct {
	Forwarders []protocol.AdminCalls `json:"forwarders"`
	Calls      int                   `json:"calls"`
	Errors     []AdminOutcome        `json:"errors,omitempty"`
}

// AdminCallView answers GET /api/admin/call: every forwarder's view of the
// call and its timeline merged in time order.
type AdminCallView struct {
	Call     string                `json:"call"`
	Views    []protocol.AdminCall  `json:"views"`
	Timeline []protocol.AdminEvent `json:"timeline"`
}

func outcome(r adminReply) AdminOutcome {
	o := AdminOutcome{Forwarder: r.target.id, Status: r.status}
	if r.err != nil {
		o.Status, o.Error = http.StatusBadGateway, r.err.Error()
	} else if json.Valid(r.body) {
		o.Answer = r.body
	}
	return o
}

func (s *Server) handleAdminCalls(w http.ResponseWriter, r *http.Request, actor string) {
	q := r.URL.Query()
	var ts []adminTarget
	for _, t := range s.targets() {
		if (q.Get("forwarder") == "" || q.Get("forwarder") == t.id) && (q.Get("region") == "" || q.Get("region") == t.region) {
			ts = append(ts, t)
		}
	}
	class := q.Get("class")
	if class != "" && class != "group" && class != "one_to_one" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "class: want group or one_to_one"})
		return
	}
	ctx, cancel := s.adminCtx(r, 0)
	defer cancel()
	view := AdminCallsView{Forwarders: []protocol.AdminCalls{}}
	for _, rep := range s.fanOut(ctx, ts, protocol.AdminOpCalls, actor, &protocol.AdminArgs{}) {
		var c protocol.AdminCalls
		if rep.err != nil || rep.status != http.StatusOK || json.Unmarshal(rep.body, &c) != nil {
			view.Errors = append(view.Errors, outcome(rep))
			continue
		}
		kept := c.Calls[:0]
		for _, cl := range c.Calls {
			if class == "" || cl.Class == class {
				kept = append(kept, cl)
			}
		}
		c.Calls = kept
		view.Calls += len(kept)
		view.Forwarders = append(view.Forwarders, c)
	}
	writeJSON(w, http.StatusOK, view)
}

func (s *Server) handleAdminCall(w http.ResponseWriter, r *http.Request, actor string) {
	id, err := protocol.ParseID(r.URL.Query().Get("id"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "id: want the call's 32 hex digits"})
		return
	}
	view, ok := s.callViews(r, id, actor)
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{Error: "no live forwarder serves call " + id.String()})
		return
	}
	writeJSON(w, http.StatusOK, view)
}

// callViews asks every forwarder for its view of the call.
func (s *Server) callViews(r *http.Request, id protocol.ID, actor string) (AdminCallView, bool) {
	ctx, cancel := s.adminCtx(r, 0)
	defer cancel()
	view := AdminCallView{Call: id.String(), Views: []protocol.AdminCall{}, Timeline: []protocol.AdminEvent{}}
	for _, rep := range s.fanOut(ctx, s.targets(), protocol.AdminOpCall, actor, &protocol.AdminArgs{Call: id.String()}) {
		var c protocol.AdminCall
		if rep.err == nil && rep.status == http.StatusOK && json.Unmarshal(rep.body, &c) == nil {
			view.Views = append(view.Views, c)
			view.Timeline = append(view.Timeline, c.Events...)
		}
	}
	// The conductor's decisions (speaker, layer switches and cuts) from
	// its reports (conductors.go).
	view.Timeline = append(view.Timeline, s.cond.timeline(id)...)
	sort.SliceStable(view.Timeline, func(i, j int) bool { return view.Timeline[i].AtUnixMs < view.Timeline[j].AtUnixMs })
	return view, len(view.Views) > 0
}

// handleAdminAction does one POST action.
func (s *Server) handleAdminAction(w http.ResponseWriter, r *http.Request, actor string, op protocol.AdminOp) {
	var req adminRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, protocol.MaxAdminArgs+1))
	if err == nil && len(body) > protocol.MaxAdminArgs {
		err = fmt.Errorf("more than %d bytes", protocol.MaxAdminArgs)
	}
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body: a JSON object: " + err.Error()})
		return
	}
	switch op {
	case protocol.AdminOpDrain, protocol.AdminOpPin:
		if protocol.ValidForwarderID(req.Forwarder) != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "forwarder: give the forwarder's id"})
			return
		}
		s.actOn(w, r, []adminTarget{{id: req.Forwarder}}, op, actor, &req.AdminArgs)
	case protocol.AdminOpCapture:
		s.capture(w, r, &req, actor)
	default: // remove, hold, move: every forwarder; the one serving the member acts
		s.actOn(w, r, s.targets(), op, actor, &req.AdminArgs)
	}
}

// actOn sends the action to ts; 200 if any forwarder did it, else the
// first answer's status (404 when none serves the member).
func (s *Server) actOn(w http.ResponseWriter, r *http.Request, ts []adminTarget, op protocol.AdminOp, actor string, a *protocol.AdminArgs) {
	ctx, cancel := s.adminCtx(r, 0)
	defer cancel()
	reps := s.fanOut(ctx, ts, op, actor, a)
	out := struct {
		Outcomes []AdminOutcome `json:"outcomes"`
	}{Outcomes: []AdminOutcome{}}
	status := http.StatusNotFound
	for _, rep := range reps {
		o := outcome(rep)
		out.Outcomes = append(out.Outcomes, o)
		switch {
		case o.Status == http.StatusOK:
			status = http.StatusOK
		case len(ts) == 1:
			status = o.Status
		}
	}
	if rec, ok := w.(*statusRecorder); ok {
		rec.detail = fmt.Sprintf("%s to %d forwarder(s)", op, len(ts))
	}
	writeJSON(w, status, out)
}

// capture runs a capture on the forwarder named, or on the first that
// serves the call, and answers the pcapng file.
func (s *Server) capture(w http.ResponseWriter, r *http.Request, req *adminRequest, actor string) {
	if req.Seconds < 1 || req.Seconds > protocol.AdminMaxCaptureSeconds {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("seconds: want 1..%d", protocol.AdminMaxCaptureSeconds)})
		return
	}
	id, err := protocol.ParseID(req.Call)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "call: want the call's 32 hex digits"})
		return
	}
	t := adminTarget{id: req.Forwarder}
	if t.id == "" {
		view, ok := s.callViews(r, id, actor)
		if !ok {
			writeJSON(w, http.StatusNotFound, apiError{Error: "no live forwarder serves call " + id.String()})
			return
		}
		t.id = view.Views[0].Forwarder
	}
	ctx, cancel := s.adminCtx(r, time.Duration(req.Seconds)*time.Second)
	defer cancel()
	rep := s.send(ctx, t, protocol.AdminOpCapture, actor, &req.AdminArgs)
	if rep.err != nil || rep.status != http.StatusOK {
		o := outcome(rep)
		writeJSON(w, o.Status, o)
		return
	}
	if rec, ok := w.(*statusRecorder); ok {
		rec.detail = fmt.Sprintf("capture of %s on %s: %d bytes", id, t.id, len(rep.body))
	}
	w.Header().Set("Content-Type", "application/x-pcapng")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="call-%s-%s.pcapng"`, id, t.id))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(rep.body)
}
