package protocol

import (
	"encoding/hex"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The stream-listener announce of README 7.2: a dual-stack forwarder with
// a TCP listener on IPv4 and a TLS listener on both families (flags 0x02
// and 0x04), sealed with testClusterKey.
var announceStreams = &ForwarderAnnounce{ID: "fwd-e", Media: netip.MustParseAddrPort("192.0.2.10:3478"),
	Media6: netip.MustParseAddrPort("[2001:db8::10]:3478"), Trunk: netip.MustParseAddrPort("[fd00::7]:7001"),
	Streams: StreamListeners{
		{netip.MustParseAddrPort("192.0.2.10:3478"), netip.AddrPort{}},
		{netip.MustParseAddrPort("192.0.2.10:443"), netip.MustParseAddrPort("[2001:db8::10]:443")},
	},
	Sessions: 12, Calls: 3, Load: 40, Seq: 2, Started: time.UnixMilli(1_800_000_000_000).UTC(), At: clusterTestAt}

// TestAnnounceStreamsReadmeExample: the spec's example is what Marshal
// makes and decodes back; without listeners the flag is clear and the
// body is what it was before.
func TestAnnounceStreamsReadmeExample(t *testing.T) {
	k := testClusterKey(t)
	got := readmeHexExample(t, "announce-streams")
	want, err := announceStreams.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(got))
	var a ForwarderAnnounce
	require.NoError(t, a.Unmarshal(got, k))
	require.Equal(t, *announceStreams, a)
	require.Equal(t, byte(announceFlagStreams|announceFlagMedia6), got[clusterMsgHeaderLen])

	none := *announceStreams
	none.Streams = StreamListeners{}
	b, err := none.Marshal(nil, k)
	require.NoError(t, err)
	require.Len(t, b, len(got)-1-8-8-20) // count, TCP v4, TLS v4, TLS v6
	require.Zero(t, b[clusterMsgHeaderLen]&announceFlagStreams)
	dual, err := announceDualStack.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, dual[clusterMsgHeaderLen+1:len(dual)-clusterMsgTagLen-5], b[clusterMsgHeaderLen+1:len(b)-clusterMsgTagLen-5],
		"the body without listeners is the dual-stack example's, but for the id")
}

func TestStreamListenersFor(t *testing.T) {
	l := announceStreams.Streams
	require.Equal(t, "192.0.2.10:3478", l.For(TransportTCP, false).String())
	require.Equal(t, "192.0.2.10:3478", l.For(TransportTCP, true).String(), "no IPv6 TCP listener: the IPv4 one")
	require.Equal(t, "192.0.2.10:443", l.For(TransportTLS, false).String())
	require.Equal(t, "[2001:db8::10]:443", l.For(TransportTLS, true).String())
	require.False(t, l.For(TransportUDP, false).IsValid())
	require.False(t, l.For(3, false).IsValid())
	var none StreamListeners
	require.False(t, none.For(TransportTLS, true).IsValid())
}

// Offsets in the example's body: flags 0, trunk ..62, media6 62..81, the
// stream section 81..118 (count 81; TCP v4 82..90; TLS v4 90..98; TLS v6
// 98..118), id 118..123.
const (
	streamsOff = 81
	streamsEnd = 118
)

// streamsBody is the example's body with its stream section replaced.
func streamsBody(t testing.TB, section ...byte) []byte {
	w, err := announceStreams.Marshal(nil, testClusterKey(t))
	require.NoError(t, err)
	body := w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]
	out := append([]byte(nil), body[:streamsOff]...)
	out = append(out, section...)
	return append(out, body[streamsEnd:]...)
}

