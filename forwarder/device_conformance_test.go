package forwarder_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // MESSAGE-INTEGRITY is HMAC-SHA1 (RFC 8489 14.5)
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Wire spec 2.2 from its text alone: the version 2 token is laid out and
// signed as the README says (and equals its example), and a device that
// builds its DEVICE-PROOF and derives the session key by the README, with
// the standard library and no code of ours, joins a real forwarder, keeps
// its session under that key, is ignored under the token's key, and leaves.

const (
	attrDeviceProof = 0xC007
	attrRelayKey    = 0xC008
	attrLeave       = 0xC003
)

// deviceTokenOf lays out and signs a version 2 token per spec 2.2.
func (k *specKit) deviceTokenOf(dev ed25519.PrivateKey, participant byte) []byte {
	b := []byte{2, 2, 0, 8}
	b = binary.BigEndian.AppendUint64(b, 2000000000)
	b = append(b, bytes.Repeat([]byte{0x11}, 16)...)
	b = append(b, bytes.Repeat([]byte{participant}, 16)...)
	b = append(b, dev.Public().(ed25519.PublicKey)...)
	return append(b, ed25519.Sign(k.priv, append([]byte("callrelay join token v2\x00"), b...))...)
}

// specProof is a device's proof: the request bytes and its ephemeral key.
type specProof struct {
	req     []byte
	tid     [12]byte
	counter uint64
	e       *ecdh.PrivateKey
}

func (k *specKit) proofRequest(t *testing.T, dev ed25519.PrivateKey, token, cookie []byte, counter uint64, leave bool) specProof {
	t.Helper()
	p := specProof{counter: counter}
	_, _ = rand.Read(p.tid[:])
	var err error
	p.e, err = ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	eph := p.e.PublicKey().Bytes()
	msg := append([]byte("callrelay device proof v2\x00"), p.tid[:]...)
	if leave {
		msg = append(msg, 1)
	} else {
		msg = append(msg, 0)
	}
	msg = binary.BigEndian.AppendUint64(msg, counter)
	msg = append(msg, eph...)
	msg = append(append(msg, byte(len(cookie))), cookie...)
	msg = append(msg, token...)
	proof := binary.BigEndian.AppendUint64(nil, counter)
	proof = append(append(proof, eph...), ed25519.Sign(dev, msg)...)
	m := k.baseRequest(p.tid, token, cookie, leave)
	m.attrs = append(m.attrs[:len(m.attrs)-2], stunAttr{attrDeviceProof, proof}, stunAttr{attrIntegrity, nil}, stunAttr{attrFingerprint, nil})
	p.req = m.encode(integrityKey(token))
	return p
}

// baseRequest is a request with USERNAME, JOIN-TOKEN, LEAVE and COOKIE as
// given, MESSAGE-INTEGRITY and FINGERPRINT (section 3).
func (k *specKit) baseRequest(tid [12]byte, token, cookie []byte, leave bool) stunMsg {
	user := []byte(string(bytes.Repeat([]byte("11"), 16)) + ":" + string(bytes.Repeat([]byte{'3'}, 32)))
	m := stunMsg{typ: 0x0001, tid: tid, attrs: []stunAttr{{attrUsername, user}, {attrJoinToken, token}}}
	if leave {
		m.attrs = append(m.attrs, stunAttr{attrLeave, nil})
	}
	if cookie != nil {
		m.attrs = append(m.attrs, stunAttr{attrCookie, cookie})
	}
	return stunMsg{typ: m.typ, tid: tid, attrs: append(m.attrs, stunAttr{attrIntegrity, nil}, stunAttr{attrFingerprint, nil})}
}

// sessionKeyOf derives K2 from the answer's RELAY-KEY per spec 2.2.
func sessionKeyOf(t *testing.T, p specProof, token, relay []byte) []byte {
	t.Helper()
	pub, err := ecdh.X25519().NewPublicKey(relay)
	require.NoError(t, err)
	secret, err := p.e.ECDH(pub)
	require.NoError(t, err)
	h := sha256.New()
	h.Write([]byte("callrelay session transcript v2\x00"))
	h.Write(p.tid[:])
	h.Write(binary.BigEndian.AppendUint64(nil, p.counter))
	h.Write(p.e.PublicKey().Bytes())
	h.Write(relay)
	h.Write(token)
	key, err := hkdf.Key(sha256.New, secret, h.Sum(nil), "callrelay session key v2", 20)
	require.NoError(t, err)
	return key
}

// integrityOK checks an answer's MESSAGE-INTEGRITY with key (RFC 8489 14.5).
func integrityOK(t *testing.T, ans, key []byte) bool {
	t.Helper()
	m, err := parseSTUN(ans)
	require.NoError(t, err)
	off := 20
	for _, a := range m.attrs {
		if a.typ == attrIntegrity {
			pre := append([]byte(nil), ans[:off]...)
			binary.BigEndian.PutUint16(pre[2:4], uint16(off-20+24))
			mac := hmac.New(sha1.New, key)
			mac.Write(pre)
			return hmac.Equal(mac.Sum(nil), a.val)
		}
		off += 4 + (len(a.val)+3)&^3
	}
	return false
}

func TestSpecDeviceConformance(t *testing.T) {
	k := newSpecKit(t)
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(32 + i) // "the bytes 32 to 63"
	}
	dev := ed25519.NewKeyFromSeed(seed)
	token := k.deviceTokenOf(dev, 0x33)
	require.Equal(t, k.ex["device-token"], token, "the README's device-token example")

	f := k.startSpecForwarder(t, nil)
	d := newSpecDevice(t, f.Addr())
	tokKey := integrityKey(token)
	// Without a proof and without a session: the address check, under K.
	var tid [12]byte
	_, _ = rand.Read(tid[:])
	ans := d.transact(k.baseRequest(tid, token, nil, false).encode(tokKey))
	require.True(t, integrityOK(t, ans, tokKey))
	cookie := cookieOf(t, ans)

	p := k.proofRequest(t, dev, token, cookie, uint64(time.Now().UnixMilli()), false)
	ans = d.transact(p.req)
	m, err := parseSTUN(ans)
	require.NoError(t, err)
	require.Equal(t, uint16(0x0101), m.typ, "a success answer to the proof")
	relay, ok := m.get(attrRelayKey)
	require.True(t, ok, "RELAY-KEY in the answer")
	require.Len(t, relay, 32)
	k2 := sessionKeyOf(t, p, token, relay)
	require.True(t, integrityOK(t, ans, k2), "the answer is under the derived session key")
	require.False(t, integrityOK(t, ans, tokKey))
	require.Equal(t, 1, f.Stats().Sessions)

	// A keepalive under K2 is answered under K2.
	_, _ = rand.Read(tid[:])
	ans = d.transact(k.baseRequest(tid, token, cookie, false).encode(k2))
	require.True(t, integrityOK(t, ans, k2), "the keepalive's answer under K2")
	// Under the token's key (all an observer has): no answer, counted.
	_, _ = rand.Read(tid[:])
	d.send(k.baseRequest(tid, token, cookie, true).encode(tokKey))
	// The leave under K2 ends the session (and proves the forged leave did not).
	_, _ = rand.Read(tid[:])
	ans = d.transact(k.baseRequest(tid, token, cookie, true).encode(k2))
	require.True(t, integrityOK(t, ans, k2))
	require.Equal(t, 0, f.Stats().Sessions)
	require.Equal(t, uint64(1), proofRefused(f, "integrity"), "the leave under the token's key")
}
