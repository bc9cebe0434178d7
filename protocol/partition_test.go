package protocol

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPartitionOfStable pins the mapping: changing any of these is a
// protocol change (forwarders and conductors of different versions would
// disagree about who owns a call). The values were computed with a separate
// Python implementation of FNV-1a.
func TestPartitionOfStable(t *testing.T) {
	for _, tt := range []struct {
		call     string
		hash     uint32 // FNV-1a 32 of the 16 bytes
		n64, n1k int    // partition of 64, of 1000
	}{
		{"11111111111111111111111111111111", 0x07cd46b5, 1, 30},
		{"00000000000000000000000000000000", 0x69691905, 26, 411},
		{"ffffffffffffffffffffffffffffffff", 0x360779f5, 13, 211},
		{"0123456789abcdef0123456789abcdef", 0x62058445, 24, 382},
		{"22222222222222222222222222222222", 0x23638bc5, 8, 138},
	} {
		id, err := ParseID(tt.call)
		require.NoError(t, err)
		h := fnv.New32a()
		h.Write(id[:])
		require.Equal(t, tt.hash, h.Sum32(), "the standard library's FNV-1a agrees")
		require.Equal(t, tt.n64, PartitionOf(id, 64), "%s of 64", tt.call)
		require.Equal(t, tt.n1k, PartitionOf(id, 1000), "%s of 1000", tt.call)
		require.Equal(t, 0, PartitionOf(id, 1))
		require.Equal(t, int(tt.hash>>16), PartitionOf(id, MaxPartitions), "of 65536: the top 16 bits")
	}
}

func TestPartitionOfAgainstFNV(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		var id ID
		binary.LittleEndian.PutUint64(id[:8], rng.Uint64())
		binary.LittleEndian.PutUint64(id[8:], rng.Uint64())
		n := 1 + rng.IntN(MaxPartitions)
		h := fnv.New32a()
		h.Write(id[:])
		want := int(uint64(h.Sum32()) * uint64(n) >> 32)
		got := PartitionOf(id, n)
		require.Equal(t, want, got)
		require.True(t, got >= 0 && got < n)
	}
}

// TestPartitionOfDistribution: 10,000 random ids spread evenly over 64
// partitions (expected 156.25 each, standard deviation about 12.4; the
// bounds are five deviations), and over 7, which is not a power of two.
// The ids come from a fixed seed, so the test is deterministic.
func TestPartitionOfDistribution(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 64))
	for _, n := range []int{64, 7} {
		counts := make([]int, n)
		const ids = 10000
		for range ids {
			var id ID
			binary.LittleEndian.PutUint64(id[:8], rng.Uint64())
			binary.LittleEndian.PutUint64(id[8:], rng.Uint64())
			counts[PartitionOf(id, n)]++
		}
		mean := float64(ids) / float64(n)
		sd := mean * (1 - 1/float64(n))
		for p, c := range counts {
			require.InDelta(t, mean, float64(c), 5*math.Sqrt(sd), "partition %d of %d: %d ids", p, n, c)
		}
	}
}

// TestPartitionOfStructuredIDs: ids that differ only in the top two bits
// of their bytes (where FNV-1a's low bits are blind) still spread.
func TestPartitionOfStructuredIDs(t *testing.T) {
	seen := map[int]bool{}
	for i := range 256 {
		var id ID
		for j := range 4 {
			id[j] = byte(i>>(2*j)&3) << 6
		}
		seen[PartitionOf(id, 64)] = true
	}
	require.Greater(t, len(seen), 48, "256 ids landed in only %d of 64 partitions", len(seen))
}

func TestPartitionOfAllocs(t *testing.T) {
	id := NewID()
	var sink int
	require.Zero(t, testing.AllocsPerRun(100, func() { sink += PartitionOf(id, 64) }))
	_ = sink
}

func TestPartitionOfPanics(t *testing.T) {
	for _, n := range []int{0, -1, MaxPartitions + 1} {
		require.Panics(t, func() { PartitionOf(ID{1}, n) }, "n = %d", n)
	}
}
