package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestForwarderReloadsTLSCertificateOnSIGHUP: a forwarder process with a
// TLS listener takes a new certificate and key from its files on SIGHUP
// for new handshakes while a device already on TLS goes on talking with a
// UDP member; a pair that does not load is refused (logged, counted) and
// the certificate in use stays. (Polling the files, --tls-reload-every, is
// shown in forwarder's TestCertReloaderPolls.)
func TestForwarderReloadsTLSCertificateOnSIGHUP(t *testing.T) {
	pub, seed := keygen(t)
	priv, err := protocol.ParsePrivateKey(seed)
	require.NoError(t, err)
	dir, dirB := t.TempDir(), t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	certB, keyB := writeSelfSigned(t, dirB)
	derA, derB := leafDER(t, certFile), leafDER(t, certB)
	roots := x509.NewCertPool()
	for _, f := range []string{certFile, certB} {
		pemBytes, err := os.ReadFile(f)
		require.NoError(t, err)
		require.True(t, roots.AppendCertsFromPEM(pemBytes))
	}
	tlsAddr, metrics := freeTCPAddr(t), freeTCPAddr(t)
	p, addr := startForwarder(t, pub, priv, "--tls-listen", tlsAddr, "--tls-cert", certFile, "--tls-key", keyFile,
		"--tls-reload-every", "1h", "--metrics-listen", metrics)
	tlsConf := &tls.Config{RootCAs: roots, ServerName: "callrelay.test"}
	require.Equal(t, derA, servedCert(t, tlsAddr, tlsConf))

	call := protocol.NewID()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	member, err := dial(ctx, addr, mint(t, priv, call, protocol.ClassGroup))
	require.NoError(t, err)
	defer member.Close()
	noUDP := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(freeUDPPort(t))) // nothing answers UDP there
	dev, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{noUDP}, Token: mint(t, priv, call, protocol.ClassGroup),
		LocalAddr: netip.AddrFrom4([4]byte{127, 0, 0, 1}), TLSConfig: tlsConf, UDPHeadStart: 50 * time.Millisecond,
		Streams: map[netip.AddrPort]client.StreamEndpoints{noUDP: {TLS: netip.MustParseAddrPort(tlsAddr)}}})
	require.NoError(t, err)
	defer dev.Close()
	require.Equal(t, client.TransportTLS, dev.Transport())
	relays(t, dev, member, 1)

	copyFile(t, certB, certFile)
	copyFile(t, keyB, keyFile)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
		if !bytes.Equal(servedCert(t, tlsAddr, tlsConf), derB) {
			return fmt.Errorf("new handshakes still get the old certificate")
		}
		return nil
	})
	relays(t, dev, member, 2) // the leg that shook hands with the old one goes on
	require.Equal(t, 1.0, reloadCount(t, metrics, "loaded"))

	require.NoError(t, os.WriteFile(keyFile, []byte("-----BEGIN EC PRIVATE KEY-----\nbm90IGEga2V5\n-----END EC PRIVATE KEY-----\n"), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
		if n := reloadCount(t, metrics, "refused"); n != 1 {
			return fmt.Errorf("refused %v", n)
		}
		return nil
	})
	require.Contains(t, p.stderr.String(), "TLS certificate refused, keeping the one in use")
	require.Equal(t, derB, servedCert(t, tlsAddr, tlsConf), "the refused pair changed nothing")
	relays(t, dev, member, 3)
	require.NoError(t, dev.Err())
	require.False(t, p.exited(), "SIGHUP must not end the forwarder")
}

// leafDER is the first certificate of a PEM file.
func leafDER(t *testing.T, file string) []byte {
	t.Helper()
	b, _ := pem.Decode(mustRead(t, file))
	require.NotNil(t, b, "%s: no PEM", file)
	return b.Bytes
}

func mustRead(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	return b
}

// copyFile replaces dst's content with src's, as an operator's renewal
// would (write to a temporary file, rename).
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(dst), ".new")
	require.NoError(t, os.WriteFile(tmp, mustRead(t, src), 0o600))
	require.NoError(t, os.Rename(tmp, dst))
}

// servedCert shakes hands with the TLS listener and returns the
// certificate it presented.
func servedCert(t *testing.T, addr string, conf *tls.Config) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr, conf)
	require.NoError(t, err)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

// reloadCount reads callrelay_forwarder_tls_cert_reloads_total{result}.
func reloadCount(t *testing.T, metrics, result string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	prefix := `callrelay_forwarder_tls_cert_reloads_total{result="` + result + `"} `
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("no %s in /metrics", prefix)
	return 0
}

// relays: a packet each way between a and b arrives byte-exact (sent
// again every 20 ms until it does).
func relays(t *testing.T, a, b *client.Conn, seq byte) {
	t.Helper()
	for _, dir := range []struct{ from, to *client.Conn }{{a, b}, {b, a}} {
		pkt := append([]byte{0x80, 111, 0, seq, 0, 0, 0, 1, 0, 0, 0, seq}, bytes.Repeat([]byte{seq ^ 0x5a}, 64)...)
		testenv.CheckFor(t, readyTimeout, 20*time.Millisecond, func() error {
			require.NoError(t, dir.from.WriteRTP(pkt))
			for {
				select {
				case got := <-dir.to.Media():
					require.NotNil(t, got, "session ended: %v", dir.to.Err())
					same := bytes.Equal(got.Data, pkt)
					got.Release()
					if same {
						return nil
					}
				default:
					return fmt.Errorf("packet %d not relayed yet", seq)
				}
			}
		})
	}
}
