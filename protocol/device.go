package protocol

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/pion/stun/v3"
)

// Proof of possession for device-bound (version 2) tokens, protocol/README.md
// 2.2. A version 2 token names the device's Ed25519 public key. The device
// proves it holds the private key in a DEVICE-PROOF attribute: a counter,
// an ephemeral X25519 public key and an Ed25519 signature over the request's
// transaction id, leave flag, counter, ephemeral key, cookie and token. The
// forwarder answers with an ephemeral X25519 key of its own (RELAY-KEY), and
// both derive the session key from the X25519 secret and the transcript. An
// observer that has seen every byte of the exchange, the token included,
// cannot compute that key; every later request of the session (keepalives,
// leave) carries MESSAGE-INTEGRITY under it, and every path change carries a
// fresh proof.

const (
	// AttrDeviceProof, in a request with a version 2 token: counter (uint64),
	// device ephemeral X25519 public key (32 bytes), Ed25519 signature (64).
	AttrDeviceProof stun.AttrType = 0xC007
	// AttrRelayKey, in the success answer to a request with DEVICE-PROOF: the
	// forwarder's ephemeral X25519 public key (32 bytes).
	AttrRelayKey stun.AttrType = 0xC008

	// DeviceProofSize is the length of a DEVICE-PROOF value.
	DeviceProofSize = 8 + 32 + ed25519.SignatureSize
	// RelayKeySize is the length of a RELAY-KEY value.
	RelayKeySize = 32
	// SessionKeySize is the length of a device-bound session's integrity key.
	SessionKeySize = 20
)

// Labels of the proof and the key derivation. Changing one is a wire change.
const (
	deviceProofContext = "callrelay device proof v2\x00"
	sessionSaltContext = "callrelay session transcript v2\x00"
	sessionKeyInfo     = "callrelay session key v2"
)

// DeviceProof is a decoded DEVICE-PROOF.
type DeviceProof struct {
	// Counter grows strictly with every proof the device makes (the Go
	// client uses Unix milliseconds, bumped past the last one): a session
	// takes a proof only if its counter is above the last one it took, so
	// a captured proof cannot be replayed to move or re-key it.
	Counter   uint64
	Ephemeral [32]byte // the device's ephemeral X25519 public key
	Signature [ed25519.SignatureSize]byte
}

// ParseDeviceProof decodes a DEVICE-PROOF value; it checks only its length
// (VerifyDeviceProof checks the signature).
func ParseDeviceProof(b []byte) (DeviceProof, error) {
	var p DeviceProof
	if len(b) != DeviceProofSize {
		return p, fmt.Errorf("%w: %d bytes, want %d", ErrDeviceProof, len(b), DeviceProofSize)
	}
	p.Counter = binary.BigEndian.Uint64(b[0:8])
	copy(p.Ephemeral[:], b[8:40])
	copy(p.Signature[:], b[40:])
	return p, nil
}

func (p DeviceProof) encode() []byte {
	b := make([]byte, DeviceProofSize)
	binary.BigEndian.PutUint64(b[0:8], p.Counter)
	copy(b[8:40], p.Ephemeral[:])
	copy(b[40:], p.Signature[:])
	return b
}

// proofMessage is what the device key signs: the label, the transaction
// id, the leave flag (1 or 0), the counter, the ephemeral key, the cookie's
// length (one byte) and bytes, and the token.
func proofMessage(tid [stun.TransactionIDSize]byte, leave bool, counter uint64, eph [32]byte, cookie, token []byte) []byte {
	m := make([]byte, 0, len(deviceProofContext)+stun.TransactionIDSize+1+8+32+1+len(cookie)+len(token))
	m = append(m, deviceProofContext...)
	m = append(m, tid[:]...)
	if leave {
		m = append(m, 1)
	} else {
		m = append(m, 0)
	}
	m = binary.BigEndian.AppendUint64(m, counter)
	m = append(m, eph[:]...)
	m = append(m, byte(len(cookie)))
	m = append(m, cookie...)
	return append(m, token...)
}

