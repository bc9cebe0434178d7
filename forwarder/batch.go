package forwarder

import (
	"net"
	"net/netip"

	"github.com/callrelay/callrelay/internal/mmsg"
)

const (
	// maxDatagram is the largest datagram the forwarder accepts. Media never
	// exceeds a path MTU; anything larger is dropped as oversized.
	maxDatagram = 1500
	// bufSize leaves room to notice a datagram larger than maxDatagram.
	bufSize = 2048
	// readBatch is how many datagrams one read (recvmmsg) takes at most.
	readBatch = 64
	// writeBatch is how many datagrams one write (sendmmsg) sends at most.
	writeBatch = 256
)

// packetConn is the batched socket of one reader: internal/mmsg's Conn
// (recvmmsg/sendmmsg, no allocation; one datagram per call off Linux), or
// an in-memory one in tests and the stream workers.
//
// The read side owns readBatch buffers; Buf(i), Len(i) and Src(i) describe the
// i-th datagram of the last ReadBatch and stay valid until the next one.
// Dropped is how many datagrams the kernel dropped from the socket's receive
// queue (buffer full) since the last call; the reader adds it to its drops.
// The write side queues (buffer, destination) pairs and sends them with Flush;
// a queued buffer must stay untouched until Flush returns.
type packetConn interface {
	ReadBatch() (int, error)
	Buf(i int) []byte
	Src(i int) netip.AddrPort
	Truncated(i int) bool
	Dropped() uint64
	Queue(b []byte, dst *sockaddr) bool // false when the queue is full: Flush first
	Flush() (sent, failed int)
	Close() error
}

// batchConn is a socket read and written through internal/mmsg. It is one
// pointer: stored in the packetConn interface, it allocates nothing.
type batchConn struct{ *mmsg.Conn }

func newPacketConn(c *net.UDPConn) (packetConn, error) {
	m, err := mmsg.Wrap(c, mmsg.Options{ReadBatch: readBatch, WriteBatch: writeBatch, BufSize: bufSize})
	if err != nil {
		return nil, err
	}
	return batchConn{m}, nil
}

// Queue sends b to dst's encoded address at the next Flush.
func (b batchConn) Queue(p []byte, dst *sockaddr) bool { return b.QueueTo(p, &dst.Sockaddr) }
