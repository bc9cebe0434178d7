package mmsg

// Batch is how many datagrams one read or write syscall moves at most.
const Batch = 64

// BufSize is the largest datagram read whole; longer ones are cut (and
// their Buf is BufSize long).
const BufSize = 1500

// Options tune a Conn.
type Options struct {
	// PktInfo asks for each datagram's local address (Dst) on read, and
	// lets writes choose their source address.
	PktInfo bool
	// Buffer is the socket's receive and send buffer in bytes (0: the
	// system's default). As root SO_RCVBUFFORCE lifts the rmem_max cap.
	Buffer int
}
