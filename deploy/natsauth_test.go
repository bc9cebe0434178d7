package deploy_test

import (
	"path"
	"strings"
	"testing"

	"github.com/callrelay/callrelay/protocol"
)

// isRole says whether name is one of the NATS roles `callrelay nats-auth`
// writes a seed for.
func isRole(name string) bool {
	for _, r := range protocol.NATSRoles {
		if string(r) == name {
			return true
		}
	}
	return false
}

// mountOf is the host source of the volume that mounts at target in s.
func mountOf(s composeService, target string) (string, bool) {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			return parts[0], true
		}
	}
	return "", false
}

// Every NATS node of the compose cluster runs with the authorization block
// `callrelay nats-auth` writes (from protocol.RolePermissions: the
// permissions are generated, never written in the file), and every
// callrelay process that connects to NATS is given its own role's seed.
func TestComposeNATSAuth(t *testing.T) {
	c := loadCompose(t)
	nodes, clients := 0, 0
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if rest, ok := strings.CutPrefix(src, "./nats-auth/"); ok {
				role, isSeed := strings.CutSuffix(rest, ".nk")
				if rest != "auth.conf" && !(isSeed && isRole(role)) {
					t.Errorf("service %s mounts %s, which `callrelay nats-auth` does not write", name, src)
				}
			}
		}
		if strings.HasPrefix(s.Image, "nats:") {
			nodes++
			conf, ok := flagValue(s.Command, "c")
			if !ok {
				t.Errorf("NATS %s runs without -c (no authorization)", name)
				continue
			}
			if src, ok := mountOf(s, conf); !ok || src != "./nats-auth/auth.conf" {
				t.Errorf("NATS %s: -c %s is not nats-auth/auth.conf mounted (got %q)", name, conf, src)
			}
			continue
		}
		if len(s.Command) == 0 {
			continue
		}
		if _, ok := flagValue(s.Command, "nats-url"); !ok {
			continue
		}
		clients++
		role := s.Command[0]
		if !isRole(role) {
			t.Errorf("service %s connects to NATS as %q, which is no role", name, role)
			continue
		}
		seed, ok := flagValue(s.Command, "nats-nkey")
		if !ok {
			t.Errorf("service %s connects to NATS without --nats-nkey", name)
			continue
		}
		src, ok := mountOf(s, seed)
		if want := "./nats-auth/" + role + ".nk"; !ok || path.Clean(src) != path.Clean(want) {
			t.Errorf("service %s: --nats-nkey %s mounts %q, want %s (its role's seed)", name, seed, src, want)
		}
	}
	if nodes != 3 || clients != 6 {
		t.Errorf("%d NATS nodes and %d clients checked, want 3 and 6", nodes, clients)
	}
}
