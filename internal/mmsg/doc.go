// Package mmsg is batched UDP I/O over IPv4 for the load generator's fast
// engine and the bare reflector: recvmmsg and sendmmsg on one socket, with
// each datagram's local address (IP_PKTINFO) on read and a chosen source
// address on write, so that one socket bound to a port on every address
// speaks for many devices, each with its own address in 127.0.0.0/8.
//
// Headers, iovecs, address slots and control-message slots are allocated
// once per Conn: a batch read or written allocates nothing. A Conn is used
// by one reader and one writer goroutine at a time (ReadBatch and the
// Queue/Flush pair each own their side).
//
// Linux only (Open fails elsewhere).
package mmsg
