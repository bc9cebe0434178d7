package conductor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func sampleCheckpoint() checkpoint {
	a, b := protocol.ID{1, 2, 3}, protocol.ID{9, 8, 7}
	t0 := time.Unix(1_800_000_000, 123_000_000).UTC()
	return checkpoint{Epoch: 1_796_133_321, Seq: 42, Speaker: SpeakerState{
		Dominant: a, Since: t0, LastSpoke: map[protocol.ID]time.Time{a: t0.Add(time.Second), b: t0.Add(-3 * time.Second)},
	}}
}

func TestCheckpointRoundTrip(t *testing.T) {
	for _, ck := range []checkpoint{{}, sampleCheckpoint()} {
		ck := ck
		b, err := ck.MarshalBinary()
		require.NoError(t, err)
		var got checkpoint
		require.NoError(t, got.UnmarshalBinary(b))
		again, err := got.MarshalBinary()
		require.NoError(t, err)
		require.Equal(t, b, again)
		require.Equal(t, ck.Epoch, got.Epoch)
		require.Equal(t, ck.Seq, got.Seq)
		require.Equal(t, ck.Speaker.Dominant, got.Speaker.Dominant)
	}
}

// A checkpoint that does not decode is refused whole, with an error that
// says why; the conductor then starts the call afresh (losing quality for a
// moment, never the call).
func TestCheckpointRejectsGarbage(t *testing.T) {
	sample := sampleCheckpoint()
	good, err := sample.MarshalBinary()
	require.NoError(t, err)
	cases := map[string][]byte{
		"empty":          nil,
		"short":          good[:10],
		"version":        append([]byte{2}, good[1:]...),
		"length too big": append(append([]byte(nil), good[:9]...), append([]byte{0xff, 0xff}, good[11:]...)...),
		"trailing":       append(append([]byte(nil), good...), 0),
		"truncated":      good[:len(good)-1],
		"bad speaker":    append(append([]byte(nil), good[:9]...), 0, 3, 9, 9, 9),
	}
	for name, b := range cases {
		var ck checkpoint
		err := ck.UnmarshalBinary(b)
		require.Error(t, err, name)
		require.True(t, errors.Is(err, errCheckpoint), "%s: %v", name, err)
		require.Equal(t, checkpoint{}, ck, name)
	}
}

// FuzzCheckpoint: anything that decodes re-encodes to the same bytes and
// decodes again to the same checkpoint; nothing panics.
func FuzzCheckpoint(f *testing.F) {
	for _, b := range checkpointSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ck checkpoint
		if ck.UnmarshalBinary(b) != nil {
			return
		}
		enc, err := ck.MarshalBinary()
		require.NoError(t, err)
		var again checkpoint
		require.NoError(t, again.UnmarshalBinary(enc))
		enc2, err := again.MarshalBinary()
		require.NoError(t, err)
		require.Equal(t, enc, enc2)
	})
}

func checkpointSeeds(t testing.TB) map[string][]byte {
	sample := sampleCheckpoint()
	good, err := sample.MarshalBinary()
	require.NoError(t, err)
	empty, err := (&checkpoint{}).MarshalBinary()
	require.NoError(t, err)
	return map[string][]byte{
		"good": good, "empty-state": empty, "truncated": good[:len(good)-3],
		"version-2": append([]byte{2}, good[1:]...), "garbage": []byte("not a checkpoint at all"),
	}
}

// TestCheckpointFuzzSeeds keeps the committed corpus in step with the
// seeds above. To rewrite it:
//
//	CALLRELAY_WRITE_FUZZ_SEEDS=1 go test -run TestCheckpointFuzzSeeds ./conductor/
func TestCheckpointFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzCheckpoint")
	write := os.Getenv("CALLRELAY_WRITE_FUZZ_SEEDS") != ""
	if write {
		require.NoError(t, os.MkdirAll(dir, 0o755))
	}
	for name, b := range checkpointSeeds(t) {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if write {
			require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
			continue
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err, "seed missing: rerun with CALLRELAY_WRITE_FUZZ_SEEDS=1")
		require.Equal(t, body, string(got), "seed %s is stale", path)
	}
}
