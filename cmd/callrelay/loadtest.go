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
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/loadtest"
	"github.com/callrelay/callrelay/loadtest/report"
	"github.com/callrelay/callrelay/protocol"
)

var loadtestProc = process[loadtestOptions]{name: "loadtest", flags: loadtestFlags,
	about: "make calls against forwarders (steady, spike or ramp) and report what they held"}

// loadtestOptions is what the load test's flags set; the profile and mix
// flags override the plan file's values.
type loadtestOptions struct {
	planFile, forwarders, signingKey, profile string
	rate, oneToOne, videoShare, relayCores    float64
	duration, agentsWait, tokenLifetime       time.Duration
	refreshTokens                             bool
	groupSize, maxConcurrent, agents          int
	out, report                               string
	cluster                                   clusterFlags
	processes                                 processFlag
	chaosDown, chaosUp                        hookFlag
	engine, fastTarget                        string
	fastIO                                    packetFlags
	turnUser, turnPassword, relayPIDsMore     string
	fastSockets, probeEvery, relayPID         int
	relayAddedP99                             time.Duration
	streams                                   streamFlags
}

// streamFlags are the flags that put devices on TCP and TLS
// (loadtest.Transports).
type streamFlags struct {
	tcpShare, tlsShare                 float64
	tcpAddrs, tlsAddrs, tlsCA, tlsName string
	metrics                            string
}

