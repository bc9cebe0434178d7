package protocol

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pion/stun/v3"
)

// Attributes of ours, all in STUN's comprehension-optional range (RFC 8489
// 18.2) so that generic STUN tools show them as unknown but still decode the
// message.
const (
	// AttrJoinToken carries the raw signed join token (TokenSize bytes).
	AttrJoinToken stun.AttrType = 0xC001
	// AttrSessionParams, in a success response: keepalive interval and idle
	// timeout, each a uint32 of milliseconds.
	AttrSessionParams stun.AttrType = 0xC002
	// AttrLeave, empty, in a request: the participant leaves the call.
	AttrLeave stun.AttrType = 0xC003
	// AttrRetryAfter, in a 508 or 300 response: a uint32 of milliseconds to
	// wait before trying this forwarder again.
	AttrRetryAfter stun.AttrType = 0xC004
	// AttrCookie: in a 401 answer, an opaque value (at most 32 bytes) bound
	// to the device's address; the device repeats the request with it. In a
	// request, the cookie the device was given for the socket it sends from.
	AttrCookie stun.AttrType = 0xC005
)

// MaxCookieSize bounds AttrCookie.
const MaxCookieSize = 32

// STUN error codes the forwarder answers with (RFC 8489 14.8).
const (
	CodeTryAlternate         = stun.CodeTryAlternate         // 300: draining or throttled, go to ALTERNATE-SERVER
	CodeBadRequest           = stun.CodeBadRequest           // 400: malformed request
	CodeUnauthorized         = stun.CodeUnauthorized         // 401: bad, forged or expired token, or bad integrity
	CodeForbidden            = stun.CodeForbidden            // 403: token valid, but for another call or participant, or the call is full
	CodeInsufficientCapacity = stun.CodeInsufficientCapacity // 508: throttled, retry later
)

// integrityContext separates the join integrity key from other uses of the token.
const integrityContext = "callrelay join integrity v1\x00"

// IntegrityKey is the MESSAGE-INTEGRITY key of every join, keepalive and
// leave request that carries this token, and of the forwarder's responses to
// them. It proves the message was not altered and lets the device trust a
// response; the token's signature, not this key, is what authorises a join.
func IntegrityKey(token []byte) []byte {
	h := sha256.New()
	h.Write([]byte(integrityContext))
	h.Write(token)
	return h.Sum(nil)[:20]
}

// JoinRequest is a decoded join, keepalive or leave request. The same
// message serves all three: the first from an address joins, the later ones
// keep the session alive (or move it to a new address), LEAVE ends it.
type JoinRequest struct {
	TransactionID [stun.TransactionIDSize]byte
	CallID        ID // as the USERNAME asks
	ParticipantID ID
	Token         []byte // raw token bytes (a sub-slice of the message)
	Leave         bool
	Cookie        []byte // the address cookie the device echoes, if any
}

// JoinOptions are the variable parts of a join request.
type JoinOptions struct {
	Leave  bool   // leave the call instead of joining or keeping alive
	Cookie []byte // the last cookie the forwarder gave this socket, if any
}

// BuildJoinRequest encodes a join, keepalive or leave request for the given
// token. The call and participant ids come from the token.
func BuildJoinRequest(token []byte, o JoinOptions) (*stun.Message, error) {
	t, err := DecodeToken(token)
	if err != nil {
		return nil, err
	}
	if len(o.Cookie) > MaxCookieSize {
		return nil, fmt.Errorf("%w: cookie of %d bytes", ErrJoinMalformed, len(o.Cookie))
	}
	setters := []stun.Setter{
		stun.TransactionID, stun.BindingRequest,
		stun.NewUsername(t.CallID.String() + ":" + t.ParticipantID.String()),
		rawAttr{AttrJoinToken, token},
	}
	if o.Leave {
		setters = append(setters, rawAttr{AttrLeave, nil})
	}
	if len(o.Cookie) > 0 {
		setters = append(setters, rawAttr{AttrCookie, o.Cookie})
	}
	setters = append(setters, stun.MessageIntegrity(IntegrityKey(token)), stun.Fingerprint)
	return stun.Build(setters...)
}

