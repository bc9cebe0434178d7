package client

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// TokenSource returns a fresh join token for the same call and participant
// from the application's signalling service. It may block (a network round
// trip); ctx bounds it.
type TokenSource func(ctx context.Context) ([]byte, error)

// credentials are what a participant's requests carry: its latest join
// token and the latest resumption ticket a forwarder gave it, with the token
// that ticket is bound to (protocol/README.md 2.1). A Session's Conns share
// one; every request takes the current values, so a refreshed token or a new
// ticket is used from the next request on. Safe for concurrent use.
type credentials struct {
	mu          sync.Mutex
	token       []byte
	key         []byte    // IntegrityKey(token)
	expiry      time.Time // token's
	got         time.Time // when token was taken
	ticket      []byte
	ticketToken []byte // the token of the request whose answer carried ticket
}

func newCredentials(token []byte, now time.Time) *credentials {
	t, _ := protocol.DecodeToken(token) // checked by Config.withDefaults
	return &credentials{token: token, key: protocol.IntegrityKey(token), expiry: t.Expiry, got: now}
}

// request is what a new request carries: the token, its integrity key, and
// the ticket if it is bound to that token (after a token refresh, none
// until a forwarder binds one to the new token: the fresh token needs none).
func (c *credentials) request() (token, key, ticket []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Equal(c.ticketToken, c.token) {
		ticket = c.ticket
	}
	return c.token, c.key, ticket
}

// keep stores a ticket from the answer to a request that carried token,
// unless the token has been replaced since (a late answer: its ticket is
// bound to a token no request carries any more).
func (c *credentials) keep(ticket, token []byte) {
	if len(ticket) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Equal(token, c.token) {
		c.ticket, c.ticketToken = ticket, token
	}
}

// hasTicket reports whether a ticket bound to the current token is held.
func (c *credentials) hasTicket() bool {
	_, _, t := c.request()
	return len(t) > 0
}

// setToken replaces the token with a fresh one from the TokenSource, which
// must be for the same call and participant and expire later.
func (c *credentials) setToken(token []byte, now time.Time) error {
	t, err := protocol.DecodeToken(token)
	if err != nil {
		return fmt.Errorf("%w: TokenSource: %w", ErrConfig, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old, _ := protocol.DecodeToken(c.token)
	if t.CallID != old.CallID || t.ParticipantID != old.ParticipantID {
		return fmt.Errorf("%w: TokenSource gave a token for call %s participant %s, not this session's", ErrConfig, t.CallID, t.ParticipantID)
	}
	if !t.Expiry.After(old.Expiry) && !bytes.Equal(token, c.token) {
		return fmt.Errorf("%w: TokenSource gave a token expiring %s, no later than the current one", ErrConfig, t.Expiry.UTC().Format(time.RFC3339))
	}
	c.token, c.key, c.expiry, c.got = token, protocol.IntegrityKey(token), t.Expiry, now
	return nil
}

// refreshAt is when the token should be replaced: three quarters of the way
// from taking it to its expiry, so that a slow or failing TokenSource has a
// quarter of the lifetime to succeed before the token expires.
func (c *credentials) refreshAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got.Add(c.expiry.Sub(c.got) * 3 / 4)
}

// expired reports whether the token has expired at now, by the device's
// clock.
func (c *credentials) expired(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !now.Before(c.expiry)
}