func loadtestFlags(fs *flag.FlagSet) *loadtestOptions {
	o := &loadtestOptions{oneToOne: -1, videoShare: -1, out: "loadtest-result.json", agentsWait: 30 * time.Second,
		streams: streamFlags{tcpShare: -1, tlsShare: -1}}
	fs.StringVar(&o.planFile, "plan", "", "YAML or JSON plan file (flags below override it)")
	fs.StringVar(&o.forwarders, "forwarders", "", "comma-separated forwarder ip:ports: the only addresses traffic goes to")
	fs.StringVar(&o.signingKey, "signing-key", "", "base64 Ed25519 key that mints join tokens, trusted by the forwarders")
	fs.StringVar(&o.profile, "profile", "", "steady, spike or ramp (default: the plan's, else steady)")
	fs.Float64Var(&o.rate, "rate", 0, "steady: calls/s; spike: peak calls/s; ramp: calls/s added per step")
	fs.DurationVar(&o.duration, "duration", 0, "steady: how long; spike: the hold at the peak; ramp: each step")
	fs.Float64Var(&o.oneToOne, "one-to-one", o.oneToOne, "fraction of one-to-one calls, 0..1 (negative: the plan's)")
	fs.IntVar(&o.groupSize, "group-size", 0, "group calls of exactly this size")
	fs.Float64Var(&o.videoShare, "video-share", o.videoShare, "fraction of participants, 0..1, that also send camera video (simulcast and bitrates as the relay asks), subscribed to by the rest of their call (negative: the plan's, else 0)")
	fs.IntVar(&o.maxConcurrent, "max-concurrent", 0, "at most this many calls at once")
	fs.DurationVar(&o.tokenLifetime, "token-lifetime", 0, "participants' join tokens are valid this long from their join (0: the plan's, else 1h)")
	fs.BoolVar(&o.refreshTokens, "refresh-tokens", false, "participants renew their tokens before they expire, as an app's signalling service would (else the plan's)")
	fs.Float64Var(&o.relayCores, "relay-cores", 0, "CPU cores of all the forwarders together, for the knee per core")
	fs.StringVar(&o.out, "out", o.out, "where the JSON result goes")
	fs.StringVar(&o.report, "report", "", "where the HTML report goes (empty: no report)")
	o.cluster = addClusterFlags(fs, "unused by the load test")
	fs.IntVar(&o.agents, "agents", 0, "run through this many loadtest agent processes (over --nats-url) instead of locally")
	fs.DurationVar(&o.agentsWait, "agents-wait", o.agentsWait, "how long to wait for the agents to show up")
	fs.Var(&o.processes, "process", "`name=pid` of a process the plan's chaos actions may signal (repeatable, or comma-separated), e.g. fwd-a=1234")
	fs.Var(&o.chaosDown, "chaos-down", "`name=command`: the shell command that takes the service name down for the plan's chaos down actions, e.g. redis='systemctl stop redis-server' (one per flag, repeatable; needs its --chaos-up)")
	fs.StringVar(&o.engine, "engine", "", "full (every participant a client library session) or fast (thousands of devices on a few sockets, sampled probe calls; audio only, for capacity runs); default: the plan's, else full")
	fs.StringVar(&o.fastTarget, "fast-target", "", "fast engine: forwarder (STUN joins with tokens), reflector (callrelay reflector) or turn (a TURN server: ChannelData, one-to-one calls); default: the plan's, else forwarder")
	fs.StringVar(&o.turnUser, "turn-user", "", "fast engine, --fast-target turn: the TURN server's long-term credential user")
	fs.StringVar(&o.turnPassword, "turn-password", "", "fast engine, --fast-target turn: that user's password (better given in the environment)")
	fs.IntVar(&o.fastSockets, "fast-sockets", 0, "fast engine: sockets (and reader goroutines) the devices share (0: the plan's, else 2)")
	o.fastIO.add(fs)
	fs.IntVar(&o.probeEvery, "probe-every", 0, "fast engine: every Nth call is a probe call with full SRTP and byte checks (0: the plan's, else 20)")
	fs.IntVar(&o.relayPID, "relay-pid", 0, "pid of the relay process on this host whose CPU (/proc/<pid>/stat) is recorded per second and per ramp step (0: none)")
	fs.StringVar(&o.relayPIDsMore, "relay-pids-more", "", "comma-separated pids of further relay processes whose CPU adds to --relay-pid's (the second forwarder of calls spanning two over the trunk)")
	fs.DurationVar(&o.relayAddedP99, "relay-added-delay-p99", 0, "target: the p99 delay the relay adds over the fast engine's direct baseline pairs (0: the plan's, else none)")
	s := &o.streams
	fs.Float64Var(&s.tcpShare, "tcp-share", s.tcpShare, "fraction of devices, 0..1, whose network blocks UDP: they reach the forwarders over TCP or TLS only (full engine; needs --tcp-addrs and/or --tls-addrs; negative: the plan's, else 0)")
	fs.Float64Var(&s.tlsShare, "tls-share", s.tlsShare, "fraction, 0..1, of the --tcp-share devices that use TLS, the rest TCP (negative: the plan's, else 0)")
	fs.StringVar(&s.tcpAddrs, "tcp-addrs", "", "comma-separated ip:ports of the forwarders' TCP listeners (forwarder --tcp-listen), in --forwarders' order")
	fs.StringVar(&s.tlsAddrs, "tls-addrs", "", "comma-separated ip:ports of the forwarders' TLS listeners (forwarder --tls-listen), in --forwarders' order")
	fs.StringVar(&s.tlsCA, "tls-ca", "", "PEM file of the certificates the TLS listeners' certificates must chain to (default: the system's roots)")
	fs.StringVar(&s.metrics, "forwarder-metrics", "", "comma-separated URLs of the forwarders' /metrics (forwarder --metrics-listen), read before and after the run for the packets their TCP and TLS legs dropped from their send queues")
	fs.StringVar(&s.tlsName, "tls-server-name", "", "name the TLS listeners' certificates must carry (default: the listener's IP address)")
	fs.Var(&o.chaosUp, "chaos-up", "`name=command`: the shell command that brings the service name back up after a chaos down, e.g. redis='systemctl start redis-server' (one per flag, repeatable)")
	return o
}

// runLoadtest runs one load test against the forwarders given and writes
// its result (JSON) and, when asked, its report (HTML); `loadtest agent`
// runs a share of a controller's plan instead.
func runLoadtest(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "agent" {
		return runLoadtestAgent(ctx, args[1:])
	}
	o, _, err := loadtestProc.parse(args, os.Stdout)
	if err != nil {
		return err
	}
	p, err := o.plan()
	if err != nil {
		return err
	}
	log, err := logging.New("warn")
	if err != nil {
		return err
	}
	deps, err := o.cluster.open("loadtest", log)
	if err != nil {
		return err
	}
	defer deps.close()
	if deps.nats != nil && !deps.key.IsZero() {
		// The forwarders' load reports: throttle levels and CPU per second.
		p.NATS, p.ClusterKey = deps.nats, deps.key
	}
	var res *loadtest.Result
	if o.agents > 0 {
		if deps.nats == nil {
			return errors.New("loadtest: --agents needs --nats-url")
		}
		res, err = loadtest.RunController(ctx, p, deps.nats, loadtest.DefaultSubject, o.agents, o.agentsWait, os.Stderr)
	} else {
		res, err = loadtest.Run(ctx, p, os.Stderr)
	}
	if err != nil {
		return err
	}
	return o.write(res)
}

