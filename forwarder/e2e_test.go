package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// These tests drive the forwarder with the real device library over real
// loopback sockets: what a messaging app would do.

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

type relay struct {
	f    *forwarder.Forwarder
	priv []byte
}

func runRelay(t *testing.T, mod func(*forwarder.Config)) *relay {
	t.Helper()
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	return runRelayWithKey(t, priv, mod)
}

// runRelayWithKey runs a forwarder trusting priv's public key on a loopback port.
func runRelayWithKey(t *testing.T, priv ed25519.PrivateKey, mod func(*forwarder.Config)) *relay {
	t.Helper()
	v, err := protocol.NewTokenVerifier(priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zaptest.NewLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &relay{f: f, priv: priv}
}

func (r *relay) mint(t *testing.T, call protocol.ID, class protocol.CallClass, size int) []byte {
	t.Helper()
	b, err := protocol.SignToken(r.priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(),
		Class: class, MaxSize: uint16(size), Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	return b
}

func dial(t *testing.T, token []byte, fwds ...netip.AddrPort) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Forwarders: fwds, Token: token, LocalAddr: loopback})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

type device struct {
	conn   *client.Conn
	call   int
	ssrc   uint32
	key    client.MediaKey
	sender *client.Sender
	recv   *client.Receiver
}

// TestEncryptedCallsEndToEnd: a 5-person call and two one-to-one calls.
// Each device encrypts with its own SRTP key, shared only with its call's
// members (never with the forwarder). Every packet must decrypt at exactly
// the other members of its call, and nowhere else.
func TestEncryptedCallsEndToEnd(t *testing.T) {
	r := runRelay(t, nil)
	sizes := []int{5, 2, 2}
	var devs []*device
	for ci, n := range sizes {
		call, class := protocol.NewID(), protocol.ClassGroup
		if n == 2 {
			class = protocol.ClassOneToOne
		}
		var members []*device
		for j := 0; j < n; j++ {
			d := &device{conn: dial(t, r.mint(t, call, class, n), r.f.Addr()), call: ci,
				ssrc: uint32(100*ci + j + 1), key: client.NewMediaKey(), recv: client.NewReceiver()}
			var err error
			d.sender, err = client.NewSender(client.SenderConfig{SSRC: d.ssrc, PayloadType: 111, Key: d.key})
			require.NoError(t, err)
			members = append(members, d)
		}
		for _, a := range members { // the app's end-to-end key exchange
			for _, b := range members {
				if a != b {
					require.NoError(t, a.recv.AddSender(b.ssrc, b.key))
				}
			}
		}
		devs = append(devs, members...)
	}
	const frames = 30
	for n := 0; n < frames; n++ {
		for _, d := range devs {
			pkt, err := d.sender.Seal(nil, client.Sample{Payload: plaintext(d.ssrc, n), Timestamp: uint32(n * 960),
				AudioLevel: client.AudioLevel{Level: 30, Voice: true}})
			require.NoError(t, err)
			require.NoError(t, d.conn.WriteRTP(pkt))
		}
		time.Sleep(2 * time.Millisecond) // pace like a device; bursts are the load test's job
	}
	for _, d := range devs {
		want := (sizes[d.call] - 1) * frames
		var hdr rtp.Header
		for got := 0; got < want; got++ {
			var pkt *client.Packet
			select {
			case pkt = <-d.conn.Media():
			case <-time.After(5 * time.Second):
				t.Fatalf("device %d got %d of %d packets", d.ssrc, got, want)
			}
			if protocol.Classify(pkt.Data) == protocol.KindRTCP {
				got-- // the relay's feedback to a sender (REMB with its uplink estimate)
				pkt.Release()
				continue
			}
			plain, err := d.recv.Open(nil, pkt.Data, &hdr)
			require.NoError(t, err, "device %d: packet not from its call, or not intact", d.ssrc)
			require.Equal(t, d.call, int(hdr.SSRC/100), "cross-call leak")
			require.NotEqual(t, d.ssrc, hdr.SSRC, "own packet echoed")
			n := int(binary.BigEndian.Uint32(plain[4:8]))
			require.Equal(t, plaintext(hdr.SSRC, n), plain)
			// The relay could read the audio level, never the payload.
			require.NotContains(t, string(pkt.Data), string(plaintext(hdr.SSRC, n)[8:]))
			pkt.Release()
		}
		for extra := time.After(50 * time.Millisecond); ; {
			select {
			case pkt := <-d.conn.Media():
				if protocol.Classify(pkt.Data) != protocol.KindRTCP {
					t.Fatalf("device %d got an extra packet of %d bytes", d.ssrc, len(pkt.Data))
				}
				pkt.Release()
				continue
			case <-extra:
			}
			break
		}
	}
	require.Zero(t, r.f.Stats().TotalDrops())
}

