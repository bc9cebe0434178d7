package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Admin messages carry an operator's instruction from the admin API (the
// dashboard process) to one forwarder, and its answer back, over NATS
// request-reply on AdminSubject. README.md section 8 has the byte layout.
//
// Anyone who can publish on NATS can send bytes there; only a holder of
// the cluster key can make a command a forwarder obeys. The tag is a full
// HMAC-SHA256 under the admin subkey (label "callrelay admin v1"), so an
// admin message is never mistaken for another cluster message or a trunk
// frame. Freshness: a command names when it was signed and a random nonce;
// a forwarder takes it only within AdminFreshness of its own clock and only
// once (AdminReplayGuard), so a recorded command cannot be played again.

// AdminMsgType is the envelope's type byte.
type AdminMsgType uint8

const (
	AdminMsgCommand AdminMsgType = 1 // admin API -> forwarder
	AdminMsgReply   AdminMsgType = 2 // forwarder -> admin API
)

// AdminOp names what a command asks.
type AdminOp uint8

const (
	AdminOpCalls      AdminOp = 1 // list the calls served here
	AdminOpCall       AdminOp = 2 // one call: members, legs, layers, speaker, events
	AdminOpRemove     AdminOp = 3 // remove a participant (and refuse its rejoin)
	AdminOpHold       AdminOp = 4 // hold or release a participant's audio or video
	AdminOpMove       AdminOp = 5 // move a participant or a whole call to another forwarder
	AdminOpDrain      AdminOp = 6 // drain this forwarder
	AdminOpPin        AdminOp = 7 // pin or release the throttle level
	AdminOpCapture    AdminOp = 8 // a headers-only capture of one call's legs (pcapng)
	adminOpLast               = AdminOpCapture
	adminMsgMagic             = "CRLA"
	adminMsgVersion           = 1
	adminHeaderLen            = 10 // magic, version, type, body length (4)
	adminTagLen               = sha256.Size
	adminLabel                = "callrelay admin v1"
	adminCommandFixed         = 8 + AdminNonceLen + 1 + 1 + 1 + 2
	adminReplyFixed           = 8 + AdminNonceLen + 2
)

var adminOpNames = [...]string{"", "calls", "call", "remove", "hold", "move", "drain", "pin", "capture"}

// String names the op.
func (o AdminOp) String() string {
	if o >= AdminOpCalls && o <= adminOpLast {
		return adminOpNames[o]
	}
	return "op-" + strconv.Itoa(int(o))
}

// AdminNonceLen is the size of a command's nonce.
const AdminNonceLen = 16

// Limits. A reply may carry a capture, so it may be large; a command is
// small.
const (
	MaxAdminArgs  = 4096
	MaxAdminReply = 4 << 20
	MaxAdminActor = 255
)

// AdminFreshness is how far a command's time may be from the receiver's
// clock, either way: the window in which its nonce is remembered.
const AdminFreshness = 30 * time.Second

// ErrAdminMsg: an admin message is malformed or does not authenticate.
var ErrAdminMsg = errors.New("protocol: invalid admin message")

// Why an authentic-looking admin message is refused, each wrapped together
// with ErrAdminMsg so a receiver counts refusals by reason.
var (
	// ErrAdminAuth: the tag does not match (another cluster key, altered).
	ErrAdminAuth = errors.New("protocol: admin message tag does not match")
	// ErrAdminStale: the command was signed outside the freshness window.
	ErrAdminStale = errors.New("protocol: admin command stale")
	// ErrAdminReplayed: the command's nonce was taken before.
	ErrAdminReplayed = errors.New("protocol: admin command replayed")
	// ErrAdminTooMany: more commands within the window than remembered.
	ErrAdminTooMany = errors.New("protocol: too many admin commands")
)

// AdminCommand is one instruction to one forwarder.
type AdminCommand struct {
	At     time.Time           // when it was signed
	Nonce  [AdminNonceLen]byte // random, once per command
	Op     AdminOp
	Target string // the forwarder id it is for; another forwarder refuses it
	Actor  string // who asked (for the audit log), up to 255 bytes
	Args   []byte // the op's arguments, a JSON object (AdminArgs), up to MaxAdminArgs
}

// AdminReply answers one command.
type AdminReply struct {
	At     time.Time
	Nonce  [AdminNonceLen]byte // the command's
	Status uint16              // an HTTP status code: 200, 400, 404, 409, 500
	Body   []byte              // JSON, or a pcapng file for a capture
}

