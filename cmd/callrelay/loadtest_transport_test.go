package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/loadtest"
	"github.com/callrelay/callrelay/protocol"
)

// writeSelfSigned makes a certificate for 127.0.0.1 and callrelay.test in
// memory and writes it and its key to the test's temporary directory, as
// the forwarder's --tls-cert and --tls-key (never committed).
func writeSelfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callrelay.test"},
		DNSNames: []string{"callrelay.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(k)
	require.NoError(t, err)
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return cert, key
}

// streamNode is a forwarder process of c with TCP and TLS listeners.
type streamNode struct {
	media             netip.AddrPort
	tcp, tls, metrics string
}

func (c *cluster) streamNode(t *testing.T, id, cert, key string) streamNode {
	t.Helper()
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	n := streamNode{media: netip.AddrPortFrom(lo, uint16(freeUDPPort(t))), tcp: freeTCPAddr(t), tls: freeTCPAddr(t), metrics: freeTCPAddr(t)}
	p := start(t, env("CALLRELAY_LOG_LEVEL=info", "CALLRELAY_CLUSTER_KEY="+c.key),
		"forwarder", "--id", id, "--listen", n.media.String(), "--trunk-listen", netip.AddrPortFrom(lo, uint16(freeUDPPort(t))).String(),
		"--public-key", c.pub, "--redis-url", c.redis.URL(), "--nats-url", c.nats.ClientURL(),
		"--readers", "1", "--metrics-listen", n.metrics, // the default keepalive: no failover on a starved machine
		"--tcp-listen", n.tcp, "--tls-listen", n.tls, "--tls-cert", cert, "--tls-key", key)
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		if p.exited() {
			t.Fatalf("forwarder %s exited:\n%s", id, p.stderr)
		}
		for _, a := range []string{n.tcp, n.tls} {
			conn, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return fmt.Errorf("%s: %s not listening yet: %w", id, a, err)
			}
			_ = conn.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		defer cancel()
		conn, err := dial(ctx, n.media, mint(t, c.priv, protocol.NewID(), protocol.ClassOneToOne))
		if err != nil {
			return fmt.Errorf("%s not serving yet: %w", id, err)
		}
		return conn.Close()
	})
	return n
}

// `callrelay loadtest --tcp-share 0.5 --tls-share 0.5` against two
// forwarder processes with TCP and TLS listeners (--tls-cert, --tls-key):
// the result has every device admitted on its transport, a section per
// transport, the forwarders' stream queue counters read, and the HTML
// report a Transports section.
func TestLoadtestTCPShare(t *testing.T) {
	c := newCluster(t)
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	a, b := c.streamNode(t, "fwd-a", cert, key), c.streamNode(t, "fwd-b", cert, key)
	out, html, plan := filepath.Join(dir, "result.json"), filepath.Join(dir, "report.html"), filepath.Join(dir, "plan.yml")
	// A fixed seed: the same devices on the same transports every time
	// (the first calls' devices include TCP and TLS ones).
	require.NoError(t, os.WriteFile(plan, []byte("seed: 19\nlocal_addr: 127.0.0.1\n"), 0o644))
	r := run(t, env("CALLRELAY_SIGNING_KEY="+c.seed), "loadtest", "--plan", plan,
		"--forwarders", a.media.String()+","+b.media.String(),
		"--tcp-share", "0.5", "--tls-share", "0.5", "--tcp-addrs", a.tcp+","+b.tcp, "--tls-addrs", a.tls+","+b.tls,
		"--tls-ca", cert, "--tls-server-name", "callrelay.test",
		"--forwarder-metrics", "http://"+a.metrics+"/metrics,http://"+b.metrics+"/metrics",
		"--profile", "steady", "--rate", "2", "--duration", "3s", "--one-to-one", "0.3", "--group-size", "3",
		"--out", out, "--report", html)
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	raw, err := os.ReadFile(out)
	require.NoError(t, err)
	var res loadtest.Result
	require.NoError(t, json.Unmarshal(raw, &res))
	require.Equal(t, 0.5, res.Plan.Transports.TCPShare)
	require.Len(t, res.Plan.Transports.Streams, 2)
	require.Positive(t, res.Totals.All.Setups.Admitted)
	require.Equal(t, res.Totals.All.Setups.Attempted, res.Totals.All.Setups.Admitted)
	for _, k := range []string{"udp4", "tcp", "tls"} {
		tm, ok := res.Transports[k]
		require.True(t, ok, "a %s section: %v", k, res.Transports)
		require.Positive(t, tm.Setups.Admitted, k)
		require.Zero(t, tm.OtherTransport, k)
		require.Positive(t, tm.PacketsReceived, k)
		require.Zero(t, tm.DecryptFailures, k)
	}
	require.NotNil(t, res.StreamQueue)
	require.Equal(t, 2, res.StreamQueue.Forwarders, "errors: %v", res.StreamQueue.Errors)
	require.Contains(t, r.stderr, "tls: ")
	page, err := os.ReadFile(html)
	require.NoError(t, err)
	require.Contains(t, string(page), "Media per transport")
	t.Logf("%s", strings.TrimSpace(r.stderr[strings.LastIndex(r.stderr, "done ("):]))
}

// Bad transport flags end the load test at once with a message that says
// what to fix.
func TestLoadtestTCPShareFlags(t *testing.T) {
	_, seed := keygen(t)
	environ := env("CALLRELAY_SIGNING_KEY=" + seed)
	base := []string{"loadtest", "--forwarders", "127.0.0.1:3478,127.0.0.1:3479", "--out", filepath.Join(t.TempDir(), "r.json")}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tcp-share", "1.5", "--tcp-addrs", "127.0.0.1:1,127.0.0.1:2"}, "--tcp-share) = 1.5, want 0..1"},
		{[]string{"--tcp-share", "0.5", "--tcp-addrs", "127.0.0.1:1,127.0.0.1:2", "--engine", "fast"}, "needs the full engine"},
		{[]string{"--tcp-share", "0.5", "--tcp-addrs", "127.0.0.1:1"}, "--tcp-addrs has 1 addresses, --forwarders 2"},
		{[]string{"--tcp-share", "0.5", "--tcp-addrs", "127.0.0.1,127.0.0.1:2"}, "--tcp-addrs \"127.0.0.1\": want ip:port"},
		{[]string{"--tcp-share", "0.5"}, "has no TCP listener in transports.streams (--tcp-addrs)"},
		{[]string{"--tcp-share", "0.5", "--tls-share", "1", "--tcp-addrs", "127.0.0.1:1,127.0.0.1:2"}, "has no TLS listener"},
		{[]string{"--tls-share", "0.5"}, "give tcp_share (--tcp-share) too"},
		{[]string{"--tcp-share", "0.5", "--tls-share", "1", "--tls-addrs", "127.0.0.1:1,127.0.0.1:2", "--tls-ca", "/nonexistent.pem"}, "--tls-ca: open /nonexistent.pem"},
	} {
		r := run(t, environ, append(base, tc.args...)...)
		require.NotEqual(t, 0, r.code, "%v", tc.args)
		require.Contains(t, r.stderr, tc.want, "%v", tc.args)
	}
}
