package mmsg

// Batch is how many datagrams one read or write syscall moves at most,
// unless Options say otherwise.
const Batch = 64

// BufSize is the largest datagram read whole, unless Options say
// otherwise; longer ones are cut (their Buf is the buffer's length and
// Truncated tells).
const BufSize = 1500

// Options tune a Conn.
type Options struct {
	// PktInfo asks for each datagram's local address (Dst) on read, and
	// lets writes choose their source address (IPv4 sockets only).
	PktInfo bool
	// Buffer is the socket's receive and send buffer in bytes (0: leave
	// them as they are). As root SO_RCVBUFFORCE lifts the rmem_max cap.
	Buffer int
	// ReadBatch and WriteBatch are how many datagrams one read and one
	// write take at most (0: Batch).
	ReadBatch, WriteBatch int
	// BufSize is each read buffer's size (0: BufSize).
	BufSize int
	// ReuseAddr sets SO_REUSEADDR before Open binds: another socket with
	// it may then bind a more specific address to the same port (and get
	// that address's datagrams).
	ReuseAddr bool
	// DontFragment sets DF on every IPv4 datagram sent, ignoring the path
	// MTU (IP_PMTUDISC_PROBE): the kernel then gives an unconnected
	// socket's datagrams IP ID 0 instead of hashing one for each (3.5 %
	// of the fast load generator's CPU in a perf profile).
	DontFragment bool
	// RxTime asks the kernel to stamp each datagram with the time it was
	// queued on the socket (SO_TIMESTAMPNS, CLOCK_REALTIME): RxTime(i).
	// A measurement then does not include how long the reading goroutine
	// took to be scheduled (the fast load generator's arrival times).
	// The kernel turns timestamping on asynchronously when the first
	// socket asks: datagrams queued before that carry their read time.
	RxTime bool
}

func (o Options) withDefaults() Options {
	if o.ReadBatch <= 0 {
		o.ReadBatch = Batch
	}
	if o.WriteBatch <= 0 {
		o.WriteBatch = Batch
	}
	if o.BufSize <= 0 {
		o.BufSize = BufSize
	}
	return o
}
