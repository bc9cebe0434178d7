package protocol

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"
)

// A resumption ticket (protocol/README.md 2.1) lets a participant whose join
// token has expired come back to its call after a failover, a drain or a
// lost session, on any forwarder of the cluster, without asking the
// application for a new token. The relay issues it to an admitted session
// and refreshes it while the session lives; devices store it and send it
// back, unread. It names exactly one participant of one call and is bound to
// the credential that participant was admitted with, so it admits nobody
// else and starts no call.

// Ticket wire layout (version 1), all integers big-endian:
//
//	0       version = 1
//	1       binding kind (1: a v1 join token)
//	2       class
//	3       reserved, 0
//	4..6    max size
//	6..8    reserved, 0
//	8..12   key id
//	12..20  issued at, Unix milliseconds
//	20..28  valid until, Unix milliseconds
//	28..44  call id
//	44..60  participant id
//	60..76  binding digest
//	76..92  tag: HMAC-SHA256(ticket subkey, bytes 0..76), first 16 bytes
const (
	ticketVersion  = 1
	ticketTagSize  = 16
	ticketBodySize = 76
	// TicketSize is the length of a version 1 ticket.
	TicketSize = ticketBodySize + ticketTagSize
	// MaxTicketSize bounds the RESUME-TICKET attribute: devices keep and
	// echo any ticket up to this size, so that later ticket versions need
	// no new client.
	MaxTicketSize = 256
	// MaxTicketLifetime bounds a ticket's validity (valid until minus issued
	// at); a ticket claiming more is malformed.
	MaxTicketLifetime = time.Hour
)

// Labels (ASCII, no terminator unless written). Changing one is a wire change.
const (
	clusterTicketLabel   = "callrelay resumption ticket v1"
	ticketKeyIDLabel     = "callrelay ticket key id"
	ticketBindingContext = "callrelay ticket binding v1\x00"
)

// BindingKind says what a ticket's binding digest was computed over.
type BindingKind uint8

const (
	// BindingToken: the v1 join token the session was admitted (or last
	// refreshed) with.
	BindingToken BindingKind = 1
	// BindingDevice: the device public key of a version 2 token. Any token
	// for the same call, participant and device key carries the ticket,
	// and resuming with it needs a fresh DEVICE-PROOF (README 2.2).
	BindingDevice BindingKind = 2
)

// ticketDeviceContext is the binding label of kind 2.
const ticketDeviceContext = "callrelay ticket binding v2\x00"

// BindDevice is the binding of a session admitted with a version 2 token
// for device key pub: the first 16 bytes of
// SHA-256("callrelay ticket binding v2" || 0x00 || pub).
func BindDevice(pub []byte) TicketBinding {
	h := sha256.New()
	h.Write([]byte(ticketDeviceContext))
	h.Write(pub)
	var sum [sha256.Size]byte
	b := TicketBinding{Kind: BindingDevice}
	copy(b.Digest[:], h.Sum(sum[:0]))
	return b
}

// BindingOf is the binding of a session admitted with the verified token
// tok, raw bytes token: its device key for a version 2 token, else the
// token's bytes.
func BindingOf(tok Token, token []byte) TicketBinding {
	if tok.DeviceBound() {
		return BindDevice(tok.DeviceKey)
	}
	return BindToken(token)
}

// TicketBinding ties a ticket to the admitted session's credential.
type TicketBinding struct {
	Kind   BindingKind
	Digest [16]byte
}

// BindToken is the binding of a session admitted with this v1 token: the
// first 16 bytes of SHA-256("callrelay ticket binding v1" || 0x00 || token).
func BindToken(token []byte) TicketBinding {
	h := sha256.New()
	h.Write([]byte(ticketBindingContext))
	h.Write(token)
	var sum [sha256.Size]byte
	b := TicketBinding{Kind: BindingToken}
	copy(b.Digest[:], h.Sum(sum[:0]))
	return b
}

// Ticket is what a resumption ticket says.
type Ticket struct {
	CallID        ID
	ParticipantID ID
	Class         CallClass
	MaxSize       uint16
	IssuedAt      time.Time // millisecond precision on the wire
	ValidUntil    time.Time // the ticket resumes a session until then
	Binding       TicketBinding
}

// TicketKey seals and opens tickets. In a cluster it is derived from the
// cluster key (ClusterKey.TicketKey), so every forwarder opens every other's
// tickets; a forwarder without a cluster key makes a random one
// (NewTicketKey), and its tickets then resume sessions on that process only.
type TicketKey struct {
	key [sha256.Size]byte
	id  [4]byte
}

// TicketKey is the ticket subkey of the cluster key:
// HMAC-SHA256(cluster key, "callrelay resumption ticket v1").
func (k ClusterKey) TicketKey() *TicketKey { return newTicketKey(k.subkey(clusterTicketLabel)) }

// NewTicketKey returns a random ticket key from crypto/rand, for a forwarder
// on its own.
func NewTicketKey() (*TicketKey, error) {
	var raw [sha256.Size]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("%w: crypto/rand: %v", ErrClusterKey, err)
	}
	return newTicketKey(raw), nil
}

// newTicketKey keeps key and its id: the first 4 bytes of
// HMAC-SHA256(key, "callrelay ticket key id").
func newTicketKey(key [sha256.Size]byte) *TicketKey {
	k := &TicketKey{key: key}
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte(ticketKeyIDLabel))
	var sum [sha256.Size]byte
	copy(k.id[:], m.Sum(sum[:0]))
	return k
}

// ID is the key id written in the tickets this key seals. It names the key,
// it reveals nothing of it.
func (k *TicketKey) ID() [4]byte { return k.id }