// ParseJoinRequest decodes and checks a Binding request: FINGERPRINT,
// USERNAME, JOIN-TOKEN and MESSAGE-INTEGRITY. It does not verify the token's
// signature (TokenVerifier does) nor that the token matches the USERNAME
// (CheckJoin does both).
func ParseJoinRequest(m *stun.Message) (JoinRequest, error) {
	var r JoinRequest
	if m.Type != stun.BindingRequest {
		return r, fmt.Errorf("%w: type %s", ErrNotJoin, m.Type)
	}
	r.TransactionID = m.TransactionID
	if err := stun.Fingerprint.Check(m); err != nil {
		return r, fmt.Errorf("%w: fingerprint: %v", ErrJoinMalformed, err)
	}
	var user stun.Username
	if err := user.GetFrom(m); err != nil {
		return r, fmt.Errorf("%w: USERNAME: %v", ErrJoinMalformed, err)
	}
	call, part, ok := strings.Cut(string(user), ":")
	if !ok {
		return r, fmt.Errorf("%w: USERNAME is not call:participant", ErrJoinMalformed)
	}
	var err error
	if r.CallID, err = ParseID(call); err != nil {
		return r, fmt.Errorf("%w: USERNAME: bad call id", ErrJoinMalformed)
	}
	if r.ParticipantID, err = ParseID(part); err != nil {
		return r, fmt.Errorf("%w: USERNAME: bad participant id", ErrJoinMalformed)
	}
	tok, err := m.Get(AttrJoinToken)
	if err != nil {
		return r, fmt.Errorf("%w: no JOIN-TOKEN", ErrJoinMalformed)
	}
	r.Token = tok
	r.Leave = m.Contains(AttrLeave)
	if c, err := m.Get(AttrCookie); err == nil {
		if len(c) > MaxCookieSize {
			return r, fmt.Errorf("%w: cookie of %d bytes", ErrJoinMalformed, len(c))
		}
		r.Cookie = c
	}
	if err := onlyFingerprintAfterIntegrity(m); err != nil {
		return r, err
	}
	if err := stun.MessageIntegrity(IntegrityKey(tok)).Check(m); err != nil {
		return r, fmt.Errorf("%w: %v", ErrIntegrity, err)
	}
	return r, nil
}

// onlyFingerprintAfterIntegrity: MESSAGE-INTEGRITY must be present, and only
// FINGERPRINT may follow it, since nothing after it is protected
// (RFC 8489 14.5). Otherwise an attacker could append a LEAVE to a captured
// keepalive.
func onlyFingerprintAfterIntegrity(m *stun.Message) error {
	seen := false
	for _, a := range m.Attributes {
		switch {
		case a.Type == stun.AttrMessageIntegrity:
			seen = true
		case seen && a.Type != stun.AttrFingerprint:
			return fmt.Errorf("%w: attribute %s after MESSAGE-INTEGRITY", ErrIntegrity, a.Type)
		}
	}
	if !seen {
		return fmt.Errorf("%w: no MESSAGE-INTEGRITY", ErrIntegrity)
	}
	return nil
}

// CheckJoin parses a request and verifies its token at now (see VerifyJoin).
// Use ErrorCodeFor to answer an error.
func CheckJoin(m *stun.Message, v *TokenVerifier, now time.Time) (JoinRequest, Token, error) {
	r, err := ParseJoinRequest(m)
	if err != nil {
		return r, Token{}, err
	}
	t, err := VerifyJoin(r, v, now)
	return r, t, err
}

// VerifyJoin checks a parsed request's token: signature, expiry, and that it
// is for the call and participant the request names.
func VerifyJoin(r JoinRequest, v *TokenVerifier, now time.Time) (Token, error) {
	t, err := v.Verify(r.Token, now)
	if err != nil {
		return t, err
	}
	if t.CallID != r.CallID || t.ParticipantID != r.ParticipantID {
		return t, fmt.Errorf("%w: token names call %s participant %s", ErrWrongCall, t.CallID, t.ParticipantID)
	}
	return t, nil
}

// ErrorCodeFor maps an error of ParseJoinRequest/CheckJoin to the STUN error
// code the forwarder answers with.
func ErrorCodeFor(err error) stun.ErrorCode {
	switch {
	case errors.Is(err, ErrWrongCall):
		return CodeForbidden
	case errors.Is(err, ErrIntegrity), errors.Is(err, ErrTokenSignature),
		errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenMalformed):
		return CodeUnauthorized
	}
	return CodeBadRequest
}

// SessionParams tell the device how often to send keepalives and when the
// forwarder will forget a silent session.
type SessionParams struct {
	KeepaliveInterval time.Duration
	IdleTimeout       time.Duration
}

// JoinResponse is a decoded answer to a join request.
type JoinResponse struct {
	OK     bool
	Mapped netip.AddrPort // the device's address as the forwarder sees it (success)
	Params SessionParams  // success only
	// Errors only:
	Code       stun.ErrorCode
	Reason     string
	Alternate  netip.AddrPort // with 300 Try Alternate
	RetryAfter time.Duration  // with 300 or 508, if the forwarder said
	Cookie     []byte         // with 401: repeat the request with this cookie
}

// BuildJoinSuccess answers req with the device's mapped address and the
// session parameters, protected with key (IntegrityKey of the token).
func BuildJoinSuccess(req JoinRequest, mapped netip.AddrPort, p SessionParams, key []byte) ([]byte, error) {
	var sp [8]byte
	binary.BigEndian.PutUint32(sp[0:4], uint32(p.KeepaliveInterval/time.Millisecond))
	binary.BigEndian.PutUint32(sp[4:8], uint32(p.IdleTimeout/time.Millisecond))
	m, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(mapped.Addr().Unmap().AsSlice()), Port: int(mapped.Port())},
		rawAttr{AttrSessionParams, sp[:]},
		stun.MessageIntegrity(key), stun.Fingerprint)
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