// VerifyDeviceProof checks the request's DEVICE-PROOF signature with the
// device key of its token t (verified by the caller).
func VerifyDeviceProof(r JoinRequest, t Token) error {
	if !r.HasProof {
		return fmt.Errorf("%w: none", ErrDeviceProof)
	}
	if !t.DeviceBound() {
		return fmt.Errorf("%w: the token binds no device key", ErrDeviceProof)
	}
	msg := proofMessage(r.TransactionID, r.Leave, r.Proof.Counter, r.Proof.Ephemeral, r.Cookie, r.Token)
	if !ed25519.Verify(t.DeviceKey, msg, r.Proof.Signature[:]) {
		return fmt.Errorf("%w: signature", ErrDeviceProof)
	}
	return nil
}

// sessionKey derives a session's integrity key from the X25519 secret and
// the transcript: HKDF-SHA256 with salt SHA-256(label, transaction id,
// counter, device ephemeral, relay ephemeral, token).
func sessionKey(secret []byte, tid [stun.TransactionIDSize]byte, counter uint64, dev, relay [32]byte, token []byte) ([]byte, error) {
	h := sha256.New()
	h.Write([]byte(sessionSaltContext))
	h.Write(tid[:])
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], counter)
	h.Write(c[:])
	h.Write(dev[:])
	h.Write(relay[:])
	h.Write(token)
	return hkdf.Key(sha256.New, secret, h.Sum(nil), sessionKeyInfo, SessionKeySize)
}

// RelayHandshake is the forwarder's side of a proof (verified by the
// caller): a fresh ephemeral X25519 key, the public half to send as
// RELAY-KEY, and the session key.
func RelayHandshake(r JoinRequest) (relayPub [32]byte, key []byte, err error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return relayPub, nil, err
	}
	peer, err := ecdh.X25519().NewPublicKey(r.Proof.Ephemeral[:])
	if err != nil {
		return relayPub, nil, fmt.Errorf("%w: ephemeral key: %v", ErrDeviceProof, err)
	}
	secret, err := priv.ECDH(peer)
	if err != nil { // a low-order point
		return relayPub, nil, fmt.Errorf("%w: ephemeral key: %v", ErrDeviceProof, err)
	}
	copy(relayPub[:], priv.PublicKey().Bytes())
	key, err = sessionKey(secret, r.TransactionID, r.Proof.Counter, r.Proof.Ephemeral, relayPub, r.Token)
	return relayPub, key, err
}

// DeviceHandshake is a device's side of one proof: the ephemeral private
// key, kept until the answer's RELAY-KEY gives the session key.
type DeviceHandshake struct {
	priv    *ecdh.PrivateKey
	tid     [stun.TransactionIDSize]byte
	counter uint64
	eph     [32]byte
	token   []byte
}

// SessionKey derives the session key from the forwarder's RELAY-KEY.
func (h *DeviceHandshake) SessionKey(relay []byte) ([]byte, error) {
	if len(relay) != RelayKeySize {
		return nil, fmt.Errorf("%w: RELAY-KEY of %d bytes", ErrNotResponse, len(relay))
	}
	peer, err := ecdh.X25519().NewPublicKey(relay)
	if err != nil {
		return nil, fmt.Errorf("%w: RELAY-KEY: %v", ErrNotResponse, err)
	}
	secret, err := h.priv.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: RELAY-KEY: %v", ErrNotResponse, err)
	}
	return sessionKey(secret, h.tid, h.counter, h.eph, [32]byte(relay), h.token)
}

// DeviceAuth says how a request with a version 2 token is authenticated.
type DeviceAuth struct {
	// SessionKey, when set: the request carries no proof and its
	// MESSAGE-INTEGRITY is under this key (a keepalive or leave of a
	// session whose proof was answered).
	SessionKey []byte
	// Otherwise it carries a fresh DEVICE-PROOF, signed with Key, with
	// Counter (above every counter the device used before).
	Key     ed25519.PrivateKey
	Counter uint64
}

