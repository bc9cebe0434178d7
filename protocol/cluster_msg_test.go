package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clusterMsg is what all cluster message types have in common.
type clusterMsg interface {
	Marshal(dst []byte, k ClusterKey) ([]byte, error)
	Unmarshal(b []byte, k ClusterKey) error
}

var (
	_ clusterMsg = (*MemberNotice)(nil)
	_ clusterMsg = (*ForwarderAnnounce)(nil)
)

// newClusterMsg returns an empty message of type t, or nil.
func newClusterMsg(t ClusterMsgType) clusterMsg {
	switch t {
	case ClusterMsgMemberNotice:
		return new(MemberNotice)
	case ClusterMsgForwarderAnnounce:
		return new(ForwarderAnnounce)
	case ClusterMsgMetadata:
		return new(MetadataBatch)
	case ClusterMsgDecision:
		return new(CallDecision)
	case ClusterMsgLoadReport:
		return new(LoadReport)
	case ClusterMsgConductorReport:
		return new(ConductorReport)
	case ClusterMsgPlacementMove:
		return new(PlacementMove)
	}
	return nil
}

// decodeClusterMsg peeks at b's type and unmarshals it.
func decodeClusterMsg(b []byte, k ClusterKey) (clusterMsg, error) {
	t, err := PeekClusterMsgType(b)
	if err != nil {
		return nil, err
	}
	m := newClusterMsg(t)
	return m, m.Unmarshal(b, k)
}

