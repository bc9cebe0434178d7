package dashboard

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
)

//go:embed static
var staticFiles embed.FS

// routes is the HTTP interface:
//
//	/            the page (static files, embedded)                  viewer
//	/events      server-sent events: the fleet view (FleetMsg), in  viewer
//	             full at once, then a delta every PushEvery
//	/api/history ?secs=: the last hour's series and levels          viewer
//	/api/forwarders ?id=..: full rows of some forwarders            viewer
//	/api/state   the same Snapshot, built on the spot               viewer
//	/api/call    ?id=<32 hex>: one call's drill-down                viewer; device addresses: admin
//	/healthz     200 "ok" while serving                             anyone
//	/readyz      200 once NATS is connected, else 503               anyone
//	/metrics     Prometheus metrics of what the dashboard sees      anyone
//	             and drops, and of its HTTP connections
//
// (auth.go: who is a viewer and who an admin).
func (s *Server) routes() http.Handler {
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", s.auth.require(http.FileServerFS(static)))
	mux.Handle("GET /events", s.auth.require(http.HandlerFunc(s.handleEvents)))
	mux.Handle("GET /api/state", s.auth.require(http.HandlerFunc(s.handleState)))
	mux.Handle("GET /api/call", s.auth.require(http.HandlerFunc(s.handleCall)))
	mux.Handle("GET /api/history", s.auth.require(http.HandlerFunc(s.handleHistory)))
	mux.Handle("GET /api/forwarders", s.auth.require(http.HandlerFunc(s.handleForwarders)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// Ready once NATS is connected: without it the page shows nothing.
		if !s.cfg.NATS.IsConnected() {
			http.Error(w, "NATS not connected", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", s.metricsHandler())
	s.adminRoutes(mux) // the admin API, when on (admin.go)
	return secure(mux)
}

// secure adds headers that keep the page to its own origin: no inline or
// third-party script, style or connection.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

func (s *Server) handleState(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Snapshot())
}

// handleEvents streams the fleet view (fleet.go): the latest full message
// at once, then a delta at every push. A stream that missed a push (a slow
// reader skips them instead of queueing) is sent the full message again.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write([]byte("event: " + event + "\ndata: ")); err != nil {
			return false
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		if _, err := w.Write([]byte("\n\n")); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if _, err := w.Write([]byte("retry: 2000\n\n")); err != nil || rc.Flush() != nil {
		return
	}
	var sent uint64 // the seq of the last message sent; 0: none yet
	for {
		next := s.next()
		if m := s.pushed.Load(); m != nil && m.seq != sent {
			ok := false
			if sent != 0 && m.seq == sent+1 {
				ok = send("delta", m.delta)
			} else {
				ok = send("fleet", m.full)
			}
			if !ok {
				return
			}
			sent = m.seq
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		case <-next:
		}
	}
}

// handleHistory answers the last ?secs= seconds (default and at most an
// hour) of every history series and every forwarder's levels.
func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	secs := historyLen
	if q := r.URL.Query().Get("secs"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > historyLen {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("secs=%q: want 1..%d", q, historyLen)})
			return
		}
		secs = n
	}
	writeJSON(w, http.StatusOK, s.fwd.historyView(&s.hist, secs))
}

// handleForwarders answers the rows of the forwarders named by ?id= (one
// or more; at most maxRowsAsked), for the drill-down: the full row of each
// that is known, in id order.
func (s *Server) handleForwarders(w http.ResponseWriter, r *http.Request) {
	ids := r.URL.Query()["id"]
	if len(ids) == 0 || len(ids) > maxRowsAsked {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("name 1..%d forwarders with id=", maxRowsAsked)})
		return
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	rows := []ForwarderView{}
	for _, f := range s.Snapshot().Forwarders {
		if want[f.ID] {
			rows = append(rows, f)
		}
	}
	writeJSON(w, http.StatusOK, rows)
}

// maxRowsAsked bounds one drill-down request.
const maxRowsAsked = 64

// apiError is the body of every error answer.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func (s *Server) fail(w http.ResponseWriter, status int, msg string, err error) {
	if status >= 500 {
		s.log.Warn("drill-down failed", zap.String("reason", msg), zap.Error(err))
	}
	writeJSON(w, status, apiError{Error: msg})
}
