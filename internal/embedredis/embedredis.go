// Package embedredis runs an in-process Redis stand-in (miniredis) on a
// loopback port, so the demo can exercise the Redis code path of statestore
// without a redis-server.
//
// It must never be used in production: it keeps everything in this
// process's memory, persists nothing, is shared with no other process, and
// implements only as much of Redis as its authors chose. Start says so in
// the log, at WARN, every time.
package embedredis

import (
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"
)

// Server is a running stand-in.
type Server struct {
	m *miniredis.Miniredis
}

// Start runs a stand-in on 127.0.0.1 on a free port. Key TTLs run on the
// wall clock (miniredis's ClockTTL), as on a real Redis.
func Start(log *zap.Logger) (*Server, error) {
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedredis: starting the in-process Redis stand-in: %w", err)
	}
	s := &Server{m: m}
	if log != nil {
		log.Warn("IN-PROCESS REDIS STAND-IN (miniredis): call state lives only in this process's memory "+
			"and is lost when it exits; no other process shares it. FOR THE DEMO ONLY - never use it in "+
			"production; point the store at a real Redis instead",
			zap.String("url", s.URL()))
	}
	return s, nil
}

// URL returns the stand-in's address as a redis:// URL.
func (s *Server) URL() string { return "redis://" + s.m.Addr() + "/0" }

// Close stops the stand-in and drops its data.
func (s *Server) Close() { s.m.Close() }
