package client

import (
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func deviceCredToken(t *testing.T, priv ed25519.PrivateKey, dev ed25519.PrivateKey, call, who protocol.ID, exp time.Time) []byte {
	t.Helper()
	b, err := protocol.SignToken(priv, protocol.Token{CallID: call, ParticipantID: who, Class: protocol.ClassGroup, MaxSize: 4,
		Expiry: exp, DeviceKey: dev.Public().(ed25519.PublicKey)})
	require.NoError(t, err)
	return b
}

// TestDeviceKeyConfig: a version 2 token needs the device key it names,
// and a TokenSource may not switch devices; proof counters only grow.
func TestDeviceKeyConfig(t *testing.T) {
	_, priv, _ := protocol.GenerateSigningKey()
	dev, err := GenerateDeviceKey()
	require.NoError(t, err)
	other, _ := GenerateDeviceKey()
	call, who := protocol.NewID(), protocol.NewID()
	now := time.Now()
	tok := deviceCredToken(t, priv, dev, call, who, now.Add(time.Hour))
	fwd := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:3478")}

	_, err = Config{Forwarders: fwd, Token: tok}.withDefaults()
	require.ErrorIs(t, err, ErrConfig)
	_, err = Config{Forwarders: fwd, Token: tok, DeviceKey: other}.withDefaults()
	require.ErrorIs(t, err, ErrConfig)
	cfg, err := Config{Forwarders: fwd, Token: tok, DeviceKey: dev}.withDefaults()
	require.NoError(t, err)
	// A version 1 token ignores a device key.
	_, err = Config{Forwarders: fwd, Token: credToken(t, priv, call, who, now.Add(time.Hour)), DeviceKey: dev}.withDefaults()
	require.NoError(t, err)

	cr := cfg.creds
	require.ErrorIs(t, cr.setToken(deviceCredToken(t, priv, other, call, who, now.Add(2*time.Hour)), now), ErrConfig, "a token for another device")
	require.NoError(t, cr.setToken(deviceCredToken(t, priv, dev, call, who, now.Add(2*time.Hour)), now))

	last := uint64(0)
	for range 100 { // within one millisecond too
		c := cr.nextCounter(now)
		require.Greater(t, c, last)
		last = c
	}
	require.Greater(t, cr.nextCounter(now.Add(-time.Hour)), last, "a clock stepped back does not lower it")

	// A request with no session key carries a proof; one with a key does not.
	tx, err := newTransaction(cr, protocol.JoinOptions{}, nil)
	require.NoError(t, err)
	require.NotNil(t, tx.hs)
	require.Nil(t, tx.macKey(protocol.JoinResponse{}), "no MigrateTo key before the proof is answered")
	key := make([]byte, protocol.SessionKeySize)
	tx, err = newTransaction(cr, protocol.JoinOptions{}, key)
	require.NoError(t, err)
	require.Nil(t, tx.hs)
	require.Equal(t, key, tx.macKey(protocol.JoinResponse{}))
}
