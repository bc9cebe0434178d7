package forwarder_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// spoofer sends UDP datagrams with any IPv4 source address and port, as an
// off-path attacker on the Internet can (no BCP 38 on its network): a raw
// socket with IP_HDRINCL, so the kernel takes the IP header as written.
// This is the realistic way to forge the forwarder's address on loopback;
// it needs CAP_NET_RAW.
type spoofer struct{ fd int }

func newSpoofer(t *testing.T) *spoofer {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		t.Skip("forging a source address needs a raw socket (CAP_NET_RAW); run as root")
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	return &spoofer{fd: fd}
}

// send writes payload from src to dst, both IPv4. Linux fills in the IP
// checksum; the UDP checksum is 0, "none", which IPv4 allows.
func (s *spoofer) send(t *testing.T, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	pkt := make([]byte, 28, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, syscall.IPPROTO_UDP // IPv4, 20-byte header; TTL; UDP
	binary.BigEndian.PutUint16(pkt[2:4], uint16(28+len(payload)))
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:16], s4[:])
	copy(pkt[16:20], d4[:])
	binary.BigEndian.PutUint16(pkt[20:22], src.Port())
	binary.BigEndian.PutUint16(pkt[22:24], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:26], uint16(8+len(payload)))
	pkt = append(pkt, payload...)
	require.NoError(t, syscall.Sendto(s.fd, pkt, 0, &syscall.SockaddrInet4{Addr: d4}))
}

// TestSpoofedMigrateToStealsNoToken is issue 17's off-path token theft:
// an attacker who knows a device's address and its forwarder's (the
// dashboard leaked both) forges, from the forwarder's address, a MigrateTo
// naming its own listening socket, in the unauthenticated form of earlier
// versions and in the authenticated form with an echo and a MAC it had to
// guess, and a Rejoin. Before the MigrateTo was authenticated the device
// dialed the attacker and sent it its token. Now: the device stays, the
// forgeries are counted, the attacker's socket receives nothing, the call
// goes on; and the forwarder's own MigrateTo, when it drains, still moves
// the device make-before-break.
func TestSpoofedMigrateToStealsNoToken(t *testing.T) {
	sp := newSpoofer(t)
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	b := runRelayWithKey(t, priv, nil)
	a := runRelayWithKey(t, priv, func(c *forwarder.Config) { c.Alternate = b.f.Addr() })
	thief, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer thief.Close()
	thiefAddr := thief.LocalAddr().(*net.UDPAddr).AddrPort()

	call := protocol.NewID()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{a.f.Addr()},
		Token: a.mint(t, call, protocol.ClassGroup, 3), LocalAddr: loopback})
	require.NoError(t, err)
	defer s.Close()
	peer := dial(t, a.mint(t, call, protocol.ClassGroup, 3), a.f.Addr())
	victim := s.LocalAddr()

	legacy := []byte{0x86, 0xcc, 0x00, 0x05, 0, 0, 0, 0, 'C', 'R', 'L', 'Y', // the 12-byte body of v1
		0x01, 0x00, byte(thiefAddr.Port() >> 8), byte(thiefAddr.Port()), 0, 0, 0x13, 0x88, 127, 0, 0, 1}
	guessed := &protocol.MigrateTo{Addr: thiefAddr, Deadline: 5 * time.Second,
		Echo: [12]byte{'c', 'r', 'l', 'y', 1, 2, 3}, MAC: [16]byte{0xde, 0xad}}
	forged, err := protocol.MarshalRelayApp(0, guessed)
	require.NoError(t, err)
	rejoin, err := protocol.MarshalRelayApp(0, &protocol.Rejoin{})
	require.NoError(t, err)
	const rounds = 50
	for range rounds {
		sp.send(t, a.f.Addr(), victim, legacy)
		sp.send(t, a.f.Addr(), victim, forged)
	}
	sp.send(t, a.f.Addr(), victim, rejoin)
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st := s.Stats()
		if st.Conn.ControlMalformed != rounds || st.Conn.MigrateStale != rounds || st.RejoinNudges != 1 {
			return fmt.Errorf("malformed %d, stale %d, nudges %d so far", st.Conn.ControlMalformed,
				st.Conn.MigrateStale, st.RejoinNudges)
		}
		return nil
	})
	st := s.Stats()
	require.Equal(t, st.Conn.RejoinNudges, st.Conn.ControlReceived, "no MigrateTo reached the Session")
	require.Zero(t, st.Migrations+st.MigrationsFailed)
	require.Equal(t, a.f.Addr(), s.Forwarder())
	select {
	case ev := <-s.Events():
		require.Equal(t, client.EventRejoined, ev.Kind, "only the nudge's in-place rejoin: %+v", ev)
		require.Equal(t, a.f.Addr(), ev.To)
	default:
	}
	// The call goes on.
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7, 's', 't', 'a', 'y'}
	require.NoError(t, s.WriteRTP(pkt))
	require.Equal(t, pkt, nextMedia(t, peer, "media stopped after the forgeries"))

	// The genuine MigrateTo of a draining forwarder moves the device.
	// The Session swaps its Conn before it counts the migration, and b's
	// session count is another goroutine's: wait for all three, so a read
	// between them is not taken for a failure (a session b really lost
	// never comes back, and still fails here).
	a.f.Drain()
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if s.Forwarder() != b.f.Addr() {
			return fmt.Errorf("still on %v", s.Forwarder())
		}
		if n, m := b.f.Stats().Sessions, s.Stats().Migrations; n != 1 || m != 1 {
			return fmt.Errorf("on %v: %d sessions there, %d migrations counted", b.f.Addr(), n, m)
		}
		return nil
	})
	require.NotZero(t, a.f.Stats().Migrations)

	// Nothing ever reached the attacker: no join, no token.
	buf := make([]byte, 2048)
	require.NoError(t, thief.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	n, from, err := thief.ReadFromUDPAddrPort(buf)
	require.Error(t, err, "the attacker received %d bytes from %v", n, from)
	t.Logf("%d unauthenticated and %d guessed-MAC MigrateTo forged from %v: counted %d malformed, %d stale; the attacker received 0 bytes; the drain's MigrateTo moved the device to %v",
		rounds, rounds, a.f.Addr(), st.Conn.ControlMalformed, st.Conn.MigrateStale, s.Forwarder())
}
