package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/protocol"
)

// responder is a stand-in for the forwarder, over real loopback UDP: just
// enough of the join protocol (the address cookie check, protocol.VerifyJoin,
// BuildJoinSuccess, BuildJoinError) and of the fan-out to test the client's
// own logic in
// isolation, with scripted answers (silence, delays, refusals, forgeries)
// that a real forwarder would not produce on demand. The real forwarder
// together with this client is covered by the forwarder package's
// integration tests.
type responder struct {
	conn   *net.UDPConn
	addr   netip.AddrPort
	verify *protocol.TokenVerifier
	params protocol.SessionParams
	mu     sync.Mutex // guards the fields below
	// policy scripts the answers to the n-th join or keepalive request (n
	// counts from 0 over all senders); nil answers one genuine success.
	// Returning no reply drops the request.
	policy     func(n int, req protocol.JoinRequest) []reply
	dropLeaves bool
	requests   []request // every request that passed the integrity check
	sessions   map[protocol.ID]netip.AddrPort
	joins      int
	// The address check, as the forwarder's: a join, a move or a leave needs
	// the cookie issued to its exact source address (HMAC of secret and the
	// address), else it is answered 401 with that cookie. rotate replaces
	// the secret, voiding every cookie issued so far.
	secret []byte
	// cookieAlways asks keepalives from the session's address for a valid
	// cookie too (the client must cope with a 401+cookie on a keepalive).
	cookieAlways bool
	// challengeAll is a broken forwarder: every request gets 401 with a
	// fresh cookie.
	challengeAll bool
	// challengeDelay delays the 401s of the address check: a forwarder
	// farther away (its successes are delayed by the policy's replies).
	challengeDelay time.Duration
	// dead drops every datagram unread and unanswered: a forwarder whose
	// host died or was cut off (no ICMP either). kill closes the socket
	// instead: a dead process on a live host (ICMP port unreachable).
	dead bool
	// after, if set, runs after each request that passed the address check
	// has been answered (immediate replies only), on the serving goroutine.
	after func(req protocol.JoinRequest, from netip.AddrPort)

	wg     sync.WaitGroup
	closed chan struct{}
}

type request struct {
	at     time.Time
	from   netip.AddrPort
	tid    [stun.TransactionIDSize]byte
	leave  bool
	cookie []byte // the cookie the request carried
	key    []byte // the integrity key of the token it carried
	// challenged: refused by the address check, answered 401 with a cookie
	challenged bool
}

type forgery uint8

const (
	genuine          forgery = iota
	forgeWrongKey            // MESSAGE-INTEGRITY under another key
	forgeNoIntegrity         // no MESSAGE-INTEGRITY at all (errors only)
)

type reply struct {
	delay time.Duration
	err   *protocol.JoinError // nil: success
	forge forgery
	first func() // if set, runs just before the reply is sent
}

func answer(replies ...reply) func(int, protocol.JoinRequest) []reply {
	return func(int, protocol.JoinRequest) []reply { return replies }
}

func refuse(code stun.ErrorCode) func(int, protocol.JoinRequest) []reply {
	return answer(reply{err: &protocol.JoinError{Code: code, Reason: "scripted"}})
}

var silent = func(int, protocol.JoinRequest) []reply { return nil }

var wrongKey = protocol.IntegrityKey([]byte("not the token"))

func newResponder(t *testing.T, pub ed25519.PublicKey, params protocol.SessionParams) *responder {
	t.Helper()
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	r := &responder{
		conn: conn, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort(), verify: v, params: params,
		sessions: make(map[protocol.ID]netip.AddrPort), closed: make(chan struct{}),
	}
	r.rotate()
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		close(r.closed)
		_ = r.conn.Close()
		r.wg.Wait()
	})
	return r
}

func (r *responder) serve() {
	defer r.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		dead := r.dead
		r.mu.Unlock()
		if dead {
			continue
		}
		switch protocol.Classify(buf[:n]) {
		case protocol.KindSTUN:
			r.handleJoin(buf[:n], from)
		case protocol.KindRTP, protocol.KindRTCP:
			r.forward(buf[:n], from)
		}
	}
}

func (r *responder) handleJoin(data []byte, from netip.AddrPort) {
	m := &stun.Message{Raw: append([]byte(nil), data...)}
	if m.Decode() != nil {
		return
	}
	// As the forwarder: parse and integrity first, then the (cheap) address
	// check, then the token's signature.
	req, err := protocol.ParseJoinRequest(m)
	var tok protocol.Token
	if err == nil && r.addressCheck(req, from) {
		tok, err = protocol.VerifyJoin(req, r.verify, time.Now())
		if err == nil {
			r.admit(req, tok, from)
			return
		}
	} else if err == nil {
		return // challenged
	}
	var key []byte
	if !errors.Is(err, protocol.ErrIntegrity) && !errors.Is(err, protocol.ErrJoinMalformed) {
		key = protocol.IntegrityKey(req.Token)
	}
	raw, _ := protocol.BuildJoinError(req.TransactionID, protocol.JoinError{Code: protocol.ErrorCodeFor(err), Reason: err.Error()}, key)
	_, _ = r.conn.WriteToUDPAddrPort(raw, from)
}