// rawClusterMsg seals any body under any type byte, with a correct length
// and tag, so tests reach the body checks behind the tag.
func rawClusterMsg(k ClusterKey, typ byte, body []byte) []byte {
	b := append([]byte("CRLC"), 1, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	b = append(b, body...)
	return append(b, clusterMsgTag(k, b)...)
}

var (
	clusterTestCall = ID{0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11}
	clusterTestPart = ID{0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22}
	clusterTestAt   = time.UnixMilli(1_800_000_000_123).UTC()
	// clusterTestAsker is the participant of the README's ask example.
	clusterTestAsker = ID{0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33}
)

// clusterGoldenTests are messages sealed with testClusterKey.
var clusterGoldenTests = []struct {
	name string
	msg  clusterMsg
	wire []byte
}{
	{
		name: "member placed",
		msg: &MemberNotice{
			Op: MemberPlaced, Call: clusterTestCall, Participant: clusterTestPart, Forwarder: "fwd-a",
			Trunk: netip.MustParseAddrPort("10.0.0.7:7001"), Version: 42, At: clusterTestAt,
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x01, 0x00, 0x3e, // version 1, type 1 (member notice), body 62 bytes
			0x01, 0x05, // op 1 (placed), forwarder id 5 bytes
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // participant id
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // state-store version 42
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x01, 0x1b, 0x59, // trunk: IPv4, port 7001
			0x0a, 0x00, 0x00, 0x07, // 10.0.0.7
			0x66, 0x77, 0x64, 0x2d, 0x61, // "fwd-a"
			0x88, 0xde, 0x28, 0x1a, 0xdd, 0x65, 0xbc, 0xe3, // tag (checked with Python's hmac)
			0x0b, 0xd0, 0xf0, 0xb0, 0x4e, 0x65, 0xc1, 0x58,
		},
	},
	{
		name: "member left, queued, no trunk",
		msg: &MemberNotice{
			Op: MemberLeft, Call: clusterTestCall, Participant: clusterTestPart, Forwarder: "fwd-b", At: clusterTestAt,
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x01, 0x00, 0x3a, // version 1, type 1 (member notice), body 58 bytes
			0x02, 0x05, // op 2 (left), forwarder id 5 bytes
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // participant id
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version 0: queued, store unreachable
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x00, 0x00, 0x00, // trunk: none, port 0
			0x66, 0x77, 0x64, 0x2d, 0x62, // "fwd-b"
			0xf7, 0x3b, 0x6b, 0x99, 0x41, 0x20, 0x58, 0x2d, // tag
			0xc3, 0xa1, 0x07, 0xe8, 0x06, 0x8e, 0x50, 0x74,
		},
	},
	{
		name: "forwarder announce, draining",
		msg: &ForwarderAnnounce{
			ID: "fwd-a", Media: netip.MustParseAddrPort("192.0.2.10:3478"), Trunk: netip.MustParseAddrPort("[fd00::7]:7001"),
			Sessions: 300, Calls: 40, Draining: true, Load: 612, Seq: 9,
			Started: time.UnixMilli(1_800_000_000_000).UTC(), At: clusterTestAt,
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x02, 0x00, 0x43, // version 1, type 2 (forwarder announce), body 67 bytes
			0x01, 0x05, // flags: draining; forwarder id 5 bytes
			0x02, 0x64, // load 612 permille
			0x00, 0x00, 0x01, 0x2c, // 300 sessions
			0x00, 0x00, 0x00, 0x28, // 40 calls
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // sequence 9
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // started 1800000000000 ms
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x01, 0x0d, 0x96, 0xc0, 0x00, 0x02, 0x0a, // media: IPv4, port 3478, 192.0.2.10
			0x02, 0x1b, 0x59, // trunk: IPv6, port 7001
			0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // fd00::7
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,
			0x66, 0x77, 0x64, 0x2d, 0x61, // "fwd-a"
			0xae, 0x83, 0x91, 0x47, 0xea, 0x6e, 0xb4, 0x61, // tag
			0xc2, 0x84, 0xb4, 0x4d, 0x34, 0x36, 0xc0, 0x5d,
		},
	},
	{
		name: "member ask, store unreachable",
		msg: &MemberNotice{
			Op: MemberAsk, Call: clusterTestCall, Participant: clusterTestAsker, Forwarder: "fwd-c",
			Trunk: netip.MustParseAddrPort("10.0.0.9:7001"), At: clusterTestAt,
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x01, 0x00, 0x3e, // version 1, type 1 (member notice), body 62 bytes
			0x03, 0x05, // op 3 (ask), forwarder id 5 bytes
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // participant id
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version 0: the store could not be read
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x01, 0x1b, 0x59, // trunk: IPv4, port 7001
			0x0a, 0x00, 0x00, 0x09, // 10.0.0.9
			0x66, 0x77, 0x64, 0x2d, 0x63, // "fwd-c"
			0xc3, 0xbb, 0xa4, 0xd5, 0xa0, 0xf7, 0xd4, 0x05, // tag (checked with Python's hmac)
			0x72, 0x05, 0x16, 0x57, 0x61, 0x03, 0x38, 0x29,
		},
	},
}

func TestClusterMsgGolden(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range clusterGoldenTests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.msg.Marshal([]byte("prefix"), k)
			require.NoError(t, err)
			require.Equal(t, append([]byte("prefix"), tt.wire...), b, "Marshal appends")

			m, err := decodeClusterMsg(tt.wire, k)
			require.NoError(t, err)
			require.Equal(t, tt.msg, m)
		})
	}
}

