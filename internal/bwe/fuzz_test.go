package bwe

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzEstimator feeds arbitrary packet sequences, including times going
// backwards, wild send times, out-of-range streams and sequence jumps: the
// estimator must not panic, and its outputs stay in range. The seed corpus
// (testdata/fuzz/FuzzEstimator) holds the situations it is built for:
// TestFuzzEstimatorCorpus checks that each seed shows what its name says.
func FuzzEstimator(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{10, 0, 10, 0, 0, 4, 0, 1, 10, 0, 10, 0, 0, 4, 1, 1, 200, 0, 10, 0, 0, 4, 0, 0x81})
	f.Add([]byte{0xff, 0xff, 0x00, 0x80, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		replayFuzzInput(data, func(e *Estimator, est uint64) {
			if est < 50e3 || est > 5e6 {
				t.Fatalf("estimate %d out of bounds", est)
			}
			if l := e.LossFraction(); l < 0 || l > 1 || math.IsNaN(l) {
				t.Fatalf("loss %v", l)
			}
		})
	})
}

// replayFuzzInput decodes FuzzEstimator's input into an Estimator bounded to
// 50 kbit/s..5 Mbit/s, calling updated after each Update it asks for, and
// updates once more 100 ms after the last packet. Each packet is 8 bytes:
// arrival step (int16, 0.1 ms), send step (int16, 0.1 ms), size (uint16),
// stream (byte, -2..5), then one byte: bit 0 no send time, bits 1..6 the
// sequence step, bit 7 Update (which adds 64 to the step).
func replayFuzzInput(data []byte, updated func(e *Estimator, est uint64)) *Estimator {
	e := new(Estimator)
	e.Init(Config{MinBps: 50e3, MaxBps: 5e6})
	arrival, send := simEpoch, int64(0)
	seqs := [8]uint16{}
	for len(data) >= 8 {
		arrival += int64(int16(binary.LittleEndian.Uint16(data[0:]))) * 100_000
		send += int64(int16(binary.LittleEndian.Uint16(data[2:]))) * 100_000
		size := int(binary.LittleEndian.Uint16(data[4:]))
		stream := int(data[6]&7) - 2
		seqs[data[6]&7] += uint16(int8(data[7] >> 1))
		flags := data[7]
		e.OnPacket(arrival, send, flags&1 == 0, size, stream, seqs[data[6]&7])
		if flags&0x80 != 0 {
			updated(e, e.Update(arrival))
		}
		data = data[8:]
	}
	updated(e, e.Update(arrival+100*ms))
	return e
}

// readFuzzSeed reads one file of testdata/fuzz/FuzzEstimator.
func readFuzzSeed(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzEstimator", name))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Len(t, lines, 2, name)
	require.Equal(t, "go test fuzz v1", lines[0])
	lit, ok := strings.CutPrefix(lines[1], "[]byte(")
	require.True(t, ok, name)
	s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	require.NoError(t, err, name)
	return []byte(s)
}

// Each seed of the corpus drives the estimator where its name says, so
// that fuzzing starts from every path, not from noise.
func TestFuzzEstimatorCorpus(t *testing.T) {
	type run struct {
		ests  []uint64
		loss  []float64
		final *Estimator
	}
	replay := func(name string) run {
		var r run
		r.final = replayFuzzInput(readFuzzSeed(t, name), func(e *Estimator, est uint64) {
			r.ests = append(r.ests, est)
			r.loss = append(r.loss, e.LossFraction())
		})
		t.Logf("%s: estimates %v, loss %.3f", name, r.ests, r.loss)
		return r
	}
	fell := func(ests []uint64) bool {
		for i := 1; i < len(ests); i++ {
			if ests[i] < ests[i-1] {
				return true
			}
		}
		return false
	}

	steady := replay("steady_400kbps")
	require.Zero(t, steady.final.LossFraction())
	require.False(t, fell(steady.ests), "no queue and no loss: the estimate never falls")
	require.InDelta(t, 400e3, float64(steady.final.IncomingBps()), 80e3)

	queue := replay("queue_builds_then_drains")
	require.True(t, fell(queue.ests), "a growing queue brings the estimate down")
	require.Zero(t, queue.final.LossFraction())

	lossy := replay("loss_one_in_four")
	require.Greater(t, slicesMax(lossy.loss), 0.05, "a packet in five of one stream lost")

	layers := replay("three_layers")
	require.Zero(t, layers.final.LossFraction(), "three streams, each in sequence")

	noSend := replay("no_send_time")
	require.Zero(t, noSend.final.LossFraction())
	require.InDelta(t, 400e3, float64(noSend.final.IncomingBps()), 80e3, "the rate is measured without send times")

	for _, name := range []string{"clocks_misbehave", "limits"} {
		r := replay(name)
		for _, est := range r.ests {
			require.True(t, est >= 50e3 && est <= 5e6, "%s: estimate %d", name, est)
		}
	}

	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzEstimator", "*"))
	require.NoError(t, err)
	require.Len(t, files, 7, "a seed added to the corpus gets a check here")
}

func slicesMax(xs []float64) float64 {
	m := math.Inf(-1)
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