// AdminSubject is <prefix>.admin.<forwarder id>: the forwarder with that id
// answers the commands sent there.
func AdminSubject(prefix, forwarderID string) string { return prefix + ".admin." + forwarderID }

func adminKey(k ClusterKey) [sha256.Size]byte { return k.subkey(adminLabel) }

func sealAdmin(k ClusterKey, t AdminMsgType, body []byte) []byte {
	out := make([]byte, 0, adminHeaderLen+len(body)+adminTagLen)
	out = append(out, adminMsgMagic...)
	out = append(out, adminMsgVersion, byte(t))
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	out = append(out, body...)
	sub := adminKey(k)
	m := hmac.New(sha256.New, sub[:])
	m.Write(out)
	return m.Sum(out)
}

// openAdmin checks the envelope and tag and returns the body.
func openAdmin(b []byte, k ClusterKey, want AdminMsgType) ([]byte, error) {
	if len(b) < adminHeaderLen+adminTagLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the envelope", ErrAdminMsg, len(b))
	}
	if string(b[:4]) != adminMsgMagic || b[4] != adminMsgVersion {
		return nil, fmt.Errorf("%w: magic or version", ErrAdminMsg)
	}
	n := binary.BigEndian.Uint32(b[6:10])
	if uint64(len(b)) != uint64(adminHeaderLen)+uint64(n)+adminTagLen {
		return nil, fmt.Errorf("%w: %d bytes, body length says %d", ErrAdminMsg, len(b), n)
	}
	end := len(b) - adminTagLen
	sub := adminKey(k)
	m := hmac.New(sha256.New, sub[:])
	m.Write(b[:end])
	if !hmac.Equal(m.Sum(nil), b[end:]) {
		return nil, fmt.Errorf("%w: %w (another cluster key, or altered)", ErrAdminMsg, ErrAdminAuth)
	}
	if AdminMsgType(b[5]) != want {
		return nil, fmt.Errorf("%w: type %d, want %d", ErrAdminMsg, b[5], want)
	}
	return b[adminHeaderLen:end], nil
}

// MarshalAdminCommand seals c under k.
func MarshalAdminCommand(c *AdminCommand, k ClusterKey) ([]byte, error) {
	if c.Op < AdminOpCalls || c.Op > adminOpLast {
		return nil, fmt.Errorf("%w: op %d", ErrAdminMsg, c.Op)
	}
	if err := ValidForwarderID(c.Target); err != nil {
		return nil, fmt.Errorf("%w: target: %v", ErrAdminMsg, err)
	}
	if len(c.Actor) > MaxAdminActor || len(c.Args) > MaxAdminArgs {
		return nil, fmt.Errorf("%w: actor of %d bytes or args of %d bytes too long", ErrAdminMsg, len(c.Actor), len(c.Args))
	}
	b := make([]byte, 0, adminCommandFixed+len(c.Target)+len(c.Actor)+len(c.Args))
	b = binary.BigEndian.AppendUint64(b, uint64(c.At.UnixNano()))
	b = append(b, c.Nonce[:]...)
	b = append(b, byte(c.Op), byte(len(c.Target)))
	b = append(b, c.Target...)
	b = append(b, byte(len(c.Actor)))
	b = append(b, c.Actor...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(c.Args)))
	b = append(b, c.Args...)
	return sealAdmin(k, AdminMsgCommand, b), nil
}

// UnmarshalAdminCommand authenticates b under k and decodes it. It does not
// judge freshness: AdminReplayGuard does.
func UnmarshalAdminCommand(b []byte, k ClusterKey) (AdminCommand, error) {
	var c AdminCommand
	body, err := openAdmin(b, k, AdminMsgCommand)
	if err != nil {
		return c, err
	}
	if len(body) < adminCommandFixed {
		return c, fmt.Errorf("%w: command body of %d bytes", ErrAdminMsg, len(body))
	}
	c.At = time.Unix(0, int64(binary.BigEndian.Uint64(body)))
	copy(c.Nonce[:], body[8:])
	p := body[8+AdminNonceLen:]
	c.Op = AdminOp(p[0])
	if c.Op < AdminOpCalls || c.Op > adminOpLast {
		return c, fmt.Errorf("%w: op %d", ErrAdminMsg, p[0])
	}
	var s []byte
	if s, p, err = adminField(p[1:], 1); err != nil {
		return c, err
	}
	c.Target = string(s)
	if err := ValidForwarderID(c.Target); err != nil {
		return c, fmt.Errorf("%w: target: %v", ErrAdminMsg, err)
	}
	if s, p, err = adminField(p, 1); err != nil {
		return c, err
	}
	c.Actor = string(s)
	if s, p, err = adminField(p, 2); err != nil {
		return c, err
	}
	if len(p) != 0 || len(s) > MaxAdminArgs {
		return c, fmt.Errorf("%w: %d trailing bytes or %d bytes of args", ErrAdminMsg, len(p), len(s))
	}
	c.Args = append([]byte(nil), s...)
	return c, nil
}

