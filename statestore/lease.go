package statestore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Lease is a held lease.
type Lease struct {
	Name  string // e.g. "conductor/partition/17"
	Owner string // the holder's instance id (unique per process start)
	Epoch uint64 // increases by one at every acquisition by a new holder, never reused, survives the lease's expiry
}

// Leases grants named, expiring, exclusive leases with fencing epochs.
//
// The first epoch of a name is the store's clock in Unix seconds plus one,
// not 1, and so is the first after the store lost its data (a Redis
// restarted without persistence, a failover to a replica that had not seen
// the counter): epochs handed out before the loss are then still below the
// new ones, and a fenced-off holder stays fenced off. This holds while
// takeovers of one name average less than one a second, which leases that
// last seconds guarantee.
//
// Taking a free lease (never held, expired or released) always starts a new
// epoch, one more than the last epoch of that name, even when the previous
// holder was the same owner. While a holder keeps renewing, its epoch stays.
// So an epoch names exactly one uninterrupted holding, and whoever receives
// decisions can drop those carrying an epoch older than the newest it saw.
//
// Expiry is measured on the store's clock (the Redis server's, or
// Config.Now for Memory), not the holder's. A holder should therefore count
// its lease as valid only until the time it sent the acquire or renew plus
// the ttl, minus a margin for clock drift, and renew well before that.
type Leases interface {
	// AcquireLease takes the lease if it is free (never held, expired or released); if owner already holds it,
	// it renews it and returns the same epoch. If another owner holds it: ErrLeaseHeld (a *HeldError with the holder and
	// how long its lease has left).
	AcquireLease(ctx context.Context, name, owner string, ttl time.Duration) (Lease, error)
	// RenewLease extends l for ttl if l.Owner still holds it with l.Epoch; else ErrLeaseLost.
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) error
	// ReleaseLease frees it if l still holds it (no error if already lost).
	ReleaseLease(ctx context.Context, l Lease) error
	// LeaseHolder returns the current holder (ErrNotFound when free), for dashboards and tests.
	LeaseHolder(ctx context.Context, name string) (Lease, error)
}

// Bounds on lease arguments, checked before the backend is touched.
const (
	MinLeaseTTL     = 10 * time.Millisecond
	MaxLeaseTTL     = time.Hour
	MaxLeaseNameLen = 200 // bytes, for names and owners alike
)

// leaseOpTimeout bounds one lease operation on Redis, whatever the caller's
// context allows. A lease answer that comes later than this is of little use:
// a holder renews several times per ttl and must learn quickly that it could
// not.
const leaseOpTimeout = time.Second

func validateLeaseName(name string) error {
	if err := validateLeaseText("name", name); err != nil {
		return err
	}
	// Braces would change the Redis Cluster hash tag of the lease's keys.
	if strings.ContainsAny(name, "{}") {
		return fmt.Errorf("%w: lease name %q must not contain '{' or '}'", ErrInvalid, name)
	}
	return nil
}

func validateLeaseOwner(owner string) error {
	return validateLeaseText("owner", owner)
}

// validateLeaseText accepts 1..MaxLeaseNameLen bytes of printable ASCII
// (space through '~').
func validateLeaseText(what, s string) error {
	if s == "" || len(s) > MaxLeaseNameLen {
		return fmt.Errorf("%w: lease %s of %d bytes, want 1..%d", ErrInvalid, what, len(s), MaxLeaseNameLen)
	}
	for i := range len(s) {
		if c := s[i]; c < ' ' || c > '~' {
			return fmt.Errorf("%w: lease %s %q has byte %#x at %d, want printable ASCII", ErrInvalid, what, s, c, i)
		}
	}
	return nil
}

func validateLeaseTTL(ttl time.Duration) error {
	if ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		return fmt.Errorf("%w: lease ttl %v, want %v..%v", ErrInvalid, ttl, MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}

func validateAcquire(name, owner string, ttl time.Duration) error {
	if err := validateLeaseName(name); err != nil {
		return err
	}
	if err := validateLeaseOwner(owner); err != nil {
		return err
	}
	return validateLeaseTTL(ttl)
}

// validateLease checks a lease handed back by a caller: one the store could
// have granted.
func validateLease(l Lease) error {
	if err := validateLeaseName(l.Name); err != nil {
		return err
	}
	if err := validateLeaseOwner(l.Owner); err != nil {
		return err
	}
	if l.Epoch == 0 {
		return fmt.Errorf("%w: lease %q has epoch 0; epochs start at 1", ErrInvalid, l.Name)
	}
	return nil
}

// leaseTTLMillis is ttl as the store keeps it: whole milliseconds, as Redis's
// PX does.
func leaseTTLMillis(ttl time.Duration) time.Duration { return ttl.Truncate(time.Millisecond) }

// formatHolder encodes who holds a lease: the epoch in decimal, one space,
// the owner. The owner comes last so it may contain spaces.
func formatHolder(epoch uint64, owner string) string {
	return strconv.FormatUint(epoch, 10) + " " + owner
}

// parseHolder decodes formatHolder's output, read from key (named in the
// error). The epoch must be canonical decimal (no sign, no leading zero, not
// 0) and the owner a valid one.
func parseHolder(name, key, v string) (Lease, error) {
	ep, owner, ok := strings.Cut(v, " ")
	var epoch uint64
	var err error
	if ok && ep != "" && ep[0] != '0' && ep[0] != '+' {
		epoch, err = strconv.ParseUint(ep, 10, 64)
	}
	if !ok || epoch == 0 || err != nil || validateLeaseOwner(owner) != nil {
		return Lease{}, fmt.Errorf("%w: key %s (holder of lease %q) holds %q, want \"<epoch> <owner>\"", ErrCorrupt, key, name, v)
	}
	return Lease{Name: name, Owner: owner, Epoch: epoch}, nil
}

// HeldError is what AcquireLease returns when another owner holds the
// lease: errors.Is(err, ErrLeaseHeld), and errors.As finds the holder and
// how long its lease had left when the store answered, so a contender can
// try again the moment it lapses (unless renewed meanwhile).
type HeldError struct {
	Holder    Lease
	Remaining time.Duration // 0: unknown
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%v: lease %q is held by %q at epoch %d", ErrLeaseHeld, e.Holder.Name, e.Holder.Owner, e.Holder.Epoch)
}

// Unwrap makes errors.Is(err, ErrLeaseHeld) true.
func (e *HeldError) Unwrap() error { return ErrLeaseHeld }

func heldError(holder Lease, remaining time.Duration) error {
	return &HeldError{Holder: holder, Remaining: max(remaining, 0)}
}

func lostError(l Lease, holder Lease, held bool) error {
	if !held {
		return fmt.Errorf("%w: lease %q of %q at epoch %d: nobody holds it now", ErrLeaseLost, l.Name, l.Owner, l.Epoch)
	}
	return fmt.Errorf("%w: lease %q of %q at epoch %d: %q holds it at epoch %d",
		ErrLeaseLost, l.Name, l.Owner, l.Epoch, holder.Owner, holder.Epoch)
}
