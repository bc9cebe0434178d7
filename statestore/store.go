package statestore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// DefaultTTL is how long a call's state lives without a change or a Touch.
const DefaultTTL = 2 * time.Minute

// MaxCheckpointSize bounds one checkpoint's data.
const MaxCheckpointSize = 1 << 20

// maxAttempts bounds how often one change retries after losing the
// compare-and-set race. Each round has a winner, so this is far more than a
// call's worth of concurrent writers needs.
const maxAttempts = 100

// Store keeps the critical state of calls and their ephemeral checkpoints.
// All methods are safe for concurrent use, from many processes at once.
type Store interface {
	// Get returns the call, or ErrNotFound.
	Get(ctx context.Context, callID protocol.ID) (Call, error)
	// AddMember adds (or replaces) participant's membership, creating the
	// call with class and maxSize if it does not exist; an existing call
	// keeps its own class and max size. It fails with ErrCallFull if a new
	// member would exceed MaxSize. If the stored member already has m's
	// Forwarder, Trunk, Addr, SSRCs and Subscriptions (JoinedAt aside),
	// nothing is written, the version stays, and the current Call is
	// returned: re-asserting a placement, or retrying an add whose answer
	// was lost, costs no change.
	AddMember(ctx context.Context, callID protocol.ID, class protocol.CallClass, maxSize int, participant protocol.ID, m Member) (Call, error)
	// UpdateMember replaces an existing member, or fails with ErrNotFound or
	// ErrNotMember.
	UpdateMember(ctx context.Context, callID, participant protocol.ID, m Member) (Call, error)
	// RemoveMember removes participant. When the last member leaves, every
	// key of the call is deleted and the returned Call has no members.
	RemoveMember(ctx context.Context, callID, participant protocol.ID) (Call, error)
	// RemoveMemberServedBy removes participant only if the stored member is
	// served by forwarder, so a forwarder that lost the participant to
	// another one can never remove the newer placement. Otherwise it
	// returns the current Call and an error wrapping ErrNotMember (also
	// when participant is not a member at all), or ErrNotFound. Removing
	// the last member deletes every key of the call, as RemoveMember does.
	RemoveMemberServedBy(ctx context.Context, callID, participant protocol.ID, forwarder string) (Call, error)
	// Touch refreshes the call's TTL, or fails with ErrNotFound.
	Touch(ctx context.Context, callID protocol.ID) error
	// SaveCheckpoint stores opaque data of the given kind for ttl. It never
	// touches the critical record.
	SaveCheckpoint(ctx context.Context, callID protocol.ID, kind string, data []byte, ttl time.Duration) error
	// LoadCheckpoint returns the last data saved for kind, which may be
	// stale, or ErrNotFound once it has expired or the call has ended.
	LoadCheckpoint(ctx context.Context, callID protocol.ID, kind string) ([]byte, error)
}

// Call is the critical state of one call.
type Call struct {
	ID      protocol.ID
	Class   protocol.CallClass
	MaxSize int
	// Version counts changes: 1 after the call is created, one more after
	// every change.
	Version uint64
	Members map[protocol.ID]Member
}

// Member is one participant's place in a call.
type Member struct {
	Forwarder string         // id of the forwarder serving the participant
	Trunk     netip.AddrPort // that forwarder's trunk address, where any forwarder reaches it
	Addr      netip.AddrPort // the participant's address as that forwarder sees it
	SSRCs     []uint32       // the participant's media streams
	// JoinedAt is when this placement was written: a rejoin, or a
	// re-assert that changes the placement, updates it. Stored with
	// nanosecond precision, in UTC.
	JoinedAt time.Time
	// Subscriptions lists the participants whose media this one receives.
	Subscriptions []protocol.ID
}

// Default Redis timeouts (Config.DialTimeout, Config.OpTimeout).
const (
	DefaultDialTimeout = time.Second
	DefaultOpTimeout   = 500 * time.Millisecond
)

