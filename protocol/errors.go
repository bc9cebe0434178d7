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
	// ErrDeviceProof: a DEVICE-PROOF is malformed, or its signature does
	// not verify with the token's device key (device.go).
	ErrDeviceProof = errors.New("protocol: device proof invalid")
)

// Sentinel errors of resumption tickets (ticket.go). Each is a reason a
// forwarder refuses a resumption, answered 401 and counted apart.
var (
	// ErrTicketMalformed: the ticket does not have the ticket layout, or
	// says something a ticket may not.
	ErrTicketMalformed = errors.New("protocol: malformed resumption ticket")
	// ErrTicketForeign: the ticket was sealed with another key: another
	// cluster's, an old cluster key, or a lone forwarder that has restarted
	// (or another lone forwarder).
	ErrTicketForeign = errors.New("protocol: resumption ticket from another cluster or forwarder")
	// ErrTicketForged: the ticket names our key but its tag does not match.
	ErrTicketForged = errors.New("protocol: resumption ticket forged")
	// ErrTicketExpired: the ticket's valid-until has passed.
	ErrTicketExpired = errors.New("protocol: resumption ticket expired")
	// ErrTicketMismatch: an authentic ticket, but for another call,
	// participant or credential than the request's token.
	ErrTicketMismatch = errors.New("protocol: resumption ticket is for another participant or token")
)

// Sentinel errors of the cluster: the cluster key, trunk frames between
// forwarders and the messages forwarders exchange over NATS.
var (
	// ErrClusterKey: a cluster key is not 64 hex digits, or is all zeros.
	ErrClusterKey = errors.New("protocol: bad cluster key")
	// ErrTrunkTruncated: a trunk frame is shorter than its header and tag
	// plus one payload byte.
	ErrTrunkTruncated = errors.New("protocol: trunk frame truncated")
	// ErrTrunkVersion: a trunk frame's version byte is not 2.
	ErrTrunkVersion = errors.New("protocol: unknown trunk frame version")
	// ErrTrunkAuth: a trunk frame's tag does not match (wrong cluster key,
	// or the frame was altered).
	ErrTrunkAuth = errors.New("protocol: trunk frame authentication failed")
	// ErrClusterMsgInvalid: a cluster message does not have the envelope or
	// body layout (magic, version, type, length, field values), or a message
	// to encode holds a value the format forbids.
	ErrClusterMsgInvalid = errors.New("protocol: invalid cluster message")
	// ErrClusterMsgAuth: a cluster message's tag does not match (wrong
	// cluster key, or the message was altered).
	ErrClusterMsgAuth = errors.New("protocol: cluster message authentication failed")
)
