package protocol

import (
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The dual-stack announce of README 7.2: a forwarder with an IPv4 and an
// IPv6 media address (flag 0x02), sealed with testClusterKey.
var announceDualStack = &ForwarderAnnounce{ID: "fwd-d", Media: netip.MustParseAddrPort("192.0.2.10:3478"),
	Media6: netip.MustParseAddrPort("[2001:db8::10]:3478"), Trunk: netip.MustParseAddrPort("[fd00::7]:7001"),
	Sessions: 12, Calls: 3, Load: 40, Seq: 2, Started: time.UnixMilli(1_800_000_000_000).UTC(), At: clusterTestAt}

// readmeHexExample returns the bytes of the README's "```hex example:NAME"
// block (the text after two spaces on a line is a comment).
func readmeHexExample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, block, ok := strings.Cut(string(b), "```hex example:"+name+"\n")
	require.True(t, ok, "README has no %s example", name)
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
	return got
}

// TestAnnounceDualStackReadmeExample: the spec's example is what Marshal
// makes, and decodes to the announce with both media addresses.
func TestAnnounceDualStackReadmeExample(t *testing.T) {
	k := testClusterKey(t)
	got := readmeHexExample(t, "announce-dual-stack")
	want, err := announceDualStack.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(got))
	var a ForwarderAnnounce
	require.NoError(t, a.Unmarshal(got, k))
	require.Equal(t, *announceDualStack, a)
	require.Equal(t, byte(announceFlagMedia6), got[clusterMsgHeaderLen]&announceFlagMedia6)

	// Without Media6 the flag is clear and the body 19 bytes shorter: what
	// every forwarder sent before dual stack, still read the same.
	v4only := *announceDualStack
	v4only.Media6 = netip.AddrPort{}
	b, err := v4only.Marshal(nil, k)
	require.NoError(t, err)
	require.Len(t, b, len(got)-19)
	require.Zero(t, b[clusterMsgHeaderLen]&announceFlagMedia6)
	require.NoError(t, a.Unmarshal(b, k))
	require.Equal(t, v4only, a)
}

// media6Body is the example's body with edit applied.
func media6Body(t testing.TB, edit func(b []byte) []byte) []byte {
	w, err := announceDualStack.Marshal(nil, testClusterKey(t))
	require.NoError(t, err)
	return edit(append([]byte(nil), w[clusterMsgHeaderLen:len(w)-clusterMsgTagLen]...))
}

// Offsets in the example's body: flags 0, media 36..43, trunk 43..62,
// media6 62..81, id 81..86.
const media6Off = 62

// media6BadBodies are authentic announces whose IPv6 media address breaks
// the rules, with the error each must give.
func media6BadBodies(t testing.TB) map[string]struct {
	body []byte
	msg  string
} {
	return map[string]struct {
		body []byte
		msg  string
	}{
		"flag-without-address": {media6Body(t, func(b []byte) []byte { return append(b[:media6Off], "fwd-d"...) }),
			"media6 address family 102"}, // "f" of the id read as a family
		"family-none": {media6Body(t, func(b []byte) []byte { return append(append(b[:media6Off], 0, 0, 0), "fwd-d"...) }),
			"flag media6 without an address"},
		"ipv4": {media6Body(t, func(b []byte) []byte {
			return append(append(b[:media6Off], 1, 0x0d, 0x96, 192, 0, 2, 10), "fwd-d"...)
		}), "is not IPv6"},
		"v4-mapped": {media6Body(t, func(b []byte) []byte {
			copy(b[media6Off+3:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10})
			return b
		}), "is not IPv6"},
		"unspecified": {media6Body(t, func(b []byte) []byte {
			copy(b[media6Off+3:], make([]byte, 16))
			return b
		}), "media6 address"},
		"port-0":  {media6Body(t, func(b []byte) []byte { b[media6Off+1], b[media6Off+2] = 0, 0; return b }), "media6 address"},
		"no-flag": {media6Body(t, func(b []byte) []byte { b[0] &^= announceFlagMedia6; return b }), "trailing bytes"},
	}
}

func TestAnnounceMedia6BadBodies(t *testing.T) {
	k := testClusterKey(t)
	for name, tt := range media6BadBodies(t) {
		t.Run(name, func(t *testing.T) {
			var a ForwarderAnnounce
			err := a.Unmarshal(rawClusterMsg(k, 2, tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, ForwarderAnnounce{}, a)
		})
	}
	for _, bad := range []string{"192.0.2.10:3478", "[::ffff:192.0.2.10]:3478", "[::]:3478", "[2001:db8::1]:0", "[fe80::1%eth0]:3478"} {
		a := *announceDualStack
		a.Media6 = netip.MustParseAddrPort(bad)
		_, err := a.Marshal(nil, k)
		require.ErrorIs(t, err, ErrClusterMsgInvalid, bad)
	}
}

// media6FuzzSeeds join FuzzClusterMsg's corpus (clusterFuzzSeeds).
func media6FuzzSeeds(t testing.TB) map[string][]byte {
	k := testClusterKey(t)
	w, err := announceDualStack.Marshal(nil, k)
	require.NoError(t, err)
	seeds := map[string][]byte{"announce-dual-stack": w}
	for name, tt := range media6BadBodies(t) {
		seeds["announce-media6-"+name] = rawClusterMsg(k, 2, tt.body)
	}
	return seeds
}
