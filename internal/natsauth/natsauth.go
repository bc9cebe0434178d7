// Package natsauth gives each kind of process its own NATS identity, an
// nkey (Ed25519; the server holds only public keys and checks a signature
// of its nonce, so no secret crosses the wire or sits in the server's
// configuration), and the server per-user publish and subscribe
// permissions. It makes the keys, the embedded server's users and the text
// of a nats-server authorization block. It never decides what a role may
// do: callers hand it the permissions (protocol.RolePermissions).
package natsauth

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Perms is what one user may do: subjects (NATS wildcards allowed) to
// publish and subscribe to, and whether it may answer requests it receives.
type Perms struct {
	Publish, Subscribe []string
	Replies            bool
}

// User is one role's identity.
type User struct {
	Role   string
	Public string // the nkey's public key (U...)
	Seed   []byte // its seed (SU...): the secret the role's processes hold
	Perms  Perms
}

// NewUser makes a fresh nkey for role.
func NewUser(role string, p Perms) (User, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return User{}, fmt.Errorf("natsauth: new nkey for %s: %w", role, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return User{}, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return User{}, err
	}
	return User{Role: role, Public: pub, Seed: seed, Perms: p}, nil
}

// replyTTL bounds how long a request's reply subject may be answered.
const replyTTL = time.Minute

// ServerUsers are users for server.Options.Nkeys.
func ServerUsers(users []User) []*server.NkeyUser {
	out := make([]*server.NkeyUser, 0, len(users))
	for _, u := range users {
		p := &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: u.Perms.Publish},
			Subscribe: &server.SubjectPermission{Allow: u.Perms.Subscribe},
		}
		if len(u.Perms.Publish) == 0 {
			p.Publish = &server.SubjectPermission{Deny: []string{">"}}
		}
		if u.Perms.Replies {
			p.Response = &server.ResponsePermission{MaxMsgs: 1, Expires: replyTTL}
		}
		out = append(out, &server.NkeyUser{Nkey: u.Public, Permissions: p})
	}
	return out
}

// Option authenticates a client with seed.
func Option(seed []byte) (nats.Option, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("natsauth: not an nkey seed: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	return nats.Nkey(pub, kp.Sign), nil
}

// Config is a nats-server authorization block for users, to include in the
// server's configuration file: public keys and permissions only.
func Config(users []User) string {
	var b strings.Builder
	b.WriteString("# callrelay roles: one nkey each (the seeds stay with the processes).\nauthorization {\n  users = [\n")
	list := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	sorted := append([]User(nil), users...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Role < sorted[j].Role })
	for _, u := range sorted {
		fmt.Fprintf(&b, "    # %s\n    {\n      nkey: %s\n      permissions: {\n", u.Role, u.Public)
		if len(u.Perms.Publish) > 0 {
			fmt.Fprintf(&b, "        publish: {allow: %s}\n", list(u.Perms.Publish))
		} else {
			b.WriteString("        publish: {deny: [\">\"]}\n")
		}
		fmt.Fprintf(&b, "        subscribe: {allow: %s}\n", list(u.Perms.Subscribe))
		if u.Perms.Replies {
			fmt.Fprintf(&b, "        allow_responses: {max: 1, expires: %q}\n", replyTTL.String())
		}
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

// WriteDir writes users into dir: <role>.nk, each role's seed (mode 0600,
// what --nats-nkey reads), and auth.conf, the server's block.
func WriteDir(dir string, users []User) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, u := range users {
		if err := os.WriteFile(filepath.Join(dir, u.Role+".nk"), append(append([]byte(nil), u.Seed...), '\n'), 0o600); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(Config(users)), 0o644)
}
