package client

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func credToken(t *testing.T, priv ed25519.PrivateKey, call, who protocol.ID, exp time.Time) []byte {
	t.Helper()
	b, err := protocol.SignToken(priv, protocol.Token{CallID: call, ParticipantID: who, Class: protocol.ClassGroup, MaxSize: 4, Expiry: exp})
	require.NoError(t, err)
	return b
}

// TestCredentials: a ticket travels only with the token it is bound to; a
// fresh token must be for the same participant and expire later; the
// refresh is due three quarters of the way to the expiry.
func TestCredentials(t *testing.T) {
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	now := time.Unix(1_800_000_000, 0)
	call, who := protocol.NewID(), protocol.NewID()
	t1 := credToken(t, priv, call, who, now.Add(20*time.Second))
	c := newCredentials(t1, now)
	require.Equal(t, now.Add(15*time.Second), c.refreshAt())
	tok, key, ticket := c.requestAt(now)
	require.Equal(t, t1, tok)
	require.Equal(t, protocol.IntegrityKey(t1), key)
	require.Nil(t, ticket)
	require.False(t, c.hasTicket())

	c.keep([]byte("ticket-1"), t1)
	_, _, ticket = c.requestAt(now)
	require.Equal(t, []byte("ticket-1"), ticket)
	require.False(t, c.expired(now.Add(19*time.Second)))
	require.True(t, c.expired(now.Add(20*time.Second)))

	// Refused: another participant's token, another call's, an older one.
	require.ErrorIs(t, c.setToken(credToken(t, priv, call, protocol.NewID(), now.Add(time.Hour)), now), ErrConfig)
	require.ErrorIs(t, c.setToken(credToken(t, priv, protocol.NewID(), who, now.Add(time.Hour)), now), ErrConfig)
	require.ErrorIs(t, c.setToken(credToken(t, priv, call, who, now.Add(10*time.Second)), now), ErrConfig)
	require.ErrorIs(t, c.setToken([]byte("junk"), now), ErrConfig)
	require.NoError(t, c.setToken(t1, now), "the same token again changes nothing")
	_, _, ticket = c.requestAt(now)
	require.Equal(t, []byte("ticket-1"), ticket)

	later := now.Add(15 * time.Second)
	t2 := credToken(t, priv, call, who, later.Add(20*time.Second))
	require.NoError(t, c.setToken(t2, later))
	tok, key, ticket = c.requestAt(later)
	require.Equal(t, t2, tok)
	require.Equal(t, protocol.IntegrityKey(t2), key)
	require.Nil(t, ticket, "ticket-1 is bound to the old token")
	require.Equal(t, later.Add(15*time.Second), c.refreshAt())
	require.True(t, c.hasTicket(), "the old token's ticket is kept until the new token has one")

	c.keep([]byte("ticket-1b"), t1) // a late answer to a request with the old token: renews its pair
	c.keep([]byte("stray"), credToken(t, priv, call, who, now.Add(time.Minute)))
	c.keep([]byte("ticket-2"), t2)
	tok, _, ticket = c.requestAt(later.Add(time.Hour))
	require.Equal(t, t2, tok)
	require.Equal(t, []byte("ticket-2"), ticket, "the new pair replaced the old one")
	c.keep(nil, t2) // an answer without a ticket keeps the last one
	require.True(t, c.hasTicket())
}

// TestCredentialsOldPair: a refreshed token with no ticket yet goes alone
// while it is valid; once it has expired, or the forwarders refused it, the
// previous token goes with its ticket; a refused pair is not sent again.
func TestCredentialsOldPair(t *testing.T) {
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	now := time.Unix(1_800_000_000, 0)
	call, who := protocol.NewID(), protocol.NewID()
	t1 := credToken(t, priv, call, who, now.Add(20*time.Second))
	c := newCredentials(t1, now)
	c.keep([]byte("ticket-1"), t1)
	t2 := credToken(t, priv, call, who, now.Add(30*time.Second))
	require.NoError(t, c.setToken(t2, now.Add(15*time.Second)))
	t3 := credToken(t, priv, call, who, now.Add(40*time.Second))
	require.NoError(t, c.setToken(t3, now.Add(25*time.Second)))
	require.True(t, c.hasTicket(), "t1's pair outlives two refreshes without a ticket")

	tok, _, ticket := c.requestAt(now.Add(39 * time.Second))
	require.Equal(t, t3, tok, "valid: alone")
	require.Nil(t, ticket)
	tok, key, ticket := c.requestAt(now.Add(40 * time.Second))
	require.Equal(t, t1, tok, "expired without a ticket: the old pair")
	require.Equal(t, protocol.IntegrityKey(t1), key)
	require.Equal(t, []byte("ticket-1"), ticket)

	// Refused alone (the forwarders' clocks run ahead): the old pair next;
	// refused too: nothing left to try.
	require.True(t, c.refuse(t3))
	tok, _, _ = c.requestAt(now.Add(39 * time.Second))
	require.Equal(t, t1, tok)
	require.False(t, c.refuse(t1))
	require.False(t, c.hasTicket())
	tok, _, ticket = c.requestAt(now.Add(40 * time.Second))
	require.Equal(t, t3, tok)
	require.Nil(t, ticket)

	// A token taken since the refused request was sent is worth a try.
	t4 := credToken(t, priv, call, who, now.Add(50*time.Second))
	require.NoError(t, c.setToken(t4, now.Add(40*time.Second)))
	require.True(t, c.refuse(t3))
	tok, _, _ = c.requestAt(now.Add(41 * time.Second))
	require.Equal(t, t4, tok)

	// A token and its ticket refused together: the ticket is dropped.
	c.keep([]byte("ticket-4"), t4)
	require.False(t, c.refuse(t4))
	require.False(t, c.hasTicket())
}

// TestCredentialRefusal: only a 401 that refuses the credentials ends a
// re-join, wherever it sits in the error; the address check's does not.
func TestCredentialRefusal(t *testing.T) {
	refused := &JoinError{Code: protocol.CodeUnauthorized, Reason: "resumption ticket expired"}
	loop := cookieLoopError(netip.MustParseAddrPort("127.0.0.1:3478"), protocol.JoinResponse{Code: protocol.CodeUnauthorized, Reason: "address check"})
	full := &JoinError{Code: protocol.CodeForbidden, Reason: "call is full"}
	require.True(t, credentialRefusal(refused))
	require.True(t, credentialRefusal(multiError{full, refused}))
	require.True(t, credentialRefusal(fmt.Errorf("%w (2 tried): %w", ErrJoinRejected, multiError{loop, refused})))
	require.False(t, credentialRefusal(loop))
	require.False(t, credentialRefusal(fmt.Errorf("%w (2 tried): %w", ErrJoinRejected, multiError{full, loop})))
	require.False(t, credentialRefusal(ErrJoinTimeout))
	require.False(t, credentialRefusal(nil))
}
