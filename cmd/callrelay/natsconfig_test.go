package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// authNATS starts an embedded nats-server on a random loopback port with
// the authorization opts sets, and returns its nats:// URL (without
// credentials). t.Cleanup stops it.
func authNATS(t *testing.T, set func(*server.Options)) (*server.Server, string) {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true}
	set(opts)
	s, err := server.NewServer(opts)
	require.NoError(t, err)
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	require.True(t, s.ReadyForConnections(10*time.Second), "nats-server did not start")
	return s, s.ClientURL()
}

// dashboardConnects starts a dashboard with environ and args (besides a
// cluster key and a loopback listen address), waits until it serves, checks
// the server sees it as a client, and stops it.
func dashboardConnects(t *testing.T, s *server.Server, environ []string, args ...string) {
	t.Helper()
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	p := start(t, append(environ, "CALLRELAY_CLUSTER_KEY="+k.String()),
		append([]string{"dashboard", "--listen", "127.0.0.1:0"}, args...)...)
	deadline := time.Now().Add(readyTimeout)
	for !strings.Contains(p.stdout.String(), "callrelay dashboard on http://") {
		require.False(t, p.exited(), "dashboard exited: %s", p.stderr)
		require.True(t, time.Now().Before(deadline), "dashboard did not start: %s", p.stderr)
		time.Sleep(20 * time.Millisecond)
	}
	cz, err := s.Connz(&server.ConnzOptions{})
	require.NoError(t, err)
	var names []string
	for _, c := range cz.Conns {
		names = append(names, c.Name)
	}
	require.Contains(t, names, "callrelay dashboard")
	code, _ := p.stop(t, syscall.SIGINT)
	require.Equal(t, 0, code)
}

// refused runs cmd with args against a server that must refuse it: a
// non-zero exit that says the credentials were refused, without the
// secret in the output.
func refused(t *testing.T, environ []string, secret string, args ...string) {
	t.Helper()
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	r := run(t, append(environ, "CALLRELAY_CLUSTER_KEY="+k.String()), args...)
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "refused the credentials")
	require.Contains(t, strings.ToLower(r.stderr), "authorization violation")
	require.NotContains(t, r.stdout+r.stderr, secret, "the secret is not printed")
}

// NATS user/password, from flags, the environment or the URL, is what the
// server checks; a wrong password is refused clearly.
func TestNATSConfigUserPassword(t *testing.T) {
	s, u := authNATS(t, func(o *server.Options) { o.Username, o.Password = "relay", "s3cret-pw" })
	withCreds := strings.Replace(u, "nats://", "nats://relay:s3cret-pw@", 1)
	t.Run("flags", func(t *testing.T) {
		dashboardConnects(t, s, env(), "--nats-url", u, "--nats-user", "relay", "--nats-password", "s3cret-pw")
	})
	t.Run("env", func(t *testing.T) {
		dashboardConnects(t, s, env("CALLRELAY_NATS_URL="+u, "CALLRELAY_NATS_USER=relay", "CALLRELAY_NATS_PASSWORD=s3cret-pw"))
	})
	t.Run("in the URL", func(t *testing.T) {
		dashboardConnects(t, s, env(), "--nats-url", withCreds)
	})
	t.Run("flag overrides env", func(t *testing.T) {
		dashboardConnects(t, s, env("CALLRELAY_NATS_URL="+u, "CALLRELAY_NATS_USER=relay", "CALLRELAY_NATS_PASSWORD=wrong-pw"), "--nats-password", "s3cret-pw")
	})
	t.Run("wrong password", func(t *testing.T) {
		refused(t, env(), "wrong-pw", "dashboard", "--nats-url", u, "--nats-user", "relay", "--nats-password", "wrong-pw")
		refused(t, env(), "wrong-pw", "conductor", "--nats-url", strings.Replace(u, "nats://", "nats://relay:wrong-pw@", 1))
	})
	t.Run("none", func(t *testing.T) {
		refused(t, env(), "s3cret-pw", "conductor", "--nats-url", u)
	})
}

// A NATS token, from the flag or the URL, is what the server checks.
func TestNATSConfigToken(t *testing.T) {
	s, u := authNATS(t, func(o *server.Options) { o.Authorization = "tok-0123456789" })
	t.Run("flag", func(t *testing.T) {
		dashboardConnects(t, s, env(), "--nats-url", u, "--nats-token", "tok-0123456789")
	})
	t.Run("in the URL", func(t *testing.T) {
		dashboardConnects(t, s, env(), "--nats-url", strings.Replace(u, "nats://", "nats://tok-0123456789@", 1))
	})
	t.Run("wrong", func(t *testing.T) {
		refused(t, env("CALLRELAY_NATS_TOKEN=tok-wrong"), "tok-wrong", "dashboard", "--nats-url", u)
		refused(t, env(), "tok-wrong", "conductor", "--nats-url", strings.Replace(u, "nats://", "nats://tok-wrong@", 1))
	})
}

// An nkey seed file authenticates against a server that knows the public
// nkey.
func TestNATSConfigNKey(t *testing.T) {
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "user.nk")
	require.NoError(t, os.WriteFile(file, seed, 0o600))
	s, u := authNATS(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	dashboardConnects(t, s, env(), "--nats-url", u, "--nats-nkey", file)
	other, err := nkeys.CreateUser()
	require.NoError(t, err)
	otherSeed, err := other.Seed()
	require.NoError(t, err)
	otherFile := filepath.Join(t.TempDir(), "other.nk")
	require.NoError(t, os.WriteFile(otherFile, otherSeed, 0o600))
	refused(t, env(), string(otherSeed), "dashboard", "--nats-url", u, "--nats-nkey", otherFile)
}

