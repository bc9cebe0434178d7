package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// Profiling any subcommand, for the capacity work (docs/capacity.md, cost
// per packet): CALLRELAY_CPUPROFILE=file writes a pprof CPU profile and
// CALLRELAY_TRACE=file a runtime/trace execution trace (scheduler latency,
// GC, syscalls) of the whole run, both stopped when the command returns
// (after its first SIGINT/SIGTERM). Unset, they cost nothing.
func startProfiles() (stop func()) {
	var stops []func()
	if path := os.Getenv("CALLRELAY_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Fprintln(os.Stderr, "callrelay: CALLRELAY_CPUPROFILE:", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "callrelay: CALLRELAY_CPUPROFILE:", err)
			_ = f.Close()
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); _ = f.Close() })
		}
	}
	if path := os.Getenv("CALLRELAY_TRACE"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Fprintln(os.Stderr, "callrelay: CALLRELAY_TRACE:", err)
		} else if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, "callrelay: CALLRELAY_TRACE:", err)
			_ = f.Close()
		} else {
			stops = append(stops, func() { trace.Stop(); _ = f.Close() })
		}
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}
