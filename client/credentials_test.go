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
	tok, key, ticket := c.request()
	require.Equal(t, t1, tok)
	require.Equal(t, protocol.IntegrityKey(t1), key)
	require.Nil(t, ticket)
	require.False(t, c.hasTicket())

	c.keep([]byte("ticket-1"), t1)
	_, _, ticket = c.request()
	require.Equal(t, []byte("ticket-1"), ticket)
	require.False(t, c.expired(now.Add(19*time.Second)))
	require.True(t, c.expired(now.Add(20*time.Second)))

	// Refused: another participant's token, another call's, an older one.
	require.ErrorIs(t, c.setToken(credToken(t, priv, call, protocol.NewID(), now.Add(time.Hour)), now), ErrConfig)
	require.ErrorIs(t, c.setToken(credToken(t, priv, protocol.NewID(), who, now.Add(time.Hour)), now), ErrConfig)
	require.ErrorIs(t, c.setToken(credToken(t, priv, call, who, now.Add(10*time.Second)), now), ErrConfig)
	require.ErrorIs(t, c.setToken([]byte("junk"), now), ErrConfig)
	require.NoError(t, c.setToken(t1, now), "the same token again changes nothing")

	later := now.Add(15 * time.Second)
	t2 := credToken(t, priv, call, who, later.Add(20*time.Second))
	require.NoError(t, c.setToken(t2, later))
	tok, key, ticket = c.request()
	require.Equal(t, t2, tok)
	require.Equal(t, protocol.IntegrityKey(t2), key)
	require.Nil(t, ticket, "ticket-1 is bound to the old token")
	require.Equal(t, later.Add(15*time.Second), c.refreshAt())

	c.keep([]byte("late"), t1) // a late answer to a request with the old token
	require.False(t, c.hasTicket())
	c.keep([]byte("ticket-2"), t2)
	_, _, ticket = c.request()
	require.Equal(t, []byte("ticket-2"), ticket)
	c.keep(nil, t2) // an answer without a ticket keeps the last one
	require.True(t, c.hasTicket())
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