func TestClusterMsgRejects(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range clusterGoldenTests {
		t.Run(tt.name, func(t *testing.T) {
			typ, err := PeekClusterMsgType(tt.wire)
			require.NoError(t, err)
			unmarshal := func(b []byte, k ClusterKey) error {
				t.Helper()
				m := newClusterMsg(typ)
				err := m.Unmarshal(b, k)
				require.Equal(t, newClusterMsg(typ), m, "a rejected message leaves the zero value")
				return err
			}
			for i := range len(tt.wire) {
				require.ErrorIs(t, unmarshal(tt.wire[:i], k), ErrClusterMsgInvalid, "prefix %d", i)
			}
			for i := range len(tt.wire) * 8 {
				b := bytes.Clone(tt.wire)
				b[i/8] ^= 1 << (i % 8)
				err := unmarshal(b, k)
				if _, perr := PeekClusterMsgType(b); i/8 < clusterMsgHeaderLen && perr == nil {
					require.ErrorIs(t, err, ErrClusterMsgAuth, "bit %d turns the type into another known one", i)
				} else if i/8 < clusterMsgHeaderLen {
					require.ErrorIs(t, err, ErrClusterMsgInvalid, "bit %d of the envelope header", i)
				} else {
					require.ErrorIs(t, err, ErrClusterMsgAuth, "bit %d", i)
				}
			}
			require.ErrorContains(t, unmarshal(append(bytes.Clone(tt.wire), 0), k), "trailing bytes")
			other := k
			other[0] ^= 0x80
			require.ErrorIs(t, unmarshal(tt.wire, other), ErrClusterMsgAuth, "wrong key")

			// The other type's Unmarshal refuses it after authenticating it.
			wrong := newClusterMsg(3 - typ)
			require.ErrorIs(t, wrong.Unmarshal(tt.wire, k), ErrClusterMsgInvalid)
			require.ErrorContains(t, wrong.Unmarshal(tt.wire, k), "got a "+typ.String())
		})
	}
	t.Run("trunk key cannot seal messages", func(t *testing.T) {
		b := rawClusterMsg(k, 1, clusterGoldenTests[0].wire[8:len(clusterGoldenTests[0].wire)-16])
		require.Equal(t, clusterGoldenTests[0].wire, b)
		forged := append(bytes.Clone(b[:len(b)-16]), NewTrunkCodec(k).tag(b[:len(b)-16])...)
		require.ErrorIs(t, new(MemberNotice).Unmarshal(forged, k), ErrClusterMsgAuth)
	})
}

func TestClusterMsgEnvelope(t *testing.T) {
	k := testClusterKey(t)
	good := clusterGoldenTests[0].wire
	typ, err := PeekClusterMsgType(good)
	require.NoError(t, err)
	require.Equal(t, ClusterMsgMemberNotice, typ)
	typ, err = PeekClusterMsgType(clusterGoldenTests[2].wire)
	require.NoError(t, err)
	require.Equal(t, ClusterMsgForwarderAnnounce, typ)

	for _, tt := range []struct {
		name, msg string
		b         []byte
	}{
		{"empty", "0 bytes", nil},
		{"magic", `magic "CRLY"`, append([]byte("CRLY"), good[4:]...)},
		{"version 2", "version 2", append(append([]byte("CRLC"), 2), good[5:]...)},
		{"unknown type", "unknown type 8", rawClusterMsg(k, 8, []byte{1, 2, 3})},
		{"type 0", "unknown type 0", rawClusterMsg(k, 0, nil)},
		{"length too long", "truncated", append(append([]byte{}, good[:7]...), append([]byte{0x3f}, good[8:]...)...)},
		{"length too short", "trailing bytes", append(append([]byte{}, good[:7]...), append([]byte{0x3d}, good[8:]...)...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PeekClusterMsgType(tt.b)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.ErrorIs(t, new(MemberNotice).Unmarshal(tt.b, k), ErrClusterMsgInvalid)
			require.ErrorIs(t, new(ForwarderAnnounce).Unmarshal(tt.b, k), ErrClusterMsgInvalid)
		})
	}
	require.Equal(t, "member-notice", ClusterMsgMemberNotice.String())
	require.Equal(t, "forwarder-announce", ClusterMsgForwarderAnnounce.String())
	require.Equal(t, "type-9", ClusterMsgType(9).String())
	require.Equal(t, "placed", MemberPlaced.String())
	require.Equal(t, "left", MemberLeft.String())
	require.Equal(t, "ask", MemberAsk.String())
	require.True(t, MemberPlaced.Places() && MemberAsk.Places() && !MemberLeft.Places() && !MemberOp(7).Places())
	require.Equal(t, "op-7", MemberOp(7).String())
}

// noticeBody returns the body of the "member placed" golden message with
// edit applied.
func noticeBody(edit func(b []byte) []byte) []byte {
	w := clusterGoldenTests[0].wire
	return edit(bytes.Clone(w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]))
}

