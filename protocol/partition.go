package protocol

// Partitions group calls for the decision plane: a conductor instance owns
// whole partitions (through a lease), and forwarders batch their metadata
// per partition. The mapping is part of the protocol: every forwarder and
// conductor, of every version, must agree on it.

const (
	fnv32Offset = 2166136261
	fnv32Prime  = 16777619
	// MaxPartitions is the most partitions PartitionOf maps to: partitions
	// travel as uint16 (MetadataBatch.Partition, CallDecision.Partition).
	MaxPartitions = 1 << 16
)

// PartitionOf maps a call to one of n partitions, 0..n-1, the same way in
// every process and version:
//
//	h = FNV-1a 32-bit over the 16 id bytes, in order
//	    (h = 2166136261; for each byte: h ^= byte; h *= 16777619, mod 2^32)
//	partition = (h * n) >> 32, computed in 64 bits
//
// The multiply-shift range reduction takes the partition from the hash's
// high bits. (h mod n would take it from the low bits when n is a power of
// two, and FNV-1a's low k bits depend only on the low k bits of each input
// byte.) It allocates nothing. n must be 1..MaxPartitions; anything else is
// a configuration error and panics.
func PartitionOf(call ID, n int) int {
	if n < 1 || n > MaxPartitions {
		panic("protocol: PartitionOf: partition count out of range 1..65536")
	}
	h := uint32(fnv32Offset)
	for _, c := range call {
		h ^= uint32(c)
		h *= fnv32Prime
	}
	return int(uint64(h) * uint64(n) >> 32)
}
