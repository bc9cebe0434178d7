package forwarder

import (
	"context"
	"crypto/ed25519"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/protocol"
)

// testRelay is a running forwarder on a loopback port and the key that
// signs its tokens.
type testRelay struct {
	f    *Forwarder
	priv ed25519.PrivateKey
}

func startRelay(t *testing.T, mod func(*Config)) *testRelay {
	t.Helper()
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	cfg := Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Verifier = v
	cfg.Readers = 2
	cfg.Logger = zaptest.NewLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	f, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &testRelay{f: f, priv: priv}
}

func (r *testRelay) token(t *testing.T, call, participant protocol.ID, class protocol.CallClass, size uint16) []byte {
	t.Helper()
	b, err := protocol.SignToken(r.priv, protocol.Token{
		CallID: call, ParticipantID: participant, Class: class, MaxSize: size,
		Expiry: time.Now().Add(time.Hour),
	})
	require.NoError(t, err)
	return b
}

// rawDevice speaks the wire protocol by hand over a real loopback socket, so
// these tests exercise the forwarder without the client library.
type rawDevice struct {
	t      *testing.T
	conn   *net.UDPConn
	relay  netip.AddrPort
	token  []byte
	cookie []byte // the forwarder's address cookie for this socket
}

func newRawDevice(t *testing.T, relay netip.AddrPort, token []byte) *rawDevice {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &rawDevice{t: t, conn: c, relay: relay, token: token}
}

func (d *rawDevice) addr() netip.AddrPort { return d.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (d *rawDevice) send(b []byte) {
	d.t.Helper()
	_, err := d.conn.WriteToUDPAddrPort(b, d.relay)
	require.NoError(d.t, err)
}

// bind sends a join, keepalive or leave and returns the forwarder's
// verified answer. Like a device, it repeats a request the forwarder answered
// with an address cookie, echoing the cookie.
func (d *rawDevice) bind(leave bool) protocol.JoinResponse {
	d.t.Helper()
	for try := 0; ; try++ {
		m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Leave: leave, Cookie: d.cookie})
		require.NoError(d.t, err)
		d.send(m.Raw)
		raw, ok := d.recvSTUN(2 * time.Second)
		require.True(d.t, ok, "no answer to join")
		resp, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(d.token))
		require.NoError(d.t, err)
		if resp.Code != protocol.CodeUnauthorized || len(resp.Cookie) == 0 || try == 2 {
			return resp
		}
		d.cookie = resp.Cookie
	}
}

func (d *rawDevice) join() {
	d.t.Helper()
	resp := d.bind(false)
	require.True(d.t, resp.OK, "join refused: %d %s", resp.Code, resp.Reason)
	require.Equal(d.t, d.addr(), resp.Mapped)
}

// recv returns the next datagram within timeout.
func (d *rawDevice) recv(timeout time.Duration) ([]byte, bool) {
	buf := make([]byte, 2048)
	_ = d.conn.SetReadDeadline(time.Now().Add(timeout))
	n, _, err := d.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, false
	}
	return buf[:n], true
}

func (d *rawDevice) recvSTUN(timeout time.Duration) ([]byte, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, ok := d.recv(time.Until(deadline))
		if ok && stun.IsMessage(b) {
			return b, true
		}
	}
	return nil, false
}

// rtpPacket builds an RTP packet whose payload names its sender and sequence.
func rtpPacket(ssrc uint32, seq uint16, payload []byte) []byte {
	h := []byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 1,
		byte(ssrc >> 24), byte(ssrc >> 16), byte(ssrc >> 8), byte(ssrc)}
	return append(h, payload...)
}

// startRelayB is startRelay for benchmarks: one reader (the reflector has one
// too) and no per-test logger.
func startRelayB(b *testing.B) *testRelay {
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(b, err)
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(b, err)
	cfg := Default()
	cfg.Listen, cfg.Verifier, cfg.Readers = "127.0.0.1:0", v, 1
	f, err := New(cfg)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return &testRelay{f: f, priv: priv}
}

// joinFrom joins conn to call through the real join protocol, address
// cookie round trip included.
func joinFrom(b *testing.B, r *testRelay, conn *net.UDPConn, call protocol.ID) {
	tok, err := protocol.SignToken(r.priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(),
		Class: protocol.ClassGroup, MaxSize: 16, Expiry: time.Now().Add(time.Hour)})
	require.NoError(b, err)
	var cookie []byte
	for try := 0; try < 2; try++ {
		m, err := protocol.BuildJoinRequest(tok, protocol.JoinOptions{Cookie: cookie})
		require.NoError(b, err)
		_, err = conn.WriteToUDPAddrPort(m.Raw, r.f.Addr())
		require.NoError(b, err)
		buf := make([]byte, 1500)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		require.NoError(b, err)
		_ = conn.SetReadDeadline(time.Time{})
		resp, err := protocol.ParseJoinResponse(buf[:n], m.TransactionID, protocol.IntegrityKey(tok))
		require.NoError(b, err)
		if resp.OK {
			return
		}
		cookie = resp.Cookie
	}
	b.Fatal("join refused")
}
