package statestore

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/callrelay/callrelay/protocol"
)

// Keys of one call, all under the hash tag {call:<hex id>}:
//
//	{call:<id>}:state  string, the call record (codec.go), TTL Config.TTL
//	{call:<id>}:ckpt   hash, per checkpoint kind k: field "d:k" the data and
//	                   field "e:k" its expiry in server Unix milliseconds;
//	                   the key's TTL is the longest checkpoint TTL asked for
func stateKey(id protocol.ID) string { return "{call:" + id.String() + "}:state" }
func ckptKey(id protocol.ID) string  { return "{call:" + id.String() + "}:ckpt" }

// Cluster safety: every script below and in lease_redis.go is given all the
// keys it touches in KEYS, never builds a key name inside Lua, and its keys
// share one hash tag ({call:<id>} here, {lease:<name>} for leases), so each
// runs on the one node that owns that slot and Redis Cluster never answers
// CROSSSLOT. TIME inside a script is safe: Redis 7 replicates a script's
// effects, not the script. Keep it so when adding a script.

// swapScript is the compare-and-set. KEYS: state, ckpt. ARGV: SHA-1 (hex) of
// the record read, "" if there was none; the new record, "" to delete the
// call; the TTL in milliseconds. Returns 1 if applied, 0 if the record changed.
var swapScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return 0 end
elseif not cur or redis.sha1hex(cur) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
`)

// saveCkptScript: KEYS: ckpt. ARGV: kind, data, ttl ms.
var saveCkptScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[2], 'e:' .. ARGV[1], string.format('%d', now + ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
`)

