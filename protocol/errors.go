package protocol

import "errors"

// Sentinel errors of the join path. Callers test them with errors.Is; the
// functions that return them wrap them with context.
var (
	// ErrTokenMalformed: the token's bytes do not have the token layout.
	ErrTokenMalformed = errors.New("protocol: malformed join token")
	// ErrTokenSignature: no trusted key verifies the token's signature.
	ErrTokenSignature = errors.New("protocol: join token signature invalid")
	// ErrTokenExpired: the token was valid once but its expiry has passed.
	ErrTokenExpired = errors.New("protocol: join token expired")
	// ErrBadID: a call or participant id is not 32 hex digits (or a UUID).
	ErrBadID = errors.New("protocol: bad id")
	// ErrBadKey: a key is not base64 of the right length.
	ErrBadKey = errors.New("protocol: bad key")
	// ErrNotJoin: a STUN message is not a Binding request of ours.
	ErrNotJoin = errors.New("protocol: not a join request")
	// ErrJoinMalformed: a join request lacks or garbles a required attribute.
	ErrJoinMalformed = errors.New("protocol: malformed join request")
	// ErrIntegrity: MESSAGE-INTEGRITY is missing or does not match.
	ErrIntegrity = errors.New("protocol: message integrity check failed")
	// ErrWrongCall: the token is valid but names another call or participant
	// than the request asks for.
	ErrWrongCall = errors.New("protocol: token is for another call")
	// ErrNotResponse: a datagram is not a response to the given transaction.
	ErrNotResponse = errors.New("protocol: not a join response")
)