// announceBody is noticeBody for the announce golden message.
func announceBody(edit func(b []byte) []byte) []byte {
	w := clusterGoldenTests[2].wire
	return edit(bytes.Clone(w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]))
}

func clusterSet(i int, v ...byte) func([]byte) []byte {
	return func(b []byte) []byte { copy(b[i:], v); return b }
}

// TestClusterMsgBadBodies: authentic messages whose bodies break the rules.
func TestClusterMsgBadBodies(t *testing.T) {
	k := testClusterKey(t)
	// Offsets in the golden notice body: op 0, id length 1, call 2, trunk
	// family 50, port 51, address 53, id 57. In the announce body: flags 0,
	// id length 1, media family 36 (address 39), trunk family 43, id 62.
	for _, tt := range []struct {
		name string
		typ  byte
		body []byte
		msg  string
	}{
		{"op 0", 1, noticeBody(clusterSet(0, 0)), "member op 0"},
		{"op 4", 1, noticeBody(clusterSet(0, 4)), "member op 4"},
		{"ask without trunk", 1, noticeBody(func(b []byte) []byte { b[0] = 3; return append(append(b[:50], 0, 0, 0), "fwd-a"...) }), "trunk address"},
		{"short body", 1, noticeBody(func(b []byte) []byte { return b[:49] }), "body of 49 bytes"},
		{"zero call", 1, noticeBody(clusterSet(2, make([]byte, 16)...)), "without call or participant"},
		{"id length 0", 1, noticeBody(clusterSet(1, 0)), "5 trailing bytes"},
		{"id longer than the body", 1, noticeBody(clusterSet(1, 6)), "forwarder id truncated"},
		{"byte after the id", 1, noticeBody(func(b []byte) []byte { return append(b, 'x') }), "1 trailing bytes"},
		{"id with a space", 1, noticeBody(clusterSet(57, ' ')), "not printable"},
		{"id with DEL", 1, noticeBody(clusterSet(61, 0x7f)), "not printable"},
		{"id with UTF-8", 1, noticeBody(func(b []byte) []byte { b[1] = 6; return append(b[:57], "fwd-é"...) }), "not printable"},
		{"placed without trunk", 1, noticeBody(func(b []byte) []byte { return append(append(b[:50], 0, 0, 0), "fwd-a"...) }), "trunk address"},
		{"family 0 with a port", 1, noticeBody(func(b []byte) []byte { return append(append(b[:50], 0, 0, 1), "fwd-a"...) }), "no family but port 1"},
		{"family 3", 1, noticeBody(clusterSet(50, 3)), "family 3"},
		{"ipv6 cut short", 1, noticeBody(clusterSet(50, 2)), "trunk address truncated"},
		{"trunk port 0", 1, noticeBody(clusterSet(51, 0, 0)), "trunk address"},
		{"announce short body", 2, announceBody(func(b []byte) []byte { return b[:35] }), "body of 35 bytes"},
		{"media unspecified", 2, announceBody(clusterSet(39, 0, 0, 0, 0)), "media address"},
		{"media none", 2, announceBody(func(b []byte) []byte { return append(append(b[:36], 0, 0, 0), b[43:]...) }), "media address"},
		{"announce trunk none", 2, announceBody(func(b []byte) []byte { return append(append(b[:43], 0, 0, 0), b[62:]...) }), "trunk address"},
		{"announce id too long", 2, announceBody(func(b []byte) []byte { b[1] = 65; return append(b[:62], strings.Repeat("f", 65)...) }), "65 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newClusterMsg(ClusterMsgType(tt.typ))
			err := m.Unmarshal(rawClusterMsg(k, tt.typ, tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, newClusterMsg(ClusterMsgType(tt.typ)), m)
		})
	}
}