func (k *TicketKey) tag(body []byte) [sha256.Size]byte {
	m := hmac.New(sha256.New, k.key[:])
	m.Write(body)
	var sum [sha256.Size]byte
	m.Sum(sum[:0])
	return sum
}

// Seal encodes and authenticates t.
func (k *TicketKey) Seal(t Ticket) ([]byte, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	body := t.body(k.id)
	tag := k.tag(body[:])
	return append(body[:], tag[:ticketTagSize]...), nil
}

// body is the ticket's bytes before the tag, under key id id.
func (t Ticket) body(id [4]byte) [ticketBodySize]byte {
	var b [ticketBodySize]byte
	b[0] = ticketVersion
	b[1] = byte(t.Binding.Kind)
	b[2] = byte(t.Class)
	binary.BigEndian.PutUint16(b[4:6], t.MaxSize)
	copy(b[8:12], id[:])
	binary.BigEndian.PutUint64(b[12:20], uint64(t.IssuedAt.UnixMilli()))
	binary.BigEndian.PutUint64(b[20:28], uint64(t.ValidUntil.UnixMilli()))
	copy(b[28:44], t.CallID[:])
	copy(b[44:60], t.ParticipantID[:])
	copy(b[60:76], t.Binding.Digest[:])
	return b
}

// Open checks a ticket in this order: length and version (else
// ErrTicketMalformed), key id (another key: ErrTicketForeign), tag, in
// constant time (ErrTicketForged), the fields (ErrTicketMalformed), and that
// now is before its valid-until (ErrTicketExpired). Only then is it
// returned; on error the Ticket is zero.
func (k *TicketKey) Open(b []byte, now time.Time) (Ticket, error) {
	if len(b) != TicketSize || b[0] != ticketVersion {
		return Ticket{}, fmt.Errorf("%w: %d bytes", ErrTicketMalformed, len(b))
	}
	if [4]byte(b[8:12]) != k.id {
		return Ticket{}, ErrTicketForeign
	}
	tag := k.tag(b[:ticketBodySize])
	if !hmac.Equal(tag[:ticketTagSize], b[ticketBodySize:]) {
		return Ticket{}, ErrTicketForged
	}
	t, _, err := ParseTicket(b)
	if err != nil {
		return Ticket{}, err
	}
	if !now.Before(t.ValidUntil) {
		return Ticket{}, fmt.Errorf("%w at %s", ErrTicketExpired, t.ValidUntil.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// ParseTicket reads a version 1 ticket's fields and key id without checking
// its tag or validity: for tools and tests. Trust only what Open returns.
func ParseTicket(b []byte) (Ticket, [4]byte, error) {
	var t Ticket
	var id [4]byte
	if len(b) != TicketSize {
		return t, id, fmt.Errorf("%w: %d bytes, want %d", ErrTicketMalformed, len(b), TicketSize)
	}
	if b[0] != ticketVersion {
		return t, id, fmt.Errorf("%w: version %d", ErrTicketMalformed, b[0])
	}
	if b[3] != 0 || b[6] != 0 || b[7] != 0 {
		return t, id, fmt.Errorf("%w: reserved bytes set", ErrTicketMalformed)
	}
	copy(id[:], b[8:12])
	t.Binding.Kind = BindingKind(b[1])
	t.Class = CallClass(b[2])
	t.MaxSize = binary.BigEndian.Uint16(b[4:6])
	issued, until := binary.BigEndian.Uint64(b[12:20]), binary.BigEndian.Uint64(b[20:28])
	if issued > 1<<62 || until > 1<<62 {
		return Ticket{}, id, fmt.Errorf("%w: time out of range", ErrTicketMalformed)
	}
	t.IssuedAt, t.ValidUntil = time.UnixMilli(int64(issued)), time.UnixMilli(int64(until))
	copy(t.CallID[:], b[28:44])
	copy(t.ParticipantID[:], b[44:60])
	copy(t.Binding.Digest[:], b[60:76])
	if err := t.check(); err != nil {
		return Ticket{}, id, err
	}
	return t, id, nil
}

// check enforces what a ticket may say.
func (t Ticket) check() error {
	switch {
	case t.Binding.Kind != BindingToken && t.Binding.Kind != BindingDevice:
		return fmt.Errorf("%w: binding kind %d", ErrTicketMalformed, t.Binding.Kind)
	case t.Class != ClassOneToOne && t.Class != ClassGroup:
		return fmt.Errorf("%w: class %d", ErrTicketMalformed, t.Class)
	case t.MaxSize < 2:
		return fmt.Errorf("%w: max size %d", ErrTicketMalformed, t.MaxSize)
	case t.CallID.IsZero() || t.ParticipantID.IsZero():
		return fmt.Errorf("%w: call and participant ids must be set", ErrTicketMalformed)
	case t.IssuedAt.UnixMilli() <= 0 || t.ValidUntil.Before(t.IssuedAt) || t.ValidUntil.Sub(t.IssuedAt) > MaxTicketLifetime:
		return fmt.Errorf("%w: issued %d ms, valid until %d ms", ErrTicketMalformed, t.IssuedAt.UnixMilli(), t.ValidUntil.UnixMilli())
	}
	return nil
}

// TicketFor is the ticket a forwarder issues at now, valid for lifetime,
// to the session admitted with the verified token tok (raw bytes token).
func TicketFor(tok Token, token []byte, now time.Time, lifetime time.Duration) Ticket {
	return Ticket{
		CallID: tok.CallID, ParticipantID: tok.ParticipantID, Class: tok.Class, MaxSize: tok.MaxSize,
		IssuedAt: now, ValidUntil: now.Add(lifetime), Binding: BindingOf(tok, token),
	}
}
