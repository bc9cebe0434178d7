package protocol

import (
	"encoding/binary"
	"fmt"
)

// LoadSpill is a LoadReport's optional spill-over section (flag 0x20,
// README.md 7.6): the joins this forwarder refused for load and referred
// to a forwarder of another region (300 Try Alternate), counted by target
// region, and those it refused at its region's spill level with no other
// region in reach. Cumulative since the process started, like the rest of
// the report. The section is present exactly when something is counted,
// so a forwarder that never spilled sends the report byte for byte as
// before the section existed.
type LoadSpill struct {
	// Refused counts joins refused (508) while the region throttled at its
	// spill level because no other region had room within the latency
	// budget, or none was measured.
	Refused uint64
	// To counts the joins referred to each other region, in strictly
	// ascending byte order of region, at most MaxSpillRegions rows, each
	// of at least one join. A row with an empty region counts the joins
	// referred to regions beyond the MaxSpillRegions-1 first named (it
	// then comes first).
	To []RegionSpill
}

// RegionSpill is one row of LoadSpill.To.
type RegionSpill struct {
	Region string // the target region (ValidRegion; "": the regions not named)
	Joins  uint64 // joins referred there
}

// MaxSpillRegions bounds LoadSpill.To.
const MaxSpillRegions = 32

// loadFlagSpill announces the spill-over section, after the trunk RTT
// section (or whatever precedes it).
const loadFlagSpill = 0x20

// empty says whether s counts nothing (and so is not sent).
func (s *LoadSpill) empty() bool { return s.Refused == 0 && len(s.To) == 0 }

func (s *LoadSpill) check() error {
	if len(s.To) > MaxSpillRegions {
		return fmt.Errorf("%w: %d spill-over rows, want at most %d", ErrClusterMsgInvalid, len(s.To), MaxSpillRegions)
	}
	for i, row := range s.To {
		if err := ValidRegion(row.Region); err != nil {
			return err
		}
		if i > 0 && s.To[i-1].Region >= row.Region {
			return fmt.Errorf("%w: spill-over rows not in strictly ascending order of region (%q after %q)", ErrClusterMsgInvalid, row.Region, s.To[i-1].Region)
		}
		if row.Joins == 0 {
			return fmt.Errorf("%w: spill-over row %q counts no join", ErrClusterMsgInvalid, row.Region)
		}
	}
	return nil
}

func (s *LoadSpill) appendTo(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, s.Refused)
	b = append(b, byte(len(s.To)))
	for _, row := range s.To {
		b = append(b, byte(len(row.Region)))
		b = append(b, row.Region...)
		b = binary.BigEndian.AppendUint64(b, row.Joins)
	}
	return b
}

// decode reads the section at the start of b and returns what follows it.
// The rows' rules are checked with the rest of the report (check).
func (s *LoadSpill) decode(b []byte) ([]byte, error) {
	if len(b) < 9 {
		return nil, fmt.Errorf("%w: spill-over section truncated: %d bytes, want at least 9", ErrClusterMsgInvalid, len(b))
	}
	s.Refused = binary.BigEndian.Uint64(b)
	k := int(b[8])
	if k > MaxSpillRegions {
		return nil, fmt.Errorf("%w: %d spill-over rows, want at most %d", ErrClusterMsgInvalid, k, MaxSpillRegions)
	}
	b = b[9:]
	if k > 0 {
		s.To = make([]RegionSpill, 0, k)
	}
	for i := range k {
		if len(b) < 1 || len(b) < 1+int(b[0])+8 {
			return nil, fmt.Errorf("%w: spill-over row %d truncated", ErrClusterMsgInvalid, i)
		}
		n := int(b[0])
		s.To = append(s.To, RegionSpill{Region: string(b[1 : 1+n]), Joins: binary.BigEndian.Uint64(b[1+n:])})
		b = b[9+n:]
	}
	if s.empty() {
		return nil, fmt.Errorf("%w: load report with the spill-over flag but nothing counted", ErrClusterMsgInvalid)
	}
	return b, nil
}
