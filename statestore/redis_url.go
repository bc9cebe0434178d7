package statestore

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterReloadInterval is how often a cluster client refreshes its slot
// map when nothing else makes it. go-redis reloads on MOVED, but a killed
// master answers nothing at all, so without a periodic reload (go-redis's
// default is a minute) the client would keep dialling the dead node long
// after its replica took over.
const clusterReloadInterval = time.Second

// URL schemes OpenRedis accepts, with or without TLS ("rediss").
const (
	schemeCluster  = "+cluster"
	schemeSentinel = "+sentinel"
)

// replicaReadOptions are go-redis query options that send reads to
// replicas. The store reads a record and writes it back by compare-and-set;
// a stale read from a lagging replica only costs a retry, but a checkpoint
// or lease read from one can be wrong, so every command goes to the master.
var replicaReadOptions = []string{"read_only", "route_by_latency", "route_randomly", "replica_only", "use_disconnected_replicas"}

// newRedisClient builds the client for rawURL (see OpenRedis for the forms)
// with cfg merged in.
func newRedisClient(rawURL string, cfg Config) (redis.UniversalClient, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("%w: redis url: missing scheme: want redis://, rediss://, redis+cluster:// or redis+sentinel://", ErrInvalid)
	}
	base, kind, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" || (kind != "" && kind != "cluster" && kind != "sentinel") {
		return nil, fmt.Errorf("%w: redis url: scheme %q: want redis, rediss, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel", ErrInvalid, scheme)
	}
	switch kind {
	case "":
		opt, err := redisOptions(rawURL, cfg)
		if err != nil {
			return nil, err
		}
		return redis.NewClient(opt), nil
	case "cluster":
		opt, err := clusterOptions(base, rest, cfg)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(opt), nil
	default:
		opt, err := failoverOptions(base, rest, cfg)
		if err != nil {
			return nil, err
		}
		return redis.NewFailoverClient(opt), nil
	}
}

// multiHostURL is a redis+cluster or redis+sentinel URL taken apart:
// [user[:password]@]host:port[,host:port...][/path][?query].
type multiHostURL struct {
	user  *url.Userinfo
	hosts []string
	path  string
	query url.Values
}

func parseMultiHost(scheme, rest string) (multiHostURL, error) {
	var m multiHostURL
	form := scheme + "://[[user]:password@]host:port,host:port"
	rest, rawQuery, _ := strings.Cut(rest, "?")
	if strings.Contains(rest, "#") {
		return m, fmt.Errorf("%s URL: remove the fragment (#...)", scheme)
	}
	hostPart := rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		hostPart, m.path = rest[:i], rest[i:]
	}
	if i := strings.LastIndexByte(hostPart, '@'); i >= 0 {
		u, err := url.Parse("redis://" + hostPart[:i+1] + "h")
		if err != nil {
			return m, fmt.Errorf("%s URL: user info: %v (percent-encode special characters in the password)", scheme, err)
		}
		m.user, hostPart = u.User, hostPart[i+1:]
	}
	if hostPart == "" {
		return m, fmt.Errorf("%s URL names no node: write %s", scheme, form)
	}
	for h := range strings.SplitSeq(hostPart, ",") {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" {
			return m, fmt.Errorf("%s URL: node %q: want host:port, nodes separated by commas (%s)", scheme, h, form)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return m, fmt.Errorf("%s URL: node %q: port must be a number from 1 to 65535", scheme, h)
		}
		m.hosts = append(m.hosts, h)
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return m, fmt.Errorf("%s URL: query: %v", scheme, err)
	}
	if q.Has("addr") {
		return m, fmt.Errorf("%s URL: list every node in the host part (%s), not with addr=", scheme, form)
	}
	for _, o := range replicaReadOptions {
		if q.Has(o) {
			return m, fmt.Errorf("%s URL: remove %s: the store reads from masters only, so that a read is never older than the write before it", scheme, o)
		}
	}
	m.query = q
	return m, nil
}

// goRedisURL rebuilds m as the single-host URL with addr= parameters that
// go-redis's ParseClusterURL and ParseFailoverURL read.
func (m multiHostURL) goRedisURL(base string, user *url.Userinfo, path string, q url.Values) string {
	for _, h := range m.hosts[1:] {
		q.Add("addr", h)
	}
	u := url.URL{Scheme: base, User: user, Host: m.hosts[0], Path: path, RawQuery: q.Encode()}
	return u.String()
}

func clusterOptions(base, rest string, cfg Config) (*redis.ClusterOptions, error) {
	scheme := base + schemeCluster
	m, err := parseMultiHost(scheme, rest)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if m.path != "" && m.path != "/" && m.path != "/0" {
		return nil, fmt.Errorf("%w: %s URL: remove the path %q: a Redis Cluster has only database 0", ErrInvalid, scheme, m.path)
	}
	opt, err := redis.ParseClusterURL(m.goRedisURL(base, m.user, "", m.query))
	if err != nil {
		return nil, fmt.Errorf("%w: %s URL: %v", ErrInvalid, scheme, err)
	}
	if opt.ClusterStateReloadInterval == 0 {
		opt.ClusterStateReloadInterval = clusterReloadInterval
	}
	applyConfig(knobs{
		password: &opt.Password, tls: &opt.TLSConfig, host: m.hosts[0],
		dial: &opt.DialTimeout, read: &opt.ReadTimeout, write: &opt.WriteTimeout,
		maxRetries: &opt.MaxRetries, maxRetryBackoff: &opt.MaxRetryBackoff, dialerRetries: &opt.DialerRetries,
		contextTimeout: &opt.ContextTimeoutEnabled,
	}, cfg)
	return opt, nil
}

