package protocol

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
)

// testDeviceKey is a fixed device key, so that seeds stay stable.
func testDeviceKey() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
}

func testDeviceToken(t testing.TB, priv ed25519.PrivateKey, dev ed25519.PrivateKey) []byte {
	t.Helper()
	return testToken(t, priv, func(tk *Token) { tk.DeviceKey = dev.Public().(ed25519.PublicKey) })
}

func TestDeviceTokenRoundTrip(t *testing.T) {
	pub, priv := testKeys(t)
	dev := testDeviceKey()
	b := testDeviceToken(t, priv, dev)
	require.Len(t, b, TokenSizeV2)
	require.True(t, IsDeviceToken(b))
	v, err := NewTokenVerifier(pub)
	require.NoError(t, err)
	tok, err := v.Verify(b, testNow)
	require.NoError(t, err)
	require.True(t, tok.DeviceBound())
	require.Equal(t, dev.Public(), tok.DeviceKey)

	// The device key is signed: another key in its place breaks the signature.
	forged := append([]byte(nil), b...)
	forged[50] ^= 1
	_, err = v.Verify(forged, testNow)
	require.ErrorIs(t, err, ErrTokenSignature)
	// A version 2 body relabelled as version 1 (or cut to its length) is not a token.
	relabel := append([]byte(nil), b...)
	relabel[0] = 1
	_, err = DecodeToken(relabel)
	require.ErrorIs(t, err, ErrTokenMalformed)
	_, err = DecodeToken(b[:TokenSize])
	require.ErrorIs(t, err, ErrTokenMalformed)
	_, err = SignToken(priv, Token{CallID: ID{1}, ParticipantID: ID{2}, Class: ClassGroup, MaxSize: 3, DeviceKey: []byte{1, 2}})
	require.ErrorIs(t, err, ErrBadKey)
	// A v1 request builder refuses a v2 token: it would carry no proof.
	_, err = BuildJoinRequest(b, JoinOptions{})
	require.ErrorIs(t, err, ErrTokenMalformed)
}

// TestDeviceHandshake: the device and the forwarder derive the same session
// key; an observer holding every byte of the exchange and the token does
// not, and nothing in the proof can be changed.
func TestDeviceHandshake(t *testing.T) {
	pub, priv := testKeys(t)
	dev := testDeviceKey()
	token := testDeviceToken(t, priv, dev)
	v, _ := NewTokenVerifier(pub)
	cookie := []byte("0123456789abcdef")
	m, h, err := BuildDeviceRequest(token, JoinOptions{Cookie: cookie}, DeviceAuth{Key: dev, Counter: 42})
	require.NoError(t, err)
	req, tok, err := CheckJoin(decodeSTUN(t, m.Raw), v, testNow)
	require.NoError(t, err)
	require.True(t, req.HasProof)
	require.Equal(t, uint64(42), req.Proof.Counter)
	require.NoError(t, VerifyDeviceProof(req, tok))

	relay, key, err := RelayHandshake(req)
	require.NoError(t, err)
	require.Len(t, key, SessionKeySize)
	ans, err := BuildJoinAccept(req, JoinSuccess{Mapped: netip.MustParseAddrPort("192.0.2.1:5"),
		Params: SessionParams{time.Second, 10 * time.Second}, RelayKey: relay[:]}, key)
	require.NoError(t, err)
	resp, err := ParseProofResponse(ans, req.TransactionID, IntegrityKey(token), h)
	require.NoError(t, err)
	require.True(t, resp.OK)
	require.Equal(t, key, resp.SessionKey)
	// The observer's best guess, the token's key, is not it.
	require.NotEqual(t, IntegrityKey(token)[:SessionKeySize], key)
	_, err = ParseJoinResponse(ans, req.TransactionID, IntegrityKey(token))
	require.ErrorIs(t, err, ErrIntegrity)

	// A keepalive under the session key: parsed without its integrity,
	// which only the session key checks.
	ka, _, err := BuildDeviceRequest(token, JoinOptions{Cookie: cookie}, DeviceAuth{SessionKey: key})
	require.NoError(t, err)
	km := decodeSTUN(t, ka.Raw)
	kr, err := ParseJoinRequest(km)
	require.NoError(t, err)
	require.True(t, kr.SessionKeyed)
	require.False(t, kr.HasProof)
	require.NoError(t, CheckSessionIntegrity(km, key))
	require.ErrorIs(t, CheckSessionIntegrity(km, IntegrityKey(token)), ErrIntegrity)

	// Every signed field matters: another cookie, transaction, leave flag,
	// counter or device key fails the proof.
	for name, mod := range map[string]func(*JoinRequest, *Token){
		"cookie":  func(r *JoinRequest, _ *Token) { r.Cookie = []byte("fedcba9876543210") },
		"tid":     func(r *JoinRequest, _ *Token) { r.TransactionID[0] ^= 1 },
		"leave":   func(r *JoinRequest, _ *Token) { r.Leave = true },
		"counter": func(r *JoinRequest, _ *Token) { r.Proof.Counter++ },
		"device": func(_ *JoinRequest, tk *Token) {
			tk.DeviceKey = ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
		},
	} {
		r2, t2 := req, tok
		mod(&r2, &t2)
		require.ErrorIs(t, VerifyDeviceProof(r2, t2), ErrDeviceProof, name)
	}
	// A v1 token carries no device key.
	require.ErrorIs(t, VerifyDeviceProof(req, Token{}), ErrDeviceProof)
}

