package statestore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Memory is the in-memory twin of Redis: same semantics, same record
// encoding, same TTLs (on Config.Now's clock), for tests and single-process
// runs. Expired entries are dropped when next looked at.
type Memory struct {
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	calls map[protocol.ID]*memCall
}

type memCall struct {
	rec     []byte    // nil while only checkpoints exist
	expires time.Time // of rec
	ckpts   map[string]memCheckpoint
}

type memCheckpoint struct {
	data    []byte
	expires time.Time
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty store.
func NewMemory(cfg Config) *Memory {
	cfg = cfg.withDefaults()
	return &Memory{ttl: cfg.TTL, now: cfg.Now, calls: map[protocol.ID]*memCall{}}
}

// entryLocked returns the live entry of id, dropping whatever has expired.
func (s *Memory) entryLocked(id protocol.ID) *memCall {
	e := s.calls[id]
	if e == nil {
		return nil
	}
	now := s.now()
	if e.rec != nil && !now.Before(e.expires) {
		e.rec = nil
	}
	for k, c := range e.ckpts {
		if !now.Before(c.expires) {
			delete(e.ckpts, k)
		}
	}
	if e.rec == nil && len(e.ckpts) == 0 {
		delete(s.calls, id)
		return nil
	}
	return e
}

func (s *Memory) load(ctx context.Context, id protocol.ID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: call %s: %w", ErrUnavailable, id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entryLocked(id); e != nil && e.rec != nil {
		return slices.Clone(e.rec), nil
	}
	return nil, nil
}

func (s *Memory) swap(ctx context.Context, id protocol.ID, old, new []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("%w: call %s: %w", ErrUnavailable, id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entryLocked(id)
	var cur []byte
	if e != nil {
		cur = e.rec
	}
	if (old == nil) != (cur == nil) || !bytes.Equal(old, cur) {
		return false, nil
	}
	if new == nil {
		delete(s.calls, id)
		return true, nil
	}
	if e == nil {
		e = &memCall{}
		s.calls[id] = e
	}
	e.rec, e.expires = slices.Clone(new), s.now().Add(s.ttl)
	return true, nil
}

// Get implements Store.
func (s *Memory) Get(ctx context.Context, callID protocol.ID) (Call, error) {
	return getCall(ctx, s, callID)
}

// AddMember implements Store.
func (s *Memory) AddMember(ctx context.Context, callID protocol.ID, class protocol.CallClass, maxSize int, participant protocol.ID, m Member) (Call, error) {
	return addMember(ctx, s, callID, class, maxSize, participant, m)
}

// UpdateMember implements Store.
func (s *Memory) UpdateMember(ctx context.Context, callID, participant protocol.ID, m Member) (Call, error) {
	return updateMember(ctx, s, callID, participant, m)
}

// RemoveMember implements Store.
func (s *Memory) RemoveMember(ctx context.Context, callID, participant protocol.ID) (Call, error) {
	return removeMember(ctx, s, callID, participant)
}

// RemoveMemberServedBy implements Store.
func (s *Memory) RemoveMemberServedBy(ctx context.Context, callID, participant protocol.ID, forwarder string) (Call, error) {
	return removeMemberServedBy(ctx, s, callID, participant, forwarder)
}

// Touch implements Store.
func (s *Memory) Touch(ctx context.Context, callID protocol.ID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: call %s: %w", ErrUnavailable, callID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entryLocked(callID)
	if e == nil || e.rec == nil {
		return fmt.Errorf("%w: call %s", ErrNotFound, callID)
	}
	e.expires = s.now().Add(s.ttl)
	return nil
}

// SaveCheckpoint implements Store.
func (s *Memory) SaveCheckpoint(ctx context.Context, callID protocol.ID, kind string, data []byte, ttl time.Duration) error {
	if err := validateCheckpoint(kind, data, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: call %s: %w", ErrUnavailable, callID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entryLocked(callID)
	if e == nil {
		e = &memCall{}
		s.calls[callID] = e
	}
	if e.ckpts == nil {
		e.ckpts = map[string]memCheckpoint{}
	}
	// Redis keeps milliseconds; so do we.
	e.ckpts[kind] = memCheckpoint{data: slices.Clone(data), expires: s.now().Add(ttl.Truncate(time.Millisecond))}
	return nil
}

// LoadCheckpoint implements Store.
func (s *Memory) LoadCheckpoint(ctx context.Context, callID protocol.ID, kind string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: call %s: %w", ErrUnavailable, callID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entryLocked(callID); e != nil {
		if c, ok := e.ckpts[kind]; ok {
			return slices.Clone(c.data), nil
		}
	}
	return nil, fmt.Errorf("%w: checkpoint %q of call %s", ErrNotFound, kind, callID)
}
