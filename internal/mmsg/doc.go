// Package mmsg is the one batched UDP I/O of callrelay: the forwarder's
// readers, the load generator's fast engine and the bare reflector all
// read with recvmmsg and write with sendmmsg through it. On IPv4 sockets
// it can also give each datagram's local address (IP_PKTINFO) on read and
// take a chosen source address on write, so that one socket bound to a
// port on every address speaks for many devices, each with its own address
// in 127.0.0.0/8. Every read also learns the socket's receive-queue drops
// (SO_RXQ_OVFL).
//
// Headers, iovecs, buffers, address slots and control-message slots are
// allocated once per Conn: a batch read or written allocates nothing. A
// Conn is used by one reader and one writer goroutine at a time
// (ReadBatch and the Queue/Flush pair each own their side). It never looks
// inside a datagram.
//
// Linux only for batches; elsewhere a portable fallback moves one datagram
// per call, without per-datagram addresses (PktInfo fails) or drop counts.
package mmsg
