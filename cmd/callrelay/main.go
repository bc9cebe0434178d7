// Command callrelay is the one binary of the relay. Each subcommand builds a
// config from flags and environment, constructs its component, and runs it
// until the first SIGINT/SIGTERM (a second one exits at once).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

var commands = map[string]struct {
	run  func(ctx context.Context, args []string) error
	help string
}{
	"demo":      {runDemo, demoProc.about},
	"forwarder": {runForwarder, forwarderProc.about},
	"loadtest":  {runLoadtest, loadtestProc.about},
	"reflector": {runReflector, reflectorProc.about},
	"dashboard": {runDashboard, dashboardProc.about},
	"conductor": {runConductor, conductorProc.about},
	"locate":    {runLocate, locateProc.about},
	"token":     {runToken, "make signing keys and mint join tokens"},
	"admin":     {runAdmin, "act on live calls through the dashboard's admin API (admin.go)"},
	"nats-auth": {runNATSAuth, natsAuthProc.about},
	// Hidden: writes docs/configuration.md (go generate ./cmd/callrelay).
	"config-doc": {runConfigDoc, ""},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: callrelay <command> [flags]   (callrelay <command> -h for its flags)")
	for _, name := range []string{"demo", "forwarder", "conductor", "locate", "dashboard", "loadtest", "token", "admin", "nats-auth"} {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", name, commands[name].help)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		usage()
		os.Exit(2)
	}
	// One channel for both signals, registered before anything runs, so no
	// signal falls between two handlers. First: cancel ctx and wind down.
	// Second: exit now.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sigs
		cancel()
		<-sigs
		fmt.Fprintln(os.Stderr, "callrelay: second signal, exiting now")
		os.Exit(1)
	}()
	stopProfiles := startProfiles()
	err := cmd.run(ctx, os.Args[2:])
	stopProfiles()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "callrelay:", err)
		os.Exit(1)
	}
}