// plan is the plan file with the flags applied over it, and the signing
// key and processes the flags give.
func (o *loadtestOptions) plan() (loadtest.Plan, error) {
	var p loadtest.Plan
	if o.planFile != "" {
		b, err := os.ReadFile(o.planFile)
		if err != nil {
			return p, fmt.Errorf("loadtest: --plan: %w", err)
		}
		if p, err = loadtest.ParsePlan(b); err != nil {
			return p, fmt.Errorf("loadtest: %s: %w", o.planFile, err)
		}
	}
	if err := o.applyTo(&p); err != nil {
		return p, err
	}
	if o.signingKey == "" {
		return p, errors.New("loadtest: no signing key: pass --signing-key or set CALLRELAY_SIGNING_KEY (the forwarders' token signer)")
	}
	priv, err := protocol.ParsePrivateKey(o.signingKey)
	if err != nil {
		return p, fmt.Errorf("loadtest: --signing-key: %w", err)
	}
	p.SigningKey = priv
	p.Processes = o.processes
	p.Services, err = o.services()
	return p, err
}

// services pairs the --chaos-down and --chaos-up commands into the
// plan's services: a service taken down must be brought back.
func (o *loadtestOptions) services() (map[string]loadtest.Service, error) {
	out := map[string]loadtest.Service{}
	var errs []error
	for name, down := range o.chaosDown {
		up, ok := o.chaosUp[name]
		if !ok {
			errs = append(errs, fmt.Errorf("loadtest: --chaos-down %s has no --chaos-up %s: a service taken down must be brought back", name, name))
			continue
		}
		out[name] = loadtest.CommandService(name, down, up)
	}
	for name := range o.chaosUp {
		if _, ok := o.chaosDown[name]; !ok {
			errs = append(errs, fmt.Errorf("loadtest: --chaos-up %s has no --chaos-down %s", name, name))
		}
	}
	return out, errors.Join(errs...)
}

// write writes the JSON result to --out and, with --report, the HTML
// report, and prints the verdict.
func (o *loadtestOptions) write(res *loadtest.Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.out, b, 0o644); err != nil {
		return fmt.Errorf("loadtest: --out: %w", err)
	}
	written := "result " + o.out
	if o.report != "" {
		var buf bytes.Buffer
		if err := report.Render(&buf, report.FromResult(res)); err != nil {
			return fmt.Errorf("loadtest: report: %w", err)
		}
		if err := os.WriteFile(o.report, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("loadtest: --report: %w", err)
		}
		written += ", report " + o.report
	}
	verdict := "PASS"
	if !res.Verdict.Pass {
		verdict = "FAIL"
	}
	fmt.Printf("loadtest: %s (stopped: %s); %s\n", verdict, res.Stopped, written)
	if g := res.Geo; g != nil {
		fmt.Printf("loadtest: cities: %d calls measured, %d in one region, %d spanning; worst mouth-to-ear p50 %.0f ms, p95 %.0f ms (result geo)\n",
			g.Calls, g.OneRegion, g.Spanning, g.MouthToEarMs.P50, g.MouthToEarMs.P95)
	}
	return nil
}

// applyTo lets the flags override the plan file.
func (o *loadtestOptions) applyTo(p *loadtest.Plan) error {
	if o.forwarders != "" {
		p.Forwarders = nil
		for _, s := range strings.Split(o.forwarders, ",") {
			ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("loadtest: --forwarders %q: want ip:port[,ip:port...]", s)
			}
			p.Forwarders = append(p.Forwarders, ap)
		}
	}
	if o.profile != "" {
		p.Profile.Kind = o.profile
	}
	o.applyProfile(p)
	if o.oneToOne >= 0 {
		p.Mix.OneToOne = o.oneToOne
	}
	if o.groupSize > 0 {
		p.Mix.GroupMin, p.Mix.GroupMax = o.groupSize, o.groupSize
	}
	if o.videoShare >= 0 {
		p.Video.Share = o.videoShare
	}
	if o.maxConcurrent > 0 {
		p.Bounds.MaxConcurrentCalls = o.maxConcurrent
	}
	if o.relayCores > 0 {
		p.RelayCores = o.relayCores
	}
	if o.tokenLifetime > 0 {
		p.TokenLifetime = loadtest.Duration(o.tokenLifetime)
	}
	if o.refreshTokens {
		p.RefreshTokens = true
	}
	if err := o.applyFast(p); err != nil {
		return err
	}
	return o.streams.applyTo(p)
}