// Config tunes a store. The zero value uses the defaults.
type Config struct {
	// TTL is how long a call's state lives without a change or a Touch.
	TTL time.Duration
	// Now is Memory's clock (time.Now if nil). Redis uses the server's.
	Now func() time.Time

	// The rest applies to OpenRedis only (NewRedis takes a ready client).

	// TLS, if not nil, makes the connection use TLS with this
	// configuration, even for a redis:// URL; its ServerName defaults to the
	// URL's host. With a rediss:// URL and nil TLS, go-redis's default
	// (system roots, the URL's host) is used.
	TLS *tls.Config
	// Password, if not empty, overrides the URL's.
	Password string
	// DialTimeout bounds connecting (DefaultDialTimeout if zero and the URL
	// sets no dial_timeout).
	DialTimeout time.Duration
	// OpTimeout bounds each command's socket reads and writes, so an
	// unreachable or hung Redis fails fast even under a generous context.
	// If zero, the URL's read_timeout and write_timeout apply (write
	// following read, as in go-redis), and DefaultOpTimeout where it sets
	// neither.
	OpTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// backend is what Redis and Memory provide under the shared change logic.
type backend interface {
	// load returns the raw record, or nil if there is none.
	load(ctx context.Context, callID protocol.ID) ([]byte, error)
	// swap replaces the record old (nil: none) with new (nil: delete every
	// key of the call), refreshing the TTL. It reports false, without
	// changing anything, if the record is no longer old.
	swap(ctx context.Context, callID protocol.ID, old, new []byte) (bool, error)
}

// mutateFunc changes c in place; exists says whether the call was stored.
// An error aborts the change and is returned as is, with a zero Call; a
// mutateFunc that leaves c alone may instead return errUnchanged (change
// returns the stored call, no error, and writes nothing) or keepCall(err)
// (change returns the stored call and err).
type mutateFunc func(c *Call, exists bool) error

// errUnchanged, from a mutateFunc, means there is nothing to write.
var errUnchanged = errors.New("statestore: unchanged")

// callError, from a mutateFunc, makes change return the stored call along
// with err.
type callError struct{ err error }

func (e callError) Error() string { return e.err.Error() }
func (e callError) Unwrap() error { return e.err }

func keepCall(err error) error { return callError{err} }

// get loads and decodes a call; a record naming another call is corrupt.
func get(ctx context.Context, b backend, callID protocol.ID) (Call, []byte, error) {
	raw, err := b.load(ctx, callID)
	if err != nil || raw == nil {
		return Call{}, nil, err
	}
	c, err := decodeCall(raw)
	if err != nil {
		return Call{}, nil, fmt.Errorf("call %s: %w", callID, err)
	}
	if c.ID != callID {
		return Call{}, nil, fmt.Errorf("%w: key of call %s holds call %s", ErrCorrupt, callID, c.ID)
	}
	return c, raw, nil
}

func getCall(ctx context.Context, b backend, callID protocol.ID) (Call, error) {
	c, raw, err := get(ctx, b, callID)
	if err == nil && raw == nil {
		err = fmt.Errorf("%w: call %s", ErrNotFound, callID)
	}
	return c, err
}

// change applies mutate by compare-and-set, retrying when another writer
// got there first. mutate works on a private copy.
func change(ctx context.Context, b backend, callID protocol.ID, mutate mutateFunc) (Call, error) {
	for range maxAttempts {
		c, old, err := get(ctx, b, callID)
		if err != nil {
			return Call{}, err
		}
		if err := mutate(&c, old != nil); err != nil {
			var ce callError
			switch {
			case err == errUnchanged:
				return c, nil
			case errors.As(err, &ce):
				return c, ce.err
			}
			return Call{}, err
		}
		c.Version++
		var rec []byte
		if len(c.Members) > 0 {
			if rec, err = encodeCall(nil, c); err != nil {
				return Call{}, err
			}
		}
		ok, err := b.swap(ctx, callID, old, rec)
		if err != nil {
			return Call{}, err
		}
		if ok {
			return c, nil
		}
		if err := ctx.Err(); err != nil {
			return Call{}, fmt.Errorf("%w: call %s: %w", ErrUnavailable, callID, err)
		}
	}
	return Call{}, fmt.Errorf("%w: call %s, %d attempts", ErrConflict, callID, maxAttempts)
}

func addMember(ctx context.Context, b backend, callID protocol.ID, class protocol.CallClass, maxSize int, participant protocol.ID, m Member) (Call, error) {
	switch {
	case callID.IsZero() || participant.IsZero():
		return Call{}, fmt.Errorf("%w: call and participant ids must be set", ErrInvalid)
	case class != protocol.ClassOneToOne && class != protocol.ClassGroup:
		return Call{}, fmt.Errorf("%w: %v", ErrInvalid, class)
	case maxSize < 1 || maxSize > maxMembers:
		return Call{}, fmt.Errorf("%w: max size %d, want 1..%d", ErrInvalid, maxSize, maxMembers)
	}
	if err := validateMember(m); err != nil {
		return Call{}, err
	}
	return change(ctx, b, callID, func(c *Call, exists bool) error {
		if !exists {
			*c = Call{ID: callID, Class: class, MaxSize: maxSize, Members: map[protocol.ID]Member{}}
		}
		cur, ok := c.Members[participant]
		if ok && samePlacement(cur, m) {
			return errUnchanged
		}
		if !ok && len(c.Members) >= c.MaxSize {
			return fmt.Errorf("%w: call %s has %d of %d members", ErrCallFull, callID, len(c.Members), c.MaxSize)
		}
		c.Members[participant] = cloneMember(m)
		return nil
	})
}

func updateMember(ctx context.Context, b backend, callID, participant protocol.ID, m Member) (Call, error) {
	if err := validateMember(m); err != nil {
		return Call{}, err
	}
	return change(ctx, b, callID, func(c *Call, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: call %s", ErrNotFound, callID)
		}
		if _, ok := c.Members[participant]; !ok {
			return fmt.Errorf("%w: %s in call %s", ErrNotMember, participant, callID)
		}
		c.Members[participant] = cloneMember(m)
		return nil
	})
}

