package bwe

import (
	"encoding/binary"
	"math"
	"testing"
)

// FuzzEstimator feeds arbitrary packet sequences, including times going
// backwards, wild send times, out-of-range streams and sequence jumps: the
// estimator must not panic, and its outputs stay in range.
func FuzzEstimator(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{10, 0, 10, 0, 0, 4, 0, 1, 10, 0, 10, 0, 0, 4, 1, 1, 200, 0, 10, 0, 0, 4, 0, 0x81})
	f.Add([]byte{0xff, 0xff, 0x00, 0x80, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Estimator
		e.Init(Config{MinBps: 50e3, MaxBps: 5e6})
		arrival, send := simEpoch, int64(0)
		seqs := [8]uint16{}
		for len(data) >= 8 {
			// Each packet: arrival step (int16, 0.1 ms), send step (int16,
			// 0.1 ms), size (uint16), stream (byte, -2..5), seq step
			// (byte, signed), flags (bit 0: no send time, bit 7: Update).
			arrival += int64(int16(binary.LittleEndian.Uint16(data[0:]))) * 100_000
			send += int64(int16(binary.LittleEndian.Uint16(data[2:]))) * 100_000
			size := int(binary.LittleEndian.Uint16(data[4:]))
			stream := int(data[6]&7) - 2
			seqs[data[6]&7] += uint16(int8(data[7] >> 1))
			flags := data[7]
			e.OnPacket(arrival, send, flags&1 == 0, size, stream, seqs[data[6]&7])
			if flags&0x80 != 0 {
				est := e.Update(arrival)
				if est < 50e3 || est > 5e6 {
					t.Fatalf("estimate %d out of bounds", est)
				}
				if l := e.LossFraction(); l < 0 || l > 1 || math.IsNaN(l) {
					t.Fatalf("loss %v", l)
				}
			}
			data = data[8:]
		}
		e.Update(arrival + 100*ms)
	})
}