// applyTo lets the transport flags override the plan's transports; the
// listeners pair up with the plan's forwarders in order.
func (s *streamFlags) applyTo(p *loadtest.Plan) error {
	t := &p.Transports
	if s.tcpShare >= 0 {
		t.TCPShare = s.tcpShare
	}
	if s.tlsShare >= 0 {
		t.TLSShare = s.tlsShare
	}
	if s.tlsName != "" {
		t.TLSServerName = s.tlsName
	}
	if s.metrics != "" {
		t.Metrics = nil
		for _, u := range strings.Split(s.metrics, ",") {
			t.Metrics = append(t.Metrics, strings.TrimSpace(u))
		}
	}
	if s.tlsCA != "" {
		b, err := os.ReadFile(s.tlsCA)
		if err != nil {
			return fmt.Errorf("loadtest: --tls-ca: %w", err)
		}
		t.TLSRoots = string(b)
	}
	tcp, err := streamAddrs("--tcp-addrs", s.tcpAddrs, len(p.Forwarders))
	if err != nil {
		return err
	}
	tls, err := streamAddrs("--tls-addrs", s.tlsAddrs, len(p.Forwarders))
	if err != nil {
		return err
	}
	if tcp == nil && tls == nil {
		return nil
	}
	t.Streams = t.Streams[:0]
	for i, f := range p.Forwarders {
		fs := loadtest.ForwarderStreams{Forwarder: f}
		if tcp != nil {
			fs.TCP = tcp[i]
		}
		if tls != nil {
			fs.TLS = tls[i]
		}
		t.Streams = append(t.Streams, fs)
	}
	return nil
}

// streamAddrs parses a list of n listener addresses (nil when v is empty).
func streamAddrs(flag, v string, n int) ([]netip.AddrPort, error) {
	if v == "" {
		return nil, nil
	}
	var out []netip.AddrPort
	for _, s := range strings.Split(v, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("loadtest: %s %q: want ip:port[,ip:port...]", flag, s)
		}
		out = append(out, ap)
	}
	if len(out) != n {
		return nil, fmt.Errorf("loadtest: %s has %d addresses, --forwarders %d: give one listener per forwarder, in the same order", flag, len(out), n)
	}
	return out, nil
}

// packetFlags pick the fast engine's frame I/O (loadtest.Fast.IO).
type packetFlags struct {
	io  string
	pkt loadtest.PacketIO
}

func (f *packetFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&f.io, "fast-io", "", "fast engine: socket (UDP sockets over 127.0.0.0/8) or packet (raw frames on an AF_PACKET socket on a veth pair: --fast-iface, --fast-netns; root); default: the plan's, else socket")
	fs.StringVar(&f.pkt.NetNS, "fast-netns", "", "fast engine, --fast-io packet: network namespace of --fast-iface (ip netns name or path; empty: this one's)")
	fs.StringVar(&f.pkt.Iface, "fast-iface", "", "fast engine, --fast-io packet: the generator's end of the veth pair")
	fs.StringVar(&f.pkt.Gateway, "fast-gateway", "", "fast engine, --fast-io packet: MAC of the relay's end (empty: the MAC of the interface here holding the first forwarder's address)")
	fs.StringVar(&f.pkt.Devices, "fast-devices", "", "fast engine, --fast-io packet: prefix of the devices' addresses, routed to the generator's end (empty: the plan's, else 198.18.0.0/15)")
}

func (f *packetFlags) apply(p *loadtest.Fast) {
	if f.io != "" {
		p.IO = f.io
	}
	if f.pkt.NetNS != "" {
		p.Packet.NetNS = f.pkt.NetNS
	}
	if f.pkt.Iface != "" {
		p.Packet.Iface = f.pkt.Iface
	}
	if f.pkt.Gateway != "" {
		p.Packet.Gateway = f.pkt.Gateway
	}
	if f.pkt.Devices != "" {
		p.Packet.Devices = f.pkt.Devices
	}
}

