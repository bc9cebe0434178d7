package protocol

import (
	"encoding/binary"
	"fmt"
	"time"
)

// checkRegionRTTs checks a LoadReport's trunk RTT rows: at most
// MaxRegionRTTs, each of a valid, non-empty region, in strictly ascending
// order of region, with RTT and deviation within 0..2^32-1 µs.
func checkRegionRTTs(rows []RegionRTT) error {
	if len(rows) > MaxRegionRTTs {
		return fmt.Errorf("%w: %d trunk RTT rows, want at most %d", ErrClusterMsgInvalid, len(rows), MaxRegionRTTs)
	}
	for i, row := range rows {
		if row.Region == "" {
			return fmt.Errorf("%w: trunk RTT row %d without a region", ErrClusterMsgInvalid, i)
		}
		if err := ValidRegion(row.Region); err != nil {
			return err
		}
		if i > 0 && rows[i-1].Region >= row.Region {
			return fmt.Errorf("%w: trunk RTT rows not in strictly ascending order of region (%q after %q)", ErrClusterMsgInvalid, row.Region, rows[i-1].Region)
		}
		if row.RTT < 0 || row.RTT > maxRTTField || row.Dev < 0 || row.Dev > maxRTTField {
			return fmt.Errorf("%w: trunk RTT row %q: %s ± %s out of range", ErrClusterMsgInvalid, row.Region, row.RTT, row.Dev)
		}
	}
	return nil
}

func appendRegionRTTs(b []byte, rows []RegionRTT) []byte {
	b = append(b, byte(len(rows)))
	for _, row := range rows {
		b = append(b, byte(len(row.Region)))
		b = append(b, row.Region...)
		b = binary.BigEndian.AppendUint32(b, uint32(row.RTT/time.Microsecond))
		b = binary.BigEndian.AppendUint32(b, uint32(row.Dev/time.Microsecond))
	}
	return b
}

// decodeRegionRTTs reads the trunk RTT section at the start of b and
// returns what follows it. The rows' rules are checked with the rest of
// the report (checkRegionRTTs).
func decodeRegionRTTs(b []byte) ([]RegionRTT, []byte, error) {
	if len(b) < 1 || b[0] == 0 {
		return nil, nil, fmt.Errorf("%w: load report with the trunk RTT flag but no rows", ErrClusterMsgInvalid)
	}
	k := int(b[0])
	if k > MaxRegionRTTs {
		return nil, nil, fmt.Errorf("%w: %d trunk RTT rows, want at most %d", ErrClusterMsgInvalid, k, MaxRegionRTTs)
	}
	b = b[1:]
	rows := make([]RegionRTT, 0, k)
	for i := range k {
		if len(b) < 1 || len(b) < 1+int(b[0])+8 {
			return nil, nil, fmt.Errorf("%w: trunk RTT row %d truncated", ErrClusterMsgInvalid, i)
		}
		n := int(b[0])
		rows = append(rows, RegionRTT{Region: string(b[1 : 1+n]),
			RTT: time.Duration(binary.BigEndian.Uint32(b[1+n:])) * time.Microsecond,
			Dev: time.Duration(binary.BigEndian.Uint32(b[5+n:])) * time.Microsecond})
		b = b[9+n:]
	}
	return rows, b, nil
}

// RegionRTTs is the region-to-region RTT map a conductor builds from the
// forwarders' load reports: RTT[from][to], from the report's Ops.Region to
// each row's region. When several forwarders of a region report the same
// peer region, the smallest RTT stands (the best trunk between the two),
// so build it afresh from the latest report of each forwarder: fed a
// history, it would keep old minima.
type RegionRTTs map[string]map[string]time.Duration

// Add takes the rows of one report. A report without a region adds
// nothing.
func (m RegionRTTs) Add(r *LoadReport) {
	from := r.Ops.Region
	if from == "" || len(r.RTTs) == 0 {
		return
	}
	row := m[from]
	if row == nil {
		row = make(map[string]time.Duration, len(r.RTTs))
		m[from] = row
	}
	for _, x := range r.RTTs {
		if old, ok := row[x.Region]; !ok || x.RTT < old {
			row[x.Region] = x.RTT
		}
	}
}
