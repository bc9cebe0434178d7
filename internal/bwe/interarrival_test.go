package bwe

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// pkt is one packet for interArrival: arrival and send time in ms.
type pkt struct{ arrival, send float64 }

func TestInterArrival(t *testing.T) {
	tests := []struct {
		name   string
		pkts   []pkt
		want   []delaySample // in ms, converted to ns below
		resets int
	}{
		{
			name: "one packet per group",
			pkts: []pkt{{100, 0}, {120, 20}, {145, 40}, {165, 60}},
			// groups complete when the next one starts: 2nd vs 1st, 3rd vs 2nd
			want: []delaySample{{arrival: 120, sendDelta: 20, arrDelta: 20}, {arrival: 145, sendDelta: 20, arrDelta: 25}},
		},
		{
			name: "packets sent within 5 ms form a group",
			pkts: []pkt{{100, 0}, {101, 1}, {103, 4}, {130, 20}, {131, 21}, {150, 40}},
			want: []delaySample{{arrival: 131, sendDelta: 17, arrDelta: 28}},
		},
		{
			name: "a burst released by the network joins the group",
			// sent 10 ms apart, held back, then delivered 1 ms apart
			pkts: []pkt{{100, 0}, {140, 10}, {141, 20}, {142, 30}, {160, 60}, {190, 90}},
			want: []delaySample{{arrival: 142, sendDelta: 30, arrDelta: 42}, {arrival: 160, sendDelta: 30, arrDelta: 18}},
		},
		{
			name: "a reordered packet is left out",
			pkts: []pkt{{100, 0}, {120, 20}, {121, 10}, {140, 40}, {160, 60}},
			want: []delaySample{{arrival: 120, sendDelta: 20, arrDelta: 20}, {arrival: 140, sendDelta: 20, arrDelta: 20}},
		},
		{
			name:   "a send time jumping back is a new clock",
			pkts:   []pkt{{100, 10000}, {120, 10020}, {140, 0}, {160, 20}, {180, 40}},
			want:   []delaySample{{arrival: 160, sendDelta: 20, arrDelta: 20}},
			resets: 1,
		},
		{
			name:   "a send time jumping back a little is a new clock after three packets",
			pkts:   []pkt{{100, 1000}, {120, 1020}, {140, 500}, {160, 520}, {180, 540}, {200, 560}, {220, 580}},
			want:   []delaySample{{arrival: 200, sendDelta: 20, arrDelta: 20}},
			resets: 1,
		},
		{
			name:   "a send time jumping 3 s ahead is a new clock",
			pkts:   []pkt{{100, 0}, {120, 20}, {140, 3040}, {160, 3060}, {180, 3080}, {200, 3100}},
			want:   []delaySample{{arrival: 120, sendDelta: 20, arrDelta: 20}, {arrival: 180, sendDelta: 20, arrDelta: 20}},
			resets: 1,
		},
		{
			name: "a paused sender is no jump",
			pkts: []pkt{{100, 0}, {120, 20}, {5140, 5020}, {5160, 5040}},
			want: []delaySample{{arrival: 120, sendDelta: 20, arrDelta: 20}, {arrival: 5140, sendDelta: 5000, arrDelta: 5020}},
		},
		{
			name: "arrivals 3 s later than sent is a new clock",
			pkts: []pkt{{100, 0}, {120, 20}, {3200, 40}, {3220, 60}, {3240, 80}, {3260, 100}},
			// the group at 3200 is compared with none: history restarts at 3220
			want:   []delaySample{{arrival: 120, sendDelta: 20, arrDelta: 20}, {arrival: 3240, sendDelta: 20, arrDelta: 20}},
			resets: 1,
		},
	}
	ns := func(x float64) int64 { return int64(x * float64(ms)) }
	nsi := func(x int64) int64 { return x * ms }
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ia interArrival
			var got []delaySample
			resets := 0
			for _, p := range tc.pkts {
				s, ok, reset := ia.add(simEpoch+ns(p.arrival), ns(p.send))
				if reset {
					resets++
				}
				if ok {
					s.arrival -= simEpoch
					got = append(got, s)
				}
			}
			want := make([]delaySample, len(tc.want))
			for i, w := range tc.want {
				want[i] = delaySample{arrival: nsi(w.arrival), sendDelta: nsi(w.sendDelta), arrDelta: nsi(w.arrDelta)}
			}
			require.Equal(t, want, got)
			require.Equal(t, tc.resets, resets)
		})
	}
}
