package loadtest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

// lateTick is how late a sender tick may be before it counts as late.
const lateTick = 10 * time.Millisecond

// runner is one Run's state.
type runner struct {
	p     Plan
	start time.Time

	mu      sync.Mutex
	cur     classWindows     // the current second
	members map[*member]int  // live participants to harvest, by class index
	step    classWindows     // the current ramp step
	total   classWindows     // the whole run
	trans   transportWindows // the whole run, per transport (member.tr)

	callsUp, partsUp      atomic.Int64
	lagSumNs, lagN, lateN atomic.Uint64
	lagMaxNs              atomic.Int64
	mediaDropped          atomic.Uint64
	tickSumNs, tickN      uint64 // measure goroutine only

	mon   *relayMonitor // nil without Plan.NATS
	chaos chaos
	// keep, for agents, records every second's raw windows in kept and
	// the figures reported after the last second in tail; noStop makes a
	// ramp run all its steps (the controller judges them on the merge).
	keep   bool
	kept   []PartialSecond
	tail   classWindows
	noStop bool

	// fast is the fast engine (Plan.Engine "fast"), nil with the full
	// one; relayCPU reads Plan.RelayPID's CPU (nil without).
	fast        *fastEngine
	relayCPU    *procCPU
	stepDropped uint64 // mediaDropped at the last step's close
	// nets is what the devices behind a UDP-blocking network use (nil:
	// none, Plan.Transports).
	nets *streamNet
	// geo is the plan's cities (nil: none).
	geo *geo
}

// Run runs the plan against the relay and returns what it measured. It
// stops by itself: at the end of the profile, when a ramp step breaks a
// target, or at the plan's bounds (duration, calls), whichever comes
// first; cancelling ctx ends it early with the figures so far. progress,
// if not nil, gets a line about once a second (rewritten in place with \r
// when it is a terminal).
func Run(ctx context.Context, p Plan, progress io.Writer) (*Result, error) {
	p = p.WithDefaults()
	if p.Seed == 0 {
		p.Seed = uint64(time.Now().UnixNano())
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	res, _, err := run(ctx, &runner{p: p, members: make(map[*member]int)}, progress)
	return res, err
}

// run runs r's plan (validated, with defaults).
func run(ctx context.Context, r *runner, progress io.Writer) (*Result, *runner, error) {
	p := r.p
	if p.NATS != nil {
		mon, err := startRelayMonitor(p.NATS, p.Subject, p.ClusterKey)
		if err != nil {
			return nil, r, err
		}
		r.mon = mon
		defer mon.stop()
	}
	if err := r.startFast(); err != nil {
		return nil, r, err
	}
	nets, err := openStreamNet(p)
	if err != nil {
		return nil, r, err
	}
	r.nets = nets
	defer nets.close()
	if r.geo, err = newGeo(ctx, &r.p); err != nil {
		return nil, r, err
	}
	var queues *queueWatch
	if !r.keep { // an agent's controller reads the forwarders' counters
		queues = watchQueues(ctx, p.Transports.Metrics)
	}
	rng := rand.New(rand.NewPCG(p.Seed, 0x10ad))
	arrivals := Arrivals(rng, p.Profile, p.Bounds.MaxDuration.D(), p.Bounds.MaxCalls)
	pr := newProgress(progress)

	runCtx, stop := context.WithTimeout(ctx, p.Bounds.MaxDuration.D())
	defer stop()
	callCtx, endCalls := context.WithCancel(runCtx)
	defer endCalls()

	r.start = time.Now()
	res := &Result{Plan: p, Start: r.start.UTC()}
	endChaos := r.chaos.start(runCtx, r.start, p.Chaos, p.Processes, p.Services)
	defer endChaos()
	var calls sync.WaitGroup
	dispatchDone := make(chan struct{})
	go func() {
		defer close(dispatchDone)
		r.dispatch(callCtx, rng, arrivals, &calls, &res.Generator.SkippedArrivals)
	}()

	res.Stopped = r.measure(runCtx, res, dispatchDone, pr)
	endChaos()
	r.mon.stop()
	endCalls()
	<-dispatchDone
	calls.Wait()
	if r.fast != nil {
		r.fast.stop()
		res.Forwarding = r.fast.forwarding()
		res.Generator.ReceiveLagMs = r.fast.receiveLag()
		res.Generator.FrameOverruns = r.fast.overruns()
	}
	r.harvestLast()
	res.DurationMs = round3(ms(time.Since(r.start)))
	if ctx.Err() != nil {
		res.Stopped = "cancelled"
	}
	r.finish(res)
	res.StreamQueue = queues.finish(context.WithoutCancel(ctx))
	res.Relay = r.mon.health(res.Seconds)
	if len(p.Chaos) > 0 {
		res.Events = r.chaos.result()
		gapsAfterEvents(res.Events, res.Seconds, res.DurationMs)
	}
	pr.done(res)
	return res, r, nil
}

// dispatch starts a call at each arrival time, unless MaxConcurrentCalls
// are up (counted in skipped), until the arrivals or ctx end.
func (r *runner) dispatch(ctx context.Context, rng *rand.Rand, arrivals []time.Duration, calls *sync.WaitGroup, skipped *int) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var running atomic.Int64
	for i, at := range arrivals {
		timer.Reset(time.Until(r.start.Add(at)))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		c := r.drawCall(rng, i) // drawn by every agent, so all draw the same calls
		if !r.p.share.mine(i) {
			continue
		}
		c.sched = r.speech(c, at)
		if r.fast != nil {
			if !r.fast.submit(ctx, c) {
				r.event(func(*classWindows) { *skipped++ })
			}
			continue
		}
		if int(running.Load()) >= r.p.Bounds.MaxConcurrentCalls {
			r.mu.Lock()
			*skipped++
			r.mu.Unlock()
			continue
		}
		running.Add(1)
		calls.Add(1)
		go func() {
			defer calls.Done()
			defer running.Add(-1)
			r.runCall(ctx, c)
		}()
	}
	<-ctx.Done() // arrivals over: the calls run until the profile ends
}