// TestClusterMsgLenientDecode: what a receiver accepts beyond the canonical
// encoding, and how it normalizes it.
func TestClusterMsgLenientDecode(t *testing.T) {
	k := testClusterKey(t)

	var a ForwarderAnnounce
	require.NoError(t, a.Unmarshal(rawClusterMsg(k, 2, announceBody(clusterSet(0, 0xf8))), k), "reserved flag bits are ignored")
	require.False(t, a.Draining)

	mapped := noticeBody(func(b []byte) []byte {
		b[50] = 2 // IPv6 ::ffff:10.0.0.7
		return append(append(b[:53], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7), "fwd-a"...)
	})
	var n MemberNotice
	require.NoError(t, n.Unmarshal(rawClusterMsg(k, 1, mapped), k))
	require.Equal(t, netip.MustParseAddrPort("10.0.0.7:7001"), n.Trunk, "IPv4-mapped IPv6 is unmapped")
	require.Equal(t, clusterGoldenTests[0].msg, &n)
}

func TestClusterMsgRoundTrip(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range []struct {
		name    string
		in, out clusterMsg
	}{
		{
			name: "zero times, left with a trunk, IPv6",
			in: &MemberNotice{Op: MemberLeft, Call: clusterTestCall, Participant: clusterTestPart,
				Forwarder: strings.Repeat("~", 64), Trunk: netip.MustParseAddrPort("[2001:db8::1]:1"), Version: 1<<64 - 1},
		},
		{
			name: "mapped trunk is sent as IPv4, local time comes back in UTC",
			in: &MemberNotice{Op: MemberPlaced, Call: clusterTestCall, Participant: clusterTestPart, Forwarder: "!",
				Trunk: netip.MustParseAddrPort("[::ffff:10.1.2.3]:9"), At: time.UnixMilli(-5).In(time.FixedZone("x", 3600))},
			out: &MemberNotice{Op: MemberPlaced, Call: clusterTestCall, Participant: clusterTestPart, Forwarder: "!",
				Trunk: netip.MustParseAddrPort("10.1.2.3:9"), At: time.UnixMilli(-5).UTC()},
		},
		{
			name: "placed on an unspecified trunk address (one host)",
			in: &MemberNotice{Op: MemberPlaced, Call: clusterTestCall, Participant: clusterTestPart, Forwarder: "fwd-a",
				Trunk: netip.MustParseAddrPort("0.0.0.0:7001"), At: clusterTestAt},
		},
		{
			name: "sub-millisecond time is truncated",
			in: &ForwarderAnnounce{ID: "a", Media: netip.MustParseAddrPort("[2001:db8::2]:3478"),
				Trunk: netip.MustParseAddrPort("[::]:7001"), Load: 65535, Sessions: 1<<32 - 1, Calls: 1<<32 - 1,
				Seq: 1 << 63, Started: clusterTestAt.Add(999 * time.Microsecond)},
			out: &ForwarderAnnounce{ID: "a", Media: netip.MustParseAddrPort("[2001:db8::2]:3478"),
				Trunk: netip.MustParseAddrPort("[::]:7001"), Load: 65535, Sessions: 1<<32 - 1, Calls: 1<<32 - 1,
				Seq: 1 << 63, Started: clusterTestAt},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.out == nil {
				tt.out = tt.in
			}
			b, err := tt.in.Marshal(nil, k)
			require.NoError(t, err)
			got, err := decodeClusterMsg(b, k)
			require.NoError(t, err)
			require.Equal(t, tt.out, got)
		})
	}
}

