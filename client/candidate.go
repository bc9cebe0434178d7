package client

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"

	"github.com/callrelay/callrelay/protocol"
)

// candidate is one forwarder tried by Dial.
type candidate struct {
	addr   netip.AddrPort
	sock   *net.UDPConn // connected to addr
	tx     atomic.Pointer[transaction]
	state  candState
	rto    time.Duration // wait before the next retransmission
	due    time.Time     // next (re)transmission
	sentAt time.Time     // first transmission of the current transaction
	until  time.Time     // candLeaving: give up on the leave's answer then
	err    error         // last refusal or failure
	closed bool
	// cookie is the last address cookie the forwarder gave this socket (never
	// another's); cookieRounds counts consecutive 401+cookie answers.
	cookie       []byte
	cookieRounds int
	// resume wakes the reader after a success when run wants it to keep
	// reading (a loser being sent a leave); the winner's reader is never
	// resumed, its socket belongs to the Conn.
	resume chan struct{}
}

type candState uint8

const (
	candPending candState = iota // join outstanding, retransmitting
	candWaiting                  // refused with 508, waiting for retry-after
	candJoined                   // accepted (the winner)
	candLeaving                  // a loser that accepted: leave outstanding
	candDone                     // ended: refused, dropped or failed; socket closed
	candHeld                     // accepted over IPv4, held while IPv6 may answer (ipv6.go)
)

// transaction is one join, keepalive or leave request; retransmissions
// resend raw.
type transaction struct {
	tid [stun.TransactionIDSize]byte
	raw []byte
	// token is the token the request carries, key its integrity key: the
	// answer is checked with it, and a ticket in the answer is bound to it.
	token, key []byte
	// With a version 2 token: the session key the request is under, or
	// the handshake of the proof it carries instead (protocol/device.go),
	// with its counter.
	session []byte
	hs      *protocol.DeviceHandshake
	counter uint64
}

// newTransaction builds a request with the current credentials: the latest
// token and, but in a leave, the ticket bound to it (credentials.go). With a
// version 2 token it is under session, the session key, if one is given,
// else it carries a fresh device proof.
func newTransaction(cr *credentials, o protocol.JoinOptions, session []byte) (*transaction, error) {
	token, key, ticket := cr.request()
	if !o.Leave {
		o.Ticket = ticket
	}
	if !protocol.IsDeviceToken(token) {
		m, err := protocol.BuildJoinRequest(token, o)
		if err != nil {
			return nil, err
		}
		return &transaction{tid: m.TransactionID, raw: m.Raw, token: token, key: key}, nil
	}
	tx := &transaction{token: token, key: key, session: session}
	a := protocol.DeviceAuth{SessionKey: session}
	if session == nil {
		tx.counter = cr.nextCounter(time.Now())
		a.Key, a.Counter = cr.device, tx.counter
	}
	m, hs, err := protocol.BuildDeviceRequest(token, o, a)
	if err != nil {
		return nil, err
	}
	tx.tid, tx.raw, tx.hs = m.TransactionID, m.Raw, hs
	return tx, nil
}

// parse checks and reads an answer to tx: under the token's key (v1), or
// as the answer to its proof or under its session key (v2).
func (tx *transaction) parse(raw []byte) (protocol.JoinResponse, error) {
	switch {
	case tx.hs != nil:
		return protocol.ParseProofResponse(raw, tx.tid, tx.key, tx.hs)
	case tx.session != nil:
		return protocol.ParseSessionResponse(raw, tx.tid, tx.session, tx.key)
	}
	return protocol.ParseJoinResponse(raw, tx.tid, tx.key)
}

// macKey is the key a MigrateTo echoing tx is signed with (the forwarder's
// key for the session when it answered resp): the session key of a v2
// session, else the token's integrity key.
func (tx *transaction) macKey(resp protocol.JoinResponse) []byte {
	switch {
	case resp.SessionKey != nil:
		return resp.SessionKey
	case tx.session != nil:
		return tx.session
	case tx.hs != nil:
		return nil
	}
	return tx.key
}

// maxCookieRounds bounds the address check: a request (join, rebind, leave)
// is repeated with a new cookie at most this many times in a row; a further
// 401 with a cookie, without progress in between, counts as a refusal. One
// round is the norm; more happen only when the device's address changed
// between request and repeat (NAT rebinding) or the forwarder restarted.
const maxCookieRounds = 3

// cookieChallenge reports whether an authenticated answer is the address
// check's 401 with a cookie (repeat the request with it), as opposed to a
// real 401 refusal, which carries no cookie.
func cookieChallenge(r protocol.JoinResponse) bool {
	return !r.OK && r.Code == protocol.CodeUnauthorized && len(r.Cookie) > 0
}

// cookieLoopError is the refusal a forwarder that keeps asking for new
// cookies earns.
func cookieLoopError(fwd netip.AddrPort, r protocol.JoinResponse) *JoinError {
	return &JoinError{Forwarder: fwd, Code: r.Code, addressCheck: true,
		Reason: fmt.Sprintf("%s (address check still failing after %d cookies)", r.Reason, maxCookieRounds)}
}

// read is a candidate's reader goroutine. It passes authenticated answers to
// the current transaction to run. After a success it stops reading until run
// resumes it (a loser being sent a leave) or ends: the winner's socket then
// belongs to the Conn.
func (d *dialer) read(c *candidate) {
	defer d.readers.Done()
	buf := make([]byte, MaxPacketSize+1)
	failures := 0
	for {
		n, err := c.sock.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.stats.readErrors.Add(1)
			if failures++; failures < maxReadFailures {
				continue // ICMP unreachable on a connected socket: the forwarder may be starting
			}
			d.deliver(dialEvent{c: c, err: err})
			return
		}
		failures = 0
		if protocol.Classify(buf[:n]) != protocol.KindSTUN {
			d.stats.stray.Add(1)
			continue
		}
		tx := c.tx.Load()
		tid := tx.tid
		resp, err := tx.parse(buf[:n])
		if err != nil {
			d.stats.countBadResponse(err)
			continue
		}
		if !d.deliver(dialEvent{c: c, tid: tid, token: tx.token, resp: resp, at: time.Now()}) {
			return
		}
		if resp.OK {
			select {
			case <-c.resume:
			case <-d.quit:
				return
			}
		}
	}
}

func (d *dialer) deliver(ev dialEvent) bool {
	select {
	case d.events <- ev:
		return true
	case <-d.quit:
		return false
	}
}

// maxReadFailures consecutive read errors end a socket.
const maxReadFailures = 64

func (c *counters) countBadResponse(err error) {
	if errors.Is(err, protocol.ErrIntegrity) {
		c.unauthenticated.Add(1)
	} else {
		c.stray.Add(1)
	}
}

// route is where a socket to forwarder goes (Config.Route).
func (c *Config) route(forwarder netip.AddrPort) netip.AddrPort {
	if c.Route == nil {
		return forwarder
	}
	return c.Route(forwarder)
}

// openSocket returns a UDP socket connected to remote (the kernel then drops
// datagrams from any other source), bound to local or, if local is the zero
// Addr, to the unspecified address.
func openSocket(local netip.Addr, remote netip.AddrPort) (*net.UDPConn, error) {
	var laddr *net.UDPAddr
	if local.IsValid() {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	return net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(remote))
}
