package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

var (
	tokenKeygenProc = process[struct{}]{name: "token keygen", flags: noFlags,
		about: "print a new Ed25519 key pair for signing join tokens, as CALLRELAY_PUBLIC_KEY= and CALLRELAY_SIGNING_KEY= lines"}
	tokenMintProc = process[mintOptions]{name: "token mint", flags: mintFlags,
		about: "print a join token signed with the signing key"}
	tokenClusterKeyProc = process[struct{}]{name: "token cluster-key", flags: noFlags,
		about: "print a new cluster key (trunk frames and NATS messages), as a CALLRELAY_CLUSTER_KEY= line"}
	tokenDashboardProc = process[struct{}]{name: "token dashboard", flags: noFlags,
		about: "print two new dashboard tokens, as CALLRELAY_DASHBOARD_VIEWER_TOKEN= and CALLRELAY_DASHBOARD_ADMIN_TOKEN= lines"}
)

func noFlags(*flag.FlagSet) *struct{} { return &struct{}{} }

// tokenUsage lists the token subcommands.
func tokenUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: callrelay token <keygen | mint | cluster-key | dashboard> [flags]   (callrelay token <subcommand> -h)")
	for _, p := range []declared{tokenKeygenProc, tokenMintProc, tokenClusterKeyProc, tokenDashboardProc} {
		name, about, _ := p.spec()
		fmt.Fprintf(w, "  %-11s %s\n", strings.TrimPrefix(name, "token "), about)
	}
}

// runToken: `callrelay token keygen` prints a key pair;
// `callrelay token mint ...` prints a signed join token; `callrelay token
// cluster-key` prints a new key for a cluster's trunk and messages;
// `callrelay token dashboard` prints a viewer and an admin token for the
// dashboard. Each answers -h with its help, and nothing else.
func runToken(_ context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("token: want a subcommand: keygen | mint | cluster-key | dashboard (callrelay token -h)")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		tokenUsage(os.Stderr)
		return flag.ErrHelp
	case "keygen":
		if _, _, err := tokenKeygenProc.parse(args[1:], os.Stdout); err != nil {
			return err
		}
		pub, priv, err := protocol.GenerateSigningKey()
		if err != nil {
			return err
		}
		fmt.Printf("CALLRELAY_PUBLIC_KEY=%s\nCALLRELAY_SIGNING_KEY=%s\n", protocol.EncodeKey(pub), protocol.EncodeKey(priv.Seed()))
		return nil
	case "mint":
		return mintToken(args[1:])
	case "cluster-key":
		if _, _, err := tokenClusterKeyProc.parse(args[1:], os.Stdout); err != nil {
			return err
		}
		k, err := protocol.NewClusterKey()
		if err != nil {
			return err
		}
		fmt.Printf("CALLRELAY_CLUSTER_KEY=%s\n", k)
		return nil
	case "dashboard":
		if _, _, err := tokenDashboardProc.parse(args[1:], os.Stdout); err != nil {
			return err
		}
		fmt.Printf("CALLRELAY_DASHBOARD_VIEWER_TOKEN=%s\nCALLRELAY_DASHBOARD_ADMIN_TOKEN=%s\n", randomToken(), randomToken())
		return nil
	}
	return fmt.Errorf("token: unknown subcommand %q: want keygen, mint, cluster-key or dashboard", args[0])
}

// mintOptions is what `token mint`'s flags set.
type mintOptions struct {
	signingKey, call, participant, class string
	maxSize                              uint
	ttl                                  time.Duration
	deviceKey                            string
}

func mintFlags(fs *flag.FlagSet) *mintOptions {
	o := &mintOptions{class: "group", ttl: time.Hour}
	fs.StringVar(&o.signingKey, "signing-key", "", "base64 Ed25519 private key or seed")
	fs.StringVar(&o.call, "call", "", "call id, 32 hex digits or a UUID (default: a new random id)")
	fs.StringVar(&o.participant, "participant", "", "participant id (default: a new random id)")
	fs.StringVar(&o.class, "class", o.class, "call class: one-to-one or group")
	fs.UintVar(&o.maxSize, "max-size", 0, "most members the call may have (default 2 for one-to-one, 8 for group)")
	fs.DurationVar(&o.ttl, "ttl", o.ttl, "how long the token may start a session")
	fs.StringVar(&o.deviceKey, "device-key", "", "base64 Ed25519 public key of the device: mint a version 2 token bound to it (the device proves it holds the private key; default: a version 1 token)")
	return o
}

func mintToken(args []string) error {
	o, _, err := tokenMintProc.parse(args, os.Stdout)
	if err != nil {
		return err
	}
	if o.signingKey == "" {
		return errors.New("token mint: no signing key: pass --signing-key or set CALLRELAY_SIGNING_KEY (make one with `callrelay token keygen`)")
	}
	priv, err := protocol.ParsePrivateKey(o.signingKey)
	if err != nil {
		return fmt.Errorf("token mint: --signing-key: %w", err)
	}
	t := protocol.Token{Expiry: time.Now().Add(o.ttl)}
	if t.Class, err = protocol.ParseCallClass(o.class); err != nil {
		return fmt.Errorf("token mint: --class: %w", err)
	}
	if t.CallID, err = idOrNew(o.call); err != nil {
		return fmt.Errorf("token mint: --call: %w", err)
	}
	if t.ParticipantID, err = idOrNew(o.participant); err != nil {
		return fmt.Errorf("token mint: --participant: %w", err)
	}
	switch {
	case o.maxSize > 0xffff:
		return fmt.Errorf("token mint: --max-size %d is too large", o.maxSize)
	case o.maxSize > 0:
		t.MaxSize = uint16(o.maxSize)
	case t.Class == protocol.ClassGroup:
		t.MaxSize = 8
	default:
		t.MaxSize = 2 // one-to-one; set here so the line below reports it
	}
	if o.deviceKey != "" {
		if t.DeviceKey, err = protocol.ParsePublicKey(o.deviceKey); err != nil {
			return fmt.Errorf("token mint: --device-key: %w", err)
		}
	}
	b, err := protocol.SignToken(priv, t)
	if err != nil {
		return fmt.Errorf("token mint: %w", err)
	}
	version := 1
	if t.DeviceBound() {
		version = 2
	}
	fmt.Fprintf(os.Stderr, "version %d call %s participant %s class %s max-size %d expires %s\n",
		version, t.CallID, t.ParticipantID, t.Class, t.MaxSize, t.Expiry.UTC().Format(time.RFC3339))
	fmt.Println(protocol.EncodeTokenString(b))
	return nil
}

// randomToken is 32 random bytes in unpadded base64url: a bearer token
// the dashboard accepts.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

func idOrNew(s string) (protocol.ID, error) {
	if s == "" {
		return protocol.NewID(), nil
	}
	return protocol.ParseID(s)
}
