package protocol

import (
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
)

func decodeSTUN(t testing.TB, raw []byte) *stun.Message {
	t.Helper()
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	require.NoError(t, m.Decode())
	return m
}

func TestJoinRoundTrip(t *testing.T) {
	pub, priv := testKeys(t)
	v, err := NewTokenVerifier(pub)
	require.NoError(t, err)
	tok := testToken(t, priv, nil)

	req, err := BuildJoinRequest(tok, JoinOptions{})
	require.NoError(t, err)
	got := decodeSTUN(t, req.Raw)
	jr, tk, err := CheckJoin(got, v, testNow)
	require.NoError(t, err)
	require.False(t, jr.Leave)
	require.Equal(t, ID{0xca, 0x11}, jr.CallID)
	require.Equal(t, tk.ParticipantID, jr.ParticipantID)
	require.Equal(t, req.TransactionID, jr.TransactionID)

	mapped := netip.MustParseAddrPort("127.0.0.1:40000")
	params := SessionParams{KeepaliveInterval: time.Second, IdleTimeout: 10 * time.Second}
	raw, err := BuildJoinSuccess(jr, mapped, params, IntegrityKey(tok))
	require.NoError(t, err)
	resp, err := ParseJoinResponse(raw, req.TransactionID, IntegrityKey(tok))
	require.NoError(t, err)
	require.True(t, resp.OK)
	require.Equal(t, mapped, resp.Mapped)
	require.Equal(t, params, resp.Params)

	// A response for another transaction, or protected with another key, is refused.
	_, err = ParseJoinResponse(raw, [12]byte{1}, IntegrityKey(tok))
	require.ErrorIs(t, err, ErrNotResponse)
	_, err = ParseJoinResponse(raw, req.TransactionID, []byte("wrong key"))
	require.ErrorIs(t, err, ErrIntegrity)

	cookie := []byte("0123456789abcdef")
	leave, err := BuildJoinRequest(tok, JoinOptions{Leave: true, Cookie: cookie})
	require.NoError(t, err)
	jr, _, err = CheckJoin(decodeSTUN(t, leave.Raw), v, testNow)
	require.NoError(t, err)
	require.True(t, jr.Leave)
	require.Equal(t, cookie, jr.Cookie)
	_, err = BuildJoinRequest(tok, JoinOptions{Cookie: make([]byte, MaxCookieSize+1)})
	require.ErrorIs(t, err, ErrJoinMalformed)
}

func TestJoinErrors(t *testing.T) {
	pub, priv := testKeys(t)
	_, otherPriv, err := GenerateSigningKey()
	require.NoError(t, err)
	v, err := NewTokenVerifier(pub)
	require.NoError(t, err)
	good := testToken(t, priv, nil)

	// A request whose USERNAME names another call than its (valid) token.
	wrongCall := func() *stun.Message {
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
			stun.NewUsername(ID{0xdd}.String()+":"+ID{0xbe, 0xef}.String()),
			rawAttr{AttrJoinToken, good}, stun.MessageIntegrity(IntegrityKey(good)), stun.Fingerprint)
		require.NoError(t, err)
		return m
	}
	build := func(tok []byte) *stun.Message {
		m, err := BuildJoinRequest(tok, JoinOptions{})
		require.NoError(t, err)
		return m
	}
	badIntegrity := func() *stun.Message {
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
			stun.NewUsername(ID{0xca, 0x11}.String()+":"+ID{0xbe, 0xef}.String()),
			rawAttr{AttrJoinToken, good}, stun.MessageIntegrity([]byte("guess")), stun.Fingerprint)
		require.NoError(t, err)
		return m
	}
	noToken := func() *stun.Message {
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
			stun.NewUsername(ID{0xca, 0x11}.String()+":"+ID{0xbe, 0xef}.String()), stun.Fingerprint)
		require.NoError(t, err)
		return m
	}
	// An attribute after MESSAGE-INTEGRITY is not protected by it: a LEAVE
	// appended to a captured keepalive must not count.
	leaveAfterIntegrity := func() *stun.Message {
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
			stun.NewUsername(ID{0xca, 0x11}.String()+":"+ID{0xbe, 0xef}.String()),
			rawAttr{AttrJoinToken, good}, stun.MessageIntegrity(IntegrityKey(good)), rawAttr{AttrLeave, nil}, stun.Fingerprint)
		require.NoError(t, err)
		return m
	}
	tests := []struct {
		name string
		msg  *stun.Message
		err  error
		code stun.ErrorCode
	}{
		{"forged token", build(testToken(t, otherPriv, nil)), ErrTokenSignature, CodeUnauthorized},
		{"expired token", build(testToken(t, priv, func(tk *Token) { tk.Expiry = testNow })), ErrTokenExpired, CodeUnauthorized},
		{"token for another call", wrongCall(), ErrWrongCall, CodeForbidden},
		{"bad integrity", badIntegrity(), ErrIntegrity, CodeUnauthorized},
		{"no token", noToken(), ErrJoinMalformed, CodeBadRequest},
		{"attribute after integrity", leaveAfterIntegrity(), ErrIntegrity, CodeUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := CheckJoin(decodeSTUN(t, tc.msg.Raw), v, testNow)
			require.ErrorIs(t, err, tc.err)
			require.Equal(t, tc.code, ErrorCodeFor(err))
		})
	}
}

