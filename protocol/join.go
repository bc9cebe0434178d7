package protocol

import (
	crand "crypto/rand"
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
	// AttrResumeTicket: in a success response, a resumption ticket the
	// device keeps (1..MaxTicketSize opaque bytes); in a request, the latest
	// ticket the device was given, which lets a session whose token has
	// expired resume (protocol/README.md 2.1).
	AttrResumeTicket stun.AttrType = 0xC006
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
	Ticket        []byte // the resumption ticket the device presents, if any
	// With a version 2 token: HasProof when the request carries a
	// DEVICE-PROOF (its MESSAGE-INTEGRITY, under the token's key, was
	// checked); else SessionKeyed: its MESSAGE-INTEGRITY is under the
	// session's key, which the caller checks (CheckSessionIntegrity).
	Proof        DeviceProof
	HasProof     bool
	SessionKeyed bool
	// RTTs is the CANDIDATE-RTTS value as sent, unparsed: a bad report
	// must not fail the keepalive carrying it (ParseCandidateRTTs).
	RTTs []byte
}

// JoinOptions are the variable parts of a join request.
type JoinOptions struct {
	Leave  bool   // leave the call instead of joining or keeping alive
	Cookie []byte // the last cookie the forwarder gave this socket, if any
	Ticket []byte // the latest resumption ticket, if any (sent as given)
	// RTTs, if set, is sent as CANDIDATE-RTTS (README 3.2); it must pass
	// CandidateRTTs.Check.
	RTTs *CandidateRTTs
}

// BuildJoinRequest encodes a join, keepalive or leave request for the given
// token. The call and participant ids come from the token.
func BuildJoinRequest(token []byte, o JoinOptions) (*stun.Message, error) {
	if IsDeviceToken(token) {
		return nil, fmt.Errorf("%w: a version 2 token needs BuildDeviceRequest", ErrTokenMalformed)
	}
	var tid [stun.TransactionIDSize]byte
	if _, err := crand.Read(tid[:]); err != nil {
		return nil, err
	}
	return buildJoin(token, o, tid, nil, IntegrityKey(token))
}

// buildJoin encodes a request with transaction id tid, a DEVICE-PROOF
// value if proof is set, and MESSAGE-INTEGRITY under key.
func buildJoin(token []byte, o JoinOptions, tid [stun.TransactionIDSize]byte, proof, key []byte) (*stun.Message, error) {
	t, err := DecodeToken(token)
	if err != nil {
		return nil, err
	}
	if len(o.Cookie) > MaxCookieSize {
		return nil, fmt.Errorf("%w: cookie of %d bytes", ErrJoinMalformed, len(o.Cookie))
	}
	if len(o.Ticket) > MaxTicketSize {
		return nil, fmt.Errorf("%w: ticket of %d bytes", ErrJoinMalformed, len(o.Ticket))
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(tid), stun.BindingRequest,
		stun.NewUsername(t.CallID.String() + ":" + t.ParticipantID.String()),
		rawAttr{AttrJoinToken, token},
	}
	if o.Leave {
		setters = append(setters, rawAttr{AttrLeave, nil})
	}
	if len(o.Cookie) > 0 {
		setters = append(setters, rawAttr{AttrCookie, o.Cookie})
	}
	if len(o.Ticket) > 0 {
		setters = append(setters, rawAttr{AttrResumeTicket, o.Ticket})
	}
	if proof != nil {
		setters = append(setters, rawAttr{AttrDeviceProof, proof})
	}
	if o.RTTs != nil {
		v, err := o.RTTs.Append(nil)
		if err != nil {
			return nil, err
		}
		setters = append(setters, rawAttr{AttrCandidateRTTs, v})
	}
	setters = append(setters, stun.MessageIntegrity(key), stun.Fingerprint)
	return stun.Build(setters...)
}

