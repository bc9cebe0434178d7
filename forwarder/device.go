package forwarder

import (
	"bytes"
	"crypto/rand"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Device-bound sessions (protocol/README.md 2.2 and 3). A session admitted
// with a version 2 token was admitted on a DEVICE-PROOF: a signature by
// the device key the token names, over the request's transaction id,
// cookie (bound to the source address), counter and the device's
// ephemeral X25519 key. The answer carries this forwarder's ephemeral key
// (RELAY-KEY), and the session's integrity key is derived from the X25519
// secret: whoever saw the token, the join and its answer cannot compute
// it. From then on:
//
//   - keepalives and a leave from the session's address are under that key,
//     without a proof; one that does not verify is dropped and counted;
//   - a request without a proof from any other address, or for a session
//     this forwarder does not hold, gets the address check (401 with a
//     COOKIE): the device repeats it with the cookie and a fresh proof;
//   - a proof is taken only if its counter is above the session's last
//     one (a captured proof replayed is stale), except the very same
//     transaction again from the session's address (a retransmission,
//     answered as before); a fresh proof moves the session (within the
//     address-change limit), ends it (with LEAVE, from its own address),
//     or re-keys it. So a path change always comes with a fresh proof over a
//     cookie of the new path: QUIC-style path validation, the old path
//     goes on answering until then.
//
// A version 1 request for a device-bound session is refused, and with
// RequireDeviceTokens every version 1 token is.

// deviceState is a session's device binding; zero for a v1 session.
type deviceState struct {
	bound   bool
	counter uint64                       // of the last proof taken
	tid     [stun.TransactionIDSize]byte // of the last proof taken
	relay   [protocol.RelayKeySize]byte  // the RELAY-KEY answered to it
}

// proofRefusal says why a request of a device-bound token (or a v1 token
// where one is not allowed) was refused or dropped.
type proofRefusal uint8

const (
	proofMissing   proofRefusal = iota // no proof where one is needed: answered with the address check
	proofSignature                     // a proof whose signature does not verify: 401
	proofStale                         // a proof whose counter is not above the session's: dropped
	proofIntegrity                     // a request under a session key that does not verify: dropped
	proofEphemeral                     // a proof whose ephemeral key gives no secret: 401
	proofV1Bound                       // a v1 token for a device-bound session: 401
	proofV1Refused                     // a v1 token while RequireDeviceTokens: 401
	numProofRefusals
)

var proofRefusalNames = [numProofRefusals]string{"missing", "signature", "stale", "integrity", "ephemeral", "v1_for_bound_session", "v1_refused"}

// ProofRefusalNames are the reasons of ResumeStats.ProofRefused, in order.
func ProofRefusalNames() []string { return proofRefusalNames[:] }

// deviceCounters are the control goroutine's, read by Stats.
type deviceCounters struct {
	proofs  atomic.Uint64 // proofs taken (joins, moves, re-keys, leaves)
	refused [numProofRefusals]atomic.Uint64
}

func (c *control) countProof(why proofRefusal) { c.f.resume.device.refused[why].Add(1) }

// deviceRequest handles a request with a version 2 token, and refuses a
// version 1 token that may not be used; it reports whether it took the
// request (answered, refused or dropped it).
func (c *control) deviceRequest(src netip.AddrPort, req protocol.JoinRequest, now time.Time) bool {
	s := c.sessions[sessionKey{req.CallID, req.ParticipantID}]
	switch {
	case req.HasProof:
		c.deviceProof(src, req, s, now)
	case req.SessionKeyed:
		c.deviceKeyed(src, req, s, now)
	case c.f.cfg.RequireDeviceTokens:
		c.countProof(proofV1Refused)
		c.refuse(src, req, protocol.CodeUnauthorized, "device-bound token required")
	case s != nil && s.dev.bound:
		c.countProof(proofV1Bound)
		c.refuse(src, req, protocol.CodeUnauthorized, "session is bound to a device key")
	default:
		return false
	}
	return true
}

// deviceKeyed handles a request under a session key: a keepalive, or a
// leave, from the session's own address.
func (c *control) deviceKeyed(src netip.AddrPort, req protocol.JoinRequest, s *session, now time.Time) {
	if s == nil || !s.dev.bound || s.addr != src {
		c.countProof(proofMissing)
		c.challenge(src, req, now) // the device repeats it with a fresh proof
		return
	}
	if protocol.CheckSessionIntegrity(&c.msg, s.key) != nil {
		c.countProof(proofIntegrity)
		return
	}
	if req.Leave {
		s.log.Info("participant left")
		c.remove(s)
		c.accept(src, req, s.key)
		return
	}
	newToken := !bytes.Equal(s.token, req.Token)
	if newToken { // a renewed token, for the same device
		tok, _, ok := c.verifyJoin(src, req, now)
		if !ok {
			return
		}
		if !bytes.Equal(tok.DeviceKey, s.devKey()) {
			c.refuse(src, req, protocol.CodeForbidden, "token is for another device")
			return
		}
		s.token = append(s.token[:0:0], req.Token...)
	}
	s.lastSeen = now
	if c.acceptSession(src, req, s, newToken, now) {
		c.confirmSession(s, now)
	}
}

// deviceProof handles a request with a DEVICE-PROOF: a join, a resumption,
// an address change, a re-key or a leave.
func (c *control) deviceProof(src netip.AddrPort, req protocol.JoinRequest, s *session, now time.Time) {
	if !c.cookies.valid(req.Cookie, src, now) {
		c.challenge(src, req, now) // the proof is signed over the cookie: the device signs anew
		return
	}
	if s != nil && s.dev.bound && req.Proof.Counter <= s.dev.counter {
		c.retransmitted(src, req, s, now)
		return
	}
	var tok protocol.Token
	var grant joinGrant
	if s != nil && bytes.Equal(s.token, req.Token) {
		tok, _ = protocol.DecodeToken(req.Token) // verified when the session took it
	} else {
		var ok bool
		if tok, grant, ok = c.verifyJoin(src, req, now); !ok {
			return
		}
	}
	if protocol.VerifyDeviceProof(req, tok) != nil {
		c.countProof(proofSignature)
		c.refuse(src, req, protocol.CodeUnauthorized, "device proof invalid")
		return
	}
	c.f.resume.device.proofs.Add(1)
	switch {
	case s == nil && req.Leave: // already gone: answered so that the device stops
		t := &session{token: req.Token}
		if c.bindDevice(t, req) {
			if raw, err := c.successFor(src, req, t, nil); err == nil {
				c.reply(raw, src)
			}
		}
	case s == nil:
		c.admit(src, req, tok, grant, now)
	default:
		c.reproved(src, req, s, now)
	}
}

// retransmitted answers again, with the same RELAY-KEY and key, the very
// proof s was last bound by, sent again from s's address (its answer was
// lost), once its signature verifies; any other proof whose counter is not
// above s's is stale: replayed, or older than one s took. Stale proofs and
// forged retransmissions are dropped and counted.
func (c *control) retransmitted(src netip.AddrPort, req protocol.JoinRequest, s *session, now time.Time) {
	if req.Proof.Counter != s.dev.counter || req.TransactionID != s.dev.tid || src != s.addr || req.Leave {
		c.countProof(proofStale)
		return
	}
	tok, err := protocol.DecodeToken(req.Token)
	if err != nil || protocol.VerifyDeviceProof(req, tok) != nil || !bytes.Equal(tok.DeviceKey, s.devKey()) {
		c.countProof(proofSignature)
		return
	}
	c.acceptSession(src, req, s, false, now)
}

// devKey is the device key of s's token (nil for a v1 token).
func (s *session) devKey() []byte {
	t, _ := protocol.DecodeToken(s.token)
	return t.DeviceKey
}

// reproved takes a fresh proof for session s: it ends s (LEAVE from its
// own address), or moves it to src, and re-keys it.
func (c *control) reproved(src netip.AddrPort, req protocol.JoinRequest, s *session, now time.Time) {
	if req.Leave {
		if s.addr == src {
			s.log.Info("participant left")
			c.remove(s)
		}
		t := &session{token: req.Token} // answered under a key of its own, changing nothing of s
		if c.bindDevice(t, req) {
			if raw, err := c.successFor(src, req, t, nil); err == nil {
				c.reply(raw, src)
			}
		}
		return
	}
	if s.addr != src && !c.moveAllowed(s, now) {
		return
	}
	if s.addr != src && !c.move(s, src) {
		c.refuse(src, req, protocol.CodeForbidden, "address in use by another participant")
		return
	}
	newToken := !bytes.Equal(s.token, req.Token)
	if newToken {
		s.token = append(s.token[:0:0], req.Token...)
	}
	if !c.bindDevice(s, req) {
		return
	}
	s.lastSeen = now
	if c.acceptSession(src, req, s, newToken, now) {
		c.confirmSession(s, now)
	}
}

// bindDevice makes s device-bound by the proof of req: the forwarder's
// ephemeral key and the session key. It fails (counted and refused 401)
// only for an ephemeral key that gives no secret (a low-order point).
func (c *control) bindDevice(s *session, req protocol.JoinRequest) bool {
	if !req.HasProof {
		return true
	}
	relay, key, err := protocol.RelayHandshake(req)
	if err != nil {
		c.countProof(proofEphemeral)
		// The session must not keep a key the device could share with
		// anyone: a random one, which no request will match.
		s.key = make([]byte, protocol.SessionKeySize)
		_, _ = rand.Read(s.key)
		c.f.log.Debug("device proof with a bad ephemeral key", zap.Error(err))
		return false
	}
	s.key = key
	s.dev = deviceState{bound: true, counter: req.Proof.Counter, tid: req.TransactionID, relay: relay}
	return true
}

// successFor is the success answer to req for session s: with the
// RELAY-KEY of s's last proof when req carries one, under s's key.
func (c *control) successFor(src netip.AddrPort, req protocol.JoinRequest, s *session, ticket []byte) ([]byte, error) {
	p := protocol.SessionParams{KeepaliveInterval: c.f.cfg.KeepaliveInterval, IdleTimeout: c.f.cfg.IdleTimeout}
	js := protocol.JoinSuccess{Mapped: src, Params: p, Ticket: ticket}
	if req.HasProof {
		js.RelayKey = s.dev.relay[:]
	}
	raw, err := protocol.BuildJoinAccept(req, js, s.key)
	if err != nil {
		c.f.log.Error("building join success", zap.Error(err))
	}
	return raw, err
}

// confirmSession: the device's first keepalive (or proof) after its join
// says it chose this forwarder: the placement is asserted again, which a
// losing forwarder's leave may have removed meanwhile.
func (c *control) confirmSession(s *session, now time.Time) {
	if s.confirmed {
		return
	}
	s.confirmed = true
	c.place(s, nil, nil)
	c.notify(s.call, s.participant, protocol.MemberPlaced, now)
	c.tellSpeaker(s.call, s)
}

// DeviceStats count device proofs taken and refused.
type DeviceStats struct {
	Proofs  uint64                   // proofs taken
	Refused [numProofRefusals]uint64 // by reason (ProofRefusalNames)
}

func (d *deviceCounters) stats() DeviceStats {
	s := DeviceStats{Proofs: d.proofs.Load()}
	for i := range s.Refused {
		s.Refused[i] = d.refused[i].Load()
	}
	return s
}

var (
	mProofs = prometheus.NewDesc("callrelay_forwarder_device_proofs_total",
		"Device proofs (version 2 tokens) taken: joins, resumptions, address changes, re-keys and leaves.", nil, nil)
	mProofRefused = prometheus.NewDesc("callrelay_forwarder_device_proof_refusals_total",
		"Requests refused or dropped for want of a device proof, by reason: missing (answered with the address check), signature, stale (a replayed proof), integrity (not under the session key), ephemeral, v1_for_bound_session, v1_refused (--require-device-tokens).", []string{"reason"}, nil)
)

func describeDevice(ch chan<- *prometheus.Desc) {
	ch <- mProofs
	ch <- mProofRefused
}

func collectDevice(ch chan<- prometheus.Metric, d DeviceStats) {
	ch <- prometheus.MustNewConstMetric(mProofs, prometheus.CounterValue, float64(d.Proofs))
	for i, n := range d.Refused {
		ch <- prometheus.MustNewConstMetric(mProofRefused, prometheus.CounterValue, float64(n), proofRefusalNames[i])
	}
}
