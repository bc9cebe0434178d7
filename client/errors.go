package client

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/pion/stun/v3"
)

// Sentinel errors. Functions wrap them with context; test them with errors.Is.
var (
	// ErrConfig: the Config cannot work; the message says what to fix.
	ErrConfig = errors.New("client: invalid config")
	// ErrJoinRejected: every candidate forwarder refused the join with a
	// final error. The error also wraps one *JoinError per forwarder.
	ErrJoinRejected = errors.New("client: every forwarder refused the join")
	// ErrJoinTimeout: no forwarder answered with success before the context
	// or Config.JoinTimeout ended. Any *JoinError seen meanwhile is wrapped.
	ErrJoinTimeout = errors.New("client: no forwarder accepted the join in time")
	// ErrSessionLost: no authenticated keepalive answer arrived within the
	// session's idle timeout, or the socket failed.
	ErrSessionLost = errors.New("client: session lost")
	// ErrUnauthorized: the forwarders refused the token (401), and the
	// resumption ticket if one was sent, and no fresh token could be had
	// (no TokenSource, it failed, or its token was refused too). A Session
	// ends with it at once, wrapped in ErrSessionLost.
	ErrUnauthorized = errors.New("client: forwarders refused the token and resumption ticket")
	// ErrClosed: the Conn was closed by Close.
	ErrClosed = errors.New("client: connection closed")
	// ErrNotMedia: WriteRTP was given bytes that are not an RTP packet.
	ErrNotMedia = errors.New("client: not an RTP packet")
	// ErrUnknownSSRC: Receiver.Open got a packet from a sender whose key it
	// was not given.
	ErrUnknownSSRC = errors.New("client: no media key for SSRC")
	// ErrDecrypt: an SRTP packet failed authentication (tampered, wrong key)
	// or was a replay.
	ErrDecrypt = errors.New("client: SRTP decryption failed")
)

// JoinError is a forwarder's authenticated refusal of a join, keepalive or
// rebind. Find it with errors.As; Code is one of protocol.CodeTryAlternate,
// CodeBadRequest, CodeUnauthorized, CodeForbidden, CodeInsufficientCapacity.
type JoinError struct {
	Forwarder  netip.AddrPort // who refused
	Code       stun.ErrorCode
	Reason     string
	Alternate  netip.AddrPort // with 300 Try Alternate, where to go
	RetryAfter time.Duration  // with 300 or 508, if the forwarder said
	// addressCheck: a 401 that is the address check failing round after
	// round (cookieLoopError), not a refusal of the credentials.
	addressCheck bool
}

func (e *JoinError) Error() string {
	s := fmt.Sprintf("client: forwarder %s refused the join: %d %s", e.Forwarder, int(e.Code), e.Reason)
	if e.Alternate.IsValid() {
		s += fmt.Sprintf(" (alternate %s)", e.Alternate)
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// fatal reports whether the code ends all attempts on that forwarder:
// everything but 300 (go elsewhere) and 508 (come back later).
func (e *JoinError) fatal() bool {
	return e.Code != stun.CodeTryAlternate && e.Code != stun.CodeInsufficientCapacity
}

// multiError joins errors on one line; errors.Is and errors.As see each.
type multiError []error

func (m multiError) Error() string {
	s := make([]string, len(m))
	for i, e := range m {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }
