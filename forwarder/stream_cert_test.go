package forwarder_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// writePair writes cert's certificate and key as PEM to dir/name.crt and
// dir/name.key (through a rename, as a renewal would) and returns the paths.
func writePair(t *testing.T, dir, name string, cert tls.Certificate) (string, string) {
	t.Helper()
	kder, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	require.NoError(t, err)
	c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeFile(t, c, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	writeFile(t, k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return c, k
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

// presented shakes hands with addr and returns the certificate it showed.
func presented(t *testing.T, addr netip.AddrPort, roots *x509.CertPool) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr.String(), &tls.Config{RootCAs: roots, ServerName: "callrelay.test"})
	require.NoError(t, err)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

// TestCertReloaderPolls: the TLS listener's certificate comes from files
// polled every 20ms. A new pair is served to new handshakes while a device
// that shook hands with the old one goes on talking with a UDP member; a
// certificate whose key does not match, or an expired one, is refused once
// per content (counted), the one in use stays; the matching key, when it
// lands, is taken.
func TestCertReloaderPolls(t *testing.T) {
	dir := t.TempDir()
	a, roots := testCert(t)
	b, _ := testCert(t)
	c, _ := testCert(t)
	roots.AddCert(b.Leaf)
	roots.AddCert(c.Leaf)
	certFile, keyFile := writePair(t, dir, "tls", a)
	certs, err := forwarder.NewCertReloader(certFile, keyFile, zaptest.NewLogger(t))
	require.NoError(t, err)
	r := runRelay(t, func(cfg *forwarder.Config) {
		cfg.Stream.TLSListen, cfg.Stream.TLS = "127.0.0.1:0", certs.TLSConfig()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go certs.Watch(ctx, 20*time.Millisecond, nil)
	_, tlsAddr := r.f.StreamAddrs()
	require.Equal(t, a.Certificate[0], presented(t, tlsAddr, roots))

	call := protocol.NewID()
	udpPeer := dial(t, r.mint(t, call, protocol.ClassGroup, 4), r.f.Addr())
	noUDP := deadUDP(t)
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	dev, err := client.Dial(dctx, client.Config{Forwarders: []netip.AddrPort{noUDP}, Token: r.mint(t, call, protocol.ClassGroup, 4),
		LocalAddr: loopback, Streams: map[netip.AddrPort]client.StreamEndpoints{noUDP: {TLS: tlsAddr}},
		TLSConfig: &tls.Config{RootCAs: roots, ServerName: "callrelay.test"}, UDPHeadStart: 50 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = dev.Close() })
	exchangeRTP(t, dev, udpPeer)

	servedBecomes := func(want []byte) {
		t.Helper()
		testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if !bytes.Equal(presented(t, tlsAddr, roots), want) {
				return fmt.Errorf("not served yet")
			}
			return nil
		})
	}
	writePair(t, dir, "tls", b)
	servedBecomes(b.Certificate[0])
	exchangeRTP(t, dev, udpPeer) // the leg on the old certificate goes on
	// A poll between writePair's two renames may have seen b's certificate
	// with a's key and refused it: counted from here.
	_, r0 := certs.CertReloads()

	// c's certificate lands before its key: refused once, then taken.
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}))
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, refused := certs.CertReloads(); refused != r0+1 {
			return fmt.Errorf("refused %d", refused-r0)
		}
		return nil
	})
	require.Equal(t, b.Certificate[0], presented(t, tlsAddr, roots), "a refused pair changes nothing")
	writePair(t, dir, "tls", c)
	servedBecomes(c.Certificate[0])
	loaded, refused := certs.CertReloads()
	require.Equal(t, uint64(2), loaded)
	require.Equal(t, r0+1, refused, "a refused pair is judged once, not at every poll")

	expired := expiredCert(t, c) // c's key: no pair between the renames but the final one
	writePair(t, dir, "tls", expired)
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, refused := certs.CertReloads(); refused != r0+2 {
			return fmt.Errorf("refused %d", refused-r0)
		}
		return nil
	})
	require.Equal(t, c.Certificate[0], presented(t, tlsAddr, roots))
	exchangeRTP(t, dev, udpPeer)
	require.NoError(t, dev.Err())
}

// expiredCert is a certificate for callrelay.test, with like's key, that
// expired an hour ago.
func expiredCert(t *testing.T, like tls.Certificate) tls.Certificate {
	t.Helper()
	tmpl := *like.Leaf
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	key := like.PrivateKey.(*ecdsa.PrivateKey)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