// BuildDeviceRequest encodes a join, keepalive, address change or leave
// with a version 2 token. With a.SessionKey it is protected by that key;
// else it carries a DEVICE-PROOF, returns the handshake that derives the
// session key from the answer, and its MESSAGE-INTEGRITY is under the
// token's IntegrityKey (the signature is what authenticates it).
func BuildDeviceRequest(token []byte, o JoinOptions, a DeviceAuth) (*stun.Message, *DeviceHandshake, error) {
	if !IsDeviceToken(token) {
		return nil, nil, fmt.Errorf("%w: not a version 2 token", ErrTokenMalformed)
	}
	var tid [stun.TransactionIDSize]byte
	if _, err := rand.Read(tid[:]); err != nil {
		return nil, nil, err
	}
	if a.SessionKey != nil {
		m, err := buildJoin(token, o, tid, nil, a.SessionKey)
		return m, nil, err
	}
	if len(a.Key) != ed25519.PrivateKeySize {
		return nil, nil, fmt.Errorf("%w: device key has %d bytes", ErrBadKey, len(a.Key))
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	h := &DeviceHandshake{priv: priv, tid: tid, counter: a.Counter, token: token}
	copy(h.eph[:], priv.PublicKey().Bytes())
	if len(o.Cookie) > MaxCookieSize {
		return nil, nil, fmt.Errorf("%w: cookie of %d bytes", ErrJoinMalformed, len(o.Cookie))
	}
	p := DeviceProof{Counter: a.Counter, Ephemeral: h.eph}
	copy(p.Signature[:], ed25519.Sign(a.Key, proofMessage(tid, o.Leave, a.Counter, h.eph, o.Cookie, token)))
	m, err := buildJoin(token, o, tid, p.encode(), IntegrityKey(token))
	return m, h, err
}

// CheckSessionIntegrity checks a request's MESSAGE-INTEGRITY under a
// device-bound session's key (ParseJoinRequest left it to the caller:
// JoinRequest.SessionKeyed).
func CheckSessionIntegrity(m *stun.Message, key []byte) error {
	if err := stun.MessageIntegrity(key).Check(m); err != nil {
		return fmt.Errorf("%w: %v", ErrIntegrity, err)
	}
	return nil
}

// ParseProofResponse decodes the answer to a request that carried a
// DEVICE-PROOF: a success must carry RELAY-KEY and MESSAGE-INTEGRITY under
// the session key derived from it (returned in SessionKey); an error
// answer is under the token's IntegrityKey, tokenKey.
func ParseProofResponse(raw []byte, tid [stun.TransactionIDSize]byte, tokenKey []byte, h *DeviceHandshake) (JoinResponse, error) {
	m, err := decodeResponse(raw, tid)
	if err != nil {
		return JoinResponse{}, err
	}
	if m.Type != stun.BindingSuccess {
		return checkedResponse(m, tokenKey)
	}
	relay, err := m.Get(AttrRelayKey)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("%w: no RELAY-KEY", ErrIntegrity)
	}
	key, err := h.SessionKey(relay)
	if err != nil {
		return JoinResponse{}, err
	}
	r, err := checkedResponse(m, key)
	if err == nil {
		r.SessionKey = key
	}
	return r, err
}

// ParseSessionResponse decodes the answer to a request protected by a
// session key: under that key, or, only for the address check's 401 with
// a COOKIE (the forwarder wants a fresh proof: it lost the session, or
// sees the device at a new address), under the token's IntegrityKey.
func ParseSessionResponse(raw []byte, tid [stun.TransactionIDSize]byte, sessionKey, tokenKey []byte) (JoinResponse, error) {
	m, err := decodeResponse(raw, tid)
	if err != nil {
		return JoinResponse{}, err
	}
	r, err := checkedResponse(m, sessionKey)
	if err == nil {
		return r, nil
	}
	r2, err2 := checkedResponse(m, tokenKey)
	if err2 == nil && !r2.OK && r2.Code == CodeUnauthorized && len(r2.Cookie) > 0 {
		r2.NeedProof = true
		return r2, nil
	}
	return JoinResponse{}, err
}
