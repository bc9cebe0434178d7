package statestore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

func TestRedisOptions(t *testing.T) {
	roots := x509.NewCertPool()
	for name, tc := range map[string]struct {
		url                  string
		cfg                  Config
		tls                  *tls.Config // nil: no TLS
		password             string
		dial, read, write    time.Duration
		insecure, sameAsCfgs bool
	}{
		"defaults": {url: "redis://h:1/0",
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"rediss, go-redis's TLS": {url: "rediss://h:1/0",
			tls:  &tls.Config{ServerName: "h", MinVersion: tls.VersionTLS12},
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"rediss, ours merged": {url: "rediss://h:1/0?skip_verify=true", cfg: Config{TLS: &tls.Config{RootCAs: roots}},
			tls:  &tls.Config{ServerName: "h", MinVersion: tls.VersionTLS12, RootCAs: roots},
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"redis, ours turns TLS on": {url: "redis://h:1/0", cfg: Config{TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}},
			tls:  &tls.Config{ServerName: "h", MinVersion: tls.VersionTLS13, RootCAs: roots},
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"our server name": {url: "rediss://h:1/0", cfg: Config{TLS: &tls.Config{ServerName: "redis.internal"}},
			tls:  &tls.Config{ServerName: "redis.internal", MinVersion: tls.VersionTLS12},
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"URL password": {url: "redis://:fromurl@h:1/0", password: "fromurl",
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"our password wins": {url: "redis://:fromurl@h:1/0", cfg: Config{Password: "ours"}, password: "ours",
			dial: DefaultDialTimeout, read: DefaultOpTimeout, write: DefaultOpTimeout},
		"URL timeouts": {url: "redis://h:1/0?dial_timeout=3s&read_timeout=2s",
			dial: 3 * time.Second, read: 2 * time.Second, write: 2 * time.Second},
		"our timeouts win": {url: "redis://h:1/0?dial_timeout=3s&read_timeout=2s&write_timeout=4s",
			cfg:  Config{DialTimeout: 200 * time.Millisecond, OpTimeout: 100 * time.Millisecond},
			dial: 200 * time.Millisecond, read: 100 * time.Millisecond, write: 100 * time.Millisecond},
	} {
		t.Run(name, func(t *testing.T) {
			var before *tls.Config
			if tc.cfg.TLS != nil {
				before = tc.cfg.TLS.Clone()
			}
			opt, err := redisOptions(tc.url, tc.cfg)
			require.NoError(t, err)
			require.True(t, opt.ContextTimeoutEnabled)
			require.Equal(t, tc.password, opt.Password)
			require.Equal(t, tc.dial, opt.DialTimeout)
			require.Equal(t, tc.read, opt.ReadTimeout)
			require.Equal(t, tc.write, opt.WriteTimeout)
			if tc.tls == nil {
				require.Nil(t, opt.TLSConfig)
				return
			}
			require.NotNil(t, opt.TLSConfig)
			require.Equal(t, tc.tls.ServerName, opt.TLSConfig.ServerName)
			require.Equal(t, tc.tls.MinVersion, opt.TLSConfig.MinVersion)
			require.Same(t, tc.tls.RootCAs, opt.TLSConfig.RootCAs)
			require.False(t, opt.TLSConfig.InsecureSkipVerify, "our TLS config wins over the URL's")
			if before != nil {
				require.NotSame(t, tc.cfg.TLS, opt.TLSConfig, "ours is copied, not changed")
				require.Equal(t, before.ServerName, tc.cfg.TLS.ServerName)
			}
		})
	}
	_, err := redisOptions("redis://h:1/0?read_timeout=soon", Config{})
	require.ErrorIs(t, err, ErrInvalid)

	// Retries are few and quick unless the URL says otherwise.
	opt, err := redisOptions("redis://h:1/0", Config{})
	require.NoError(t, err)
	require.Equal(t, 1, opt.MaxRetries)
	require.Equal(t, 100*time.Millisecond, opt.MaxRetryBackoff)
	require.Equal(t, 2, opt.DialerRetries)
	opt, err = redisOptions("redis://h:1/0?max_retries=5&max_retry_backoff=1s", Config{})
	require.NoError(t, err)
	require.Equal(t, 5, opt.MaxRetries)
	require.Equal(t, time.Second, opt.MaxRetryBackoff)
}

// TestOpenRedisTLS talks to a real redis-server over TLS, with a CA made
// for the test.
func TestOpenRedisTLS(t *testing.T) {
	dir := t.TempDir()
	roots := writeTestCerts(t, dir)
	addr := startRedisServer(t, func(port int) []string {
		return []string{"--port", "0", "--tls-port", strconv.Itoa(port),
			"--tls-cert-file", filepath.Join(dir, "server.pem"),
			"--tls-key-file", filepath.Join(dir, "server-key.pem"),
			"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"),
			"--tls-auth-clients", "no"}
	})
	_, port, _ := net.SplitHostPort(addr)
	works := func(t *testing.T, url string, cfg Config) error {
		t.Helper()
		s, err := OpenRedis(url, cfg)
		require.NoError(t, err)
		defer s.Close()
		ctx, call := testCtx(t), protocol.NewID()
		if _, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1)); err != nil {
			return err
		}
		_, err = s.Get(ctx, call)
		return err
	}
	ours := &tls.Config{RootCAs: roots}
	require.NoError(t, works(t, "rediss://"+addr+"/0", Config{TLS: ours}))
	require.NoError(t, works(t, "rediss://localhost:"+port+"/0", Config{TLS: ours}), "server name from the URL")
	require.NoError(t, works(t, "redis://"+addr+"/0", Config{TLS: ours}), "TLS config turns TLS on")
	// go-redis's default TLS trusts the system roots, which lack our CA.
	err := works(t, "rediss://"+addr+"/0", Config{})
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "certificate")
	err = works(t, "rediss://"+addr+"/0", Config{TLS: &tls.Config{RootCAs: roots, ServerName: "elsewhere.test"}})
	require.ErrorIs(t, err, ErrUnavailable)
	err = works(t, "redis://"+addr+"/0", Config{})
	require.ErrorIs(t, err, ErrUnavailable, "plain text to a TLS port")
}

// TestOpenRedisPassword talks to a redis-server started with requirepass.
func TestOpenRedisPassword(t *testing.T) {
	addr := startRedisServer(t, func(port int) []string {
		return []string{"--port", strconv.Itoa(port), "--requirepass", "s3cret"}
	})
	get := func(url string, cfg Config) error {
		s, err := OpenRedis(url, cfg)
		require.NoError(t, err)
		defer s.Close()
		_, err = s.Get(testCtx(t), protocol.NewID())
		return err
	}
	require.ErrorIs(t, get("redis://"+addr+"/0", Config{}), ErrUnavailable)
	require.ErrorIs(t, get("redis://:wrong@"+addr+"/0", Config{}), ErrUnavailable)
	require.ErrorIs(t, get("redis://:s3cret@"+addr+"/0", Config{}), ErrNotFound)
	require.ErrorIs(t, get("redis://"+addr+"/0", Config{Password: "s3cret"}), ErrNotFound)
	require.ErrorIs(t, get("redis://:wrong@"+addr+"/0", Config{Password: "s3cret"}), ErrNotFound, "ours overrides the URL's")
	require.ErrorIs(t, get("redis://:s3cret@"+addr+"/0", Config{Password: "wrong"}), ErrUnavailable)
}

// TestRedisServerErrors checks which server errors mean "unavailable" (a
// Writer retries) and which mean a definite failure, using miniredis to make
// every command answer with a given error.
func TestRedisServerErrors(t *testing.T) {
	m := miniredis.RunT(t)
	s, err := OpenRedis("redis://"+m.Addr()+"/0", Config{})
	require.NoError(t, err)
	defer s.Close()
	ctx, call, p := testCtx(t), protocol.NewID(), protocol.NewID()
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, p, testMember(1))
	require.NoError(t, err)
	for msg, want := range map[string]error{
		"LOADING Redis is loading the dataset in memory":                    ErrUnavailable,
		"READONLY You can't write against a read only replica.":             ErrUnavailable,
		"CLUSTERDOWN The cluster is down":                                   ErrUnavailable,
		"TRYAGAIN Multiple keys request during rehashing of slot":           ErrUnavailable,
		"MASTERDOWN Link with MASTER is down":                               ErrUnavailable,
		"BUSY Redis is busy running a script.":                              ErrUnavailable,
		"OOM command not allowed when used memory > 'maxmemory'.":           ErrUnavailable,
		"NOAUTH Authentication required.":                                   ErrUnavailable,
		"WRONGTYPE Operation against a key holding the wrong kind of value": ErrCorrupt,
	} {
		m.SetError(msg)
		for op, f := range map[string]func() error{
			"Get": func() error { _, err := s.Get(ctx, call); return err },
			"AddMember": func() error {
				_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(2))
				return err
			},
			"RemoveMemberServedBy": func() error {
				_, err := s.RemoveMemberServedBy(ctx, call, p, testMember(1).Forwarder)
				return err
			},
			"Touch": func() error { return s.Touch(ctx, call) },
		} {
			err := f()
			require.ErrorIs(t, err, want, "%s: %s", op, msg)
			if want == ErrUnavailable {
				require.NotErrorIs(t, err, ErrCorrupt, "%s: %s", op, msg)
			}
		}
	}
	m.SetError("")
	c, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, map[protocol.ID]Member{p: testMember(1)}, c.Members)
}

