package forwarder

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Drain stops admitting new sessions and asks the ones here to move:
// joins are answered 300 Try Alternate (a live peer, or the configured
// alternate) or 508; every session is sent a MigrateTo naming a peer,
// repeated each cluster tick until it leaves, each signed with the key of
// the session's latest accepted request and echoing its transaction id. Moving is make-before-break:
// the device joins the peer, then leaves here, so its media never stops.
// Sessions with nowhere to go are served on until the drain deadline.
func (f *Forwarder) Drain() {
	if f.draining.CompareAndSwap(false, true) {
		f.drainStarted.Store(f.cfg.Now().UnixNano())
		f.log.Info("draining: admitting no one, asking sessions to move")
	}
}

// Shutdown drains, then waits until the last session has left or ctx is
// done (the drain deadline), whichever comes first. The caller then stops
// Run.
func (f *Forwarder) Shutdown(ctx context.Context) error {
	f.Drain()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for f.nSessions.Load() > 0 {
		select {
		case <-ctx.Done():
			f.log.Warn("drain deadline: stopping with sessions left", zap.Int64("sessions", f.nSessions.Load()))
			return ctx.Err()
		case <-t.C:
		}
	}
	f.log.Info("drained: no sessions left")
	return nil
}

// migrateEvery is how often a draining forwarder repeats a session's
// MigrateTo (it travels over UDP).
const migrateEvery = time.Second

// drainTick sends MigrateTo to the sessions not yet told (or told a while
// ago), each to the least loaded peer at that moment.
func (c *control) drainTick(now time.Time) {
	f := c.f
	if !f.draining.Load() {
		return
	}
	left := f.cfg.DrainDeadline - now.Sub(time.Unix(0, f.drainStarted.Load()))
	if left <= 0 {
		return
	}
	for _, s := range c.sessions {
		if !s.migrateSent.IsZero() && now.Sub(s.migrateSent) < migrateEvery {
			continue
		}
		alt := c.pickAlternate(s.addr)
		if !alt.IsValid() {
			return // nowhere to send anyone
		}
		// A member on TCP or TLS is named the peer's listener of its
		// transport (stream_migrate.go).
		if err := c.sendMigrate(s, alt, left); err != nil {
			f.log.Error("building migrate", zap.Error(err))
			return
		}
		if s.migrateSent.IsZero() {
			s.log.Info("asking to move", zap.Stringer("to", alt))
		}
		s.migrateSent = now
	}
}