func TestSessionResponse(t *testing.T) {
	_, priv := testKeys(t)
	token := testDeviceToken(t, priv, testDeviceKey())
	tk, sk := IntegrityKey(token), bytes.Repeat([]byte{5}, SessionKeySize)
	tid := [stun.TransactionIDSize]byte{7}
	ok, err := BuildJoinSuccess(JoinRequest{TransactionID: tid}, netip.MustParseAddrPort("192.0.2.1:5"), SessionParams{time.Second, 5 * time.Second}, sk)
	require.NoError(t, err)
	r, err := ParseSessionResponse(ok, tid, sk, tk)
	require.NoError(t, err)
	require.True(t, r.OK)
	// Under the token's key, only the address check passes, as a request for a proof.
	check, err := BuildJoinError(tid, JoinError{Code: CodeUnauthorized, Reason: "address check", Cookie: []byte("c")}, tk)
	require.NoError(t, err)
	r, err = ParseSessionResponse(check, tid, sk, tk)
	require.NoError(t, err)
	require.True(t, r.NeedProof)
	for _, raw := range [][]byte{
		mustErr(t, tid, JoinError{Code: CodeUnauthorized, Reason: "no"}, tk),
		mustErr(t, tid, JoinError{Code: CodeForbidden, Reason: "no"}, tk),
	} {
		_, err = ParseSessionResponse(raw, tid, sk, tk)
		require.ErrorIs(t, err, ErrIntegrity)
	}
	okTK, _ := BuildJoinSuccess(JoinRequest{TransactionID: tid}, netip.MustParseAddrPort("192.0.2.1:5"), SessionParams{time.Second, 5 * time.Second}, tk)
	_, err = ParseSessionResponse(okTK, tid, sk, tk)
	require.ErrorIs(t, err, ErrIntegrity)
}

func mustErr(t *testing.T, tid [stun.TransactionIDSize]byte, e JoinError, key []byte) []byte {
	t.Helper()
	raw, err := BuildJoinError(tid, e, key)
	require.NoError(t, err)
	return raw
}