// TestJoinMalformedKeepsToken: a malformed request that carries a token
// still yields the token, so the 400 answering it carries MESSAGE-INTEGRITY
// and a device can believe it (README section 3).
func TestJoinMalformedKeepsToken(t *testing.T) {
	_, priv := testKeys(t)
	tok := testToken(t, priv, nil)
	user := stun.NewUsername(ID{0xca, 0x11}.String() + ":" + ID{0xbe, 0xef}.String())
	for name, setters := range map[string][]stun.Setter{
		"no FINGERPRINT":        {user, rawAttr{AttrJoinToken, tok}, stun.MessageIntegrity(IntegrityKey(tok))},
		"no USERNAME":           {rawAttr{AttrJoinToken, tok}, stun.MessageIntegrity(IntegrityKey(tok)), stun.Fingerprint},
		"USERNAME without ':'":  {stun.NewUsername(ID{0xca, 0x11}.String()), rawAttr{AttrJoinToken, tok}, stun.MessageIntegrity(IntegrityKey(tok)), stun.Fingerprint},
		"cookie over 32 bytes":  {user, rawAttr{AttrJoinToken, tok}, rawAttr{AttrCookie, make([]byte, MaxCookieSize+1)}, stun.MessageIntegrity(IntegrityKey(tok)), stun.Fingerprint},
		"bad participant id":    {stun.NewUsername(ID{0xca, 0x11}.String() + ":xyz"), rawAttr{AttrJoinToken, tok}, stun.MessageIntegrity(IntegrityKey(tok)), stun.Fingerprint},
		"token after integrity": {user, stun.MessageIntegrity(IntegrityKey(tok)), rawAttr{AttrJoinToken, tok}, stun.Fingerprint},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
			require.NoError(t, err)
			r, err := ParseJoinRequest(decodeSTUN(t, m.Raw))
			require.Error(t, err)
			require.Equal(t, tok, r.Token)
			require.Equal(t, m.TransactionID, r.TransactionID)
			code := ErrorCodeFor(err)
			require.Contains(t, []stun.ErrorCode{CodeBadRequest, CodeUnauthorized}, code)
			raw, err := BuildJoinError(r.TransactionID, JoinError{Code: code, Reason: "malformed request"}, IntegrityKey(r.Token))
			require.NoError(t, err)
			resp, err := ParseJoinResponse(raw, m.TransactionID, IntegrityKey(tok))
			require.NoError(t, err, "the device verifies the answer")
			require.Equal(t, code, resp.Code)
		})
	}
}

