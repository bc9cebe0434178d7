package bwe

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func newWindow() *rateWindow {
	var w rateWindow
	w.reset()
	return &w
}

func TestRateWindowRate(t *testing.T) {
	w := newWindow()
	// 1000-byte packets every 10 ms for 3 s: 800 kbit/s.
	for at := int64(0); at < 3*s; at += 10 * ms {
		w.add(simEpoch+at, 1000, 1, 1)
	}
	st := w.stats(simEpoch + 3*s)
	require.True(t, st.rateOK)
	require.True(t, st.settled)
	require.InDelta(t, 800e3, st.bps, 800e3*0.01)
	require.True(t, st.lossOK)
	require.Zero(t, st.loss)

	// A second later with nothing arriving the window is empty.
	st = w.stats(simEpoch + 4*s + 50*ms)
	require.False(t, st.rateOK)
	require.Zero(t, st.bps)
}

func TestRateWindowStart(t *testing.T) {
	w := newWindow()
	require.Equal(t, windowStats{}, w.stats(simEpoch))
	// Two packets in the first 10 ms are divided by 200 ms, not 10 ms.
	w.add(simEpoch, 1000, 1, 1)
	w.add(simEpoch+10*ms, 1000, 1, 1)
	st := w.stats(simEpoch + 10*ms)
	require.True(t, st.rateOK)
	require.False(t, st.settled)
	require.InDelta(t, 80e3, st.bps, 1)
}

func TestRateWindowLoss(t *testing.T) {
	w := newWindow()
	// 100 packets a second, every fourth lost.
	var seq seqTracker
	for i := 0; i < 300; i++ {
		if i%4 == 3 {
			continue
		}
		e, r := seq.add(uint16(i))
		w.add(simEpoch+int64(i)*10*ms, 1200, e, r)
	}
	st := w.stats(simEpoch + 3*s)
	require.True(t, st.lossOK)
	require.InDelta(t, 0.25, st.loss, 0.02)
}

// At 5 packets a second the loss window grows beyond 1 s until it holds
// 20 expected packets.
func TestRateWindowLossLowRate(t *testing.T) {
	w := newWindow()
	var seq seqTracker
	for i := 0; i < 30; i++ { // 6 s
		if i%5 == 4 {
			continue
		}
		e, r := seq.add(uint16(i))
		w.add(simEpoch+int64(i)*200*ms, 1200, e, r)
	}
	st := w.stats(simEpoch + 5900*ms)
	require.True(t, st.lossOK)
	require.InDelta(t, 0.2, st.loss, 0.06)
	require.InDelta(t, 4*1200*8/0.95, st.bps, 1, "the rate window stays 1 s: 4 packets from 4.95 s")

	// With 2 s of packets there are not enough for a trusted loss.
	w = newWindow()
	for i := 0; i < 10; i++ {
		w.add(simEpoch+int64(i)*200*ms, 1200, 1, 1)
	}
	require.False(t, w.stats(simEpoch+1900*ms).lossOK)
}

func TestRateWindowLatePacket(t *testing.T) {
	w := newWindow()
	w.add(simEpoch+8*s, 1000, 1, 1)
	w.add(simEpoch+9500*ms, 1000, 1, 1)
	w.add(simEpoch+10*s, 1000, 1, 1)
	w.add(simEpoch+9800*ms, 1000, 1, 1) // late, still in the window
	w.add(simEpoch+5*s, 1000, 1, 1)     // late, before the window
	st := w.stats(simEpoch + 10*s)
	// The window is the buckets from 9.05 s to now.
	require.InDelta(t, 3000*8/0.95, st.bps, 1)
}
