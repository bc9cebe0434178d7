package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/callrelay/callrelay/internal/reflector"
)

var reflectorProc = process[reflectorOptions]{name: "reflector", flags: reflectorFlags,
	about: "run the bare batched UDP reflector the capacity benchmark compares the forwarder with (no logic, no authentication: never deploy it)"}

type reflectorOptions struct {
	listen     string
	statsEvery time.Duration
}

func reflectorFlags(fs *flag.FlagSet) *reflectorOptions {
	o := &reflectorOptions{listen: "127.0.0.1:3479"}
	fs.StringVar(&o.listen, "listen", o.listen, "UDP ip:port (IPv4) to reflect on")
	fs.DurationVar(&o.statsEvery, "stats-every", 0, "print the counters this often (0: only at exit)")
	return o
}

// runReflector reflects until the context ends, then prints its counters.
func runReflector(ctx context.Context, args []string) error {
	o, done, err := reflectorProc.parse(args, os.Stdout)
	if err != nil || done {
		return err
	}
	addr, err := netip.ParseAddrPort(o.listen)
	if err != nil {
		return fmt.Errorf("reflector: --listen %q: want ip:port", o.listen)
	}
	r, err := reflector.Listen(addr)
	if err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	print := func() { fmt.Fprintf(os.Stderr, "reflector %s: %+v\n", r.Addr(), r.Stats()) }
	if o.statsEvery > 0 {
		go func() {
			t := time.NewTicker(o.statsEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					print()
				}
			}
		}()
	}
	err = r.Run(ctx)
	print()
	return err
}