// JoinError describes an error answer.
type JoinError struct {
	Code       stun.ErrorCode
	Reason     string
	Alternate  netip.AddrPort // set only with CodeTryAlternate
	RetryAfter time.Duration
	Cookie     []byte // with CodeUnauthorized: the address check's cookie
}

// BuildJoinError answers transaction tid with an error. key may be nil when
// the request carried no usable token (then the answer has no
// MESSAGE-INTEGRITY, and devices ignore it).
func BuildJoinError(tid [stun.TransactionIDSize]byte, e JoinError, key []byte) ([]byte, error) {
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(tid), stun.BindingError,
		stun.ErrorCodeAttribute{Code: e.Code, Reason: []byte(e.Reason)},
	}
	if e.Alternate.IsValid() {
		setters = append(setters, &stun.AlternateServer{IP: net.IP(e.Alternate.Addr().Unmap().AsSlice()), Port: int(e.Alternate.Port())})
	}
	if e.RetryAfter > 0 {
		var ra [4]byte
		binary.BigEndian.PutUint32(ra[:], uint32(e.RetryAfter/time.Millisecond))
		setters = append(setters, rawAttr{AttrRetryAfter, ra[:]})
	}
	if len(e.Cookie) > 0 {
		setters = append(setters, rawAttr{AttrCookie, e.Cookie})
	}
	if key != nil {
		setters = append(setters, stun.MessageIntegrity(key))
	}
	setters = append(setters, stun.Fingerprint)
	m, err := stun.Build(setters...)
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

// ParseJoinResponse decodes a forwarder's answer to the request with
// transaction id tid, and checks its MESSAGE-INTEGRITY with key. An answer
// without valid integrity is rejected: anyone could have sent it.
func ParseJoinResponse(raw []byte, tid [stun.TransactionIDSize]byte, key []byte) (JoinResponse, error) {
	var r JoinResponse
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := m.Decode(); err != nil {
		return r, fmt.Errorf("%w: %v", ErrNotResponse, err)
	}
	if m.TransactionID != tid {
		return r, fmt.Errorf("%w: transaction id differs", ErrNotResponse)
	}
	if m.Type != stun.BindingSuccess && m.Type != stun.BindingError {
		return r, fmt.Errorf("%w: type %s", ErrNotResponse, m.Type)
	}
	if err := stun.MessageIntegrity(key).Check(m); err != nil {
		return r, fmt.Errorf("%w: %v", ErrIntegrity, err)
	}
	if m.Type == stun.BindingSuccess {
		return parseSuccess(m)
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return r, fmt.Errorf("%w: error response without ERROR-CODE", ErrNotResponse)
	}
	r.Code, r.Reason = ec.Code, string(ec.Reason)
	var alt stun.AlternateServer
	if alt.GetFrom(m) == nil {
		if a, ok := netip.AddrFromSlice(alt.IP); ok {
			r.Alternate = netip.AddrPortFrom(a.Unmap(), uint16(alt.Port))
		}
	}
	if ra, err := m.Get(AttrRetryAfter); err == nil && len(ra) == 4 {
		r.RetryAfter = time.Duration(binary.BigEndian.Uint32(ra)) * time.Millisecond
	}
	if c, err := m.Get(AttrCookie); err == nil && len(c) <= MaxCookieSize {
		r.Cookie = append([]byte(nil), c...)
	}
	return r, nil
}

func parseSuccess(m *stun.Message) (JoinResponse, error) {
	r := JoinResponse{OK: true}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err != nil {
		return r, fmt.Errorf("%w: no XOR-MAPPED-ADDRESS", ErrNotResponse)
	}
	a, ok := netip.AddrFromSlice(xa.IP)
	if !ok {
		return r, fmt.Errorf("%w: bad XOR-MAPPED-ADDRESS", ErrNotResponse)
	}
	r.Mapped = netip.AddrPortFrom(a.Unmap(), uint16(xa.Port))
	sp, err := m.Get(AttrSessionParams)
	if err != nil || len(sp) != 8 {
		return r, fmt.Errorf("%w: no SESSION-PARAMS", ErrNotResponse)
	}
	r.Params.KeepaliveInterval = time.Duration(binary.BigEndian.Uint32(sp[0:4])) * time.Millisecond
	r.Params.IdleTimeout = time.Duration(binary.BigEndian.Uint32(sp[4:8])) * time.Millisecond
	return r, nil
}

// rawAttr adds an attribute with the given bytes.
type rawAttr struct {
	t stun.AttrType
	v []byte
}

func (a rawAttr) AddTo(m *stun.Message) error {
	m.Add(a.t, a.v)
	return nil
}
