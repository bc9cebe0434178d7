package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// deviceToken mints a version 2 token bound to a new device key, and
// returns both.
func deviceToken(t *testing.T, priv ed25519.PrivateKey, call, participant protocol.ID, lifetime time.Duration) ([]byte, ed25519.PrivateKey) {
	t.Helper()
	dev, err := client.GenerateDeviceKey()
	require.NoError(t, err)
	b, err := protocol.SignToken(priv, protocol.Token{CallID: call, ParticipantID: participant, Class: protocol.ClassGroup,
		MaxSize: 8, Expiry: time.Now().Add(lifetime), DeviceKey: dev.Public().(ed25519.PublicKey)})
	require.NoError(t, err)
	return b, dev
}

// TestDeviceTokenConnEndToEnd: a client with a device key joins a real
// forwarder with a version 2 token and exchanges media with a version 1
// member; it rebinds to a new socket (a fresh proof over the new path's
// cookie moves the session and re-keys it), media flows from there, and
// its keepalives, under the new session key, go on being answered.
func TestDeviceTokenConnEndToEnd(t *testing.T) {
	r := runRelay(t, func(c *forwarder.Config) { c.KeepaliveInterval, c.IdleTimeout = 100*time.Millisecond, 2*time.Second })
	call := protocol.NewID()
	token, dev := deviceToken(t, r.priv, call, protocol.NewID(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{r.f.Addr()}, Token: token, LocalAddr: loopback})
	require.ErrorIs(t, err, client.ErrConfig, "a device-bound token without its device key")
	other, _ := client.GenerateDeviceKey()
	_, err = client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{r.f.Addr()}, Token: token, DeviceKey: other, LocalAddr: loopback})
	require.ErrorIs(t, err, client.ErrConfig, "a device-bound token with another device key")

	c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{r.f.Addr()}, Token: token, DeviceKey: dev, LocalAddr: loopback})
	require.NoError(t, err)
	defer c.Close()
	peer := dial(t, r.mint(t, call, protocol.ClassGroup, 8), r.f.Addr())
	const n = 100
	require.Equal(t, [2]int{n, n}, [2]int{flow(t, c, peer, 0xd1ce000, 1, n), flow(t, peer, c, 0xfee1000, 1, n)}, "media before the rebind")
	proofs := r.f.Stats().Resume.Device.Proofs
	require.Equal(t, uint64(1), proofs, "the join's proof")

	old := c.LocalAddr()
	require.NoError(t, c.Rebind(ctx, loopback))
	require.NotEqual(t, old, c.LocalAddr())
	st := r.f.Stats()
	require.Equal(t, uint64(1), st.AddressChanges)
	require.Equal(t, uint64(2), st.Resume.Device.Proofs, "the rebind's fresh proof")
	answered := c.Stats().KeepalivesAnswered
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := c.Stats().KeepalivesAnswered; got < answered+5 {
			return fmt.Errorf("%d keepalives answered since the rebind", got-answered)
		}
		return nil
	})
	require.Equal(t, [2]int{n, n}, [2]int{flow(t, c, peer, 0xd1ce000, 1000, n), flow(t, peer, c, 0xfee1000, 1000, n)}, "media after the rebind")
	require.Zero(t, proofRefused(r.f, "integrity"), "no request of the device failed its session key")
	require.Zero(t, proofRefused(r.f, "signature")+proofRefused(r.f, "stale"))
	require.NoError(t, c.Err())
}

// TestRequireDeviceTokens: a forwarder that requires device-bound tokens
// refuses a version 1 token (401, final, counted) and admits a version 2 one.
func TestRequireDeviceTokens(t *testing.T) {
	r := runRelay(t, func(c *forwarder.Config) { c.RequireDeviceTokens = true })
	call := protocol.NewID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{r.f.Addr()}, Token: r.mint(t, call, protocol.ClassGroup, 8), LocalAddr: loopback})
	var je *client.JoinError
	require.ErrorAs(t, err, &je)
	require.Equal(t, protocol.CodeUnauthorized, je.Code)
	require.Equal(t, uint64(1), proofRefused(r.f, "v1_refused"))
	token, dev := deviceToken(t, r.priv, call, protocol.NewID(), time.Hour)
	c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{r.f.Addr()}, Token: token, DeviceKey: dev, LocalAddr: loopback})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s := r.f.Stats().Sessions; s != 0 {
			return fmt.Errorf("%d sessions after the leave", s)
		}
		return nil
	})
}
