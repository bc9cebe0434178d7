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
)

// transaction is one join, keepalive or leave request; retransmissions
// resend raw.
type transaction struct {
	tid [stun.TransactionIDSize]byte
	raw []byte
	// token is the token the request carries, key its integrity key: the
	// answer is checked with it, and a ticket in the answer is bound to it.
	token, key []byte
}

// newTransaction builds a request with the current credentials: the latest
// token and, but in a leave, the ticket bound to it (credentials.go).
func newTransaction(cr *credentials, o protocol.JoinOptions) (*transaction, error) {
	token, key, ticket := cr.request()
	if !o.Leave {
		o.Ticket = ticket
	}
	m, err := protocol.BuildJoinRequest(token, o)
	if err != nil {
		return nil, err
	}
	return &transaction{tid: m.TransactionID, raw: m.Raw, token: token, key: key}, nil
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
		resp, err := protocol.ParseJoinResponse(buf[:n], tid, tx.key)
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
