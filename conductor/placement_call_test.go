package conductor

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// TestObservePlacement: a member's report maps via to the forwarder whose
// metadata carries it and other addresses through the fleet's
// announcements; an address nobody announces is dropped and counted; a
// 'left' from a forwarder the member has moved off changes nothing.
func TestObservePlacement(t *testing.T) {
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	now := time.Unix(1_800_000_000, 0)
	c := &Conductor{fleet: NewFleet(k, 5*time.Second, nil), pm: newPlacementMetrics(nil)}
	c.fleet.Take(sealedAnnounce(t, k, "fwd-b", "192.0.2.2:3478", now), now)
	p := &partition{c: c}
	cs := &callState{id: protocol.NewID()}

	mm := protocol.MemberMetadata{Participant: pid(1), MeanLevel: 127, MaxLevel: 127, Flags: protocol.MetaRTT}
	mm.RTTs.N = 3
	mm.RTTs.Entries[0] = protocol.CandidateRTT{Addr: netip.MustParseAddrPort("10.0.0.1:3478"), RTT: 200 * time.Millisecond, Via: true}
	mm.RTTs.Entries[1] = protocol.CandidateRTT{Addr: netip.MustParseAddrPort("192.0.2.2:3478"), RTT: 50 * time.Millisecond}
	mm.RTTs.Entries[2] = protocol.CandidateRTT{Addr: netip.MustParseAddrPort("198.51.100.9:3478"), RTT: 10 * time.Millisecond}
	p.observePlacement(cs, "fwd-a", &mm, now)
	st := cs.place.members[pid(1)]
	require.Equal(t, "fwd-a", st.fwd)
	require.Equal(t, map[string]time.Duration{"fwd-a": 200 * time.Millisecond, "fwd-b": 50 * time.Millisecond}, st.rtt)
	require.InDelta(t, 1, testutil.ToFloat64(c.pm.entries.WithLabelValues("unknown_forwarder")), 0)
	require.True(t, cs.place.dirty)

	// Moved to fwd-b: its metadata names it there; fwd-a's late 'left'
	// does not remove it.
	quiet := protocol.MemberMetadata{Participant: pid(1), MeanLevel: 127, MaxLevel: 127}
	p.observePlacement(cs, "fwd-b", &quiet, now)
	left := quiet
	left.Flags = protocol.MetaLeft
	p.observePlacement(cs, "fwd-a", &left, now)
	require.Equal(t, "fwd-b", cs.place.members[pid(1)].fwd)
	require.Len(t, st.rtt, 2, "a member reported without RTTs keeps its last report")
	p.observePlacement(cs, "fwd-b", &left, now)
	require.Empty(t, cs.place.members)
}
