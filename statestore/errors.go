package statestore

import "errors"

var (
	// ErrNotFound means the call (or checkpoint) does not exist or has expired.
	ErrNotFound = errors.New("statestore: not found")
	// ErrNotMember means the participant is not a member of the call.
	ErrNotMember = errors.New("statestore: not a member of the call")
	// ErrCallFull means the call already has MaxSize members.
	ErrCallFull = errors.New("statestore: call is full")
	// ErrCorrupt means a stored record could not be decoded: garbage, an
	// unknown format version, a Redis value of the wrong type, or a record
	// that belongs to another call.
	ErrCorrupt = errors.New("statestore: corrupt record")
	// ErrInvalid means the caller passed an argument the store cannot keep.
	ErrInvalid = errors.New("statestore: invalid argument")
	// ErrConflict means a change lost the compare-and-set race too many times
	// in a row; the caller may retry.
	ErrConflict = errors.New("statestore: too many concurrent changes")
	// ErrUnavailable means the backend could not be reached or did not answer
	// in time. The context's error is wrapped too when it caused this.
	ErrUnavailable = errors.New("statestore: backend unavailable")
	// ErrQueueFull means a Writer already holds its QueueLimit of ops; the
	// op was not taken.
	ErrQueueFull = errors.New("statestore: writer queue full")
)

var (
	// ErrLeaseHeld means another owner holds the lease; the message names it.
	ErrLeaseHeld = errors.New("statestore: lease held by another owner")
	// ErrLeaseLost means the caller no longer holds the lease with the epoch
	// it has: it expired, was released, or another owner took it since.
	ErrLeaseLost = errors.New("statestore: lease lost")
)