func (r *runner) drawCall(rng *rand.Rand, no int) *callSpec {
	c := &callSpec{no: no, class: protocol.ClassOneToOne, size: 2, seed: rng.Uint64()}
	if rng.Float64() >= r.p.Mix.OneToOne {
		c.class = protocol.ClassGroup
		c.size = r.p.Mix.GroupMin + rng.IntN(r.p.Mix.GroupMax-r.p.Mix.GroupMin+1)
	}
	c.duration = r.p.CallDuration.draw(rng)
	c.cams = drawVideo(c.seed, c.size, r.p.Video.Share)
	c.late = drawLate(c.seed, c.size, c.duration, r.p.LateJoin)
	c.nets = drawNets(c.seed, c.size, r.p.Transports)
	c.cities = drawCities(c.seed, c.size, r.p.Cities)
	return c
}

// speech is the talkspurt schedule of c, arriving at offset at: a little
// longer than the call, for the join time, but never past the run's end
// (bounds.max_duration). Capacity plans hold hour-long calls in runs of a
// minute or two, and drawing an hour of speech per new call was 9 % of the
// generator's CPU in a ramp (docs/capacity.md, Packet I/O). The schedule's
// start is the same whatever its length (the chain runs forward from 0 on
// its own generator, seeded by the call), and only this agent's calls get
// one.
func (r *runner) speech(c *callSpec, at time.Duration) talkspurt.Schedule {
	d := c.duration
	if left := r.p.Bounds.MaxDuration.D() - at; left > 0 && left < d {
		d = left
	}
	return talkspurt.Group(rand.New(rand.NewPCG(c.seed, 0x59)), c.size, d+r.p.JoinTimeout.D())
}

// measure closes a Second every second until the profile ends, a ramp
// step breaks a target or ctx ends, and says which.
func (r *runner) measure(ctx context.Context, res *Result, dispatchDone <-chan struct{}, pr *progress) string {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	cpu := newCPUMeter()
	length := r.p.Profile.Length()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			r.closeSecond(res, i, cpu)
			return "max_duration"
		case <-tick.C:
		}
		s := r.closeSecond(res, i, cpu)
		pr.line(s, res)
		elapsed := time.Duration(i+1) * time.Second
		if r.p.Profile.Kind == ProfileRamp && elapsed%r.p.Profile.Ramp.StepDuration.D() == 0 {
			if st := r.closeStep(res); !st.Met && !r.noStop {
				return "target_broken"
			}
		}
		if elapsed >= length {
			return "profile_done"
		}
		select {
		case <-dispatchDone:
			if r.callsUp.Load() == 0 && len(res.Seconds) > 0 && r.totalStarted() >= r.p.Bounds.MaxCalls {
				return "max_calls"
			}
		default:
		}
	}
}

func (r *runner) totalStarted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total[0].callsStarted + r.total[1].callsStarted + r.cur[0].callsStarted + r.cur[1].callsStarted
}

// event applies f to the current second's windows.
func (r *runner) event(f func(*classWindows)) {
	r.mu.Lock()
	f(&r.cur)
	r.mu.Unlock()
}

func (r *runner) register(ms []*member, cls int) {
	r.mu.Lock()
	for _, m := range ms {
		r.members[m] = cls
	}
	r.mu.Unlock()
}

// unregister takes the members' last figures and forgets them.
func (r *runner) unregister(ms []*member, cls int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range ms {
		m.mu.Lock()
		m.fold(false)
		r.cur[cls].merge(&m.win)
		r.trans[m.tr].merge(&m.win)
		m.win.reset()
		m.mu.Unlock()
		delete(r.members, m)
		r.mediaDropped.Add(m.sess.Stats().MediaDropped)
	}
}

