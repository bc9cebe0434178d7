package statestore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of one lease, both under the hash tag {lease:<name>} so they share a
// Redis Cluster slot:
//
//	{lease:<name>}:holder  string "<epoch> <owner>" (formatHolder), PX ttl;
//	                       absent while the lease is free
//	{lease:<name>}:epoch   string, the last epoch handed out, no TTL: it
//	                       outlives every holder so epochs never go back
func leaseHolderKey(name string) string { return "{lease:" + name + "}:holder" }
func leaseEpochKey(name string) string  { return "{lease:" + name + "}:epoch" }

var _ Leases = (*Redis)(nil)

// leaseLua is shared by the lease scripts. Like the call scripts (see the
// cluster-safety note in redis.go) they touch only the KEYS they are given,
// both under {lease:<name>}, so each runs on one Redis Cluster slot.
// KEYS[1] is the holder key and KEYS[2] the epoch key.
//
// parse splits a holder value into its epoch and owner, or returns nil if it
// is not "<epoch> <owner>" with a canonical epoch of at most 19 digits (so it
// fits a uint64). Go checks the owner further (parseHolder).
//
// raise makes sure the epoch counter is at least ep, so a counter that went
// missing while its holder lived can never hand out ep again. It returns the
// counter's value if that is not a number, and writes nothing then.
const leaseLua = `
local function parse(v)
  local ep, owner = string.match(v, '^([1-9]%d*) (.+)$')
  if not ep or #ep > 19 then return nil end
  return ep, owner
end
local function badCounter(c)
  return c and not (string.match(c, '^[1-9]%d*$') and #c <= 19)
end
local function raise(ep)
  local c = redis.call('GET', KEYS[2])
  if badCounter(c) then return c end
  if not c or #c < #ep or (#c == #ep and c < ep) then redis.call('SET', KEYS[2], ep) end
  return nil
end
`

// Every lease script returns {status, holder value}, or {status} when there
// is no holder; acquire's held adds the holder's remaining ttl in ms. Statuses: ok, held, lost, free, corrupt (the holder value
// does not parse), corrupt-epoch (the counter is not a number; its value
// comes second).

// acquireLeaseScript. ARGV: owner, ttl ms.
var acquireLeaseScript = redis.NewScript(leaseLua + `
local cur = redis.call('GET', KEYS[1])
if cur then
  local ep, owner = parse(cur)
  if not ep then return {'corrupt', cur} end
  if owner ~= ARGV[1] then return {'held', cur, redis.call('PTTL', KEYS[1])} end
  local bad = raise(ep)
  if bad then return {'corrupt-epoch', bad} end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ok', cur}
end
local last = redis.call('GET', KEYS[2])
if badCounter(last) then return {'corrupt-epoch', last} end
if not last then
  -- A name never held, or a Redis that lost its data: start from the
  -- server's clock in seconds, above every epoch handed out before.
  redis.call('SET', KEYS[2], redis.call('TIME')[1])
end
local v = string.format('%d', redis.call('INCR', KEYS[2])) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {'ok', v}
`)

// renewLeaseScript. ARGV: owner, epoch, ttl ms.
var renewLeaseScript = redis.NewScript(leaseLua + `
local cur = redis.call('GET', KEYS[1])
if not cur then return {'free'} end
local ep, owner = parse(cur)
if not ep then return {'corrupt', cur} end
if owner ~= ARGV[1] or ep ~= ARGV[2] then return {'lost', cur} end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'ok', cur}
`)

// releaseLeaseScript. ARGV: owner, epoch.
var releaseLeaseScript = redis.NewScript(leaseLua + `
local cur = redis.call('GET', KEYS[1])
if not cur then return {'free'} end
local ep, owner = parse(cur)
if not ep then return {'corrupt', cur} end
if owner ~= ARGV[1] or ep ~= ARGV[2] then return {'lost', cur} end
local bad = raise(ep)
if bad then return {'corrupt-epoch', bad} end
redis.call('DEL', KEYS[1])
return {'ok', cur}
`)

// leaseReply is what a lease script answered.
type leaseReply struct {
	status    string
	value     string        // the holder value, or the bad counter for corrupt-epoch
	holder    Lease         // value decoded, for ok, held and lost
	remaining time.Duration // acquire's held: how long the holder's lease had left
}

