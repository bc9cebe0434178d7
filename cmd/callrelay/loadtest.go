package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/callrelay/callrelay/loadtest"
	"github.com/callrelay/callrelay/loadtest/report"
	"github.com/callrelay/callrelay/protocol"
)

// runLoadtest runs one load test against the forwarders given and writes
// its result (JSON) and report (HTML).
func runLoadtest(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	planFile := fs.String("plan", "", "YAML or JSON plan file (flags below override it)")
	fwds := fs.String("forwarders", envOr("CALLRELAY_FORWARDERS", ""), "comma-separated forwarder ip:ports: the only addresses traffic goes to (env CALLRELAY_FORWARDERS)")
	key := fs.String("signing-key", envOr("CALLRELAY_SIGNING_KEY", ""), "base64 Ed25519 key that mints join tokens, trusted by the forwarders (env CALLRELAY_SIGNING_KEY)")
	profile := fs.String("profile", "", "steady, spike or ramp (default: the plan's, else steady)")
	rate := fs.Float64("rate", 0, "steady: calls/s; spike: peak calls/s; ramp: calls/s added per step")
	duration := fs.Duration("duration", 0, "steady: how long; spike: the hold at the peak; ramp: each step")
	oneToOne := fs.Float64("one-to-one", -1, "fraction of one-to-one calls, 0..1")
	groupSize := fs.Int("group-size", 0, "group calls of exactly this size")
	maxCalls := fs.Int("max-concurrent", 0, "at most this many calls at once")
	cores := fs.Float64("relay-cores", 0, "CPU cores of all the forwarders together, for the knee per core")
	out := fs.String("out", "loadtest-result.json", "where the JSON result goes")
	html := fs.String("report", "loadtest-report.html", "where the HTML report goes (empty: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var p loadtest.Plan
	if *planFile != "" {
		b, err := os.ReadFile(*planFile)
		if err != nil {
			return fmt.Errorf("loadtest: --plan: %w", err)
		}
		if p, err = loadtest.ParsePlan(b); err != nil {
			return fmt.Errorf("loadtest: %s: %w", *planFile, err)
		}
	}
	if err := applyLoadFlags(&p, *fwds, *profile, *rate, *duration, *oneToOne, *groupSize, *maxCalls, *cores); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("loadtest: no signing key: pass --signing-key or set CALLRELAY_SIGNING_KEY (the forwarders' token signer)")
	}
	priv, err := protocol.ParsePrivateKey(*key)
	if err != nil {
		return fmt.Errorf("loadtest: --signing-key: %w", err)
	}
	p.SigningKey = priv
	res, err := loadtest.Run(ctx, p, os.Stderr)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return fmt.Errorf("loadtest: --out: %w", err)
	}
	if *html != "" {
		var buf bytes.Buffer
		if err := report.Render(&buf, report.FromResult(res)); err != nil {
			return fmt.Errorf("loadtest: report: %w", err)
		}
		if err := os.WriteFile(*html, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("loadtest: --report: %w", err)
		}
	}
	verdict := "PASS"
	if !res.Verdict.Pass {
		verdict = "FAIL"
	}
	fmt.Printf("loadtest: %s (stopped: %s); result %s, report %s\n", verdict, res.Stopped, *out, *html)
	return nil
}

// applyLoadFlags lets flags override the plan file.
func applyLoadFlags(p *loadtest.Plan, fwds, profile string, rate float64, d time.Duration, oneToOne float64, groupSize, maxCalls int, cores float64) error {
	if fwds != "" {
		p.Forwarders = nil
		for _, s := range strings.Split(fwds, ",") {
			ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("loadtest: --forwarders %q: want ip:port[,ip:port...]", s)
			}
			p.Forwarders = append(p.Forwarders, ap)
		}
	}
	if profile != "" {
		p.Profile.Kind = profile
	}
	dur := loadtest.Duration(d)
	switch p.Profile.Kind {
	case "", "steady":
		if rate > 0 {
			p.Profile.Steady.Rate = rate
		}
		if dur > 0 {
			p.Profile.Steady.Duration = dur
		}
	case "spike":
		if rate > 0 {
			p.Profile.Spike.Peak = rate
		}
		if dur > 0 {
			p.Profile.Spike.Hold = dur
		}
	case "ramp":
		if rate > 0 {
			p.Profile.Ramp.Step = rate
		}
		if dur > 0 {
			p.Profile.Ramp.StepDuration = dur
		}
	}
	if oneToOne >= 0 {
		p.Mix.OneToOne = oneToOne
	}
	if groupSize > 0 {
		p.Mix.GroupMin, p.Mix.GroupMax = groupSize, groupSize
	}
	if maxCalls > 0 {
		p.Bounds.MaxConcurrentCalls = maxCalls
	}
	if cores > 0 {
		p.RelayCores = cores
	}
	return nil
}
