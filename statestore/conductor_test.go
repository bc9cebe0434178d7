package statestore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func TestPartitionLease(t *testing.T) {
	// The name is what conductors of every version hold and the dashboard
	// reads: changing it splits a cluster during a rolling upgrade.
	require.Equal(t, "conductor/partition/0", PartitionLease(0))
	require.Equal(t, "conductor/partition/63", PartitionLease(63))
	require.Equal(t, "{lease:conductor/partition/7}:holder", leaseHolderKey(PartitionLease(7)))
}

func speakerStatesEqual(t *testing.T, want, got SpeakerState) {
	t.Helper()
	require.Equal(t, want.Dominant, got.Dominant)
	require.True(t, want.Since.Equal(got.Since), "since %v != %v", want.Since, got.Since)
	require.Len(t, got.LastSpoke, len(want.LastSpoke))
	for id, w := range want.LastSpoke {
		g, ok := got.LastSpoke[id]
		require.True(t, ok, "missing %s", id)
		require.True(t, w.Equal(g), "%s: %v != %v", id, w, g)
	}
}

func sampleSpeakerState() SpeakerState {
	a, b := protocol.ID{1, 2, 3}, protocol.ID{9, 8, 7}
	t0 := time.Unix(1_800_000_000, 123_000_000).UTC()
	return SpeakerState{Dominant: a, Since: t0,
		LastSpoke: map[protocol.ID]time.Time{a: t0.Add(time.Second), b: t0.Add(-3 * time.Second)}}
}

func sampleCheckpoint() ConductorCheckpoint {
	return ConductorCheckpoint{Epoch: 1_796_133_321, Seq: 42, Speaker: sampleSpeakerState()}
}

func TestSpeakerStateRoundTrip(t *testing.T) {
	for _, st := range []SpeakerState{{}, sampleSpeakerState(), {LastSpoke: map[protocol.ID]time.Time{{5}: {}}}} {
		raw, err := st.MarshalBinary()
		require.NoError(t, err)
		require.Len(t, raw, speakerStateHeader+len(st.LastSpoke)*speakerStateEntry)
		var back SpeakerState
		require.NoError(t, back.UnmarshalBinary(raw))
		speakerStatesEqual(t, st, back)
		again, err := back.MarshalBinary()
		require.NoError(t, err)
		require.Equal(t, raw, again, "encoding is canonical")
	}
}

func TestSpeakerStateErrors(t *testing.T) {
	st := sampleSpeakerState()
	good, err := st.MarshalBinary()
	require.NoError(t, err)
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	first, second := speakerStateHeader, speakerStateHeader+speakerStateEntry
	cases := map[string][]byte{
		"empty":     nil,
		"short":     good[:10],
		"version":   mut(func(b []byte) []byte { b[0] = 2; return b }),
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte(nil), good...), 0),
		"count":     mut(func(b []byte) []byte { b[26] = 3; return b }),
		"zero id":   mut(func(b []byte) []byte { copy(b[first:first+16], make([]byte, 16)); return b }),
		"duplicate": mut(func(b []byte) []byte { copy(b[second:second+16], b[first:first+16]); return b }),
		"out of order": mut(func(b []byte) []byte {
			e := append([]byte(nil), b[first:second]...)
			copy(b[first:second], b[second:])
			copy(b[second:], e)
			return b
		}),
	}
	for name, in := range cases {
		var s SpeakerState
		err := s.UnmarshalBinary(in)
		require.Error(t, err, name)
		require.ErrorIs(t, err, ErrCorrupt, name)
		require.Contains(t, err.Error(), "speaker state", name)
		require.True(t, s.Dominant.IsZero() && s.LastSpoke == nil, "%s: state left empty", name)
	}
	_, err = (&SpeakerState{LastSpoke: map[protocol.ID]time.Time{{}: time.Unix(1, 0)}}).MarshalBinary()
	require.ErrorIs(t, err, ErrInvalid)
}

func TestConductorCheckpointRoundTrip(t *testing.T) {
	for _, ck := range []ConductorCheckpoint{{}, sampleCheckpoint()} {
		b, err := ck.MarshalBinary()
		require.NoError(t, err)
		var got ConductorCheckpoint
		require.NoError(t, got.UnmarshalBinary(b))
		again, err := got.MarshalBinary()
		require.NoError(t, err)
		require.Equal(t, b, again)
		require.Equal(t, ck.Epoch, got.Epoch)
		require.Equal(t, ck.Seq, got.Seq)
		speakerStatesEqual(t, ck.Speaker, got.Speaker)
	}
	// The layout, byte for byte, as the conductor has always written it.
	b, err := (&ConductorCheckpoint{Epoch: 3, Seq: 17}).MarshalBinary()
	require.NoError(t, err)
	require.Equal(t, []byte{1, 0, 0, 0, 3, 0, 0, 0, 17, 0, 27, 1}, b[:12])
	require.Len(t, b, checkpointHeader+speakerStateHeader)
}

