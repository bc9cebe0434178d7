package statestore

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestClusterURL(t *testing.T) {
	for name, tc := range map[string]struct {
		url      string
		cfg      Config
		addrs    []string
		user     string
		password string
		tls      bool
		read     time.Duration
	}{
		"one node": {url: "redis+cluster://h1:7000",
			addrs: []string{"h1:7000"}, read: DefaultOpTimeout},
		"three nodes, password": {url: "redis+cluster://:pw@h1:7000,h2:7001,10.0.0.3:7002",
			addrs: []string{"h1:7000", "h2:7001", "10.0.0.3:7002"}, password: "pw", read: DefaultOpTimeout},
		"user, escaped password, database 0": {url: "redis+cluster://app:p%40ss@h1:1,h2:2/0",
			addrs: []string{"h1:1", "h2:2"}, user: "app", password: "p@ss", read: DefaultOpTimeout},
		"IPv6 and options": {url: "redis+cluster://[::1]:7000,[::1]:7001/?read_timeout=2s&max_redirects=5",
			addrs: []string{"[::1]:7000", "[::1]:7001"}, read: 2 * time.Second},
		"TLS, our password wins": {url: "rediss+cluster://:url@h1:7000,h2:7000", cfg: Config{Password: "ours"},
			addrs: []string{"h1:7000", "h2:7000"}, password: "ours", tls: true, read: DefaultOpTimeout},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := newRedisClient(tc.url, tc.cfg)
			require.NoError(t, err)
			defer c.Close()
			require.IsType(t, &redis.ClusterClient{}, c)
			opt := c.(*redis.ClusterClient).Options()
			require.Equal(t, tc.addrs, opt.Addrs)
			require.Equal(t, tc.user, opt.Username)
			require.Equal(t, tc.password, opt.Password)
			require.Equal(t, tc.tls, opt.TLSConfig != nil)
			require.Equal(t, tc.read, opt.ReadTimeout)
			require.True(t, opt.ContextTimeoutEnabled)
			require.Equal(t, 1, opt.MaxRetries)
			require.Equal(t, clusterReloadInterval, opt.ClusterStateReloadInterval)
			require.False(t, opt.ReadOnly)
		})
	}
}

func TestSentinelURL(t *testing.T) {
	roots := &tls.Config{ServerName: "redis.internal"}
	for name, tc := range map[string]struct {
		url              string
		cfg              Config
		addrs            []string
		master           string
		db               int
		password         string
		sentinelPassword string
		serverName       string // "" for no TLS
	}{
		"three sentinels": {url: "redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster",
			addrs: []string{"s1:26379", "s2:26379", "s3:26379"}, master: "mymaster"},
		"password and database": {url: "redis+sentinel://:pw@s1:26379/calls/2",
			addrs: []string{"s1:26379"}, master: "calls", db: 2, password: "pw"},
		"sentinel password": {url: "redis+sentinel://:pw@s1:1,s2:2/calls?sentinel_password=spw&dial_timeout=1s",
			addrs: []string{"s1:1", "s2:2"}, master: "calls", password: "pw", sentinelPassword: "spw"},
		"TLS with our config": {url: "rediss+sentinel://s1:1,s2:2/m", cfg: Config{TLS: roots},
			addrs: []string{"s1:1", "s2:2"}, master: "m", serverName: "redis.internal"},
	} {
		t.Run(name, func(t *testing.T) {
			base, rest := "redis", tc.url[len("redis+sentinel://"):]
			if tc.url[:6] == "rediss" {
				base, rest = "rediss", tc.url[len("rediss+sentinel://"):]
			}
			opt, err := failoverOptions(base, rest, tc.cfg)
			require.NoError(t, err)
			require.Equal(t, tc.addrs, opt.SentinelAddrs)
			require.Equal(t, tc.master, opt.MasterName)
			require.Equal(t, tc.db, opt.DB)
			require.Equal(t, tc.password, opt.Password)
			require.Equal(t, tc.sentinelPassword, opt.SentinelPassword)
			require.True(t, opt.ContextTimeoutEnabled)
			require.Equal(t, 1, opt.MaxRetries)
			if tc.serverName == "" {
				require.Nil(t, opt.TLSConfig)
			} else {
				require.Equal(t, tc.serverName, opt.TLSConfig.ServerName)
			}
			// And OpenRedis builds a client from it.
			s, err := OpenRedis(tc.url, tc.cfg)
			require.NoError(t, err)
			require.NoError(t, s.Close())
		})
	}
}

func TestRedisURLRejects(t *testing.T) {
	for name, tc := range map[string]struct{ url, says string }{
		"no scheme":              {"h1:6379", "missing scheme"},
		"unknown scheme":         {"http://h1:6379", `scheme "http"`},
		"unknown kind":           {"redis+shard://h1:6379", `scheme "redis+shard"`},
		"cluster, no node":       {"redis+cluster://", "names no node"},
		"cluster, no port":       {"redis+cluster://h1,h2:7000", `node "h1": want host:port`},
		"cluster, empty node":    {"redis+cluster://h1:7000,,h2:7000", `node "": want host:port`},
		"cluster, bad port":      {"redis+cluster://h1:70000", "port must be a number from 1 to 65535"},
		"cluster, database":      {"redis+cluster://h1:7000/3", "only database 0"},
		"cluster, addr=":         {"redis+cluster://h1:7000?addr=h2:7000", "not with addr="},
		"cluster, replica reads": {"redis+cluster://h1:7000?read_only=true", "remove read_only"},
		"cluster, bad option":    {"redis+cluster://h1:7000?colour=blue", "colour"},
		"cluster, bad duration":  {"redis+cluster://h1:7000?read_timeout=soon", "read_timeout"},
		"sentinel, no master":    {"redis+sentinel://s1:26379", "name the master"},
		"sentinel, empty master": {"redis+sentinel://s1:26379/", "name the master"},
		"sentinel, bad database": {"redis+sentinel://s1:26379/m/x", `database "x"`},
		"sentinel, deep path":    {"redis+sentinel://s1:26379/m/1/2", "name the master"},
		"sentinel, master_name":  {"redis+sentinel://s1:26379/m?master_name=m", "in the path"},
		"sentinel, password=":    {"redis+sentinel://s1:26379/m?password=x", "credentials before the hosts"},
		"sentinel, replica only": {"redis+sentinel://s1:26379/m?replica_only=true", "remove replica_only"},
		"sentinel, fragment":     {"redis+sentinel://s1:26379/m#x", "fragment"},
		"standalone, bad":        {"redis://h1:6379/notadb", "redis url"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := OpenRedis(tc.url, Config{})
			require.ErrorIs(t, err, ErrInvalid)
			require.Contains(t, err.Error(), tc.says)
		})
	}
}
