package client

import (
	"errors"
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
	err    error         // last refusal or failure
	closed bool
}

type candState uint8

const (
	candPending candState = iota // join outstanding, retransmitting
	candWaiting                  // refused with 508, waiting for retry-after
	candJoined                   // accepted (the winner)
	candDone                     // ended: refused, dropped or failed; socket closed
)

// transaction is one join or leave request; retransmissions resend raw.
type transaction struct {
	tid [stun.TransactionIDSize]byte
	raw []byte
}

func newTransaction(token []byte, leave bool) (*transaction, error) {
	m, err := protocol.BuildJoinRequest(token, leave)
	if err != nil {
		return nil, err
	}
	return &transaction{tid: m.TransactionID, raw: m.Raw}, nil
}

// read is a candidate's reader goroutine. It passes authenticated answers to
// the current transaction to run, and stops after a success: the socket then
// belongs to the Conn (winner) or gets a leave (loser).
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
		resp, err := protocol.ParseJoinResponse(buf[:n], c.tx.Load().tid, d.key)
		if err != nil {
			d.stats.countBadResponse(err)
			continue
		}
		if !d.deliver(dialEvent{c: c, resp: resp, at: time.Now()}) || resp.OK {
			return
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
