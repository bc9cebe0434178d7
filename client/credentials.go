package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
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
//
// After a token refresh the ticket bound to the old token is kept, with
// that token, until an answer brings a ticket bound to the new one: the new
// token admits on its own while it is valid, but should it expire before a
// forwarder binds a ticket to it (every answer lost, the forwarder gone,
// every other one out of reach until then), the old pair still resumes
// the session while its ticket is valid.
type credentials struct {
	mu     sync.Mutex
	token  []byte
	key    []byte    // IntegrityKey(token)
	expiry time.Time // token's
	got    time.Time // when token was taken
	ticket []byte    // bound to token; nil until an answer to a request carrying token brings one
	// refused: the forwarders refused token (expired by their clocks,
	// or its ticket no good): the old pair goes first.
	refused bool
	// old is the last token that had a ticket, with that ticket, while
	// token has none; else empty.
	old struct{ token, key, ticket []byte }

	// device signs the proofs of version 2 tokens (Config.DeviceKey);
	// counter is the last proof's counter (nextCounter).
	device  ed25519.PrivateKey
	counter uint64

	// rtts: the RTT to each candidate forwarder (locate.go), with a lock
	// of its own.
	rtts rttTable
}

// nextCounter is a new proof's counter: the Unix time in milliseconds, or
// one above the last counter if that is not more, so that it grows with
// every proof, across Conns and forwarders.
func (c *credentials) nextCounter(now time.Time) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counter = max(c.counter+1, uint64(max(now.UnixMilli(), 0)))
	return c.counter
}

// checkDeviceKey: a version 2 token needs the private key of the device
// key it names.
func checkDeviceKey(t protocol.Token, key ed25519.PrivateKey) error {
	switch {
	case !t.DeviceBound():
		return nil
	case len(key) != ed25519.PrivateKeySize:
		return fmt.Errorf("%w: a device-bound token needs Config.DeviceKey", ErrConfig)
	case !bytes.Equal(key.Public().(ed25519.PublicKey), t.DeviceKey):
		return fmt.Errorf("%w: the token is bound to another device key than Config.DeviceKey", ErrConfig)
	}
	return nil
}

func newCredentials(token []byte, now time.Time) *credentials {
	t, _ := protocol.DecodeToken(token) // checked by Config.withDefaults
	return &credentials{token: token, key: protocol.IntegrityKey(token), expiry: t.Expiry, got: now}
}

// request is what a new request carries: the token with its integrity key
// and the ticket bound to it; or, while the token has no ticket yet, the
// same alone as long as it is valid, and after that the previous token
// with its ticket (see credentials).
func (c *credentials) request() (token, key, ticket []byte) {
	return c.requestAt(time.Now())
}

func (c *credentials) requestAt(now time.Time) (token, key, ticket []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ticket == nil && c.old.ticket != nil && (c.refused || !now.Before(c.expiry)) {
		return c.old.token, c.old.key, c.old.ticket
	}
	return c.token, c.key, c.ticket
}

// keep stores a ticket from the answer to a request that carried token: a
// ticket bound to the current token replaces the old pair; one bound to the
// old token renews that pair's. Other answers are late (their token is no
// longer carried) and their tickets are dropped.
func (c *credentials) keep(ticket, token []byte) {
	if len(ticket) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case bytes.Equal(token, c.token):
		c.ticket, c.refused = ticket, false
		c.old.token, c.old.key, c.old.ticket = nil, nil, nil
	case c.old.ticket != nil && bytes.Equal(token, c.old.token):
		c.old.ticket = ticket
	}
}

// refuse records that the forwarders refused a request that carried token
// (401, final for those credentials): the ticket it carried is dropped, and
// a token refused without a ticket is not sent alone again while an old
// pair remains. It reports whether other credentials are left to try.
func (c *credentials) refuse(token []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case bytes.Equal(token, c.token):
		// With a ticket too: a valid token would have been admitted
		// whatever its ticket, so the token is no good alone either.
		c.ticket, c.refused = nil, true
		return c.old.ticket != nil
	case c.old.ticket != nil && bytes.Equal(token, c.old.token):
		c.old.token, c.old.key, c.old.ticket = nil, nil, nil
		return !c.refused
	}
	return true // a token taken since: not refused yet
}

// hasTicket reports whether a ticket is held that resumes the session once
// its tokens have expired: bound to the current token, or to the old one.
func (c *credentials) hasTicket() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ticket != nil || c.old.ticket != nil
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
	if err := checkDeviceKey(t, c.device); err != nil {
		return fmt.Errorf("TokenSource: %w", err)
	}
	if t.CallID != old.CallID || t.ParticipantID != old.ParticipantID {
		return fmt.Errorf("%w: TokenSource gave a token for call %s participant %s, not this session's", ErrConfig, t.CallID, t.ParticipantID)
	}
	if !t.Expiry.After(old.Expiry) && !bytes.Equal(token, c.token) {
		return fmt.Errorf("%w: TokenSource gave a token expiring %s, no later than the current one", ErrConfig, t.Expiry.UTC().Format(time.RFC3339))
	}
	if bytes.Equal(token, c.token) {
		c.got = now
		return nil
	}
	if c.ticket != nil { // else the old pair, if any, stays the one with a ticket
		c.old.token, c.old.key, c.old.ticket = c.token, c.key, c.ticket
	}
	c.token, c.key, c.expiry, c.got = token, protocol.IntegrityKey(token), t.Expiry, now
	c.ticket, c.refused = nil, false
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

// GenerateDeviceKey makes a device key (Config.DeviceKey): the device keeps
// the private key, and gives the public half,
// key.Public().(ed25519.PublicKey), to the application's signalling
// service, which mints version 2 tokens bound to it (protocol.SignToken
// with Token.DeviceKey; `callrelay token --device-key`).
func GenerateDeviceKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(nil)
	return priv, err
}