// TestRedisReadOnlyReplica: a Redis demoted to a replica (a failover seen
// from the old primary) refuses our scripts' writes; that is unavailable,
// and reads still work.
func TestRedisReadOnlyReplica(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx, call, p := testCtx(t), protocol.NewID(), protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, p, testMember(1))
	require.NoError(t, err)
	require.NoError(t, raw.Do(ctx, "REPLICAOF", "127.0.0.1", "1").Err())
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(2))
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "READONLY")
	_, err = s.Get(ctx, call)
	require.NoError(t, err)
	require.NoError(t, raw.Do(ctx, "REPLICAOF", "NO", "ONE").Err())
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(2))
	require.NoError(t, err)
}

// startRedisServer runs a redis-server of the test's own with the flags
// args(port) on a free loopback port (testenv.Redis takes no extra flags),
// and returns its address once it accepts connections. It fails the test
// if redis-server is not installed (`make deps` installs it).
func startRedisServer(t *testing.T, args func(port int) []string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	require.NoError(t, err, "redis-server not on PATH: run `make deps`")
	dir := t.TempDir()
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := l.Addr().(*net.TCPAddr).Port
		require.NoError(t, l.Close())
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

		flags := append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--daemonize", "no", "--logfile", ""}, args(port)...)
		cmd := exec.Command(bin, flags...)
		out := &testenv.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		require.NoError(t, cmd.Start())
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("redis-server %s output:\n%s", addr, out)
			}
		})
		err = waitListening(addr, exited)
		if err == nil {
			return addr
		}
		if !strings.Contains(out.String(), "Address already in use") || attempt >= 4 {
			t.Fatalf("starting redis-server %v: %v\n%s", flags, err, out)
		}
	}
}

// waitListening polls addr until it accepts a connection, the process exits,
// or ten seconds pass.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			return errors.New("redis-server exited")
		default:
		}
		conn, err := net.DialTimeout("tcp", addr, 250*time.Millisecond)
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeTestCerts writes ca.pem, server.pem and server-key.pem (for
// 127.0.0.1 and localhost) to dir and returns a pool holding the CA.
func writeTestCerts(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	writePEM := func(name, typ string, der []byte) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	}
	now := time.Now()
	caKey := key()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "statestore test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	writePEM("ca.pem", "CERTIFICATE", caDER)

	srvKey := key()
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	require.NoError(t, err)
	writePEM("server.pem", "CERTIFICATE", srvDER)
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	require.NoError(t, err)
	writePEM("server-key.pem", "EC PRIVATE KEY", keyDER)

	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return roots
}