// applyFast lets the fast engine's flags override the plan.
func (o *loadtestOptions) applyFast(p *loadtest.Plan) error {
	if o.engine != "" {
		p.Engine = o.engine
	}
	if o.fastTarget != "" {
		p.Fast.Target = o.fastTarget
	}
	if o.turnUser != "" {
		p.Fast.TURN = loadtest.TURNAuth{User: o.turnUser, Password: o.turnPassword}
	}
	if o.fastSockets > 0 {
		p.Fast.Sockets = o.fastSockets
	}
	if o.probeEvery > 0 {
		p.Fast.ProbeEvery = o.probeEvery
	}
	o.fastIO.apply(&p.Fast)
	if o.relayPID > 0 {
		p.RelayPID = o.relayPID
	}
	for f := range strings.SplitSeq(o.relayPIDsMore, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 {
			return fmt.Errorf("loadtest: --relay-pids-more: %q is not a pid", f)
		}
		p.RelayPIDs = append(p.RelayPIDs, pid)
	}
	if o.relayAddedP99 > 0 {
		p.Targets.RelayAddedDelayP99 = loadtest.Duration(o.relayAddedP99)
	}
	return nil
}

// applyProfile gives --rate and --duration the meaning the plan's
// profile kind gives them.
func (o *loadtestOptions) applyProfile(p *loadtest.Plan) {
	rate, dur := o.rate, loadtest.Duration(o.duration)
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
}

var loadtestAgentProc = process[agentOptions]{name: "loadtest agent", flags: agentFlags,
	about: "take a share of the plans a load test controller (loadtest --agents N) publishes over NATS"}

// agentOptions is what `loadtest agent`'s flags set.
type agentOptions struct {
	signingKey string
	nats       *natsConfig // where the controller publishes plans
	once       bool
}

func agentFlags(fs *flag.FlagSet) *agentOptions {
	o := &agentOptions{}
	fs.StringVar(&o.signingKey, "signing-key", "", "base64 Ed25519 key that mints join tokens; plans must be signed with it")
	o.nats = addNATSFlags(fs)
	fs.BoolVar(&o.once, "once", false, "exit after one run")
	return o
}

// runLoadtestAgent takes a share of the plans a controller publishes over
// NATS, for as long as ctx lives (one run at a time).
func runLoadtestAgent(ctx context.Context, args []string) error {
	o, _, err := loadtestAgentProc.parse(args, os.Stdout)
	if err != nil {
		return err
	}
	if err := o.nats.Validate(); err != nil {
		return fmt.Errorf("loadtest agent: %w", err)
	}
	if o.signingKey == "" || o.nats.URL == "" {
		return errors.New("loadtest agent: --signing-key (or CALLRELAY_SIGNING_KEY) and --nats-url are required")
	}
	priv, err := protocol.ParsePrivateKey(o.signingKey)
	if err != nil {
		return fmt.Errorf("loadtest agent: --signing-key: %w", err)
	}
	log, err := logging.New("warn")
	if err != nil {
		return err
	}
	nc, err := connectNATS(o.nats, "callrelay loadtest agent", log)
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
		if o.once {
			return nil
		}
	}
	return nil
}

// processFlag collects name=pid pairs.
type processFlag map[string]int

// String is the pairs as Set takes them, sorted by name.
func (p *processFlag) String() string {
	var pairs []string
	for name, pid := range *p {
		pairs = append(pairs, name+"="+strconv.Itoa(pid))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

// Set adds one pair or several, comma-separated (as a variable or a
// config list gives them).
func (p *processFlag) Set(v string) error {
	if *p == nil {
		*p = processFlag{}
	}
	for _, pair := range strings.Split(v, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		name, pid, ok := strings.Cut(pair, "=")
		n, err := strconv.Atoi(pid)
		if !ok || name == "" || err != nil || n <= 1 {
			return fmt.Errorf("want name=pid, e.g. fwd-a=1234, got %q", pair)
		}
		(*p)[name] = n
	}
	return nil
}

// hookFlag collects name=command pairs, one per flag: a command may hold
// commas (and equals signs after the first).
type hookFlag map[string]string

// String is the pairs, sorted by name, one per line.
func (h *hookFlag) String() string {
	var pairs []string
	for name, cmd := range *h {
		pairs = append(pairs, name+"="+cmd)
	}
	sort.Strings(pairs)
	return strings.Join(pairs, "\n")
}

// Set adds one pair.
func (h *hookFlag) Set(v string) error {
	name, cmd, ok := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.TrimSpace(cmd) == "" {
		return fmt.Errorf("want name=command, e.g. redis='systemctl stop redis-server', got %q", v)
	}
	if *h == nil {
		*h = hookFlag{}
	}
	(*h)[name] = cmd
	return nil
}
