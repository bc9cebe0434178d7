package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// TestTokenMintDeviceBound: --device-key mints a version 2 token bound to
// the given device public key; a key that is not one is refused.
func TestTokenMintDeviceBound(t *testing.T) {
	pub, seed := keygen(t)
	devPub, _ := keygen(t) // any Ed25519 key pair serves as a device key
	r := run(t, env(), "token", "mint", "--signing-key", seed, "--device-key", devPub)
	require.Equal(t, 0, r.code, r.stderr)
	tok := verify(t, pub, r.stdout)
	require.True(t, tok.DeviceBound())
	require.Equal(t, devPub, protocol.EncodeKey(tok.DeviceKey))
	require.Contains(t, r.stderr, "version 2 call "+tok.CallID.String())
	raw, err := protocol.DecodeTokenString(r.stdout)
	require.NoError(t, err)
	require.Len(t, raw, protocol.TokenSizeV2)

	r = run(t, env(), "token", "mint", "--signing-key", seed, "--device-key", "bm90IGEga2V5")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "--device-key")
}
