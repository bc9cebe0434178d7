package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Token refresh bounds: a failed TokenSource call is retried after this
// long, doubling; a token is never asked for again sooner than the minimum.
const (
	refreshBackoffMin = time.Second
	refreshBackoffMax = 30 * time.Second
)

// refreshLoop replaces the Session's token from Config.TokenSource three
// quarters of the way to its expiry, retrying with backoff on failure (the
// session's resumption ticket keeps it safe meanwhile), until the Session
// ends.
func (s *Session) refreshLoop() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Until(s.cfg.creds.refreshAt()))
	defer timer.Stop()
	backoff := refreshBackoffMin
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-timer.C:
		}
		if err := s.refreshToken(s.ctx); err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.log.Warn("token refresh failed; retrying", zap.Error(err), zap.Duration("in", backoff))
			timer.Reset(backoff)
			backoff = min(2*backoff, refreshBackoffMax)
			continue
		}
		backoff = refreshBackoffMin
		timer.Reset(max(time.Until(s.cfg.creds.refreshAt()), refreshBackoffMin))
	}
}

// refreshToken asks the TokenSource for a fresh token (one call at a time,
// bounded by JoinTimeout) and makes it the Session's: every request from
// now on carries it.
func (s *Session) refreshToken(ctx context.Context) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.JoinTimeout)
	defer cancel()
	tok, err := s.cfg.TokenSource(ctx)
	if err == nil {
		err = s.cfg.creds.setToken(tok, time.Now())
	}
	if err != nil {
		s.tokenErrors.Add(1)
		return fmt.Errorf("client: TokenSource: %w", err)
	}
	s.tokenRefreshes.Add(1)
	t, _ := protocol.DecodeToken(tok)
	s.log.Debug("token refreshed", zap.Time("expiry", t.Expiry))
	return nil
}

// renewAfterRefusal decides what a re-join does after every forwarder that
// answered refused its credentials (401): try again at once with other
// credentials (a token taken meanwhile, or the token before the current one
// with its ticket; sent was the token the refused dial carried), or with a
// fresh token from the TokenSource, once per re-join (fresh: already done).
// When neither is possible it returns the error that ends the re-join.
func (s *Session) renewAfterRefusal(ctx context.Context, sent []byte, fresh *bool, refused error) error {
	if s.cfg.creds.refuse(sent) {
		return nil
	}
	if s.cfg.TokenSource == nil {
		return fmt.Errorf("%w: %w (no TokenSource to get a new token): %w", ErrSessionLost, ErrUnauthorized, refused)
	}
	if *fresh {
		return fmt.Errorf("%w: %w, a fresh token from the TokenSource too: %w", ErrSessionLost, ErrUnauthorized, refused)
	}
	*fresh = true
	if err := s.refreshToken(ctx); err != nil {
		return fmt.Errorf("%w: %w, and no fresh token: %w: %w", ErrSessionLost, ErrUnauthorized, err, refused)
	}
	s.log.Info("re-join refused 401; retrying with a fresh token")
	return nil
}

// credentialRefusal reports whether err holds a forwarder's 401 refusal
// of the credentials (the token, and the resumption ticket if one was
// sent), not the address check's.
func credentialRefusal(err error) bool {
	switch e := err.(type) {
	case nil:
		return false
	case *JoinError:
		return e.Code == protocol.CodeUnauthorized && !e.addressCheck
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			if credentialRefusal(inner) {
				return true
			}
		}
		return false
	}
	return credentialRefusal(errors.Unwrap(err))
}