// failoverOptions reads redis+sentinel://[user:password@]s1:port,s2:port/
// <master>[/<db>][?options]. The user info is the data nodes' (the master's
// and replicas'); sentinel_username and sentinel_password in the query are
// the sentinels' own, if they require one.
func failoverOptions(base, rest string, cfg Config) (*redis.FailoverOptions, error) {
	scheme := base + schemeSentinel
	m, err := parseMultiHost(scheme, rest)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	form := scheme + "://host:port,host:port/<master-name>[/<db>]"
	parts := strings.Split(strings.TrimPrefix(m.path, "/"), "/")
	if parts[0] == "" || len(parts) > 2 {
		return nil, fmt.Errorf("%w: %s URL: path %q: name the master the sentinels monitor, as in %s", ErrInvalid, scheme, m.path, form)
	}
	if m.query.Has("master_name") {
		return nil, fmt.Errorf("%w: %s URL: give the master name in the path (%s), not with master_name=", ErrInvalid, scheme, form)
	}
	if m.query.Has("password") || m.query.Has("username") {
		return nil, fmt.Errorf("%w: %s URL: give the data nodes' credentials before the hosts (%s://user:password@...), not in the query", ErrInvalid, scheme, scheme)
	}
	q := m.query
	q.Set("master_name", parts[0])
	if m.user != nil {
		q.Set("username", m.user.Username())
		pw, _ := m.user.Password()
		q.Set("password", pw)
	}
	var sentinelUser *url.Userinfo
	if q.Has("sentinel_password") || q.Has("sentinel_username") {
		sentinelUser = url.UserPassword(q.Get("sentinel_username"), q.Get("sentinel_password"))
		q.Del("sentinel_username")
		q.Del("sentinel_password")
	}
	path := ""
	if len(parts) == 2 {
		if db, err := strconv.Atoi(parts[1]); err != nil || db < 0 {
			return nil, fmt.Errorf("%w: %s URL: database %q after the master name must be a number (%s)", ErrInvalid, scheme, parts[1], form)
		}
		path = "/" + parts[1]
	}
	opt, err := redis.ParseFailoverURL(m.goRedisURL(base, sentinelUser, path, q))
	if err != nil {
		return nil, fmt.Errorf("%w: %s URL: %v", ErrInvalid, scheme, err)
	}
	applyConfig(knobs{
		password: &opt.Password, tls: &opt.TLSConfig, host: m.hosts[0],
		dial: &opt.DialTimeout, read: &opt.ReadTimeout, write: &opt.WriteTimeout,
		maxRetries: &opt.MaxRetries, maxRetryBackoff: &opt.MaxRetryBackoff, dialerRetries: &opt.DialerRetries,
		contextTimeout: &opt.ContextTimeoutEnabled,
	}, cfg)
	return opt, nil
}

// knobs points at the fields of one go-redis option struct (Options,
// ClusterOptions or FailoverOptions) that Config overrides.
type knobs struct {
	password          *string
	tls               **tls.Config
	host              string // for the TLS server name
	dial, read, write *time.Duration
	maxRetries        *int
	maxRetryBackoff   *time.Duration
	dialerRetries     *int
	contextTimeout    *bool
}

// applyConfig merges cfg into the options k points at.
func applyConfig(k knobs, cfg Config) {
	*k.contextTimeout = true
	if cfg.Password != "" {
		*k.password = cfg.Password
	}
	if cfg.TLS != nil {
		t := cfg.TLS.Clone()
		if t.ServerName == "" {
			if *k.tls != nil {
				t.ServerName = (*k.tls).ServerName
			} else if host, _, err := net.SplitHostPort(k.host); err == nil {
				t.ServerName = host
			}
		}
		if t.MinVersion == 0 {
			t.MinVersion = tls.VersionTLS12
		}
		*k.tls = t
	}
	switch {
	case cfg.DialTimeout > 0:
		*k.dial = cfg.DialTimeout
	case *k.dial == 0:
		*k.dial = DefaultDialTimeout
	}
	// Fail fast and leave the retrying to the caller (a Writer): one quick
	// retry covers a pooled connection that died with a restarted server,
	// more only stretches each failure while Redis is away. The URL's
	// max_retries and max_retry_backoff still win.
	if *k.maxRetries == 0 {
		*k.maxRetries = 1
	}
	if *k.maxRetryBackoff == 0 {
		*k.maxRetryBackoff = 100 * time.Millisecond
	}
	if *k.dialerRetries == 0 {
		*k.dialerRetries = 2
	}
	switch {
	case cfg.OpTimeout > 0:
		*k.read, *k.write = cfg.OpTimeout, cfg.OpTimeout
	case *k.read == 0 && *k.write == 0:
		*k.read, *k.write = DefaultOpTimeout, DefaultOpTimeout
	case *k.write == 0:
		*k.write = *k.read // as go-redis does
	case *k.read == 0:
		*k.read = DefaultOpTimeout
	}
}
