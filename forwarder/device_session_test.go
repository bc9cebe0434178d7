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
	"github.com/callrelay/callrelay/internal/testkit/calltest"
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

// TestDeviceSessionResumesOnDeviceTicket: a device-bound participant whose
// 2 s token has expired loses its forwarder; another forwarder of the
// cluster resumes it on its ticket of binding kind 2 and a fresh proof,
// and the call goes on both ways.
func TestDeviceSessionResumesOnDeviceTicket(t *testing.T) {
	e := newClusterEnv(t)
	nodes := []*clusterNode{e.start(t, "fwd-a"), e.start(t, "fwd-b")}
	all := []netip.AddrPort{nodes[0].f.Addr(), nodes[1].f.Addr()}
	call := protocol.NewID()
	// Each token is minted right before its join: 2 s is short on a
	// loaded machine.
	tok0, dev0 := deviceToken(t, e.priv, call, protocol.NewID(), 2*time.Second)
	speaker := calltest.JoinConfig(t, client.Config{Forwarders: all, Token: tok0, DeviceKey: dev0}, 1)
	victim, other := nodes[0], nodes[1]
	if speaker.S.Forwarder() != victim.f.Addr() {
		victim, other = other, victim
	}
	tok1, dev1 := deviceToken(t, e.priv, call, protocol.NewID(), 2*time.Second)
	listener := calltest.JoinConfig(t, client.Config{Forwarders: []netip.AddrPort{other.f.Addr()}, Token: tok1, DeviceKey: dev1}, 2)
	stop := make(chan struct{})
	defer close(stop)
	talk(t, []*member{speaker, listener}, stop)
	allHearAll(t, []*member{speaker, listener}, time.Now(), 5*time.Second)
	waitExpired(t, [][]byte{tok0, tok1}, speaker, listener)

	victim.stop()
	calltest.WaitForwarder(t, speaker, other.f.Addr(), 10*time.Second)
	allHearAll(t, []*member{speaker, listener}, time.Now(), 10*time.Second)
	st := other.f.Stats().Resume
	require.Equal(t, uint64(1), st.Resumed, "resumed by its kind 2 ticket")
	require.GreaterOrEqual(t, st.Device.Proofs, uint64(2), "the listener's join and the speaker's resumption, each proved")
	require.Zero(t, st.Device.Refused[1]+st.Device.Refused[2]+st.Device.Refused[3], "no bad signature, stale proof or session integrity")
}

// TestDeviceSessionNATRebinding: the device's NAT gives it a new address
// without the device knowing (the on-path relay's socket toward the
// forwarder changes). Its next keepalive, under the session key, comes
// from an unknown address: the forwarder answers with the address check,
// the device repeats it with the cookie and a fresh proof, and the session
// moves there; media flows both ways from the new address.
func TestDeviceSessionNATRebinding(t *testing.T) {
	r := runRelay(t, func(c *forwarder.Config) { c.KeepaliveInterval, c.IdleTimeout = 100*time.Millisecond, 3*time.Second })
	call := protocol.NewID()
	token, dev := deviceToken(t, r.priv, call, protocol.NewID(), time.Hour)
	nat := newOnPath(t, r.f.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{nat.addr()}, Token: token, DeviceKey: dev, LocalAddr: loopback})
	require.NoError(t, err)
	defer c.Close()
	peer := dial(t, r.mint(t, call, protocol.ClassGroup, 8), r.f.Addr())
	const n = 100
	require.Equal(t, [2]int{n, n}, [2]int{flow(t, c, peer, 0xd1ce000, 1, n), flow(t, peer, c, 0xfee1000, 1, n)}, "media before the rebinding")

	nat.rebind(t)
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if ch := r.f.Stats().AddressChanges; ch != 1 {
			return fmt.Errorf("%d address changes", ch)
		}
		return nil
	})
	require.Equal(t, uint64(2), r.f.Stats().Resume.Device.Proofs, "the join's and the new path's")
	require.GreaterOrEqual(t, proofRefused(r.f, "missing"), uint64(1), "the keepalive from the new address, asked for a proof")
	// The move is counted when the control goroutine takes it; the readers
	// see the new address when it next publishes the routes. Keepalives
	// answered on the new path say both are done (media sent in between
	// could meet the old routes: 98 of 100 once on a quiet machine).
	answered := c.Stats().KeepalivesAnswered
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := c.Stats().KeepalivesAnswered; got < answered+5 {
			return fmt.Errorf("%d keepalives answered since", got-answered)
		}
		return nil
	})
	require.Equal(t, [2]int{n, n}, [2]int{flow(t, c, peer, 0xd1ce000, 1000, n), flow(t, peer, c, 0xfee1000, 1000, n)}, "media after the rebinding")
	require.Zero(t, proofRefused(r.f, "integrity")+proofRefused(r.f, "signature")+proofRefused(r.f, "stale"))
	require.NoError(t, c.Err())
}

// TestDeviceSessionFollowsDrain: a draining forwarder's MigrateTo to a
// device-bound session is signed with the session key (which the device
// holds from its proof's answer), so the device follows it and joins the
// alternate with a fresh proof.
func TestDeviceSessionFollowsDrain(t *testing.T) {
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	b := runRelayWithKey(t, priv, nil)
	a := runRelayWithKey(t, priv, func(c *forwarder.Config) { c.Alternate = b.f.Addr() })
	token, dev := deviceToken(t, priv, protocol.NewID(), protocol.NewID(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{a.f.Addr()}, Token: token, DeviceKey: dev, LocalAddr: loopback})
	require.NoError(t, err)
	defer s.Close()
	a.f.Drain()
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if s.Forwarder() != b.f.Addr() {
			return fmt.Errorf("still on %v", s.Forwarder())
		}
		return nil
	})
	st := s.Stats()
	require.Equal(t, uint64(1), st.Migrations)
	require.Zero(t, st.Conn.MigrateForged+st.Conn.MigrateStale, "the MigrateTo verified under the session key")
	require.Equal(t, 1, b.f.Stats().Sessions)
	require.Equal(t, uint64(1), b.f.Stats().Resume.Device.Proofs)
}
