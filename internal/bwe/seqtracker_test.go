package bwe

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSeqTracker(t *testing.T) {
	tests := []struct {
		name                   string
		seqs                   []uint16
		wantExpected, wantRecv int64
	}{
		{"in order", []uint16{10, 11, 12, 13}, 4, 4},
		{"one lost", []uint16{10, 11, 13, 14}, 5, 4},
		{"across the wrap", []uint16{65534, 65535, 0, 1}, 4, 4},
		{"lost across the wrap", []uint16{65534, 1}, 4, 2},
		{"reordered", []uint16{10, 12, 11, 13}, 4, 4},
		{"duplicate of the newest", []uint16{10, 11, 11, 12}, 3, 3},
		{"restarted stream is no loss", []uint16{10, 11, 30000, 30001}, 4, 4},
		{"old packet far behind is a restart", []uint16{30000, 10, 11}, 3, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var st seqTracker
			var exp, recv int64
			for _, q := range tc.seqs {
				e, r := st.add(q)
				exp += e
				recv += r
			}
			require.Equal(t, tc.wantExpected, exp, "expected")
			require.Equal(t, tc.wantRecv, recv, "received")
		})
	}
}