// harvest moves every live member's figures into the current second.
// r.mu is held.
func (r *runner) harvest() {
	if r.fast != nil {
		r.fast.harvest(&r.cur, false)
	}
	for m, cls := range r.members {
		m.mu.Lock()
		m.fold(true)
		r.cur[cls].merge(&m.win)
		r.trans[m.tr].merge(&m.win)
		m.win.reset()
		m.mu.Unlock()
	}
}

func (r *runner) noteLag(d time.Duration) {
	r.lagSumNs.Add(uint64(max(d, 0)))
	r.lagN.Add(1)
	if d > lateTick {
		r.lateN.Add(1)
	}
	for {
		old := r.lagMaxNs.Load()
		if int64(d) <= old || r.lagMaxNs.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// closeSecond turns the current windows into Second i.
func (r *runner) closeSecond(res *Result, i int, cpu *cpuMeter) Second {
	rate, phase := r.p.Profile.Rate(time.Duration(i) * time.Second)
	r.mu.Lock()
	r.harvest()
	s := Second{
		T: i, Phase: phase, TargetRate: round3(rate),
		CallsUp: int(r.callsUp.Load()), ParticipantsUp: int(r.partsUp.Load()),
		All: r.cur.all().measures(1), OneToOne: r.cur[0].measures(1), Group: r.cur[1].measures(1),
		Forwarders: r.mon.closeSecond(),
	}
	var kept classWindows
	if r.keep {
		kept = r.cur
	}
	r.step.merge(&r.cur)
	r.total.merge(&r.cur)
	r.cur.reset()
	r.mu.Unlock()
	s.GeneratorCPUPct = round3(cpu.sample())
	s.RelayCPUPct = round3(r.relayCPU.sample())
	sum, n := r.lagSumNs.Swap(0), r.lagN.Swap(0)
	if n > 0 {
		s.TickLagMs = round3(float64(sum) / float64(n) / 1e6)
	}
	res.Seconds = append(res.Seconds, s)
	r.tickSumNs += sum
	r.tickN += n
	if r.keep {
		r.kept = append(r.kept, PartialSecond{T: i, CallsUp: s.CallsUp, ParticipantsUp: s.ParticipantsUp,
			GeneratorCPUPct: s.GeneratorCPUPct, TickLagSumNs: sum, TickLagN: n,
			OneToOne: kept[0].data(), Group: kept[1].data()})
	}
	return s
}

// harvestLast takes what the calls reported while closing (after the last
// Second) into the totals.
func (r *runner) harvestLast() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fast != nil {
		r.fast.harvest(&r.cur, true)
	}
	r.harvest()
	if r.keep {
		r.tail.merge(&r.cur)
	}
	r.step.merge(&r.cur)
	r.total.merge(&r.cur)
	r.cur.reset()
}

// closeStep ends the current ramp step: its measures, checked against the
// targets.
func (r *runner) closeStep(res *Result) Step {
	i := len(res.Steps)
	sd := r.p.Profile.Ramp.StepDuration.D()
	r.mu.Lock()
	m := r.step.all().measures(sd.Seconds())
	r.step.reset()
	r.mu.Unlock()
	st := Step{Index: i, Rate: round3(r.p.Profile.Ramp.StepRate(i)),
		StartS: float64(i) * sd.Seconds(), EndS: float64(i+1) * sd.Seconds(), Measures: m, Met: true}
	var sum float64
	var n int
	for _, s := range res.Seconds {
		if float64(s.T) >= st.StartS && float64(s.T) < st.EndS {
			sum += float64(s.CallsUp)
			n++
			st.MaxCallsUp = max(st.MaxCallsUp, s.CallsUp)
		}
	}
	if n > 0 {
		st.MeanCallsUp = round3(sum / float64(n))
	}
	for _, c := range evaluate(m, r.p.Targets) {
		if !c.Pass {
			st.Met = false
			st.Broken = append(st.Broken, c.Target)
		}
	}
	r.stepCost(&st, res.Seconds)
	res.Steps = append(res.Steps, st)
	return st
}

// finish fills the totals, knee, generator health and verdict.
func (r *runner) finish(res *Result) {
	secs := res.DurationMs / 1000
	r.mu.Lock()
	res.Totals = Totals{All: r.total.all().measures(secs), OneToOne: r.total[0].measures(secs), Group: r.total[1].measures(secs)}
	res.Transports = r.trans.result()
	r.mu.Unlock()
	if r.p.Profile.Kind == ProfileRamp {
		res.Knee = FindKnee(res.Steps, r.p.RelayCores)
	}
	g := &res.Generator
	g.GOMAXPROCS, g.NumCPU = runtime.GOMAXPROCS(0), runtime.NumCPU()
	var cpuSum float64
	for _, s := range res.Seconds {
		cpuSum += s.GeneratorCPUPct
		g.CPUMaxPct = max(g.CPUMaxPct, s.GeneratorCPUPct)
	}
	if len(res.Seconds) > 0 {
		g.CPUMeanPct = round3(cpuSum / float64(len(res.Seconds)))
	}
	if r.tickN > 0 {
		g.TickLagMeanMs = round3(float64(r.tickSumNs) / float64(r.tickN) / 1e6)
	}
	g.TickLagMaxMs = round3(float64(r.lagMaxNs.Load()) / 1e6)
	g.LateTicks = r.lateN.Load()
	g.MediaDropped = r.mediaDropped.Load()
	g.Engine = r.p.Engine
	if g.Engine == EngineFast {
		g.FastIO = r.p.Fast.IO
	}
	generatorCost(g, res)
	g.assess()
	res.Verdict = verdictOf(res.Totals.All, r.p.Targets)
	if r.geo != nil {
		res.Geo = r.geo.result()
	}
}

// assess sets Bottleneck and Reasons.
func (g *GeneratorHealth) assess() {
	g.Reasons = nil
	if limit := 85 * float64(g.GOMAXPROCS); g.CPUMeanPct > limit {
		g.Reasons = append(g.Reasons, fmt.Sprintf("generator CPU %.0f%% of a core, above 85%% of its %d cores", g.CPUMeanPct, g.GOMAXPROCS))
	}
	if g.TickLagMeanMs > ms(lateTick) {
		g.Reasons = append(g.Reasons, fmt.Sprintf("sender ticks late by %.1f ms on average (> 10 ms)", g.TickLagMeanMs))
	}
	if g.MediaDropped > 0 {
		g.Reasons = append(g.Reasons, fmt.Sprintf("%d received packets dropped by the generator's own queues", g.MediaDropped))
	}
	g.Bottleneck = len(g.Reasons) > 0
}

// verdictOf checks m against the targets: a pass when every check does.
func verdictOf(m Measures, t Targets) Verdict {
	v := Verdict{Pass: true, Checks: evaluate(m, t)}
	for _, c := range v.Checks {
		v.Pass = v.Pass && c.Pass
	}
	return v
}

// evaluate checks m against the targets.
func evaluate(m Measures, t Targets) []Check {
	ge := func(name string, limit, v float64) Check {
		return Check{Target: name, Op: ">=", Limit: limit, Measured: v, Pass: v >= limit}
	}
	le := func(name string, limit, v float64) Check {
		return Check{Target: name, Op: "<=", Limit: limit, Measured: v, Pass: v <= limit}
	}
	checks := []Check{
		ge("setup_success_pct", t.SetupSuccessPct, m.SetupSuccessPct),
		le("setup_p95_ms", ms(t.SetupP95.D()), m.SetupMs.P95),
		le("loss_pct", t.LossPct, m.LossPct),
		le("delay_p95_ms", ms(t.DelayP95.D()), m.DelayMs.P95),
	}
	if t.DroppedCallsPct != nil {
		checks = append(checks, le("dropped_calls_pct", *t.DroppedCallsPct, m.DroppedCallsPct))
	}
	if t.RelayAddedDelayP99 > 0 && m.ProbeDelayMs.Count > 0 && m.BaselineDelayMs.Count > 0 {
		checks = append(checks, le("relay_added_delay_p99_ms", ms(t.RelayAddedDelayP99.D()), m.RelayAddedDelayP99Ms))
	}
	if t.RejoinSilenceP99 > 0 {
		checks = append(checks, le("rejoin_silence_p99_ms", ms(t.RejoinSilenceP99.D()), m.RejoinSilenceMs.P99))
	}
	return checks
}

// FindKnee returns the ramp's knee: the last step before the first one
// that broke a target. With no broken step the last step is the knee (a
// lower bound: BrokeAtStep is -1).
func FindKnee(steps []Step, relayCores float64) *Knee {
	k := &Knee{Step: -1, BrokeAtStep: -1, RelayCores: relayCores}
	for _, s := range steps {
		if !s.Met {
			k.BrokeAtStep, k.BrokenTargets = s.Index, s.Broken
			break
		}
		k.Found, k.Step, k.Rate = true, s.Index, s.Rate
		k.ConcurrentCalls, k.PacketsPerSec = s.MeanCallsUp, s.Measures.RelayPacketsPerSec
	}
	if k.Found && relayCores > 0 {
		k.ConcurrentCallsPerCore = round3(k.ConcurrentCalls / relayCores)
		k.PacketsPerSecPerCore = round3(k.PacketsPerSec / relayCores)
	}
	generatorBoundKnee(k, steps)
	return k
}