// adminField reads a field with a 1- or 2-byte length from the front of p.
func adminField(p []byte, lenBytes int) (field, rest []byte, err error) {
	if len(p) < lenBytes {
		return nil, nil, fmt.Errorf("%w: truncated", ErrAdminMsg)
	}
	n := int(p[0])
	if lenBytes == 2 {
		n = int(binary.BigEndian.Uint16(p))
	}
	p = p[lenBytes:]
	if len(p) < n {
		return nil, nil, fmt.Errorf("%w: field of %d bytes, %d left", ErrAdminMsg, n, len(p))
	}
	return p[:n], p[n:], nil
}

// MarshalAdminReply seals r under k.
func MarshalAdminReply(r *AdminReply, k ClusterKey) ([]byte, error) {
	if len(r.Body) > MaxAdminReply {
		return nil, fmt.Errorf("%w: reply body of %d bytes", ErrAdminMsg, len(r.Body))
	}
	b := make([]byte, 0, adminReplyFixed+len(r.Body))
	b = binary.BigEndian.AppendUint64(b, uint64(r.At.UnixNano()))
	b = append(b, r.Nonce[:]...)
	b = binary.BigEndian.AppendUint16(b, r.Status)
	b = append(b, r.Body...)
	return sealAdmin(k, AdminMsgReply, b), nil
}

// UnmarshalAdminReply authenticates b under k and decodes it; the caller
// checks that its nonce is the command's.
func UnmarshalAdminReply(b []byte, k ClusterKey) (AdminReply, error) {
	var r AdminReply
	body, err := openAdmin(b, k, AdminMsgReply)
	if err != nil {
		return r, err
	}
	if len(body) < adminReplyFixed || len(body)-adminReplyFixed > MaxAdminReply {
		return r, fmt.Errorf("%w: reply body of %d bytes", ErrAdminMsg, len(body))
	}
	r.At = time.Unix(0, int64(binary.BigEndian.Uint64(body)))
	copy(r.Nonce[:], body[8:])
	r.Status = binary.BigEndian.Uint16(body[8+AdminNonceLen:])
	r.Body = append([]byte(nil), body[adminReplyFixed:]...)
	return r, nil
}

// AdminReplayGuard takes each fresh command once. Not safe for concurrent
// use (a forwarder's control goroutine owns it).
type AdminReplayGuard struct {
	seen map[[AdminNonceLen]byte]time.Time // nonce -> the command's time
	max  int
}

// NewAdminReplayGuard remembers at most max nonces: beyond that (more than
// max commands within AdminFreshness), commands are refused.
func NewAdminReplayGuard(max int) *AdminReplayGuard {
	return &AdminReplayGuard{seen: make(map[[AdminNonceLen]byte]time.Time), max: max}
}

// Take reports why c may not be taken at now (stale, from the future, a
// replay, too many), or nil and remembers its nonce.
func (g *AdminReplayGuard) Take(c *AdminCommand, now time.Time) error {
	if d := now.Sub(c.At); d > AdminFreshness || d < -AdminFreshness {
		return fmt.Errorf("%w: %w: signed %s from this clock, outside the %s window", ErrAdminMsg, ErrAdminStale, d.Round(time.Millisecond), AdminFreshness)
	}
	if _, dup := g.seen[c.Nonce]; dup {
		return fmt.Errorf("%w: %w (nonce already taken)", ErrAdminMsg, ErrAdminReplayed)
	}
	if len(g.seen) >= g.max {
		for n, at := range g.seen {
			if now.Sub(at) > AdminFreshness {
				delete(g.seen, n)
			}
		}
		if len(g.seen) >= g.max {
			return fmt.Errorf("%w: %w: more than %d in %s", ErrAdminMsg, ErrAdminTooMany, g.max, AdminFreshness)
		}
	}
	g.seen[c.Nonce] = c.At
	return nil
}