// TestDeviceTicket: a version 2 session's ticket is bound to the device key,
// so any token for that device (a renewed one) carries it, and no other.
func TestDeviceTicket(t *testing.T) {
	pub, priv := testKeys(t)
	v, _ := NewTokenVerifier(pub)
	dev := testDeviceKey()
	token := testDeviceToken(t, priv, dev)
	tok, err := v.Verify(token, testNow)
	require.NoError(t, err)
	tk := TicketFor(tok, token, testNow, time.Minute)
	require.Equal(t, BindingDevice, tk.Binding.Kind)
	key := testClusterKey(t).TicketKey()
	sealed, err := key.Seal(tk)
	require.NoError(t, err)

	renewed := testToken(t, priv, func(x *Token) { x.DeviceKey = tok.DeviceKey; x.Expiry = testNow.Add(2 * time.Hour) })
	rtok, _ := v.Verify(renewed, testNow)
	_, err = CheckTicket(JoinRequest{Token: renewed, Ticket: sealed}, rtok, key, testNow)
	require.NoError(t, err)

	other := testDeviceToken(t, priv, ed25519.NewKeyFromSeed(make([]byte, 32)))
	otok, _ := v.Verify(other, testNow)
	_, err = CheckTicket(JoinRequest{Token: other, Ticket: sealed}, otok, key, testNow)
	require.ErrorIs(t, err, ErrTicketMismatch)
	v1 := testToken(t, priv, nil)
	v1tok, _ := v.Verify(v1, testNow)
	_, err = CheckTicket(JoinRequest{Token: v1, Ticket: sealed}, v1tok, key, testNow)
	require.ErrorIs(t, err, ErrTicketMismatch)
}

// FuzzDeviceProof: arbitrary requests with a version 2 token never panic
// the parse or the proof check, and a proof that verifies was signed over
// exactly what the request says.
func FuzzDeviceProof(f *testing.F) {
	pub, priv := testKeys(f)
	dev := testDeviceKey()
	token := testDeviceToken(f, priv, dev)
	for _, o := range []JoinOptions{{}, {Cookie: []byte("0123456789abcdef")}, {Leave: true, Cookie: []byte("c")}} {
		m, _, err := BuildDeviceRequest(token, o, DeviceAuth{Key: dev, Counter: 7})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Raw)
	}
	m, _, _ := BuildDeviceRequest(token, JoinOptions{}, DeviceAuth{SessionKey: make([]byte, SessionKeySize)})
	f.Add(m.Raw)
	v, _ := NewTokenVerifier(pub)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if m.Decode() != nil {
			return
		}
		r, tok, err := CheckJoin(m, v, testNow)
		if err != nil || !r.HasProof {
			return
		}
		if VerifyDeviceProof(r, tok) != nil {
			return
		}
		if _, _, err := RelayHandshake(r); err != nil && r.Proof.Ephemeral != [32]byte{} {
			_ = err // a low-order ephemeral key is refused, never a panic
		}
	})
}

// FuzzDeviceResponse: a device parsing arbitrary answers to a proof or a
// session-keyed request never panics, and accepts none without its keys.
func FuzzDeviceResponse(f *testing.F) {
	_, priv := testKeys(f)
	dev := testDeviceKey()
	token := testDeviceToken(f, priv, dev)
	m, h, err := BuildDeviceRequest(token, JoinOptions{}, DeviceAuth{Key: dev, Counter: 1})
	if err != nil {
		f.Fatal(err)
	}
	req, _ := ParseJoinRequest(m)
	relay, key, _ := RelayHandshake(req)
	ok, _ := BuildJoinAccept(req, JoinSuccess{Mapped: netip.MustParseAddrPort("127.0.0.1:5"),
		Params: SessionParams{time.Second, 5 * time.Second}, RelayKey: relay[:]}, key)
	f.Add(ok)
	chk, _ := BuildJoinError(req.TransactionID, JoinError{Code: CodeUnauthorized, Reason: "x", Cookie: []byte("c")}, IntegrityKey(token))
	f.Add(chk)
	f.Add(ok[:40])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseProofResponse(b, req.TransactionID, IntegrityKey(token), h)
		_, _ = ParseSessionResponse(b, req.TransactionID, key, IntegrityKey(token))
	})
}
