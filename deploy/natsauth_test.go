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

// Every callrelay process of the Kubernetes manifests that connects to NATS
// (all of them: the ConfigMap gives CALLRELAY_NATS_URL) reads its own
// role's seed with --nats-nkey, from a Secret mounted for that role only
// and readable by the process's group; the Secrets in the file hold
// placeholders, never a seed.
func TestK8sNATSAuth(t *testing.T) {
	objs := loadK8s(t)
	secrets := map[string]k8sObject{}
	for _, o := range objs {
		if o.Kind == "Secret" {
			secrets[o.Metadata.Name] = o
		}
	}
	seen := map[string]bool{}
	for _, o := range objs {
		if o.Spec == nil || o.Spec.Template == nil {
			continue
		}
		pod := o.Spec.Template.Spec
		for _, c := range pod.Containers {
			if len(c.Args) == 0 || !isRole(c.Args[0]) {
				continue
			}
			role := c.Args[0]
			seen[role] = true
			seed, ok := flagValue(c.Args, "nats-nkey")
			if !ok {
				t.Errorf("%s %s: no --nats-nkey", o.Kind, o.Metadata.Name)
				continue
			}
			vol := ""
			for _, m := range c.VolumeMounts {
				mm, _ := m.(map[string]any)
				if mm["mountPath"] == path.Dir(seed) {
					vol, _ = mm["name"].(string)
				}
			}
			secretName, mode := "", 0
			for _, v := range pod.Volumes {
				vm, _ := v.(map[string]any)
				if vm["name"] != vol || vol == "" {
					continue
				}
				sec, _ := vm["secret"].(map[string]any)
				secretName, _ = sec["secretName"].(string)
				mode, _ = sec["defaultMode"].(int)
			}
			if want := "callrelay-nats-" + role; secretName != want {
				t.Errorf("%s %s: --nats-nkey %s is not from Secret %s (got %q)", o.Kind, o.Metadata.Name, seed, want, secretName)
				continue
			}
			if mode&0o7 != 0 {
				t.Errorf("%s %s: the seed's mode %o lets others read it", o.Kind, o.Metadata.Name, mode)
			}
			if g, _ := pod.SecurityContext["fsGroup"].(int); mode&0o40 != 0 && g != 65532 {
				t.Errorf("%s %s: the seed is group-readable but fsGroup is %d, not the process's 65532", o.Kind, o.Metadata.Name, g)
			}
			s, ok := secrets[secretName]
			if _, has := s.StringData[path.Base(seed)]; !ok || !has {
				t.Errorf("Secret %s: no key %s", secretName, path.Base(seed))
			}
			if strings.Contains(s.StringData[path.Base(seed)], "SU") && !strings.Contains(s.StringData[path.Base(seed)], "REPLACE") {
				t.Errorf("Secret %s holds what looks like a real seed: placeholders only", secretName)
			}
		}
	}
	for _, r := range []string{"forwarder", "conductor", "dashboard"} {
		if !seen[r] {
			t.Errorf("no %s in the manifests", r)
		}
	}
}
