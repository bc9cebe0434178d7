package forwarder

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// CertReloader is the TLS listener's certificate, read from a PEM
// certificate (chain) file and its key file, and replaced without dropping
// a call: Reload reads both files again (the forwarder command calls it on
// SIGHUP), and Watch also reads them every interval and reloads when their
// content changed. A new handshake gets the certificate loaded last
// (tls.Config.GetCertificate); connections already up keep the one they
// shook hands with, since TLS never looks at it again. A pair that does not
// load (a file missing or unreadable, not PEM, a key that is not the
// certificate's, a certificate expired or not yet valid) is refused: logged
// with the reason, counted (callrelay_forwarder_tls_cert_reloads_total
// {result="refused"}), and the certificate in use stays. A pair is judged
// once per content: a refused one is not retried, and logged, at every poll
// (a certificate written before its key is refused once, then taken when
// the key lands).
type CertReloader struct {
	certFile, keyFile string
	log               *zap.Logger

	cur             atomic.Pointer[tls.Certificate]
	mu              sync.Mutex // one reload at a time; guards seen
	seen            [sha256.Size]byte
	loaded, refused atomic.Uint64
}

// NewCertReloader loads the pair; it fails if that does not load.
func NewCertReloader(certFile, keyFile string, log *zap.Logger) (*CertReloader, error) {
	if log == nil {
		log = zap.NewNop()
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// TLSConfig is the listener's configuration: TLS 1.2 or later, the
// certificate loaded last.
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.cur.Load(), nil }}
}

// Certificate is the certificate new handshakes get.
func (r *CertReloader) Certificate() *tls.Certificate { return r.cur.Load() }

// Reload reads the pair again and takes it if it loads and differs from
// the one judged last; it returns why a pair was refused.
func (r *CertReloader) Reload() error {
	_, err := r.reload()
	return err
}

// reload reports whether a new pair was taken.
func (r *CertReloader) reload() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	certPEM, err1 := os.ReadFile(r.certFile)
	keyPEM, err2 := os.ReadFile(r.keyFile)
	if err := errors.Join(err1, err2); err != nil {
		return false, r.refuse(err)
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if sum == r.seen && r.cur.Load() != nil {
		return false, nil
	}
	r.seen = sum
	cert, err := parsePair(certPEM, keyPEM, time.Now())
	if err != nil {
		return false, r.refuse(err)
	}
	r.cur.Store(cert)
	r.loaded.Add(1)
	r.log.Info("TLS certificate loaded", zap.String("cert", r.certFile), zap.Strings("names", cert.Leaf.DNSNames),
		zap.Time("not_after", cert.Leaf.NotAfter))
	return true, nil
}

func (r *CertReloader) refuse(err error) error {
	err = fmt.Errorf("forwarder: TLS certificate %s, key %s: %w", r.certFile, r.keyFile, err)
	r.refused.Add(1)
	if r.cur.Load() != nil {
		r.log.Error("TLS certificate refused, keeping the one in use", zap.Error(err))
	}
	return err
}

// parsePair loads a certificate and its key and checks the certificate is
// valid at now.
func parsePair(certPEM, keyPEM []byte, now time.Time) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate valid from %v to %v, not now", leaf.NotBefore, leaf.NotAfter)
	}
	cert.Leaf = leaf
	return &cert, nil
}

// Watch reloads on every value from hup and, if every > 0, every interval,
// until ctx ends.
func (r *CertReloader) Watch(ctx context.Context, every time.Duration, hup <-chan os.Signal) {
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.log.Info("reloading the TLS certificate (SIGHUP)")
		case <-tick:
		}
		_ = r.Reload() // refusals are logged and counted
	}
}

var (
	mCertReloads = prometheus.NewDesc("callrelay_forwarder_tls_cert_reloads_total",
		"TLS certificate pairs read from --tls-cert/--tls-key after the first, by result (loaded: in use for new handshakes; refused: did not load, the one in use stays).", []string{"result"}, nil)
	mCertNotAfter = prometheus.NewDesc("callrelay_forwarder_tls_cert_not_after_seconds",
		"Expiry (Unix seconds) of the TLS certificate new handshakes get.", nil, nil)
)

// Describe implements prometheus.Collector.
func (r *CertReloader) Describe(ch chan<- *prometheus.Desc) {
	ch <- mCertReloads
	ch <- mCertNotAfter
}

// Collect implements prometheus.Collector.
func (r *CertReloader) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(mCertReloads, prometheus.CounterValue, float64(r.loaded.Load()-1), "loaded")
	ch <- prometheus.MustNewConstMetric(mCertReloads, prometheus.CounterValue, float64(r.refused.Load()), "refused")
	if c := r.cur.Load(); c != nil {
		ch <- prometheus.MustNewConstMetric(mCertNotAfter, prometheus.GaugeValue, float64(c.Leaf.NotAfter.Unix()))
	}
}

// CertReloads are a CertReloader's counters: pairs loaded after the first,
// pairs refused.
func (r *CertReloader) CertReloads() (loaded, refused uint64) {
	return r.loaded.Load() - 1, r.refused.Load()
}
