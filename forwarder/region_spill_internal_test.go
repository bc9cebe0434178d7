package forwarder

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// spillCounts keeps its rows in region order, counts repeat regions in
// their row, and stays within protocol.MaxSpillRegions rows: regions met
// beyond the first 31 share the row with no region, which comes first. The
// report it makes always passes the protocol's checks.
func TestSpillCountsBounded(t *testing.T) {
	var s spillCounts
	s.add("za")
	s.add("eu")
	s.add("za")
	require.Equal(t, []protocol.RegionSpill{{Region: "eu", Joins: 1}, {Region: "za", Joins: 2}}, s.snapshot())
	for i := range 40 {
		s.add(fmt.Sprintf("r%02d", i))
	}
	s.add("za")
	rows := s.snapshot()
	require.Len(t, rows, protocol.MaxSpillRegions)
	require.Equal(t, protocol.RegionSpill{Region: "", Joins: 11}, rows[0], "r29..r39 beyond the 31 named")
	require.Equal(t, protocol.RegionSpill{Region: "za", Joins: 3}, rows[len(rows)-1])
	var total uint64
	for _, r := range rows {
		total += r.Joins
	}
	require.Equal(t, uint64(44), total)
	r := protocol.LoadReport{Forwarder: "f", Spill: protocol.LoadSpill{To: rows}}
	_, err := r.Marshal(nil, protocol.ClusterKey{1})
	require.NoError(t, err)
}