// ParseJoinRequest decodes and checks a Binding request: JOIN-TOKEN,
// FINGERPRINT, USERNAME and MESSAGE-INTEGRITY. It does not verify the token's
// signature (TokenVerifier does) nor that the token matches the USERNAME
// (CheckJoin does both). When the request carries a JOIN-TOKEN, the returned
// request's Token is set even with an error, so that the error answer can
// carry MESSAGE-INTEGRITY with its key.
func ParseJoinRequest(m *stun.Message) (JoinRequest, error) {
	var r JoinRequest
	if m.Type != stun.BindingRequest {
		return r, fmt.Errorf("%w: type %s", ErrNotJoin, m.Type)
	}
	r.TransactionID = m.TransactionID
	// The token first: whatever else is wrong, the answer is protected with
	// its key (README section 3), so the device can believe it.
	tok, err := m.Get(AttrJoinToken)
	if err != nil {
		return r, fmt.Errorf("%w: no JOIN-TOKEN", ErrJoinMalformed)
	}
	r.Token = tok
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
	if r.CallID, err = ParseID(call); err != nil {
		return r, fmt.Errorf("%w: USERNAME: bad call id", ErrJoinMalformed)
	}
	if r.ParticipantID, err = ParseID(part); err != nil {
		return r, fmt.Errorf("%w: USERNAME: bad participant id", ErrJoinMalformed)
	}
	r.Leave = m.Contains(AttrLeave)
	if c, err := m.Get(AttrCookie); err == nil {
		if len(c) > MaxCookieSize {
			return r, fmt.Errorf("%w: cookie of %d bytes", ErrJoinMalformed, len(c))
		}
		r.Cookie = c
	}
	if tk, err := m.Get(AttrResumeTicket); err == nil {
		if len(tk) == 0 || len(tk) > MaxTicketSize {
			return r, fmt.Errorf("%w: ticket of %d bytes", ErrJoinMalformed, len(tk))
		}
		r.Ticket = tk
	}
	if v, err := m.Get(AttrCandidateRTTs); err == nil {
		r.RTTs = v
	}
	if err := onlyFingerprintAfterIntegrity(m); err != nil {
		return r, err
	}
	if p, err := m.Get(AttrDeviceProof); err == nil {
		if !IsDeviceToken(tok) {
			return r, fmt.Errorf("%w: DEVICE-PROOF with a version 1 token", ErrJoinMalformed)
		}
		if r.Proof, err = ParseDeviceProof(p); err != nil {
			return r, fmt.Errorf("%w: %v", ErrJoinMalformed, err)
		}
		r.HasProof = true
	} else if IsDeviceToken(tok) {
		r.SessionKeyed = true // under the session's key: the caller checks it
		return r, nil
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
	return t, checkNames(r, t)
}

func checkNames(r JoinRequest, t Token) error {
	if t.CallID != r.CallID || t.ParticipantID != r.ParticipantID {
		return fmt.Errorf("%w: token names call %s participant %s", ErrWrongCall, t.CallID, t.ParticipantID)
	}
	return nil
}

// VerifyResume admits a request whose token has expired by its resumption
// ticket: the token must be authentic (signature, layout) and name the
// request's call and participant, and the ticket must pass CheckTicket for
// it. The token's expiry is not checked; the ticket's is.
func VerifyResume(r JoinRequest, v *TokenVerifier, k *TicketKey, now time.Time) (Token, Ticket, error) {
	t, err := v.Authentic(r.Token)
	if err != nil {
		return t, Ticket{}, err
	}
	if err := checkNames(r, t); err != nil {
		return t, Ticket{}, err
	}
	tk, err := CheckTicket(r, t, k, now)
	return t, tk, err
}

// CheckTicket opens the request's ticket (TicketKey.Open) and checks that
// it is for the token's call and participant and bound to the token's
// bytes (ErrTicketMismatch otherwise). tok must come from the request's
// token, verified. A request without a ticket is ErrTicketMalformed.
func CheckTicket(r JoinRequest, tok Token, k *TicketKey, now time.Time) (Ticket, error) {
	if len(r.Ticket) == 0 {
		return Ticket{}, fmt.Errorf("%w: none", ErrTicketMalformed)
	}
	tk, err := k.Open(r.Ticket, now)
	if err != nil {
		return Ticket{}, err
	}
	if tk.CallID != tok.CallID || tk.ParticipantID != tok.ParticipantID {
		return Ticket{}, fmt.Errorf("%w: ticket names call %s participant %s", ErrTicketMismatch, tk.CallID, tk.ParticipantID)
	}
	if tk.Binding != BindingOf(tok, r.Token) {
		return Ticket{}, fmt.Errorf("%w: bound to another token or device", ErrTicketMismatch)
	}
	return tk, nil
}

// ErrorCodeFor maps an error of ParseJoinRequest/CheckJoin to the STUN error
// code the forwarder answers with.
func ErrorCodeFor(err error) stun.ErrorCode {
	switch {
	case errors.Is(err, ErrWrongCall):
		return CodeForbidden
	case errors.Is(err, ErrIntegrity), errors.Is(err, ErrTokenSignature),
		errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenMalformed),
		TicketRefusal(err) != "":
		return CodeUnauthorized
	}
	return CodeBadRequest
}