// runLease runs one lease script under leaseOpTimeout and decodes its reply.
// Corrupt values come back as ErrCorrupt errors naming the key.
func (r *Redis) runLease(ctx context.Context, op string, s *redis.Script, name string, args ...any) (leaseReply, error) {
	ctx, cancel := context.WithTimeout(ctx, leaseOpTimeout)
	defer cancel()
	keys := []string{leaseHolderKey(name), leaseEpochKey(name)}
	res, err := r.runScript(ctx, s, keys, args...).Slice()
	if err != nil {
		return leaseReply{}, leaseFail(ctx, op, name, err)
	}
	var rep leaseReply
	ok := len(res) >= 1 && len(res) <= 3
	if ok {
		rep.status, ok = res[0].(string)
	}
	if ok && len(res) >= 2 {
		rep.value, ok = res[1].(string)
	}
	if ok && len(res) == 3 {
		var ms int64
		ms, ok = res[2].(int64)
		rep.remaining = time.Duration(ms) * time.Millisecond
	}
	if !ok {
		return leaseReply{}, fmt.Errorf("%w: %s lease %q: unexpected script reply %v", ErrUnavailable, op, name, res)
	}
	switch rep.status {
	case "free":
		return rep, nil
	case "corrupt-epoch":
		return leaseReply{}, fmt.Errorf("%w: %s lease %q: key %s holds %q, want an epoch",
			ErrCorrupt, op, name, leaseEpochKey(name), rep.value)
	case "ok", "held", "lost", "corrupt":
		rep.holder, err = parseHolder(name, leaseHolderKey(name), rep.value)
		if err != nil {
			return leaseReply{}, fmt.Errorf("%s lease: %w", op, err)
		}
		if rep.status == "corrupt" { // Lua and Go disagree; should not happen
			return leaseReply{}, fmt.Errorf("%w: %s lease %q: key %s holds %q",
				ErrCorrupt, op, name, leaseHolderKey(name), rep.value)
		}
		return rep, nil
	}
	return leaseReply{}, fmt.Errorf("%w: %s lease %q: unexpected script status %q", ErrUnavailable, op, name, rep.status)
}

// leaseFail is fail for lease operations: a key of the wrong type is
// ErrCorrupt, anything else ErrUnavailable.
func leaseFail(ctx context.Context, op, name string, err error) error {
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		return fmt.Errorf("%w: %s lease %q: key %s or %s holds the wrong type: %v",
			ErrCorrupt, op, name, leaseHolderKey(name), leaseEpochKey(name), err)
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %s lease %q: %w", ErrUnavailable, op, name, cerr)
	}
	return fmt.Errorf("%w: %s lease %q: %v", ErrUnavailable, op, name, err)
}

// AcquireLease implements Leases.
func (r *Redis) AcquireLease(ctx context.Context, name, owner string, ttl time.Duration) (Lease, error) {
	if err := validateAcquire(name, owner, ttl); err != nil {
		return Lease{}, err
	}
	rep, err := r.runLease(ctx, "acquire", acquireLeaseScript, name, owner, ttl.Milliseconds())
	switch {
	case err != nil:
		return Lease{}, err
	case rep.status == "held":
		return Lease{}, heldError(rep.holder, rep.remaining)
	case rep.status != "ok":
		return Lease{}, fmt.Errorf("%w: acquire lease %q: unexpected script status %q", ErrUnavailable, name, rep.status)
	}
	return rep.holder, nil
}

// RenewLease implements Leases.
func (r *Redis) RenewLease(ctx context.Context, l Lease, ttl time.Duration) error {
	if err := validateLease(l); err != nil {
		return err
	}
	if err := validateLeaseTTL(ttl); err != nil {
		return err
	}
	epoch := strconv.FormatUint(l.Epoch, 10)
	rep, err := r.runLease(ctx, "renew", renewLeaseScript, l.Name, l.Owner, epoch, ttl.Milliseconds())
	switch {
	case err != nil:
		return err
	case rep.status == "ok":
		return nil
	}
	return lostError(l, rep.holder, rep.status == "lost")
}

// ReleaseLease implements Leases.
func (r *Redis) ReleaseLease(ctx context.Context, l Lease) error {
	if err := validateLease(l); err != nil {
		return err
	}
	epoch := strconv.FormatUint(l.Epoch, 10)
	_, err := r.runLease(ctx, "release", releaseLeaseScript, l.Name, l.Owner, epoch)
	return err
}

// LeaseHolder implements Leases. A plain GET: one key, atomic on its own.
func (r *Redis) LeaseHolder(ctx context.Context, name string) (Lease, error) {
	if err := validateLeaseName(name); err != nil {
		return Lease{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, leaseOpTimeout)
	defer cancel()
	key := leaseHolderKey(name)
	v, err := r.c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return Lease{}, fmt.Errorf("%w: lease %q is free", ErrNotFound, name)
	}
	if err != nil {
		return Lease{}, leaseFail(ctx, "look up holder of", name, err)
	}
	return parseHolder(name, key, v)
}
