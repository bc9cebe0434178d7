package client

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// fuzzKey is fixed so that the genuine packets among FuzzReceiverOpen's
// seeds come out the same on every run.
var fuzzKey = MediaKey{
	Key:  [16]byte{0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f},
	Salt: [14]byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad},
}

var (
	fuzzOnce    sync.Once
	fuzzPackets [][]byte
)

// fuzzStream returns the stream FuzzReceiverOpen's receiver gets: 12
// packets from sequence number 65530 at ROC 2, so 6..11 are ROC 3.
func fuzzStream(t testing.TB) [][]byte {
	fuzzOnce.Do(func() { fuzzPackets = sealN(t, rocSender(t, fuzzKey, 65530, 2), 12) })
	return fuzzPackets
}

// receiverFuzzSeeds are FuzzReceiverOpen's committed seed corpus.
func receiverFuzzSeeds(t testing.TB) map[string][]byte {
	pkts := fuzzStream(t)
	long := protocol.RTPHeaderFields{PayloadType: 111, SequenceNumber: 65533, SSRC: 0x5150,
		Extensions: [protocol.MaxRTPExtensions]protocol.RTPExtension{
			{ID: protocol.DefaultRolloverCounterExtensionID, Data: []byte{0, 0, 0, 0, 2}}}}
	longPkt := make([]byte, long.MarshalSize()+12)
	_, err := long.MarshalTo(longPkt)
	require.NoError(t, err)
	otherSSRC := bytes.Clone(pkts[3])
	otherSSRC[11]++
	return map[string][]byte{
		"genuine-next":          pkts[3],
		"genuine-after-wrap":    pkts[8],
		"forged-hint":           forgeHint(t, pkts[3], 9),
		"stale-hint-after-wrap": forgeHint(t, pkts[8], 2),
		"replay":                pkts[1],
		"truncated":             pkts[3][:20],
		"five-byte-hint":        longPkt,
		"unknown-ssrc":          otherSSRC,
		"not-rtp":               {0x00, 0x01, 0x02},
	}
}

// TestReceiverFuzzSeeds keeps testdata/fuzz/FuzzReceiverOpen equal to
// receiverFuzzSeeds. To rewrite it:
//
//	CALLRELAY_WRITE_FUZZ_SEEDS=1 go test -run TestReceiverFuzzSeeds ./client/
func TestReceiverFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReceiverOpen")
	seeds := receiverFuzzSeeds(t)
	write := os.Getenv("CALLRELAY_WRITE_FUZZ_SEEDS") != ""
	if write {
		require.NoError(t, os.MkdirAll(dir, 0o755))
	}
	for name, b := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if write {
			require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
			continue
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err, "seed missing: rerun with CALLRELAY_WRITE_FUZZ_SEEDS=1")
		require.Equal(t, body, string(got), "seed %s is stale: rerun with CALLRELAY_WRITE_FUZZ_SEEDS=1", path)
	}
}

// Whatever arrives in the middle of a stream, Open neither panics nor
// accepts anything but a genuine packet, and the stream stays in sync:
// every genuine packet after it still decrypts, across the rollover.
func FuzzReceiverOpen(f *testing.F) {
	for _, b := range receiverFuzzSeeds(f) {
		f.Add(b)
	}
	pkts := fuzzStream(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := receiverFor(t, fuzzKey)
		openAll(t, r, pkts[:3], 0)
		in := bytes.Clone(b) // Open must not depend on the caller keeping b
		genuine := -1
		for i, p := range pkts {
			if bytes.Equal(p, b) {
				genuine = i
			}
		}
		if _, err := r.Open(nil, in, nil); err == nil && genuine < 3 {
			t.Fatalf("accepted a packet that is not a genuine unseen one: %x", b)
		}
		for i := 3; i < len(pkts); i++ {
			if i == genuine {
				continue
			}
			got, err := r.Open(nil, pkts[i], nil)
			if err != nil {
				t.Fatalf("packet %d after %x: %v", i, b, err)
			}
			if !bytes.Equal(got, []byte{byte(i), 0xee}) {
				t.Fatalf("packet %d decrypts to %x", i, got)
			}
		}
	})
}
