package client

import (
	"context"
	"crypto/ed25519"
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
// enough of the join protocol (protocol.CheckJoin, BuildJoinSuccess,
// BuildJoinError) and of the fan-out to test the client's own logic in
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
	requests   []request
	sessions   map[protocol.ID]netip.AddrPort
	joins      int

	wg     sync.WaitGroup
	closed chan struct{}
}

type request struct {
	at    time.Time
	from  netip.AddrPort
	tid   [stun.TransactionIDSize]byte
	leave bool
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
	req, tok, err := protocol.CheckJoin(m, r.verify, time.Now())
	if err != nil {
		var key []byte
		if !errors.Is(err, protocol.ErrIntegrity) && !errors.Is(err, protocol.ErrJoinMalformed) {
			key = protocol.IntegrityKey(req.Token)
		}
		raw, _ := protocol.BuildJoinError(req.TransactionID, protocol.JoinError{Code: protocol.ErrorCodeFor(err), Reason: err.Error()}, key)
		_, _ = r.conn.WriteToUDPAddrPort(raw, from)
		return
	}
	r.mu.Lock()
	r.requests = append(r.requests, request{at: time.Now(), from: from, tid: req.TransactionID, leave: req.Leave})
	n := r.joins
	if !req.Leave {
		r.joins++
	}
	policy, dropLeaves := r.policy, r.dropLeaves
	r.mu.Unlock()
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

// script sets the policy; tests call it before any client talks to r.
func (r *responder) script(policy func(n int, req protocol.JoinRequest) []reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.policy = policy
}

// from returns the requests received from addr (all of them if addr is the
// zero value).
func (r *responder) from(addr netip.AddrPort) []request {
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

func (r *responder) leaves() []request {
	var out []request
	for _, q := range r.from(netip.AddrPort{}) {
		if q.leave {
			out = append(out, q)
		}
	}
	return out
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
