package protocol

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// testClusterKeyHex is the fixed key of the tests, the README's examples and
// the committed fuzz seeds: bytes 0x00..0x1f.
const testClusterKeyHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

func testClusterKey(t testing.TB) ClusterKey {
	t.Helper()
	k, err := ParseClusterKey(testClusterKeyHex)
	require.NoError(t, err)
	return k
}

func TestParseClusterKey(t *testing.T) {
	k := testClusterKey(t)
	for i := range k {
		require.Equal(t, byte(i), k[i])
	}
	require.Equal(t, testClusterKeyHex, k.String())
	require.False(t, k.IsZero())
	require.True(t, ClusterKey{}.IsZero())

	upper, err := ParseClusterKey("  " + strings.ToUpper(testClusterKeyHex) + "\n")
	require.NoError(t, err, "either case, surrounding white space ignored")
	require.Equal(t, k, upper)

	for _, tt := range []struct{ name, in, msg string }{
		{"empty", "", "0 characters"},
		{"short", testClusterKeyHex[:62], "62 characters"},
		{"long", testClusterKeyHex + "00", "66 characters"},
		{"not hex", "zz" + testClusterKeyHex[2:], "invalid byte"},
		{"all zeros", strings.Repeat("0", 64), "all zeros"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseClusterKey(tt.in)
			require.ErrorIs(t, err, ErrClusterKey)
			require.ErrorContains(t, err, tt.msg)
			require.True(t, got.IsZero(), "a failed parse returns the zero key")
		})
	}
}

func TestNewClusterKey(t *testing.T) {
	a, err := NewClusterKey()
	require.NoError(t, err)
	b, err := NewClusterKey()
	require.NoError(t, err)
	require.False(t, a.IsZero())
	require.NotEqual(t, a, b)
	back, err := ParseClusterKey(a.String())
	require.NoError(t, err)
	require.Equal(t, a, back)
}

// TestClusterSubkeys pins the key derivation to known answers (computed
// independently with Python's hmac module):
// HMAC-SHA256(key, "callrelay trunk frame v1") and
// HMAC-SHA256(key, "callrelay cluster message v1").
func TestClusterSubkeys(t *testing.T) {
	k := testClusterKey(t)
	trunk, msg := k.trunkKey(), k.msgKey()
	require.Equal(t, "38b8dd128c38ba82c25c5a901a0470aade52fb6756db382bedc8eecccd9a5eb9", hex.EncodeToString(trunk[:]))
	require.Equal(t, "1a83304fd260d5268e4c0ff1fce7f0b3646c9ff1ec34843a00ba641cfe7b0da7", hex.EncodeToString(msg[:]))
}

func TestForwarderTag(t *testing.T) {
	// SHA-256("callrelay forwarder tagfwd-a")[:8], computed independently.
	require.Equal(t, uint64(0x19cce5c01ac4d4a3), ForwarderTag("fwd-a"))
	require.NotEqual(t, ForwarderTag("fwd-a"), ForwarderTag("fwd-b"))
	require.Equal(t, ForwarderTag("fwd-a"), ForwarderTag("fwd-a"))
}
