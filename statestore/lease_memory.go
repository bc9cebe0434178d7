package statestore

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
	"weak"
)

var _ Leases = (*Memory)(nil)

// memLeases is one Memory's leases. Memory's own fields belong to calls, so
// its leases live in a side table keyed weakly by the Memory: an entry goes
// away when its Memory is garbage collected.
type memLeases struct {
	mu      sync.Mutex
	holders map[string]memHolder // expired holders are dropped when looked at
	epochs  map[string]uint64    // last epoch of every name ever held, kept for good
}

type memHolder struct {
	owner   string
	epoch   uint64
	expires time.Time
}

// memLeaseTables maps weak.Pointer[Memory] to *memLeases.
var memLeaseTables sync.Map

// leases returns s's lease table, making it on first use.
func (s *Memory) leases() *memLeases {
	key := weak.Make(s)
	if t, ok := memLeaseTables.Load(key); ok {
		return t.(*memLeases)
	}
	t, loaded := memLeaseTables.LoadOrStore(key, &memLeases{holders: map[string]memHolder{}, epochs: map[string]uint64{}})
	if !loaded {
		runtime.AddCleanup(s, func(k weak.Pointer[Memory]) { memLeaseTables.Delete(k) }, key)
	}
	return t.(*memLeases)
}

// holderLocked returns the live holder of name, dropping an expired one.
func (t *memLeases) holderLocked(name string, now time.Time) (memHolder, bool) {
	h, ok := t.holders[name]
	if ok && !now.Before(h.expires) {
		delete(t.holders, name)
		return memHolder{}, false
	}
	return h, ok
}

func (h memHolder) lease(name string) Lease { return Lease{Name: name, Owner: h.owner, Epoch: h.epoch} }

func memLeaseCtx(ctx context.Context, op, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %s lease %q: %w", ErrUnavailable, op, name, err)
	}
	return nil
}

// AcquireLease implements Leases.
func (s *Memory) AcquireLease(ctx context.Context, name, owner string, ttl time.Duration) (Lease, error) {
	if err := validateAcquire(name, owner, ttl); err != nil {
		return Lease{}, err
	}
	if err := memLeaseCtx(ctx, "acquire", name); err != nil {
		return Lease{}, err
	}
	t := s.leases()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := s.now()
	h, ok := t.holderLocked(name, now)
	switch {
	case ok && h.owner != owner:
		return Lease{}, heldError(h.lease(name), h.expires.Sub(now))
	case !ok:
		if t.epochs[name] == 0 {
			t.epochs[name] = uint64(now.Unix()) // as Redis does: see lease.go
		}
		t.epochs[name]++
		h = memHolder{owner: owner, epoch: t.epochs[name]}
	}
	h.expires = now.Add(leaseTTLMillis(ttl))
	t.holders[name] = h
	return h.lease(name), nil
}

// RenewLease implements Leases.
func (s *Memory) RenewLease(ctx context.Context, l Lease, ttl time.Duration) error {
	if err := validateLease(l); err != nil {
		return err
	}
	if err := validateLeaseTTL(ttl); err != nil {
		return err
	}
	if err := memLeaseCtx(ctx, "renew", l.Name); err != nil {
		return err
	}
	t := s.leases()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := s.now()
	h, ok := t.holderLocked(l.Name, now)
	if !ok || h.owner != l.Owner || h.epoch != l.Epoch {
		return lostError(l, h.lease(l.Name), ok)
	}
	h.expires = now.Add(leaseTTLMillis(ttl))
	t.holders[l.Name] = h
	return nil
}

// ReleaseLease implements Leases.
func (s *Memory) ReleaseLease(ctx context.Context, l Lease) error {
	if err := validateLease(l); err != nil {
		return err
	}
	if err := memLeaseCtx(ctx, "release", l.Name); err != nil {
		return err
	}
	t := s.leases()
	t.mu.Lock()
	defer t.mu.Unlock()
	if h, ok := t.holderLocked(l.Name, s.now()); ok && h.owner == l.Owner && h.epoch == l.Epoch {
		delete(t.holders, l.Name)
	}
	return nil
}

// LeaseHolder implements Leases.
func (s *Memory) LeaseHolder(ctx context.Context, name string) (Lease, error) {
	if err := validateLeaseName(name); err != nil {
		return Lease{}, err
	}
	if err := memLeaseCtx(ctx, "look up holder of", name); err != nil {
		return Lease{}, err
	}
	t := s.leases()
	t.mu.Lock()
	defer t.mu.Unlock()
	h, ok := t.holderLocked(name, s.now())
	if !ok {
		return Lease{}, fmt.Errorf("%w: lease %q is free", ErrNotFound, name)
	}
	return h.lease(name), nil
}
