package protocol

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var testNow = time.Unix(1_800_000_000, 0)

func testKeys(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	// A fixed seed keeps fuzz seeds and byte literals stable.
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

func testToken(t testing.TB, priv ed25519.PrivateKey, mod func(*Token)) []byte {
	t.Helper()
	tok := Token{
		CallID:        ID{0xca, 0x11},
		ParticipantID: ID{0xbe, 0xef},
		Class:         ClassGroup,
		MaxSize:       8,
		Expiry:        testNow.Add(time.Hour),
	}
	if mod != nil {
		mod(&tok)
	}
	b, err := SignToken(priv, tok)
	require.NoError(t, err)
	return b
}

func TestTokenLayout(t *testing.T) {
	_, priv := testKeys(t)
	b := testToken(t, priv, nil)
	require.Len(t, b, TokenSize)
	want := []byte{
		0x01,       // version
		0x02,       // class: group
		0x00, 0x08, // max size 8
		0, 0, 0, 0, 0x6b, 0x49, 0xe0, 0x10, // expiry 1800003600
		0xca, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // call id
		0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // participant id
	}
	require.Equal(t, want, b[:tokenBodySize])
}

func TestTokenVerify(t *testing.T) {
	pub, priv := testKeys(t)
	otherPub, otherPriv, err := GenerateSigningKey()
	require.NoError(t, err)
	v, err := NewTokenVerifier(pub)
	require.NoError(t, err)

	good := testToken(t, priv, nil)
	tampered := append([]byte(nil), good...)
	tampered[3] = 99 // raise max size
	expired := testToken(t, priv, func(tk *Token) { tk.Expiry = testNow.Add(-time.Second) })
	forged := testToken(t, otherPriv, nil)

	tests := []struct {
		name string
		in   []byte
		err  error
	}{
		{"valid", good, nil},
		{"tampered body", tampered, ErrTokenSignature},
		{"expired", expired, ErrTokenExpired},
		{"signed by another key", forged, ErrTokenSignature},
		{"truncated", good[:TokenSize-1], ErrTokenMalformed},
		{"empty", nil, ErrTokenMalformed},
		{"bad version", append([]byte{9}, good[1:]...), ErrTokenMalformed},
		{"bad class", append([]byte{1, 7}, good[2:]...), ErrTokenMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := v.Verify(tc.in, testNow)
			if tc.err == nil {
				require.NoError(t, err)
				require.Equal(t, ID{0xca, 0x11}, tok.CallID)
				require.Equal(t, ClassGroup, tok.Class)
				return
			}
			require.ErrorIs(t, err, tc.err)
		})
	}

	// Rotation: a verifier trusting both keys accepts both.
	v2, err := NewTokenVerifier(pub, otherPub)
	require.NoError(t, err)
	_, err = v2.Verify(forged, testNow)
	require.NoError(t, err)
}

func TestSignTokenRejectsBadInput(t *testing.T) {
	_, priv := testKeys(t)
	_, err := SignToken(priv, Token{Class: ClassGroup, MaxSize: 5})
	require.ErrorIs(t, err, ErrBadID)
	_, err = SignToken(priv[:10], Token{})
	require.ErrorIs(t, err, ErrBadKey)
	_, err = SignToken(priv, Token{CallID: NewID(), ParticipantID: NewID(), Class: 9, MaxSize: 5})
	require.Error(t, err)
	// One-to-one defaults to two members.
	b, err := SignToken(priv, Token{CallID: NewID(), ParticipantID: NewID(), Class: ClassOneToOne, Expiry: testNow})
	require.NoError(t, err)
	tok, err := DecodeToken(b)
	require.NoError(t, err)
	require.EqualValues(t, 2, tok.MaxSize)
}

func TestTextForms(t *testing.T) {
	pub, priv := testKeys(t)
	b := testToken(t, priv, nil)
	back, err := DecodeTokenString(EncodeTokenString(b))
	require.NoError(t, err)
	require.Equal(t, b, back)
	_, err = DecodeTokenString("not base64!")
	require.ErrorIs(t, err, ErrTokenMalformed)

	p2, err := ParsePublicKey(EncodeKey(pub))
	require.NoError(t, err)
	require.Equal(t, pub, p2)
	k2, err := ParsePrivateKey(EncodeKey(priv))
	require.NoError(t, err)
	require.Equal(t, priv, k2)
	k3, err := ParsePrivateKey(EncodeKey(priv.Seed()))
	require.NoError(t, err)
	require.Equal(t, priv, k3)
	_, err = ParsePublicKey("AAAA")
	require.ErrorIs(t, err, ErrBadKey)

	id := NewID()
	id2, err := ParseID(id.String())
	require.NoError(t, err)
	require.Equal(t, id, id2)
	id3, err := ParseID("0123e456-7890-abcd-ef01-234567890abc")
	require.NoError(t, err)
	require.Equal(t, "0123e4567890abcdef01234567890abc", id3.String())
	_, err = ParseID("xyz")
	require.True(t, errors.Is(err, ErrBadID))
}

// FuzzToken: decoding never panics, and a decoded token re-encodes to the
// same body bytes.
func FuzzToken(f *testing.F) {
	_, priv := testKeys(f)
	f.Add(testToken(f, priv, nil))
	f.Add(testToken(f, priv, func(tk *Token) { tk.Class = ClassOneToOne; tk.MaxSize = 2 }))
	f.Add([]byte{1, 2, 0})
	f.Add(testToken(f, priv, func(tk *Token) { tk.DeviceKey = testDeviceKey().Public().(ed25519.PublicKey) }))
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := DecodeToken(b)
		if err != nil {
			return
		}
		body := tok.body()
		if !bytes.Equal(body, tokenBody(b)) {
			t.Fatalf("re-encoded body differs:\n%x\n%x", body, tokenBody(b))
		}
	})
}
