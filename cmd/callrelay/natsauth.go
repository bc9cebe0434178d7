package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/natsauth"
	"github.com/callrelay/callrelay/protocol"
)

// natsAuthOptions are the flags of `callrelay nats-auth`.
type natsAuthOptions struct {
	Dir, Subject string
	Force        bool
}

var natsAuthProc = process[natsAuthOptions]{name: "nats-auth", flags: natsAuthFlags,
	about: "write a new NATS nkey seed per role (ROLE.nk, mode 0600, for --nats-nkey) and auth.conf, the nats-server authorization block with each role's permissions"}

func natsAuthFlags(fs *flag.FlagSet) *natsAuthOptions {
	o := &natsAuthOptions{Subject: forwarder.DefaultCluster().Subject}
	fs.StringVar(&o.Dir, "dir", "", "directory to write the seeds and auth.conf into (made 0700 if missing); required")
	fs.StringVar(&o.Subject, "subject", o.Subject, "NATS subject prefix the cluster's processes use (their --subject): the permissions are under it")
	fs.BoolVar(&o.Force, "force", false, "replace seeds already in --dir (every process must then be given its new seed)")
	return o
}

// runNATSAuth makes one nkey per role (protocol.NATSRoles) with the
// permissions protocol.RolePermissions gives it under --subject, and writes
// them with natsauth.WriteDir. It refuses to replace existing seeds without
// --force: a new seed locks out every process still holding the old one.
func runNATSAuth(_ context.Context, args []string) error {
	o, done, err := natsAuthProc.parse(args, os.Stdout)
	if err != nil || done {
		return err
	}
	if o.Dir == "" {
		return errors.New("nats-auth: --dir is required (where to write <role>.nk and auth.conf)")
	}
	users := make([]natsauth.User, 0, len(protocol.NATSRoles))
	for _, r := range protocol.NATSRoles {
		seed := filepath.Join(o.Dir, string(r)+".nk")
		if _, err := os.Stat(seed); err == nil && !o.Force {
			return fmt.Errorf("nats-auth: %s exists: pass --force to replace every role's seed", seed)
		}
		p, err := protocol.RolePermissions(o.Subject, r)
		if err != nil {
			return err
		}
		u, err := natsauth.NewUser(string(r), natsauth.Perms(p))
		if err != nil {
			return err
		}
		users = append(users, u)
	}
	if err := natsauth.WriteDir(o.Dir, users); err != nil {
		return fmt.Errorf("nats-auth: %w", err)
	}
	fmt.Fprintf(os.Stderr, "nats-auth: wrote %s/{forwarder,conductor,dashboard,loadtest}.nk (secrets: give each process its role's with --nats-nkey) and %s/auth.conf (for nats-server: -c or include)\n", o.Dir, o.Dir)
	return nil
}
