// Package httpserve starts the HTTP servers of callrelay's processes (the
// forwarder's and the conductor's metrics and health endpoints, the
// dashboard) with bounds a stranger cannot lift: a deadline on every phase
// of a connection (headers, request, answer, idle keep-alive) and a cap on
// open connections, over which a new connection is closed at once and
// counted (callrelay_http_connections_refused_total). Idle connections can
// therefore cost a process at most MaxConns small buffers, whatever a
// client does: they never grow the memory that the forwarder's throttling
// reads as load.
//
// It must never leave a connection without a deadline, never queue a
// connection over the cap (a queue is memory a stranger controls), and
// never import a callrelay package: it is a leaf library.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Config bounds one HTTP server. Start from Default() and override.
type Config struct {
	// ReadHeaderTimeout bounds the wait for a request's headers, from the
	// connection's start or from the request's first byte on a kept-alive
	// connection: a connection that never sends a request is closed after
	// it.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing an answer, from the end of the request's
	// headers. A handler that streams (server-sent events) moves its own
	// deadline forward before each write (http.ResponseController).
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection with no new request
	// within it.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
	// MaxConns is the most connections open at once; a connection accepted
	// over it is closed at once (a TCP reset) and counted.
	MaxConns int
	// MaxConnsPerSource, when above 0, is the most connections open at
	// once from one source (an IPv4 address, an IPv6 /64): one more is
	// closed at once and counted as over MaxConns is, so that one host
	// cannot take every slot of a public endpoint. 0: no such cap.
	MaxConnsPerSource int
	// Name says which server a log line is about ("metrics", "dashboard").
	Name   string
	Logger *zap.Logger
}

// Default returns bounds fit for metrics scrapes, probes and a small page:
// Prometheus' default 15 s scrape interval keeps its connection alive
// within IdleTimeout.
func Default() Config {
	return Config{
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		MaxConns:          64,
		Name:              "http",
		Logger:            zap.NewNop(),
	}
}

// Validate says what to fix.
func (c Config) Validate() error {
	var errs []error
	if c.ReadHeaderTimeout <= 0 || c.ReadTimeout <= 0 || c.WriteTimeout <= 0 || c.IdleTimeout <= 0 {
		errs = append(errs, fmt.Errorf("httpserve: read header %v, read %v, write %v, idle %v: every timeout must be positive (start from Default())",
			c.ReadHeaderTimeout, c.ReadTimeout, c.WriteTimeout, c.IdleTimeout))
	}
	if c.MaxHeaderBytes < 1<<10 {
		errs = append(errs, fmt.Errorf("httpserve: max header bytes %d: want at least 1024", c.MaxHeaderBytes))
	}
	if c.MaxConnsPerSource < 0 {
		errs = append(errs, fmt.Errorf("httpserve: max connections per source %d: want 0 (no cap) or more", c.MaxConnsPerSource))
	}
	if c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("httpserve: max connections %d: want at least 1", c.MaxConns))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("httpserve: no Logger (start from Default())"))
	}
	return errors.Join(errs...)
}

// Server is one bounded HTTP server on its own listener.
type Server struct {
	srv *http.Server
	ln  *cappedListener
}

// Listen checks cfg, listens on addr (TCP host:port) and returns the
// server; Serve serves. Connections that arrive before Serve wait in the
// kernel's backlog.
func Listen(addr string, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.Named(cfg.Name)
	s := &Server{ln: newCappedListener(l, cfg.MaxConns, log)}
	s.ln.perSource = cfg.MaxConnsPerSource
	s.srv = &http.Server{
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log),
	}
	return s, nil
}

// Addr is the address listened on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves h until Shutdown or Close, and then returns nil; any other
// end is an error. Call it once.
func (s *Server) Serve(h http.Handler) error {
	s.srv.Handler = h
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting, closes idle connections and waits for the
// others until ctx ends (then see Close).
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.srv.Close() }

// Stats is what the listener has seen.
type Stats struct {
	Open    int    // connections open now
	Max     int    // the cap
	Refused uint64 // connections closed at accept because Open was at the cap
}

// Stats says what the listener has seen so far.
func (s *Server) Stats() Stats {
	return Stats{Open: int(s.ln.open.Load()), Max: s.ln.max, Refused: s.ln.refused.Load()}
}