// loadCkptScript: KEYS: ckpt. ARGV: kind. Returns the data, or nil if absent
// or expired.
var loadCkptScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'd:' .. ARGV[1], 'e:' .. ARGV[1])
if not v[1] or not v[2] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = tonumber(v[2])
if not exp or exp <= now then return false end
return v[1]
`)

// Redis is the Store backed by Redis: standalone, Redis Cluster or
// Sentinel, through a redis.UniversalClient.
type Redis struct {
	c    redis.UniversalClient
	ttl  time.Duration
	owns bool // Close closes c

	// Replicated deployments (Cluster, Sentinel): every critical write is
	// followed, on the same connection to the master, by WAIT for
	// waitReplicas replicas, so a master that dies right after answering
	// cannot take an acknowledged change with it (durable.go).
	waitReplicas    int
	waitTimeout     time.Duration
	lastUnder       atomic.Int64 // unix ns of the last write no replica acknowledged in time
	underReplicated atomic.Uint64
}

var _ Store = (*Redis)(nil)

// OpenRedis connects to the Redis deployment at url, with cfg's TLS,
// Password and timeouts applied on top (see Config). The URL forms are:
//
//	redis://[[user]:password@]host:port[/db][?options]     one server
//	rediss://...                                           the same over TLS
//	redis+cluster://[[user]:password@]host:port,host:port,...[?options]
//	                                                       a Redis Cluster
//	redis+sentinel://[[user]:password@]host:port,host:port,.../<master>[/db][?options]
//	                                                       a primary found through
//	                                                       Sentinel; the hosts are
//	                                                       the sentinels
//
// and rediss+cluster:// and rediss+sentinel:// over TLS. Options are
// go-redis's query options (dial_timeout, read_timeout, max_retries, ...).
// A cluster URL lists as many nodes as you like (one that answers is
// enough to find the rest) and has no database. A sentinel URL's user info
// is the data nodes' credentials; sentinel_username and sentinel_password
// in the query are the sentinels' own. Options that read from replicas
// (read_only, route_by_latency, route_randomly, replica_only) are refused:
// every command goes to the master. A malformed URL is ErrInvalid with a
// message saying what to fix.
//
// Socket I/O is bounded by OpTimeout and by each call's context. Close
// releases it.
func OpenRedis(url string, cfg Config) (*Redis, error) {
	c, err := newRedisClient(url, cfg)
	if err != nil {
		return nil, err
	}
	r := NewRedis(c, cfg)
	r.owns = true
	if replicated(url) {
		r.waitReplicas, r.waitTimeout = 1, defaultWaitTimeout
	}
	return r, nil
}

// redisOptions parses a redis:// or rediss:// url and merges cfg into the
// result.
func redisOptions(url string, cfg Config) (*redis.Options, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%w: redis url: %v", ErrInvalid, err)
	}
	applyConfig(knobs{
		password: &opt.Password, tls: &opt.TLSConfig, host: opt.Addr,
		dial: &opt.DialTimeout, read: &opt.ReadTimeout, write: &opt.WriteTimeout,
		maxRetries: &opt.MaxRetries, maxRetryBackoff: &opt.MaxRetryBackoff, dialerRetries: &opt.DialerRetries,
		contextTimeout: &opt.ContextTimeoutEnabled,
	}, cfg)
	return opt, nil
}

// NewRedis uses an existing client, which the caller keeps and closes. Set
// its ContextTimeoutEnabled so a hung Redis cannot outlast a context.
func NewRedis(c redis.UniversalClient, cfg Config) *Redis {
	return &Redis{c: c, ttl: cfg.withDefaults().TTL}
}

// Close closes the client if OpenRedis made it.
func (r *Redis) Close() error {
	if !r.owns {
		return nil
	}
	if err := r.c.Close(); err != nil {
		return fmt.Errorf("statestore: closing redis client: %v", err)
	}
	return nil
}

// fail turns a go-redis error into one of ours; none of go-redis's types
// escape, only its message.
//
// A key of the wrong type is ErrCorrupt. Everything else is ErrUnavailable:
// network errors and timeouts, and the server errors that say Redis cannot
// serve us now (LOADING, READONLY after a failover, CLUSTERDOWN, TRYAGAIN,
// MASTERDOWN, BUSY, OOM, NOAUTH or WRONGPASS while a password rotates). Our
// scripts and commands raise no other error on a healthy Redis, so an
// unknown one is treated as the backend being unusable, not the change
// being refused: a Writer keeps the change and retries it.
func fail(ctx context.Context, op string, id protocol.ID, err error) error {
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		return fmt.Errorf("%w: %s call %s: key holds the wrong type: %v", ErrCorrupt, op, id, err)
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %s call %s: %w", ErrUnavailable, op, id, cerr)
	}
	return fmt.Errorf("%w: %s call %s: %v", ErrUnavailable, op, id, err)
}

func (r *Redis) load(ctx context.Context, id protocol.ID) ([]byte, error) {
	b, err := r.c.Get(ctx, stateKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fail(ctx, "GET", id, err)
	}
	if b == nil {
		b = []byte{} // an empty value is a (corrupt) record, not none
	}
	return b, nil
}

func (r *Redis) swap(ctx context.Context, id protocol.ID, old, new []byte) (bool, error) {
	var sum string
	if old != nil {
		h := sha1.Sum(old)
		sum = hex.EncodeToString(h[:])
	}
	keys := []string{stateKey(id), ckptKey(id)}
	n, err := r.runScript(ctx, swapScript, keys, sum, new, r.ttl.Milliseconds()).Int()
	if err != nil {
		return false, fail(ctx, "compare-and-set", id, err)
	}
	return n == 1, nil
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, callID protocol.ID) (Call, error) {
	return getCall(ctx, r, callID)
}

// AddMember implements Store.
func (r *Redis) AddMember(ctx context.Context, callID protocol.ID, class protocol.CallClass, maxSize int, participant protocol.ID, m Member) (Call, error) {
	return addMember(ctx, r, callID, class, maxSize, participant, m)
}

// UpdateMember implements Store.
func (r *Redis) UpdateMember(ctx context.Context, callID, participant protocol.ID, m Member) (Call, error) {
	return updateMember(ctx, r, callID, participant, m)
}

// RemoveMember implements Store.
func (r *Redis) RemoveMember(ctx context.Context, callID, participant protocol.ID) (Call, error) {
	return removeMember(ctx, r, callID, participant)
}

// RemoveMemberServedBy implements Store.
func (r *Redis) RemoveMemberServedBy(ctx context.Context, callID, participant protocol.ID, forwarder string) (Call, error) {
	return removeMemberServedBy(ctx, r, callID, participant, forwarder)
}

// Touch implements Store.
func (r *Redis) Touch(ctx context.Context, callID protocol.ID) error {
	ok, err := r.c.PExpire(ctx, stateKey(callID), r.ttl).Result()
	if err != nil {
		return fail(ctx, "PEXPIRE", callID, err)
	}
	if !ok {
		return fmt.Errorf("%w: call %s", ErrNotFound, callID)
	}
	return nil
}

// SaveCheckpoint implements Store.
func (r *Redis) SaveCheckpoint(ctx context.Context, callID protocol.ID, kind string, data []byte, ttl time.Duration) error {
	if err := validateCheckpoint(kind, data, ttl); err != nil {
		return err
	}
	keys := []string{ckptKey(callID)}
	if err := saveCkptScript.Run(ctx, r.c, keys, kind, data, ttl.Milliseconds()).Err(); err != nil {
		return fail(ctx, "save checkpoint "+kind+" of", callID, err)
	}
	return nil
}

// LoadCheckpoint implements Store.
func (r *Redis) LoadCheckpoint(ctx context.Context, callID protocol.ID, kind string) ([]byte, error) {
	b, err := loadCkptScript.Run(ctx, r.c, []string{ckptKey(callID)}, kind).Text()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: checkpoint %q of call %s", ErrNotFound, kind, callID)
	}
	if err != nil {
		return nil, fail(ctx, "load checkpoint "+kind+" of", callID, err)
	}
	return []byte(b), nil
}