// addressCheck records req and reports whether it passes the address check;
// if not, it answers 401 with the cookie for from.
func (r *responder) addressCheck(req protocol.JoinRequest, from netip.AddrPort) bool {
	r.mu.Lock()
	at, ok := r.sessions[req.ParticipantID]
	need := !ok || at != from || req.Leave || r.cookieAlways || r.challengeAll
	pass := !need || (!r.challengeAll && hmac.Equal(req.Cookie, r.cookieFor(from)))
	r.requests = append(r.requests, request{at: time.Now(), from: from, tid: req.TransactionID, leave: req.Leave,
		cookie: bytes.Clone(req.Cookie), challenged: !pass, key: protocol.IntegrityKey(req.Token)})
	if pass {
		r.mu.Unlock()
		return true
	}
	if r.challengeAll {
		r.rotateLocked() // a new cookie every time
	}
	cookie, delay := r.cookieFor(from), r.challengeDelay
	r.mu.Unlock()
	raw, _ := protocol.BuildJoinError(req.TransactionID, protocol.JoinError{Code: protocol.CodeUnauthorized,
		Reason: "address check", Cookie: cookie}, protocol.IntegrityKey(req.Token))
	if delay > 0 {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			select {
			case <-time.After(delay):
				_, _ = r.conn.WriteToUDPAddrPort(raw, from)
			case <-r.closed:
			}
		}()
		return false
	}
	_, _ = r.conn.WriteToUDPAddrPort(raw, from)
	return false
}

// cookieFor is the cookie for addr under the current secret. r.mu must be held.
func (r *responder) cookieFor(addr netip.AddrPort) []byte {
	m := hmac.New(sha256.New, r.secret)
	b, _ := addr.MarshalBinary()
	m.Write(b)
	return m.Sum(nil)[:16]
}

// rotate replaces the cookie secret: every cookie issued so far is void.
func (r *responder) rotate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rotateLocked()
}

func (r *responder) rotateLocked() {
	r.secret = make([]byte, 32)
	_, _ = rand.Read(r.secret)
}

// cookie is the cookie r would issue to addr now.
func (r *responder) cookie(addr netip.AddrPort) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cookieFor(addr)
}

// admit answers a request that passed the address check and the token check.
func (r *responder) admit(req protocol.JoinRequest, tok protocol.Token, from netip.AddrPort) {
	r.mu.Lock()
	n := r.joins
	if !req.Leave {
		r.joins++
	}
	policy, dropLeaves, after := r.policy, r.dropLeaves, r.after
	r.mu.Unlock()
	if after != nil {
		defer after(req, from)
	}
	if req.Leave {
		r.mu.Lock()
		if r.sessions[tok.ParticipantID] == from {
			delete(r.sessions, tok.ParticipantID)
		}
		r.mu.Unlock()
		if !dropLeaves {
			r.send(req, tok.ParticipantID, from, reply{})
		}
		return
	}
	replies := []reply{{}}
	if policy != nil {
		replies = policy(n, req)
	}
	for _, rp := range replies {
		if rp.delay == 0 {
			r.send(req, tok.ParticipantID, from, rp)
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			select {
			case <-time.After(rp.delay):
				r.send(req, tok.ParticipantID, from, rp)
			case <-r.closed:
			}
		}()
	}
}

// send answers req; a genuine success also (re)binds the participant's
// session to from, as the forwarder does.
func (r *responder) send(req protocol.JoinRequest, who protocol.ID, from netip.AddrPort, rp reply) {
	key := protocol.IntegrityKey(req.Token)
	switch rp.forge {
	case forgeWrongKey:
		key = wrongKey
	case forgeNoIntegrity:
		key = nil
	}
	var raw []byte
	if rp.err != nil {
		raw, _ = protocol.BuildJoinError(req.TransactionID, *rp.err, key)
	} else {
		raw, _ = protocol.BuildJoinSuccess(req, from, r.params, key)
		if rp.forge == genuine && !req.Leave {
			r.mu.Lock()
			r.sessions[who] = from
			r.mu.Unlock()
		}
	}
	if rp.first != nil {
		rp.first()
	}
	_, _ = r.conn.WriteToUDPAddrPort(raw, from)
}

// forward relays media from a joined address to every other joined address,
// byte-exact; media from elsewhere is dropped.
func (r *responder) forward(data []byte, from netip.AddrPort) {
	r.mu.Lock()
	var to []netip.AddrPort
	known := false
	for _, a := range r.sessions {
		if a == from {
			known = true
		} else {
			to = append(to, a)
		}
	}
	r.mu.Unlock()
	if !known {
		return
	}
	for _, a := range to {
		_, _ = r.conn.WriteToUDPAddrPort(data, a)
	}
}

// kill closes r's socket, as a forwarder process that died: the host then
// answers with ICMP port unreachable.
func (r *responder) kill() {
	_ = r.conn.Close()
}