// A checkpoint that does not decode is refused whole, with an error that
// says why; its readers then go on without it (the conductor starts the
// call afresh, the dashboard says so), never crash.
func TestConductorCheckpointRejectsGarbage(t *testing.T) {
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
		var ck ConductorCheckpoint
		err := ck.UnmarshalBinary(b)
		require.Error(t, err, name)
		require.True(t, errors.Is(err, ErrCorrupt), "%s: %v", name, err)
		require.Contains(t, err.Error(), "conductor checkpoint", name)
		require.Equal(t, ConductorCheckpoint{}, ck, name)
	}
}

// FuzzSpeakerState: no input panics, every failure is ErrCorrupt, and
// whatever decodes encodes back to the same bytes (the layout is canonical)
// and decodes again to the same state.
func FuzzSpeakerState(f *testing.F) {
	for _, b := range speakerStateSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s1 SpeakerState
		if err := s1.UnmarshalBinary(b); err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		enc, err := s1.MarshalBinary()
		require.NoError(t, err)
		if !bytes.Equal(enc, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, enc)
		}
		var s2 SpeakerState
		require.NoError(t, s2.UnmarshalBinary(enc))
		speakerStatesEqual(t, s1, s2)
	})
}

// FuzzConductorCheckpoint: the same for the whole checkpoint.
func FuzzConductorCheckpoint(f *testing.F) {
	for _, b := range checkpointSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ck ConductorCheckpoint
		if err := ck.UnmarshalBinary(b); err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		enc, err := ck.MarshalBinary()
		require.NoError(t, err)
		if !bytes.Equal(enc, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, enc)
		}
		var again ConductorCheckpoint
		require.NoError(t, again.UnmarshalBinary(enc))
		require.Equal(t, ck.Epoch, again.Epoch)
		require.Equal(t, ck.Seq, again.Seq)
		speakerStatesEqual(t, ck.Speaker, again.Speaker)
	})
}

// speakerStateSeeds are seeds besides the committed corpus, which came
// from the conductor (where this layout was born) and is kept as it is.
func speakerStateSeeds(t testing.TB) map[string][]byte {
	st := sampleSpeakerState()
	good, err := st.MarshalBinary()
	require.NoError(t, err)
	swapped := append([]byte(nil), good...)
	first, second := speakerStateHeader, speakerStateHeader+speakerStateEntry
	copy(swapped[first:second], good[second:])
	copy(swapped[second:], good[first:second])
	return map[string][]byte{"sample": good, "out_of_order": swapped}
}

func checkpointSeeds(t testing.TB) map[string][]byte {
	sample := sampleCheckpoint()
	good, err := sample.MarshalBinary()
	require.NoError(t, err)
	empty, err := (&ConductorCheckpoint{}).MarshalBinary()
	require.NoError(t, err)
	return map[string][]byte{
		"good": good, "empty-state": empty, "truncated": good[:len(good)-3],
		"version-2": append([]byte{2}, good[1:]...), "garbage": []byte("not a checkpoint at all"),
		"bad-speaker": append(append([]byte(nil), good[:9]...), 0, 3, 9, 9, 9),
	}
}

// TestConductorFuzzSeeds keeps the committed corpora in step with the
// seeds above (the speaker state corpus also holds older files of its own).
// To rewrite them:
//
//	CALLRELAY_WRITE_FUZZ_SEEDS=1 go test -run TestConductorFuzzSeeds ./statestore/
func TestConductorFuzzSeeds(t *testing.T) {
	write := os.Getenv("CALLRELAY_WRITE_FUZZ_SEEDS") != ""
	for target, seeds := range map[string]map[string][]byte{
		"FuzzConductorCheckpoint": checkpointSeeds(t), "FuzzSpeakerState": speakerStateSeeds(t),
	} {
		dir := filepath.Join("testdata", "fuzz", target)
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
			require.Equal(t, body, string(got), "seed %s is stale", path)
		}
	}
	entries, err := os.ReadDir(filepath.Join("testdata", "fuzz", "FuzzSpeakerState"))
	require.NoError(t, err)
	require.Greater(t, len(entries), len(speakerStateSeeds(t)), "the older speaker state corpus is missing")
}