func TestClusterMsgMarshalRejects(t *testing.T) {
	k := testClusterKey(t)
	notice := func(edit func(*MemberNotice)) clusterMsg {
		n := *clusterGoldenTests[0].msg.(*MemberNotice)
		edit(&n)
		return &n
	}
	announce := func(edit func(*ForwarderAnnounce)) clusterMsg {
		a := *clusterGoldenTests[2].msg.(*ForwarderAnnounce)
		edit(&a)
		return &a
	}
	far := time.Date(300_000_000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		msg  clusterMsg
	}{
		{"notice zero value", &MemberNotice{}},
		{"op 4", notice(func(n *MemberNotice) { n.Op = 4 })},
		{"ask without trunk", notice(func(n *MemberNotice) { n.Op, n.Trunk = MemberAsk, netip.AddrPort{} })},
		{"zero call", notice(func(n *MemberNotice) { n.Call = ID{} })},
		{"zero participant", notice(func(n *MemberNotice) { n.Participant = ID{} })},
		{"no forwarder", notice(func(n *MemberNotice) { n.Forwarder = "" })},
		{"forwarder 65 bytes", notice(func(n *MemberNotice) { n.Forwarder = strings.Repeat("f", 65) })},
		{"forwarder with space", notice(func(n *MemberNotice) { n.Forwarder = "fwd a" })},
		{"forwarder with newline", notice(func(n *MemberNotice) { n.Forwarder = "fwd\n" })},
		{"placed without trunk", notice(func(n *MemberNotice) { n.Trunk = netip.AddrPort{} })},
		{"trunk port 0", notice(func(n *MemberNotice) { n.Trunk = netip.MustParseAddrPort("10.0.0.1:0") })},
		{"trunk with zone", notice(func(n *MemberNotice) { n.Trunk = netip.MustParseAddrPort("[fe80::1%eth0]:7001") })},
		{"left, trunk port 0", notice(func(n *MemberNotice) {
			n.Op = MemberLeft
			n.Trunk = netip.MustParseAddrPort("10.0.0.1:0")
		})},
		{"time out of range", notice(func(n *MemberNotice) { n.At = far })},
		{"announce zero value", &ForwarderAnnounce{}},
		{"no id", announce(func(a *ForwarderAnnounce) { a.ID = "" })},
		{"no media", announce(func(a *ForwarderAnnounce) { a.Media = netip.AddrPort{} })},
		{"media unspecified", announce(func(a *ForwarderAnnounce) { a.Media = netip.MustParseAddrPort("[::]:3478") })},
		{"media port 0", announce(func(a *ForwarderAnnounce) { a.Media = netip.MustParseAddrPort("192.0.2.1:0") })},
		{"no trunk", announce(func(a *ForwarderAnnounce) { a.Trunk = netip.AddrPort{} })},
		{"started out of range", announce(func(a *ForwarderAnnounce) { a.Started = far })},
		{"at out of range", announce(func(a *ForwarderAnnounce) { a.At = far.AddDate(-600_000_000, 0, 0) })},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			out, err := tt.msg.Marshal(prefix, k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.Equal(t, "keep", string(out), "dst comes back as it was")
		})
	}
}

func TestValidForwarderID(t *testing.T) {
	require.NoError(t, ValidForwarderID("forwarder-7.eu-west-1"))
	require.NoError(t, ValidForwarderID(strings.Repeat("x", 64)))
	for _, id := range []string{"", strings.Repeat("x", 65), "a b", "tab\t", "ü"} {
		require.ErrorIs(t, ValidForwarderID(id), ErrClusterMsgInvalid, "%q", id)
	}
}

// clusterFuzzSeeds are the committed seeds of FuzzClusterMsg (see
// TestClusterFuzzSeeds): the golden messages and broken ones, all sealed
// with testClusterKey where a tag matters.
func clusterFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	k := testClusterKey(t)
	seeds := map[string][]byte{}
	for _, tt := range clusterGoldenTests {
		name := mediaSeedName(tt.name)
		seeds[name] = tt.wire
		seeds[name+"-truncated"] = tt.wire[:len(tt.wire)-1]
		altered := bytes.Clone(tt.wire)
		altered[clusterMsgHeaderLen] ^= 0x03
		seeds[name+"-altered"] = altered
	}
	seeds["trailing-byte"] = append(bytes.Clone(clusterGoldenTests[0].wire), 0)
	seeds["bad-magic"] = append([]byte("CRLY"), clusterGoldenTests[0].wire[4:]...)
	seeds["unknown-type"] = rawClusterMsg(k, 6, []byte{1, 2, 3, 4})
	seeds["metadata"] = metaGoldenTests[0].wire
	seeds["decision"] = decisionGoldenTests[0].wire
	seeds["id-length-mismatch"] = rawClusterMsg(k, 1, noticeBody(clusterSet(1, 4)))
	seeds["mapped-trunk"] = rawClusterMsg(k, 1, noticeBody(func(b []byte) []byte {
		b[50] = 2
		return append(append(b[:53], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7), "fwd-a"...)
	}))
	seeds["reserved-flags"] = rawClusterMsg(k, 2, announceBody(clusterSet(0, 0xff)))
	seeds["ask-without-trunk"] = rawClusterMsg(k, 1, noticeBody(func(b []byte) []byte { b[0] = 3; return append(append(b[:50], 0, 0, 0), "fwd-a"...) }))
	seeds["op-4"] = rawClusterMsg(k, 1, noticeBody(clusterSet(0, 4)))
	seeds["empty"] = []byte{}
	for name, b := range media6FuzzSeeds(t) {
		seeds[name] = b
	}
	for name, b := range streamsFuzzSeeds(t) {
		seeds[name] = b
	}
	return seeds
}

