package forwarder_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/protocol"
)

// testCert is a throwaway certificate for 127.0.0.1 and "callrelay.test".
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callrelay.test"},
		DNSNames: []string{"callrelay.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 211, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// withStreams gives a test forwarder TCP and TLS listeners on host.
func withStreams(t testing.TB, host string) (func(*forwarder.Config), *x509.CertPool) {
	cert, pool := testCert(t)
	return func(c *forwarder.Config) {
		c.Stream.TCPListen, c.Stream.TLSListen = host+":0", host+":0"
		c.Stream.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}, pool
}

// deadUDP is a loopback UDP address nothing answers on (bound, then freed).
func deadUDP(t *testing.T) netip.AddrPort {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	require.NoError(t, c.Close())
	return a
}

// TestClientRacesToTCPAndTLS: a device whose UDP path to the forwarder
// answers nothing joins over TCP or TLS after the UDP head start, through
// the client library (Dial races the transports), and exchanges media
// byte-exact with a UDP member of the call.
func TestClientRacesToTCPAndTLS(t *testing.T) {
	mod, roots := withStreams(t, "127.0.0.1")
	r := runRelay(t, mod)
	tcp, tlsAddr := r.f.StreamAddrs()
	for _, tc := range []struct {
		want client.Transport
		ep   client.StreamEndpoints
	}{
		{client.TransportTCP, client.StreamEndpoints{TCP: tcp}},
		{client.TransportTLS, client.StreamEndpoints{TLS: tlsAddr}},
	} {
		t.Run(tc.want.String(), func(t *testing.T) {
			call := protocol.NewID()
			udpPeer := dial(t, r.mint(t, call, protocol.ClassGroup, 4), r.f.Addr())
			blocked := deadUDP(t) // the device's "forwarder UDP address": UDP never answers there
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			dev, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{blocked}, Token: r.mint(t, call, protocol.ClassGroup, 4),
				LocalAddr: loopback, Streams: map[netip.AddrPort]client.StreamEndpoints{blocked: tc.ep},
				TLSConfig: &tls.Config{RootCAs: roots, ServerName: "callrelay.test"}, UDPHeadStart: 50 * time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(func() { _ = dev.Close() })
			require.Equal(t, tc.want, dev.Transport())
			require.Equal(t, blocked, dev.Forwarder(), "a stream Conn names the forwarder it stands for")
			exchangeRTP(t, dev, udpPeer)
		})
	}
}

// exchangeRTP: packets each way arrive byte-exact.
func exchangeRTP(t *testing.T, a, b *client.Conn) {
	t.Helper()
	for i := range 20 {
		pa := append([]byte{0x80, 111, 0, byte(i), 0, 0, 0, 1, 0, 0, 0, 0xa}, bytes.Repeat([]byte{byte(i)}, 100)...)
		pb := append([]byte{0x80, 111, 0, byte(i), 0, 0, 0, 1, 0, 0, 0, 0xb}, bytes.Repeat([]byte{byte(i)}, 80)...)
		require.NoError(t, a.WriteRTP(pa))
		require.NoError(t, b.WriteRTP(pb))
		require.Equal(t, pa, nextRTP(t, b, "b did not hear a"))
		require.Equal(t, pb, nextRTP(t, a, "a did not hear b"))
	}
}

// nextRTP is nextMedia skipping RTCP.
func nextRTP(t *testing.T, c *client.Conn, what string) []byte {
	for {
		b := nextMedia(t, c, what)
		if b[1] < 192 || b[1] > 223 {
			return b
		}
	}
}