// Combinations of NATS options that cannot work are refused before any
// connection, saying what to fix, by every command that connects.
func TestNATSConfigRefusesBadCombinations(t *testing.T) {
	dir := t.TempDir()
	pem := filepath.Join(dir, "c.pem")
	require.NoError(t, os.WriteFile(pem, []byte("x"), 0o600))
	const u = "nats://127.0.0.1:1" // never reached
	_, seed := keygen(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--nats-url", u, "--nats-tls-cert", pem}, "--nats-tls-cert and --nats-tls-key go together"},
		{"key without cert", []string{"--nats-url", u, "--nats-tls-key", pem}, "go together: give both for mutual TLS, or neither"},
		{"user without password", []string{"--nats-url", u, "--nats-user", "relay"}, "give both --nats-user and --nats-password"},
		{"user and token", []string{"--nats-url", u, "--nats-user", "a", "--nats-password", "b", "--nats-token", "c"}, "different ways to authenticate: give one"},
		{"URL credentials and token", []string{"--nats-url", "nats://a:b@127.0.0.1:1", "--nats-token", "c"}, "credentials in --nats-url are different ways to authenticate"},
		{"missing creds file", []string{"--nats-url", u, "--nats-creds", filepath.Join(dir, "nope.creds")}, "--nats-creds: stat"},
		{"missing CA", []string{"--nats-url", u, "--nats-tls-ca", filepath.Join(dir, "nope.pem")}, "--nats-tls-ca: stat"},
		{"options without URL", []string{"--nats-token", "c"}, "--nats-token is set but --nats-url (CALLRELAY_NATS_URL) is empty"},
		{"bad URL", []string{"--nats-url", "nats://a:pw@/x"}, "want nats://host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range [][]string{{"conductor"}, {"dashboard"}, {"forwarder"}, {"loadtest", "agent", "--signing-key", seed}} {
				r := run(t, env(), append(cmd, tc.args...)...)
				require.NotEqual(t, 0, r.code, "%s", cmd)
				require.Contains(t, r.stderr, tc.want, "%s", cmd)
				require.NotContains(t, r.stderr, ":pw@", "%s: the URL's password is masked", cmd)
			}
		})
	}
}

func TestNATSConfigMask(t *testing.T) {
	for in, want := range map[string]string{
		"nats://h:4222":                         "nats://h:4222",
		"nats://u:p@h:4222, tls://tok@h2:4222":  "nats://u:****@h:4222,tls://****@h2:4222",
		"u:p@h:4222":                            "u:****@h:4222",
		"nats://u:p/a#b@h:4222":                 "nats://u:****@h:4222",
		"nats://u%40x:p%3Aq@h:4222,nats://h3:1": "nats://u%40x:****@h:4222,nats://h3:1",
	} {
		require.Equal(t, want, maskNATSURLs(in), in)
	}
	require.Equal(t, "redis://:****@h:6379/0", maskURLSecret("redis://:pw@h:6379/0", false))
	require.Equal(t, "redis://user@h:6379", maskURLSecret("redis://user@h:6379", false))
	require.Equal(t, "****", maskFlagValue("nats-password", "p"))
	require.Equal(t, "****", maskFlagValue("nats-token", "t"))
	require.Equal(t, "nats://a:****@h", maskFlagValue("nats-url", "nats://a:b@h"))
	require.Equal(t, "/c", maskFlagValue("nats-creds", "/c"))
}

// writeCert writes a PEM certificate and key signed by ca (self-signed
// when ca is nil) and returns them and the file names.
func writeCert(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return cert, key, certFile, keyFile
}

// --nats-tls-ca, --nats-tls-cert and --nats-tls-key make a mutual TLS
// connection to a server that requires client certificates; without the
// client certificate the server refuses.
func TestNATSConfigTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, caFile, _ := writeCert(t, dir, "ca", nil, nil, &x509.Certificate{SerialNumber: big.NewInt(1),
		Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature})
	_, _, srvCert, srvKey := writeCert(t, dir, "server", ca, caKey, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	_, _, cliCert, cliKey := writeCert(t, dir, "client", ca, caKey, &x509.Certificate{SerialNumber: big.NewInt(3),
		Subject: pkix.Name{CommonName: "callrelay"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: caFile, Verify: true})
	require.NoError(t, err)
	s, u := authNATS(t, func(o *server.Options) { o.TLS, o.TLSVerify, o.TLSConfig, o.TLSTimeout = true, true, tc, 5 })
	u = strings.Replace(u, "nats://", "tls://", 1)
	dashboardConnects(t, s, env("CALLRELAY_NATS_TLS_CA="+caFile), "--nats-url", u, "--nats-tls-cert", cliCert, "--nats-tls-key", cliKey)

	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	r := run(t, env("CALLRELAY_CLUSTER_KEY="+k.String()), "dashboard", "--listen", "127.0.0.1:0", "--nats-url", u, "--nats-tls-ca", caFile)
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "dashboard: nats: connecting to "+u)
}