// FuzzClusterMsg: decoding never panics and fails only with the cluster
// sentinels; whatever decodes re-encodes to something that decodes equal,
// and the encoding is then a fixed point. Each input is tried as it is and
// with its tag recomputed, so mutated bodies get past the tag to the body
// checks.
func FuzzClusterMsg(f *testing.F) {
	for _, b := range clusterFuzzSeeds(f) {
		f.Add(b)
	}
	k := testClusterKey(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) error {
			m, err := decodeClusterMsg(b, k)
			if err != nil {
				if !errors.Is(err, ErrClusterMsgInvalid) && !errors.Is(err, ErrClusterMsgAuth) {
					t.Fatalf("error without a sentinel: %v", err)
				}
				return err
			}
			out, err := m.Marshal(nil, k)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", m, err)
			}
			m2, err := decodeClusterMsg(out, k)
			if err != nil || !reflect.DeepEqual(m, m2) {
				t.Fatalf("round trip: %+v -> %x -> %+v (%v)", m, out, m2, err)
			}
			out2, err := m2.Marshal(nil, k)
			if err != nil || !bytes.Equal(out, out2) {
				t.Fatalf("encoding not stable: %x vs %x (%v)", out, out2, err)
			}
			return nil
		}
		if check(b) == nil {
			return
		}
		if len(b) < clusterMsgOverhead {
			return
		}
		checkResealed(t, k, b, check)
	})
}

// checkResealed gives a fuzz input a valid tag under k and checks it again:
// whatever else is wrong with it, it must no longer fail authentication.
// b must be at least clusterMsgOverhead bytes long.
func checkResealed(t *testing.T, k ClusterKey, b []byte, check func([]byte) error) {
	t.Helper()
	resealed := bytes.Clone(b)
	end := len(b) - clusterMsgTagLen
	copy(resealed[end:], clusterMsgTag(k, resealed[:end]))
	if err := check(resealed); errors.Is(err, ErrClusterMsgAuth) {
		t.Fatalf("resealed message still fails its tag: %v", err)
	}
}

// TestMemberAskReadmeExample: the wire spec's ask example (README 7.1) is
// the golden ask, byte for byte.
func TestMemberAskReadmeExample(t *testing.T) {
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, block, ok := strings.Cut(string(b), "```hex example:member-ask\n")
	require.True(t, ok, "README has no member-ask example")
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok)
	var got []byte
	for _, line := range strings.Split(block, "\n") {
		data, _, _ := strings.Cut(line, "  ")
		for _, h := range strings.Fields(data) {
			v, err := hex.DecodeString(h)
			require.NoError(t, err, "line %q", line)
			got = append(got, v...)
		}
	}
	golden := clusterGoldenTests[len(clusterGoldenTests)-1]
	require.Equal(t, "member ask, store unreachable", golden.name)
	require.Equal(t, golden.wire, got)
	var n MemberNotice
	require.NoError(t, n.Unmarshal(got, testClusterKey(t)))
	require.Equal(t, MemberAsk, n.Op)
}