// TicketRefusal names the ticket error in err for metrics and answers:
// "malformed", "foreign", "forged", "expired", "mismatch", or "" when err is
// not about a ticket.
func TicketRefusal(err error) string {
	switch {
	case errors.Is(err, ErrTicketMalformed):
		return "malformed"
	case errors.Is(err, ErrTicketForeign):
		return "foreign"
	case errors.Is(err, ErrTicketForged):
		return "forged"
	case errors.Is(err, ErrTicketExpired):
		return "expired"
	case errors.Is(err, ErrTicketMismatch):
		return "mismatch"
	}
	return ""
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
	Ticket []byte         // success only: a new resumption ticket, if the forwarder sent one
	// Errors only:
	Code       stun.ErrorCode
	Reason     string
	Alternate  netip.AddrPort // with 300 Try Alternate
	RetryAfter time.Duration  // with 300 or 508, if the forwarder said
	Cookie     []byte         // with 401: repeat the request with this cookie
	// SessionKey: in the success answer to a request with DEVICE-PROOF,
	// the session key derived with its RELAY-KEY (ParseProofResponse).
	SessionKey []byte
	// NeedProof: a 401 with a COOKIE to a request under a session key,
	// protected by the token's key only: repeat with the cookie and a
	// fresh proof (ParseSessionResponse).
	NeedProof bool
}

// BuildJoinSuccess answers req with the device's mapped address and the
// session parameters, protected with key (IntegrityKey of the token).
func BuildJoinSuccess(req JoinRequest, mapped netip.AddrPort, p SessionParams, key []byte) ([]byte, error) {
	return BuildJoinAccept(req, JoinSuccess{Mapped: mapped, Params: p}, key)
}

// JoinSuccess is what a success answer carries.
type JoinSuccess struct {
	Mapped netip.AddrPort
	Params SessionParams
	Ticket []byte // a new resumption ticket (at most MaxTicketSize bytes), or none
	// RelayKey: the forwarder's ephemeral X25519 public key, in the answer
	// to a request with DEVICE-PROOF (key is then the session key).
	RelayKey []byte
}

// BuildJoinAccept answers req with s, protected with key (IntegrityKey of
// the token).
func BuildJoinAccept(req JoinRequest, s JoinSuccess, key []byte) ([]byte, error) {
	if len(s.Ticket) > MaxTicketSize {
		return nil, fmt.Errorf("%w: ticket of %d bytes", ErrJoinMalformed, len(s.Ticket))
	}
	var sp [8]byte
	binary.BigEndian.PutUint32(sp[0:4], uint32(s.Params.KeepaliveInterval/time.Millisecond))
	binary.BigEndian.PutUint32(sp[4:8], uint32(s.Params.IdleTimeout/time.Millisecond))
	setters := []stun.Setter{stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(s.Mapped.Addr().Unmap().AsSlice()), Port: int(s.Mapped.Port())},
		rawAttr{AttrSessionParams, sp[:]}}
	if len(s.Ticket) > 0 {
		setters = append(setters, rawAttr{AttrResumeTicket, s.Ticket})
	}
	if len(s.RelayKey) > 0 {
		setters = append(setters, rawAttr{AttrRelayKey, s.RelayKey})
	}
	m, err := stun.Build(append(setters, stun.MessageIntegrity(key), stun.Fingerprint)...)
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
	m, err := decodeResponse(raw, tid)
	if err != nil {
		return JoinResponse{}, err
	}
	return checkedResponse(m, key)
}

// decodeResponse decodes an answer to transaction tid.
func decodeResponse(raw []byte, tid [stun.TransactionIDSize]byte) (*stun.Message, error) {
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := m.Decode(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotResponse, err)
	}
	if m.TransactionID != tid {
		return nil, fmt.Errorf("%w: transaction id differs", ErrNotResponse)
	}
	if m.Type != stun.BindingSuccess && m.Type != stun.BindingError {
		return nil, fmt.Errorf("%w: type %s", ErrNotResponse, m.Type)
	}
	return m, nil
}

// checkedResponse checks a decoded answer's MESSAGE-INTEGRITY with key and
// reads it.
func checkedResponse(m *stun.Message, key []byte) (JoinResponse, error) {
	var r JoinResponse
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
	if tk, err := m.Get(AttrResumeTicket); err == nil && len(tk) > 0 && len(tk) <= MaxTicketSize {
		r.Ticket = append([]byte(nil), tk...)
	}
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