var (
	tcp4Entry = []byte{1, 1, 0x0d, 0x96, 192, 0, 2, 10}
	tls4Entry = []byte{2, 1, 0x01, 0xbb, 192, 0, 2, 10}
	tls6Entry = []byte{2, 2, 0x01, 0xbb, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
)

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// streamsBadBodies are authentic announces whose stream section breaks
// the rules, with the error each must give.
func streamsBadBodies(t testing.TB) map[string]struct {
	body []byte
	msg  string
} {
	type bad = struct {
		body []byte
		msg  string
	}
	mapped := cat([]byte{1, 2, 0x0d, 0x96}, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10})
	return map[string]bad{
		"count-0":      {streamsBody(t, 0), "0 stream listeners"},
		"count-5":      {streamsBody(t, cat([]byte{5}, tcp4Entry, tls4Entry, tls6Entry)...), "5 stream listeners"},
		"count-over":   {streamsBody(t, cat([]byte{4}, tcp4Entry, tls4Entry, tls6Entry)...), "stream listener"},
		"transport-0":  {streamsBody(t, cat([]byte{1}, []byte{0}, tcp4Entry[1:])...), "transport 0"},
		"transport-3":  {streamsBody(t, cat([]byte{1}, []byte{3}, tcp4Entry[1:])...), "transport 3"},
		"family-none":  {streamsBody(t, 1, 1, 0, 0, 0), "tcp listener"},
		"family-3":     {streamsBody(t, cat([]byte{1, 1, 3}, tcp4Entry[2:])...), "family 3"},
		"port-0":       {streamsBody(t, 1, 1, 1, 0, 0, 192, 0, 2, 10), "tcp listener address"},
		"unspecified":  {streamsBody(t, 1, 2, 1, 0x01, 0xbb, 0, 0, 0, 0), "tls listener address"},
		"v4-mapped":    {streamsBody(t, cat([]byte{1}, mapped)...), "v4-mapped"},
		"out-of-order": {streamsBody(t, cat([]byte{2}, tls4Entry, tcp4Entry)...), "out of order"},
		"repeated":     {streamsBody(t, cat([]byte{2}, tcp4Entry, tcp4Entry)...), "out of order"},
		"runs-into-id": {streamsBody(t, 1, 1), "family 102"}, // "f" of the id read as a family
		"no-flag": {func() []byte {
			b := streamsBody(t, cat([]byte{1}, tcp4Entry)...)
			b[0] &^= announceFlagStreams
			return b
		}(), "trailing bytes"},
	}
}

func TestAnnounceStreamsBadBodies(t *testing.T) {
	k := testClusterKey(t)
	bads := streamsBadBodies(t)
	for name, tt := range bads {
		t.Run(name, func(t *testing.T) {
			var a ForwarderAnnounce
			err := a.Unmarshal(rawClusterMsg(k, 2, tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, ForwarderAnnounce{}, a)
		})
	}
	// One good entry in the replaced section decodes.
	var a ForwarderAnnounce
	require.NoError(t, a.Unmarshal(rawClusterMsg(k, 2, streamsBody(t, cat([]byte{1}, tls6Entry)...)), k))
	require.Equal(t, StreamListeners{{}, {{}, netip.MustParseAddrPort("[2001:db8::10]:443")}}, a.Streams)

	for name, l := range map[string]StreamListeners{
		"ipv6 in the ipv4 slot": {{netip.MustParseAddrPort("[2001:db8::1]:443")}},
		"ipv4 in the ipv6 slot": {{{}, netip.MustParseAddrPort("192.0.2.1:443")}},
		"v4-mapped":             {{{}, netip.MustParseAddrPort("[::ffff:192.0.2.1]:443")}},
		"unspecified":           {{netip.MustParseAddrPort("0.0.0.0:443")}},
		"port 0":                {{}, {netip.MustParseAddrPort("192.0.2.1:0")}},
		"zone":                  {{}, {{}, netip.MustParseAddrPort("[fe80::1%eth0]:443")}},
	} {
		a := *announceStreams
		a.Streams = l
		_, err := a.Marshal(nil, k)
		require.ErrorIs(t, err, ErrClusterMsgInvalid, name)
	}
}

// streamsFuzzSeeds join FuzzClusterMsg's corpus (clusterFuzzSeeds).
func streamsFuzzSeeds(t testing.TB) map[string][]byte {
	k := testClusterKey(t)
	w, err := announceStreams.Marshal(nil, k)
	require.NoError(t, err)
	seeds := map[string][]byte{"announce-streams": w}
	for name, tt := range streamsBadBodies(t) {
		seeds["announce-streams-"+name] = rawClusterMsg(k, 2, tt.body)
	}
	return seeds
}
