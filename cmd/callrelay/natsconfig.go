package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// natsConfig is how a process connects to NATS: the --nats-* flags (also
// keys of its config file and CALLRELAY_NATS_* variables, see
// settings.go). An empty URL means no NATS.
type natsConfig struct {
	// URL is one or more server URLs, comma-separated; the client picks one
	// and fails over to the others (and to the ones the cluster gossips).
	// A URL may carry user:password@ or token@.
	URL string
	// User and Password authenticate with a username and password.
	User     string
	Password string
	// Token authenticates with an authorization token.
	Token string
	// Creds is a .creds file (user JWT and nkey seed) for decentralized auth.
	Creds string
	// NKey is a file holding an nkey seed (SU...).
	NKey string
	// TLSCA is a PEM file of CAs the server certificate must chain to.
	TLSCA string
	// TLSCert and TLSKey are a PEM client certificate and its key (mutual
	// TLS); both or neither.
	TLSCert string
	TLSKey  string
}

// natsSetting ties a natsConfig field to its flag.
type natsSetting struct {
	flag, help string
	field      func(*natsConfig) *string
}

var natsSettings = []natsSetting{
	{"nats-url", "NATS server URL(s), comma-separated; user:password@ or token@ may be in them", func(c *natsConfig) *string { return &c.URL }},
	{"nats-user", "NATS username (with --nats-password)", func(c *natsConfig) *string { return &c.User }},
	{"nats-password", "NATS password (with --nats-user)", func(c *natsConfig) *string { return &c.Password }},
	{"nats-token", "NATS authorization token", func(c *natsConfig) *string { return &c.Token }},
	{"nats-creds", "NATS .creds file (user JWT and nkey seed)", func(c *natsConfig) *string { return &c.Creds }},
	{"nats-nkey", "file holding a NATS nkey seed (SU...)", func(c *natsConfig) *string { return &c.NKey }},
	{"nats-tls-ca", "PEM file of CAs that sign the NATS servers' certificates (implies TLS)", func(c *natsConfig) *string { return &c.TLSCA }},
	{"nats-tls-cert", "PEM client certificate for NATS mutual TLS (with --nats-tls-key)", func(c *natsConfig) *string { return &c.TLSCert }},
	{"nats-tls-key", "PEM key of --nats-tls-cert", func(c *natsConfig) *string { return &c.TLSKey }},
}

// addNATSFlags registers the --nats-* flags on fs.
func addNATSFlags(fs *flag.FlagSet) *natsConfig {
	c := &natsConfig{}
	for _, s := range natsSettings {
		fs.StringVar(s.field(c), s.flag, "", s.help)
	}
	return c
}

// Validate says what to fix in a combination of options that cannot work.
// It does not connect.
func (c *natsConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if strings.TrimSpace(c.URL) == "" {
		for _, s := range natsSettings[1:] {
			if *s.field(c) != "" {
				bad("nats: --%s is set but --nats-url (CALLRELAY_NATS_URL) is empty: give the NATS server URL(s)", s.flag)
			}
		}
		return errors.Join(errs...)
	}
	inURL := false
	for _, raw := range natsServers(c.URL) {
		full := raw
		if !strings.Contains(raw, "://") {
			full = "nats://" + raw // as the client reads host:port
		}
		u, err := url.Parse(full)
		if err != nil || u.Host == "" {
			bad("nats: --nats-url %q: want nats://host:port (or tls://, ws://, wss://), several comma-separated", maskNATSURLs(raw))
			continue
		}
		if u.User != nil {
			inURL = true
		}
	}
	var ways []string
	if c.User != "" || c.Password != "" {
		ways = append(ways, "--nats-user/--nats-password")
		if c.User == "" || c.Password == "" {
			bad("nats: give both --nats-user and --nats-password, or neither")
		}
	}
	if c.Token != "" {
		ways = append(ways, "--nats-token")
	}
	if c.Creds != "" {
		ways = append(ways, "--nats-creds")
	}
	if c.NKey != "" {
		ways = append(ways, "--nats-nkey")
	}
	if inURL && len(ways) > 0 {
		ways = append(ways, "credentials in --nats-url")
	}
	if len(ways) > 1 {
		bad("nats: %s are different ways to authenticate: give one", strings.Join(ways, ", "))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("nats: --nats-tls-cert and --nats-tls-key go together: give both for mutual TLS, or neither")
	}
	for _, f := range []struct{ flag, path string }{{"nats-creds", c.Creds}, {"nats-nkey", c.NKey}, {"nats-tls-ca", c.TLSCA}, {"nats-tls-cert", c.TLSCert}, {"nats-tls-key", c.TLSKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			bad("nats: --%s: %v", f.flag, err)
		}
	}
	return errors.Join(errs...)
}

// options are the nats.Options c asks for: its credentials and TLS, and
// reconnection for ever, logging each disconnection and reconnection.
func (c *natsConfig) options(name string, log *zap.Logger) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(200 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", zap.Error(err)) }),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", zap.String("url", maskNATSURLs(nc.ConnectedUrlRedacted())))
		})}
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", c.NKey, err)
		}
		opts = append(opts, o)
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// connect connects to a validated c; the error names the (masked) servers
// and, for a refused login, the options that carry credentials.
func (c *natsConfig) connect(name string, log *zap.Logger) (*nats.Conn, error) {
	opts, err := c.options(name, log)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	nc, err := nats.Connect(strings.Join(natsServers(c.URL), ","), opts...)
	if err != nil {
		hint := ""
		if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) ||
			strings.Contains(strings.ToLower(err.Error()), "authorization") {
			hint = " (the server refused the credentials: check --nats-user/--nats-password, --nats-token, --nats-creds, --nats-nkey or the user in --nats-url)"
		}
		return nil, fmt.Errorf("nats: connecting to %s: %w%s", maskNATSURLs(c.URL), err, hint)
	}
	return nc, nil
}

// natsServers splits a comma-separated URL list, dropping blanks.
func natsServers(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// maskNATSURLs masks the secret in each comma-separated URL: the password
// of user:password@, or the whole of token@ (a NATS URL with a user and
// no password carries a token).
func maskNATSURLs(s string) string {
	parts := natsServers(s)
	for i, raw := range parts {
		parts[i] = maskURLSecret(raw, true)
	}
	return strings.Join(parts, ",")
}

// maskURLSecret replaces the password in a URL's userinfo by "****" (and,
// when userOnlyIsSecret, a user without a password, i.e. a NATS token).
// It works on the text, not on a parse, so a URL that does not parse
// (a password with a raw '/' or '#') is masked too. Redis URLs:
// maskURLSecret(u, false).
func maskURLSecret(raw string, userOnlyIsSecret bool) string {
	prefix, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		prefix, rest = raw[:i+3], raw[i+3:]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	info := rest[:at]
	if i := strings.Index(info, ":"); i >= 0 {
		return prefix + info[:i] + ":****" + rest[at:]
	}
	if userOnlyIsSecret {
		return prefix + "****" + rest[at:]
	}
	return raw
}
