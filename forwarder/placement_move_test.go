package forwarder

import (
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

type stunAttr struct {
	t stun.AttrType
	v []byte
}

func (a stunAttr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

// keepaliveWithRTTs sends d a keepalive carrying value as CANDIDATE-RTTS
// (under MESSAGE-INTEGRITY) and returns the forwarder's verified answer.
func keepaliveWithRTTs(t *testing.T, d *rawDevice, value []byte) protocol.JoinResponse {
	t.Helper()
	tok, err := protocol.DecodeToken(d.token)
	require.NoError(t, err)
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
		stun.NewUsername(tok.CallID.String()+":"+tok.ParticipantID.String()),
		stunAttr{protocol.AttrJoinToken, d.token}, stunAttr{protocol.AttrCookie, d.cookie},
		stunAttr{protocol.AttrCandidateRTTs, value},
		stun.MessageIntegrity(protocol.IntegrityKey(d.token)), stun.Fingerprint)
	require.NoError(t, err)
	d.send(m.Raw)
	raw, ok := d.recvSTUN(2 * time.Second)
	require.True(t, ok, "no answer to the keepalive")
	resp, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(d.token))
	require.NoError(t, err)
	return resp
}

// TestBadRTTReportDroppedKeepaliveAnswered: a member's CANDIDATE-RTTS that
// breaks the rules is dropped and counted, and its keepalive is answered as
// ever; a good one is taken without a drop.
func TestBadRTTReportDroppedKeepaliveAnswered(t *testing.T) {
	r := startRelay(t, nil)
	d := newRawDevice(t, r.f.Addr(), r.token(t, protocol.NewID(), protocol.NewID(), protocol.ClassGroup, 8))
	d.join()

	good := protocol.CandidateRTTs{N: 1}
	good.Entries[0] = protocol.CandidateRTT{Addr: r.f.Addr(), RTT: 3 * time.Millisecond, Via: true}
	v, err := good.Append(nil)
	require.NoError(t, err)
	require.True(t, keepaliveWithRTTs(t, d, v).OK)
	require.Zero(t, r.f.Stats().Drops[DropBadRTTReport])

	for _, bad := range [][]byte{
		{9},                               // nine entries
		append(append([]byte{}, v...), 0), // a trailing byte
		{1, 0x80, 1, 0x0d, 0x96, 0, 0, 0, 1, 127, 0, 0, 1}, // an unknown flag
		{1, 0, 1, 0, 0, 0, 0, 0, 1, 127, 0, 0, 1},          // port 0
	} {
		require.True(t, keepaliveWithRTTs(t, d, bad).OK, "the keepalive is answered whatever its report")
	}
	require.EqualValues(t, 4, r.f.Stats().Drops[DropBadRTTReport])
	require.Equal(t, "bad_rtt_report", DropBadRTTReport.String())
}

// TestStaleRTTReportDropped: a member's report is kept only if its
// sequence is above the last one kept; older and equal ones, and an
// unsequenced one after a sequenced one, are dropped and counted, their
// keepalives answered. The request that brought the kept report, sent
// again as is (a retransmission), is not counted. A session that never
// sequences is taken as before sequences.
func TestStaleRTTReportDropped(t *testing.T) {
	r := startRelay(t, nil)
	d := newRawDevice(t, r.f.Addr(), r.token(t, protocol.NewID(), protocol.NewID(), protocol.ClassGroup, 8))
	d.join()
	report := func(seq uint64) []byte {
		c := protocol.CandidateRTTs{Seq: seq, N: 1}
		c.Entries[0] = protocol.CandidateRTT{Addr: r.f.Addr(), RTT: time.Duration(seq) * time.Millisecond, Via: true}
		v, err := c.Append(nil)
		require.NoError(t, err)
		return v
	}
	stale := func() uint64 { return r.f.Stats().Drops[DropStaleRTTReport] }
	for i, step := range []struct {
		seq   uint64
		stale uint64 // counted after the step
	}{
		{10, 0}, // the session's first report
		{10, 1}, // the same sequence in another request: a replay
		{9, 2},  // older
		{0, 3},  // unsequenced after a sequenced one
		{11, 3}, // newer: taken
		{12, 3},
	} {
		require.True(t, keepaliveWithRTTs(t, d, report(step.seq)).OK, "step %d: answered whatever its report", i)
		require.Equal(t, step.stale, stale(), "step %d: sequence %d", i, step.seq)
	}
	// The last request again, byte for byte: a retransmission, not counted;
	// an older request again: counted.
	tok, err := protocol.DecodeToken(d.token)
	require.NoError(t, err)
	build := func(v []byte) []byte {
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
			stun.NewUsername(tok.CallID.String()+":"+tok.ParticipantID.String()),
			stunAttr{protocol.AttrJoinToken, d.token}, stunAttr{protocol.AttrCookie, d.cookie},
			stunAttr{protocol.AttrCandidateRTTs, v},
			stun.MessageIntegrity(protocol.IntegrityKey(d.token)), stun.Fingerprint)
		require.NoError(t, err)
		return m.Raw
	}
	older, last := build(report(13)), build(report(14))
	for _, b := range [][]byte{older, last, last, last, older} {
		d.send(b)
		_, ok := d.recvSTUN(2 * time.Second)
		require.True(t, ok, "answered")
	}
	require.EqualValues(t, 4, stale(), "the retransmitted request is not counted, the older one is")
	require.Zero(t, r.f.Stats().Drops[DropBadRTTReport])
	require.Equal(t, "stale_rtt_report", DropStaleRTTReport.String())

	// A device that does not sequence its reports (README 3.2's format
	// before sequences) has every report taken.
	u := newRawDevice(t, r.f.Addr(), r.token(t, protocol.NewID(), protocol.NewID(), protocol.ClassGroup, 8))
	u.join()
	for range 3 {
		require.True(t, keepaliveWithRTTs(t, u, report(0)).OK)
	}
	require.EqualValues(t, 4, stale(), "unsequenced reports of a session that never sequenced are taken")
}