// forget drops every session and voids every cookie, as a forwarder that
// restarted on the same address.
func (r *responder) forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.sessions)
	r.rotateLocked()
}

// tell sends the relay instruction m to addr, from r's port, as a
// stand-alone CRLY APP packet.
// A MigrateTo is signed as a forwarder signs it (protocol/README.md 5.7):
// echoing the latest request from addr that passed the address check, with
// the key of its token.
func (r *responder) tell(t *testing.T, addr netip.AddrPort, m protocol.RelayMessage) {
	t.Helper()
	var raw []byte
	var err error
	if mt, ok := m.(*protocol.MigrateTo); ok {
		reqs := r.from(addr)
		require.NotEmpty(t, reqs, "a MigrateTo to %v, which sent nothing", addr)
		last := reqs[len(reqs)-1]
		mt.Echo = last.tid
		raw, err = protocol.SignMigrateTo(0, mt, last.key)
	} else {
		raw, err = protocol.MarshalRelayApp(0, m)
	}
	require.NoError(t, err)
	r.raw(t, addr, raw)
}

// raw sends b to addr from r's port.
func (r *responder) raw(t *testing.T, addr netip.AddrPort, b []byte) {
	t.Helper()
	_, err := r.conn.WriteToUDPAddrPort(b, addr)
	require.NoError(t, err)
}

// script sets the policy; tests call it before any client talks to r.
func (r *responder) script(policy func(n int, req protocol.JoinRequest) []reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.policy = policy
}

// from returns the requests received from addr (from anyone if addr is the
// zero value) that passed the address check.
func (r *responder) from(addr netip.AddrPort) []request {
	var out []request
	for _, q := range r.all(addr) {
		if !q.challenged {
			out = append(out, q)
		}
	}
	return out
}

// all returns every request received from addr (from anyone if addr is the
// zero value), challenged ones included.
func (r *responder) all(addr netip.AddrPort) []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []request
	for _, q := range r.requests {
		if !addr.IsValid() || q.from == addr {
			out = append(out, q)
		}
	}
	return out
}

// challenges returns the requests from addr (or anyone) answered 401 with a
// cookie.
func (r *responder) challenges(addr netip.AddrPort) []request {
	var out []request
	for _, q := range r.all(addr) {
		if q.challenged {
			out = append(out, q)
		}
	}
	return out
}

// leaves returns the leaves that passed the address check, one per
// transaction.
func (r *responder) leaves() []request { return leaveTransactions(r.from(netip.AddrPort{})) }

// allLeaves returns every leave, challenged ones included.
func (r *responder) allLeaves() []request { return leaveTransactions(r.all(netip.AddrPort{})) }

// leaveDatagrams counts every leave that passed the address check,
// retransmissions included.
func (r *responder) leaveDatagrams() int {
	n := 0
	for _, q := range r.from(netip.AddrPort{}) {
		if q.leave {
			n++
		}
	}
	return n
}

// leaveTransactions are the leaves among qs, one per transaction: a leave
// retransmitted while its answer was on the way (a loaded machine) is
// still one leave.
func leaveTransactions(qs []request) []request {
	var out []request
	seen := map[[stun.TransactionIDSize]byte]bool{}
	for _, q := range qs {
		if q.leave && !seen[q.tid] {
			seen[q.tid] = true
			out = append(out, q)
		}
	}
	return out
}

// set changes r's fields under its lock; tests call it to switch behaviour.
func (r *responder) set(f func(r *responder)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func (r *responder) session(who protocol.ID) netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[who]
}

// env mints tokens for one call.
type env struct {
	t    *testing.T
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	call protocol.ID
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	return &env{t: t, pub: pub, priv: priv, call: protocol.NewID()}
}

// token mints a token for a new participant.
func (e *env) token() ([]byte, protocol.ID) {
	who := protocol.NewID()
	tok, err := protocol.SignToken(e.priv, protocol.Token{
		CallID: e.call, ParticipantID: who, Class: protocol.ClassGroup, MaxSize: 8,
		Expiry: time.Now().Add(time.Hour),
	})
	require.NoError(e.t, err)
	return tok, who
}

var fastParams = protocol.SessionParams{KeepaliveInterval: time.Second, IdleTimeout: 5 * time.Second}

func (e *env) responder(params protocol.SessionParams) *responder {
	return newResponder(e.t, e.pub, params)
}

// config is a Config for a new participant on the given responders, bound
// to loopback, with short retransmissions so that tests stay quick.
func (e *env) config(rs ...*responder) Config {
	tok, _ := e.token()
	cfg := Config{Token: tok, LocalAddr: netip.MustParseAddr("127.0.0.1"),
		RetransmitInitial: 20 * time.Millisecond, Logger: zaptest.NewLogger(e.t)}
	for _, r := range rs {
		cfg.Forwarders = append(cfg.Forwarders, r.addr)
	}
	return cfg
}

// dial dials and closes the Conn at the end of the test.
func (e *env) dial(cfg Config) *Conn {
	e.t.Helper()
	c, err := Dial(testContext(e.t), cfg)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 5ms for up to 3s.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 3*time.Second, 5*time.Millisecond, msg)
}