func plaintext(ssrc uint32, n int) []byte {
	b := binary.BigEndian.AppendUint32(nil, ssrc)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	return append(b, fmt.Sprintf("frame %d of %d, secret to the relay", n, ssrc)...)
}

// TestMultiConnect: the device is given a forwarder that never answers and a
// draining forwarder that points to an alternate; it must land on the
// alternate, and media must flow there. All three share the signing key, as
// a cluster's forwarders do.
func TestMultiConnect(t *testing.T) {
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	alt := runRelayWithKey(t, priv, nil)
	draining := runRelayWithKey(t, priv, func(c *forwarder.Config) { c.Alternate = alt.f.Addr() })
	draining.f.Drain()
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer silent.Close()

	call := protocol.NewID()
	a := dial(t, alt.mint(t, call, protocol.ClassOneToOne, 2), silent.LocalAddr().(*net.UDPAddr).AddrPort(), draining.f.Addr())
	require.Equal(t, alt.f.Addr(), a.Forwarder())
	b := dial(t, alt.mint(t, call, protocol.ClassOneToOne, 2), alt.f.Addr())
	require.Zero(t, draining.f.Stats().Sessions)
	require.Equal(t, 2, alt.f.Stats().Sessions)

	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7, 'o', 'k'}
	require.NoError(t, a.WriteRTP(pkt))
	require.Equal(t, pkt, nextMedia(t, b, "media did not arrive on the alternate"))
}

// TestMultiConnectFirstAnswerWins: two healthy forwarders; the device keeps
// one and leaves the other, which must end up with no session.
func TestMultiConnectFirstAnswerWins(t *testing.T) {
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	one := runRelayWithKey(t, priv, nil)
	two := runRelayWithKey(t, priv, nil)
	c := dial(t, one.mint(t, protocol.NewID(), protocol.ClassGroup, 4), one.f.Addr(), two.f.Addr())
	winner, loser := one, two
	if c.Forwarder() == two.f.Addr() {
		winner, loser = two, one
	}
	require.Equal(t, 1, winner.f.Stats().Sessions)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := loser.f.Stats().Sessions; n != 0 {
			return fmt.Errorf("loser still holds %d sessions", n)
		}
		return nil
	})
}

func TestRebindMovesTheSession(t *testing.T) {
	r := runRelay(t, nil)
	call := protocol.NewID()
	a := dial(t, r.mint(t, call, protocol.ClassOneToOne, 2), r.f.Addr())
	b := dial(t, r.mint(t, call, protocol.ClassOneToOne, 2), r.f.Addr())
	before := a.LocalAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, a.Rebind(ctx, loopback))
	require.NotEqual(t, before, a.LocalAddr())
	require.Equal(t, a.LocalAddr(), a.MappedAddr())
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 'h', 'i'}
	require.NoError(t, a.WriteRTP(pkt))
	require.Equal(t, pkt, nextMedia(t, b, "media from the new address did not arrive"))
	require.NoError(t, b.WriteRTP(pkt))
	require.Equal(t, pkt, nextMedia(t, a, "media to the new address did not arrive"))
	// At least one move; a keepalive already in flight from the old socket
	// can move the session back and forth before it settles on the new
	// address (the rebind race in the README's notes), which the media
	// checks above show it did.
	require.GreaterOrEqual(t, r.f.Stats().AddressChanges, uint64(1))
}

// nextMedia returns the next datagram conn receives, or fails with what.
func nextMedia(t *testing.T, conn *client.Conn, what string) []byte {
	t.Helper()
	select {
	case p := <-conn.Media():
		b := append([]byte(nil), p.Data...)
		p.Release()
		return b
	case <-time.After(5 * time.Second):
		t.Fatal(what)
		return nil
	}
}
