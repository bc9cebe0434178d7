package protocol

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// ClusterKey is the secret shared by all forwarders and conductors of a
// cluster; it authenticates trunk frames and cluster messages (conductors
// use only the latter). It never leaves the cluster: devices do not hold
// it.
//
// The key itself is never used directly. Each use has its own subkey,
// HMAC-SHA256(key, label), with the labels clusterTrunkLabel,
// clusterMsgLabel and clusterTicketLabel (resumption tickets, ticket.go), so
// a trunk frame can never be mistaken for a cluster message or a ticket, or
// the other way round.
type ClusterKey [32]byte

// Subkey labels (ASCII, no terminator). Changing one is a wire change.
const (
	clusterTrunkLabel = "callrelay trunk frame v1"
	clusterMsgLabel   = "callrelay cluster message v1"
)

// forwarderTagLabel prefixes the forwarder id in ForwarderTag.
const forwarderTagLabel = "callrelay forwarder tag"

// NewClusterKey returns a random key from crypto/rand.
func NewClusterKey() (ClusterKey, error) {
	var k ClusterKey
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("%w: crypto/rand: %v", ErrClusterKey, err)
	}
	return k, nil
}

// ParseClusterKey reads the text form: 64 hex digits (either case;
// surrounding white space, such as a file's final newline, is ignored). The
// all-zero key is refused: it is what an unset key looks like, not a secret.
func ParseClusterKey(s string) (ClusterKey, error) {
	var k ClusterKey
	h := strings.TrimSpace(s)
	if len(h) != 2*len(k) {
		return k, fmt.Errorf("%w: %d characters, want %d hex digits (make one with openssl rand -hex 32)",
			ErrClusterKey, len(h), 2*len(k))
	}
	if _, err := hex.Decode(k[:], []byte(h)); err != nil {
		return ClusterKey{}, fmt.Errorf("%w: %v", ErrClusterKey, err)
	}
	if k.IsZero() {
		return k, fmt.Errorf("%w: all zeros", ErrClusterKey)
	}
	return k, nil
}

// String returns the key as 64 lowercase hex digits, the form
// ParseClusterKey reads. It is the secret: do not log it.
func (k ClusterKey) String() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether the key is unset (all zeros).
func (k ClusterKey) IsZero() bool { return k == ClusterKey{} }

// subkey returns HMAC-SHA256(k, label).
func (k ClusterKey) subkey(label string) [sha256.Size]byte {
	m := hmac.New(sha256.New, k[:])
	m.Write([]byte(label))
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// trunkKey is the subkey that authenticates trunk frames.
func (k ClusterKey) trunkKey() [sha256.Size]byte { return k.subkey(clusterTrunkLabel) }

// msgKey is the subkey that authenticates cluster messages.
func (k ClusterKey) msgKey() [sha256.Size]byte { return k.subkey(clusterMsgLabel) }

// ForwarderTag names a forwarder id compactly in trunk frames: the first 8
// bytes, big-endian, of SHA-256("callrelay forwarder tag" || id). The tag
// says where a frame came from; it authenticates nothing (the cluster key
// does) and is not unique by construction: two ids with one tag, odds of
// about n²/2⁶⁵ for n forwarders, cost at most a dropped frame.
func ForwarderTag(id string) uint64 {
	h := sha256.New()
	h.Write([]byte(forwarderTagLabel))
	h.Write([]byte(id))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
