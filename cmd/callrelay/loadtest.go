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
	"strconv"
	"strings"
	"time"

	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/loadtest"
	"github.com/callrelay/callrelay/loadtest/report"
	"github.com/callrelay/callrelay/protocol"
)

// runLoadtest runs one load test against the forwarders given and writes
// its result (JSON) and report (HTML); `loadtest agent` runs a share of a
// controller's plan instead.
func runLoadtest(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "agent" {
		return runLoadtestAgent(ctx, args[1:])
	}
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	planFile := fs.String("plan", "", "YAML or JSON plan file (flags below override it)")
	fwds := fs.String("forwarders", envOr("CALLRELAY_FORWARDERS", ""), "comma-separated forwarder ip:ports: the only addresses traffic goes to (env CALLRELAY_FORWARDERS)")
	key := fs.String("signing-key", envOr("CALLRELAY_SIGNING_KEY", ""), "base64 Ed25519 key that mints join tokens, trusted by the forwarders (env CALLRELAY_SIGNING_KEY)")
	profile := fs.String("profile", "", "steady, spike or ramp (default: the plan's, else steady)")
	rate := fs.Float64("rate", 0, "steady: calls/s; spike: peak calls/s; ramp: calls/s added per step")
	duration := fs.Duration("duration", 0, "steady: how long; spike: the hold at the peak; ramp: each step")
	oneToOne := fs.Float64("one-to-one", -1, "fraction of one-to-one calls, 0..1")
	groupSize := fs.Int("group-size", 0, "group calls of exactly this size")
	videoShare := fs.Float64("video-share", -1, "fraction of participants, 0..1, that also send camera video (simulcast and bitrates as the relay asks), subscribed to by the rest of their call (default: the plan's, else 0)")
	maxCalls := fs.Int("max-concurrent", 0, "at most this many calls at once")
	cores := fs.Float64("relay-cores", 0, "CPU cores of all the forwarders together, for the knee per core")
	out := fs.String("out", "loadtest-result.json", "where the JSON result goes")
	html := fs.String("report", "loadtest-report.html", "where the HTML report goes (empty: none)")
	cf := addClusterFlags(fs, "unused by the load test")
	agents := fs.Int("agents", 0, "run through this many `callrelay loadtest agent` processes (over --nats-url) instead of locally")
	agentWait := fs.Duration("agents-wait", 30*time.Second, "how long to wait for the agents to show up")
	var procs processFlag
	fs.Var(&procs, "process", "name=pid of a process the plan's chaos actions may signal (repeatable), e.g. fwd-a=1234")
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
	if *videoShare >= 0 {
		p.Video.Share = *videoShare
	}
	if *key == "" {
		return errors.New("loadtest: no signing key: pass --signing-key or set CALLRELAY_SIGNING_KEY (the forwarders' token signer)")
	}
	priv, err := protocol.ParsePrivateKey(*key)
	if err != nil {
		return fmt.Errorf("loadtest: --signing-key: %w", err)
	}
	p.SigningKey = priv
	p.Processes = procs
	log, err := logging.New("warn")
	if err != nil {
		return err
	}
	deps, err := cf.open("loadtest", log)
	if err != nil {
		return err
	}
	defer deps.close()
	if deps.nats != nil && !deps.key.IsZero() {
		// The forwarders' load reports: throttle levels and CPU per second.
		p.NATS, p.ClusterKey = deps.nats, deps.key
	}
	var res *loadtest.Result
	if *agents > 0 {
		if deps.nats == nil {
			return errors.New("loadtest: --agents needs --nats-url")
		}
		res, err = loadtest.RunController(ctx, p, deps.nats, loadtest.DefaultSubject, *agents, *agentWait, os.Stderr)
	} else {
		res, err = loadtest.Run(ctx, p, os.Stderr)
	}
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

// runLoadtestAgent takes a share of the plans a controller publishes over
// NATS, for as long as ctx lives (one run at a time).
func runLoadtestAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadtest agent", flag.ContinueOnError)
	key := fs.String("signing-key", envOr("CALLRELAY_SIGNING_KEY", ""), "base64 Ed25519 key that mints join tokens; plans must be signed with it (env CALLRELAY_SIGNING_KEY)")
	natsCfg := addNATSFlags(fs) // where the controller publishes plans
	once := fs.Bool("once", false, "exit after one run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := natsCfg.Validate(); err != nil {
		return fmt.Errorf("loadtest agent: %w", err)
	}
	if *key == "" || natsCfg.URL == "" {
		return errors.New("loadtest agent: --signing-key (or CALLRELAY_SIGNING_KEY) and --nats-url are required")
	}
	priv, err := protocol.ParsePrivateKey(*key)
	if err != nil {
		return fmt.Errorf("loadtest agent: --signing-key: %w", err)
	}
	log, err := logging.New("warn")
	if err != nil {
		return err
	}
	nc, err := connectNATS(natsCfg, "callrelay loadtest agent", log)
	if err != nil {
		return fmt.Errorf("loadtest agent: %w", err)
	}
	defer nc.Close()
	for ctx.Err() == nil {
		part, err := loadtest.RunAgent(ctx, nc, loadtest.DefaultSubject, priv, os.Stderr)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fmt.Printf("loadtest agent: share %d of %d of run %s done (stopped: %s)\n", part.Index+1, part.Of, part.RunID, part.Stopped)
		if *once {
			return nil
		}
	}
	return nil
}

// processFlag collects name=pid pairs.
type processFlag map[string]int

func (p *processFlag) String() string { return fmt.Sprint(map[string]int(*p)) }

func (p *processFlag) Set(v string) error {
	name, pid, ok := strings.Cut(v, "=")
	n, err := strconv.Atoi(pid)
	if !ok || name == "" || err != nil || n <= 1 {
		return fmt.Errorf("want name=pid, e.g. fwd-a=1234, got %q", v)
	}
	if *p == nil {
		*p = processFlag{}
	}
	(*p)[name] = n
	return nil
}