func removeMember(ctx context.Context, b backend, callID, participant protocol.ID) (Call, error) {
	return change(ctx, b, callID, func(c *Call, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: call %s", ErrNotFound, callID)
		}
		if _, ok := c.Members[participant]; !ok {
			return fmt.Errorf("%w: %s in call %s", ErrNotMember, participant, callID)
		}
		delete(c.Members, participant)
		return nil
	})
}

func removeMemberServedBy(ctx context.Context, b backend, callID, participant protocol.ID, forwarder string) (Call, error) {
	return change(ctx, b, callID, func(c *Call, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: call %s", ErrNotFound, callID)
		}
		m, ok := c.Members[participant]
		switch {
		case !ok:
			return keepCall(fmt.Errorf("%w: %s in call %s", ErrNotMember, participant, callID))
		case m.Forwarder != forwarder:
			return keepCall(fmt.Errorf("%w: %s in call %s is served by %q, not %q",
				ErrNotMember, participant, callID, m.Forwarder, forwarder))
		}
		delete(c.Members, participant)
		return nil
	})
}

// samePlacement reports whether a and b differ at most in JoinedAt.
func samePlacement(a, b Member) bool {
	return a.Forwarder == b.Forwarder && a.Trunk == b.Trunk && a.Addr == b.Addr &&
		slices.Equal(a.SSRCs, b.SSRCs) && slices.Equal(a.Subscriptions, b.Subscriptions)
}

func validateCheckpoint(kind string, data []byte, ttl time.Duration) error {
	switch {
	case kind == "" || len(kind) > maxListLen:
		return fmt.Errorf("%w: checkpoint kind %q, want 1..%d bytes", ErrInvalid, kind, maxListLen)
	case len(data) > MaxCheckpointSize:
		return fmt.Errorf("%w: checkpoint of %d bytes, at most %d", ErrInvalid, len(data), MaxCheckpointSize)
	case ttl < time.Millisecond:
		return fmt.Errorf("%w: checkpoint ttl %v, want at least 1ms", ErrInvalid, ttl)
	}
	return nil
}

func cloneMember(m Member) Member {
	m.SSRCs = slices.Clone(m.SSRCs)
	m.Subscriptions = slices.Clone(m.Subscriptions)
	return m
}