func TestJoinErrorResponse(t *testing.T) {
	_, priv := testKeys(t)
	tok := testToken(t, priv, nil)
	tid := [12]byte{1, 2, 3}
	alt := netip.MustParseAddrPort("127.0.0.2:3478")
	raw, err := BuildJoinError(tid, JoinError{Code: CodeUnauthorized, Reason: "address check", Cookie: []byte("cookie")}, IntegrityKey(tok))
	require.NoError(t, err)
	r, err := ParseJoinResponse(raw, tid, IntegrityKey(tok))
	require.NoError(t, err)
	require.Equal(t, []byte("cookie"), r.Cookie)

	raw, err = BuildJoinError(tid, JoinError{Code: CodeTryAlternate, Reason: "draining", Alternate: alt, RetryAfter: 1500 * time.Millisecond}, IntegrityKey(tok))
	require.NoError(t, err)
	r, err = ParseJoinResponse(raw, tid, IntegrityKey(tok))
	require.NoError(t, err)
	require.False(t, r.OK)
	require.Equal(t, CodeTryAlternate, r.Code)
	require.Equal(t, "draining", r.Reason)
	require.Equal(t, alt, r.Alternate)
	require.Equal(t, 1500*time.Millisecond, r.RetryAfter)

	// Without a key the answer carries no integrity and a device rejects it.
	raw, err = BuildJoinError(tid, JoinError{Code: CodeBadRequest, Reason: "malformed"}, nil)
	require.NoError(t, err)
	_, err = ParseJoinResponse(raw, tid, IntegrityKey(tok))
	require.ErrorIs(t, err, ErrIntegrity)
}

// FuzzJoinRequest: arbitrary datagrams never panic the forwarder's parse, and
// whatever parses has a token that is a slice of the input.
func FuzzJoinRequest(f *testing.F) {
	_, priv := testKeys(f)
	tok := testToken(f, priv, nil)
	for _, leave := range []bool{false, true} {
		m, err := BuildJoinRequest(tok, JoinOptions{Leave: leave, Cookie: []byte("0123456789abcdef")})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Raw)
		f.Add(m.Raw[:len(m.Raw)-9])
	}
	ticket, err := testClusterKey(f).TicketKey().Seal(exampleTicket())
	if err != nil {
		f.Fatal(err)
	}
	if m, err := BuildJoinRequest(tok, JoinOptions{Ticket: ticket}); err == nil {
		f.Add(m.Raw)
	}
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Fuzz(func(t *testing.T, b []byte) {
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if m.Decode() != nil {
			return
		}
		r, err := ParseJoinRequest(m)
		if err != nil {
			_ = ErrorCodeFor(err)
			return
		}
		if len(r.Token) > len(b) {
			t.Fatalf("token longer than input")
		}
		if len(r.Ticket) > MaxTicketSize {
			t.Fatalf("ticket of %d bytes accepted", len(r.Ticket))
		}
	})
}

// FuzzJoinResponse: a device parsing arbitrary answers never panics.
func FuzzJoinResponse(f *testing.F) {
	_, priv := testKeys(f)
	tok := testToken(f, priv, nil)
	key := IntegrityKey(tok)
	tid := [12]byte{9}
	ok, _ := BuildJoinSuccess(JoinRequest{TransactionID: tid}, netip.MustParseAddrPort("[::1]:5000"), SessionParams{time.Second, 5 * time.Second}, key)
	withTicket, _ := BuildJoinAccept(JoinRequest{TransactionID: tid}, JoinSuccess{Mapped: netip.MustParseAddrPort("127.0.0.1:5000"),
		Params: SessionParams{time.Second, 5 * time.Second}, Ticket: make([]byte, TicketSize)}, key)
	f.Add(withTicket)
	bad, _ := BuildJoinError(tid, JoinError{Code: CodeTryAlternate, Alternate: netip.MustParseAddrPort("127.0.0.1:1")}, key)
	f.Add(ok)
	f.Add(bad)
	f.Add(ok[:30])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseJoinResponse(b, tid, key)
	})
}
