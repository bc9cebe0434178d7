package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// runToken: `callrelay token keygen` prints a key pair;
// `callrelay token mint ...` prints a signed join token; `callrelay token
// cluster-key` prints a new key for a cluster's trunk and messages.
func runToken(_ context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("token: want a subcommand: keygen | mint | cluster-key (callrelay token mint -h)")
	}
	switch args[0] {
	case "keygen":
		pub, priv, err := protocol.GenerateSigningKey()
		if err != nil {
			return err
		}
		fmt.Printf("CALLRELAY_PUBLIC_KEY=%s\nCALLRELAY_SIGNING_KEY=%s\n", protocol.EncodeKey(pub), protocol.EncodeKey(priv.Seed()))
		return nil
	case "mint":
		return mintToken(args[1:])
	case "cluster-key":
		k, err := protocol.NewClusterKey()
		if err != nil {
			return err
		}
		fmt.Printf("CALLRELAY_CLUSTER_KEY=%s\n", k)
		return nil
	}
	return fmt.Errorf("token: unknown subcommand %q: want keygen, mint or cluster-key", args[0])
}

func mintToken(args []string) error {
	fs := flag.NewFlagSet("token mint", flag.ContinueOnError)
	key := fs.String("signing-key", envOr("CALLRELAY_SIGNING_KEY", ""), "base64 Ed25519 private key or seed (env CALLRELAY_SIGNING_KEY)")
	call := fs.String("call", "", "call id, 32 hex digits or a UUID (default: a new random id)")
	participant := fs.String("participant", "", "participant id (default: a new random id)")
	class := fs.String("class", "group", "call class: one-to-one or group")
	size := fs.Uint("max-size", 0, "most members the call may have (default 2 for one-to-one, 8 for group)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token may start a session")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("token mint: no signing key: pass --signing-key or set CALLRELAY_SIGNING_KEY (make one with `callrelay token keygen`)")
	}
	priv, err := protocol.ParsePrivateKey(*key)
	if err != nil {
		return fmt.Errorf("token mint: --signing-key: %w", err)
	}
	t := protocol.Token{Expiry: time.Now().Add(*ttl)}
	if t.Class, err = protocol.ParseCallClass(*class); err != nil {
		return fmt.Errorf("token mint: --class: %w", err)
	}
	if t.CallID, err = idOrNew(*call); err != nil {
		return fmt.Errorf("token mint: --call: %w", err)
	}
	if t.ParticipantID, err = idOrNew(*participant); err != nil {
		return fmt.Errorf("token mint: --participant: %w", err)
	}
	switch {
	case *size > 0xffff:
		return fmt.Errorf("token mint: --max-size %d is too large", *size)
	case *size > 0:
		t.MaxSize = uint16(*size)
	case t.Class == protocol.ClassGroup:
		t.MaxSize = 8
	default:
		t.MaxSize = 2 // one-to-one; set here so the line below reports it
	}
	b, err := protocol.SignToken(priv, t)
	if err != nil {
		return fmt.Errorf("token mint: %w", err)
	}
	fmt.Fprintf(os.Stderr, "call %s participant %s class %s max-size %d expires %s\n",
		t.CallID, t.ParticipantID, t.Class, t.MaxSize, t.Expiry.UTC().Format(time.RFC3339))
	fmt.Println(protocol.EncodeTokenString(b))
	return nil
}

func idOrNew(s string) (protocol.ID, error) {
	if s == "" {
		return protocol.NewID(), nil
	}
	return protocol.ParseID(s)
}
