package loadtest

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Partial is one agent's share of a distributed run, in mergeable form:
// per second and per call class the raw counters and the sketches' bucket
// counts, so that Merge computes the same figures, percentiles included
// (to the sketches' precision), as one process making all the calls.
type Partial struct {
	RunID string `json:"run_id"`
	Agent string `json:"agent"`
	// Index and Of: this agent ran the arrivals whose index % Of == Index.
	Index int `json:"index"`
	Of    int `json:"of"`
	// Plan is the plan the agent ran (no secrets).
	Plan       Plan      `json:"plan"`
	Start      time.Time `json:"start"`
	DurationMs float64   `json:"duration_ms"`
	Stopped    string    `json:"stopped"`
	// Seconds are the per-second raw windows, T since Start.
	Seconds []PartialSecond `json:"seconds"`
	// Tail is what the calls reported while closing, after the last
	// second (part of the totals only).
	Tail WindowPair `json:"tail"`
	// Transports are the run's windows per transport (TransportMeasures),
	// by key; absent from older agents' partials.
	Transports map[string]WindowData `json:"transports,omitempty"`
	// Generator is the agent's own health.
	Generator GeneratorHealth `json:"generator"`
	// Geo is the agent's cities' calls (with Plan.Cities; absent from
	// older agents' partials).
	Geo *GeoPartial `json:"geo,omitempty"`
	// Err is set when the agent could not run its share.
	Err string `json:"err,omitempty"`
}

// PartialSecond is one second of a Partial.
type PartialSecond struct {
	T               int     `json:"t"`
	CallsUp         int     `json:"calls_up"`
	ParticipantsUp  int     `json:"participants_up"`
	GeneratorCPUPct float64 `json:"generator_cpu_pct"`
	// TickLagSumNs and TickLagN are the senders' tick lateness sum and
	// count in the second.
	TickLagSumNs uint64     `json:"tick_lag_sum_ns"`
	TickLagN     uint64     `json:"tick_lag_n"`
	OneToOne     WindowData `json:"one_to_one"`
	Group        WindowData `json:"group"`
}

// WindowPair is a pair of class windows (one-to-one, group).
type WindowPair struct {
	OneToOne WindowData `json:"one_to_one"`
	Group    WindowData `json:"group"`
}

// WindowData is the raw, mergeable form of one class's figures over an
// interval.
type WindowData struct {
	CallsStarted    int     `json:"calls_started"`
	CallsFailed     int     `json:"calls_failed"`
	Setups          Setups  `json:"setups"`
	Setup           Sketch  `json:"setup"`
	FirstAudio      Sketch  `json:"first_audio"`
	Delay           Sketch  `json:"delay"`
	Speaker         Sketch  `json:"speaker"`
	Sent            uint64  `json:"sent"`
	Received        uint64  `json:"received"`
	Expected        uint64  `json:"expected"`
	SpeechReceived  uint64  `json:"speech_received"`
	DecryptFailures uint64  `json:"decrypt_failures"`
	JitterSum       float64 `json:"jitter_sum"`
	JitterN         uint64  `json:"jitter_n"`
	JitterMax       float64 `json:"jitter_max"`
	MaxGap          float64 `json:"max_gap"`
	// Recovered, Feedback and Video are the network adaptation's counters
	// (Video's rates are left out: Merge computes them).
	Recovered uint64           `json:"recovered"`
	Feedback  FeedbackMeasures `json:"feedback"`
	Video     VideoMeasures    `json:"video"`
	// CallsDropped, SessionsLost, RejoinSilence and LateJoin are the
	// session losses, re-joins and late joins (absent from the partials of
	// older agents: zero).
	CallsDropped  int              `json:"calls_dropped,omitempty"`
	SessionsLost  int              `json:"sessions_lost,omitempty"`
	RejoinSilence Sketch           `json:"rejoin_silence,omitzero"`
	LateJoin      LateJoinMeasures `json:"late_join,omitzero"`
	// ProbeDelay and BaselineDelay are the fast engine's probe calls' and
	// baseline pairs' delays.
	ProbeDelay    Sketch `json:"probe_delay,omitzero"`
	BaselineDelay Sketch `json:"baseline_delay,omitzero"`
	// OtherTransport counts joins admitted over another transport than
	// the device's (TransportMeasures).
	OtherTransport int `json:"other_transport,omitempty"`
}

func (w *window) data() WindowData {
	return WindowData{CallsStarted: w.callsStarted, CallsFailed: w.callsFailed, Setups: w.setups,
		Setup: w.setup, FirstAudio: w.firstAudio, Delay: w.delay, Speaker: w.speaker,
		Sent: w.sent, Received: w.received, Expected: w.expected, SpeechReceived: w.speechRcvd, DecryptFailures: w.decryptFail,
		JitterSum: w.jitterSum, JitterN: w.jitterN, JitterMax: w.jitterMax, MaxGap: w.maxGap,
		Recovered: w.recovered, Feedback: w.fb, Video: w.video,
		CallsDropped: w.callsDropped, SessionsLost: w.sessionsLost, RejoinSilence: w.rejoinSilence, LateJoin: w.late,
		ProbeDelay: w.probeDelay, BaselineDelay: w.baseDelay, OtherTransport: w.offTransport}
}

func (d *WindowData) window() window {
	w := window{callsStarted: d.CallsStarted, callsFailed: d.CallsFailed, setups: d.Setups,
		setup: d.Setup, firstAudio: d.FirstAudio, delay: d.Delay, speaker: d.Speaker,
		sent: d.Sent, received: d.Received, expected: d.Expected, speechRcvd: d.SpeechReceived, decryptFail: d.DecryptFailures,
		jitterSum: d.JitterSum, jitterN: d.JitterN, jitterMax: d.JitterMax, maxGap: d.MaxGap,
		recovered: d.Recovered, fb: d.Feedback, video: d.Video,
		callsDropped: d.CallsDropped, sessionsLost: d.SessionsLost, rejoinSilence: d.RejoinSilence, late: d.LateJoin,
		probeDelay: d.ProbeDelay, baseDelay: d.BaselineDelay, offTransport: d.OtherTransport}
	w.video.SentKbps, w.video.ReceivedKbps = 0, 0
	return w
}

func pairWindows(o, g *WindowData) classWindows { return classWindows{o.window(), g.window()} }

// sketchJSON is a Sketch on the wire: the non-empty buckets as
// [index, count] pairs.
type sketchJSON struct {
	N       uint64      `json:"n"`
	Sum     float64     `json:"sum"`
	Max     float64     `json:"max"`
	Buckets [][2]uint32 `json:"buckets,omitempty"`
}

// MarshalJSON writes the sketch's raw bucket counts (sparse).
func (s Sketch) MarshalJSON() ([]byte, error) {
	j := sketchJSON{N: s.n, Sum: s.sum, Max: s.max}
	for i, c := range s.counts {
		if c != 0 {
			j.Buckets = append(j.Buckets, [2]uint32{uint32(i), c})
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote, checking that the buckets
// are in range and add up to the count.
func (s *Sketch) UnmarshalJSON(b []byte) error {
	var j sketchJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var out Sketch
	var total uint64
	for _, bc := range j.Buckets {
		if bc[0] >= sketchBuckets {
			return fmt.Errorf("loadtest: sketch bucket %d out of range", bc[0])
		}
		out.counts[bc[0]] += bc[1]
		total += uint64(bc[1])
	}
	if total != j.N || math.IsNaN(j.Sum) || math.IsNaN(j.Max) {
		return fmt.Errorf("loadtest: sketch buckets add up to %d, count says %d", total, j.N)
	}
	out.n, out.sum, out.max = j.N, j.Sum, j.Max
	*s = out
	return nil
}

// AgentInfo is one agent of a distributed run.
type AgentInfo struct {
	ID    string `json:"id"`
	Index int    `json:"index"`
	Of    int    `json:"of"`
	// CallsStarted is how many calls the agent started.
	CallsStarted int `json:"calls_started"`
	// Generator is the agent's own health.
	Generator GeneratorHealth `json:"generator"`
	// Geo is the agent's cities' calls (with Plan.Cities; absent from
	// older agents' partials).
	Geo *GeoPartial `json:"geo,omitempty"`
	// Missing is true when the agent's result never arrived; Err says
	// what the agent reported when it could not run.
	Missing bool   `json:"missing,omitempty"`
	Err     string `json:"err,omitempty"`
}

// partialOf turns a kept run into a Partial.
func partialOf(res *Result, r *runner) *Partial {
	p := &Partial{Index: r.p.share.index, Of: max(r.p.share.of, 1), Plan: res.Plan, Start: res.Start,
		DurationMs: res.DurationMs, Stopped: res.Stopped, Seconds: r.kept,
		Tail: WindowPair{OneToOne: r.tail[0].data(), Group: r.tail[1].data()}, Generator: res.Generator,
		Transports: r.trans.data()}
	if r.geo != nil {
		p.Geo = r.geo.partial()
	}
	p.Plan.Chaos = nil
	return p
}

// stopPriority orders Result.Stopped reasons for a merge: the most
// telling reason among the agents wins.
var stopPriority = map[string]int{"cancelled": 5, "target_broken": 4, "max_duration": 3, "max_calls": 2, "profile_done": 1}

// Merge combines agents' partial results into one Result, as if one
// process had made all their calls: per-second series aligned by second
// index (the agents start together, see RunController), counters added,
// sketches merged bucket by bucket, and every figure (percentiles, loss,
// setup success, ramp steps, knee, verdict) computed from the merged raw
// data; the cities' geo (each call's placement and mouth-to-ear, per city
// and in total) likewise (mergeGeo). The plan is the first partial's. The
// merged generator health is conservative: CPU of the busiest agent per
// second, GOMAXPROCS of the
// smallest agent, ticks and drops added, a bottleneck if any agent was
// one (its reasons prefixed by its name); Agents has each agent's own.
// Nil parts (missing agents) are skipped; Merge of nothing returns nil.
func Merge(parts ...*Partial) *Result {
	var ps []*Partial
	for _, p := range parts {
		if p != nil {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	m := newMerger(ps)
	for _, p := range ps {
		m.addWindows(p)
		m.addGenerator(p)
		m.res.Agents = append(m.res.Agents, agentInfo(p))
	}
	res, plan := m.res, m.res.Plan
	lagSum, lagN := m.fillSeconds()
	secs := res.DurationMs / 1000
	res.Totals = Totals{All: m.total.all().measures(secs), OneToOne: m.total[0].measures(secs), Group: m.total[1].measures(secs)}
	res.Transports = m.trans.result()
	if plan.Profile.Kind == ProfileRamp {
		res.Steps = mergedSteps(plan, res.Seconds, m.wins)
		res.Knee = FindKnee(res.Steps, plan.RelayCores)
	}
	res.Generator = m.generator(lagSum, lagN)
	res.Verdict = verdictOf(res.Totals.All, plan.Targets)
	res.Geo = mergeGeo(ps, plan.Cities)
	sort.SliceStable(res.Agents, func(i, j int) bool { return res.Agents[i].Index < res.Agents[j].Index })
	return res
}

// merger adds partials up, second by second and in total.
type merger struct {
	res *Result
	// Per second: the calls' windows and the senders' tick lateness.
	wins         []classWindows
	lagSum, lagN []uint64
	total        classWindows
	trans        transportWindows
	g            GeneratorHealth
}

// newMerger starts the merged result from what the partials say as a
// whole: the first one's plan, the earliest start, the longest duration,
// the most telling stop reason, as many seconds as the longest series.
func newMerger(ps []*Partial) *merger {
	plan := ps[0].Plan
	plan.share = share{}
	res := &Result{Plan: plan, Start: ps[0].Start}
	n := 0
	for _, p := range ps {
		if p.Start.Before(res.Start) {
			res.Start = p.Start
		}
		res.DurationMs = max(res.DurationMs, p.DurationMs)
		if stopPriority[p.Stopped] > stopPriority[res.Stopped] {
			res.Stopped = p.Stopped
		}
		for _, s := range p.Seconds {
			n = max(n, s.T+1)
		}
	}
	res.Seconds = make([]Second, n)
	m := &merger{res: res, wins: make([]classWindows, n), lagSum: make([]uint64, n), lagN: make([]uint64, n)}
	m.g.GOMAXPROCS, m.g.NumCPU = math.MaxInt, math.MaxInt
	return m
}

// addWindows adds p's seconds to the merged seconds and the totals, and
// its tail to the totals.
func (m *merger) addWindows(p *Partial) {
	for _, s := range p.Seconds {
		if s.T < 0 {
			continue
		}
		cw := pairWindows(&s.OneToOne, &s.Group)
		m.wins[s.T].merge(&cw)
		m.total.merge(&cw)
		out := &m.res.Seconds[s.T]
		out.CallsUp += s.CallsUp
		out.ParticipantsUp += s.ParticipantsUp
		out.GeneratorCPUPct = max(out.GeneratorCPUPct, s.GeneratorCPUPct)
		m.lagSum[s.T] += s.TickLagSumNs
		m.lagN[s.T] += s.TickLagN
	}
	tail := pairWindows(&p.Tail.OneToOne, &p.Tail.Group)
	m.total.merge(&tail)
	m.trans.add(p.Transports)
}

// addGenerator adds p's generator health to the conservative merge.
func (m *merger) addGenerator(p *Partial) {
	g, h := &m.g, p.Generator
	g.GOMAXPROCS, g.NumCPU = min(g.GOMAXPROCS, h.GOMAXPROCS), min(g.NumCPU, h.NumCPU)
	g.CPUMeanPct, g.CPUMaxPct = max(g.CPUMeanPct, h.CPUMeanPct), max(g.CPUMaxPct, h.CPUMaxPct)
	g.TickLagMaxMs = max(g.TickLagMaxMs, h.TickLagMaxMs)
	g.LateTicks += h.LateTicks
	g.MediaDropped += h.MediaDropped
	g.SkippedArrivals += h.SkippedArrivals
	for _, why := range h.Reasons {
		g.Reasons = append(g.Reasons, fmt.Sprintf("agent %s: %s", agentName(p), why))
	}
}

// agentInfo is p's agent as the merged result lists it.
func agentInfo(p *Partial) AgentInfo {
	calls := 0
	for _, s := range p.Seconds {
		calls += s.OneToOne.CallsStarted + s.Group.CallsStarted
	}
	calls += p.Tail.OneToOne.CallsStarted + p.Tail.Group.CallsStarted
	return AgentInfo{ID: p.Agent, Index: p.Index, Of: p.Of, CallsStarted: calls, Generator: p.Generator, Err: p.Err}
}

// fillSeconds computes each merged second's figures from its merged
// windows, and returns the tick lateness summed over all seconds.
func (m *merger) fillSeconds() (lagSumNs, lagN uint64) {
	plan := m.res.Plan
	for t := range m.res.Seconds {
		s := &m.res.Seconds[t]
		rate, phase := plan.Profile.Rate(time.Duration(t) * time.Second)
		s.T, s.Phase, s.TargetRate = t, phase, round3(rate)
		s.All, s.OneToOne, s.Group = m.wins[t].all().measures(1), m.wins[t][0].measures(1), m.wins[t][1].measures(1)
		if m.lagN[t] > 0 {
			s.TickLagMs = round3(float64(m.lagSum[t]) / float64(m.lagN[t]) / 1e6)
		}
		lagSumNs += m.lagSum[t]
		lagN += m.lagN[t]
	}
	return lagSumNs, lagN
}

// generator is the merged generator health, given the tick lateness over
// all seconds: the agents' reasons and the merged figures' own.
func (m *merger) generator(lagSumNs, lagN uint64) GeneratorHealth {
	g := m.g
	if g.GOMAXPROCS == math.MaxInt {
		g.GOMAXPROCS, g.NumCPU = 0, 0
	}
	if lagN > 0 {
		g.TickLagMeanMs = round3(float64(lagSumNs) / float64(lagN) / 1e6)
	}
	reasons := g.Reasons
	g.assess() // the merged figures' own reasons (tick lag, drops)
	g.Reasons = mergeReasons(reasons, g.Reasons)
	g.Bottleneck = len(g.Reasons) > 0
	return g
}

func agentName(p *Partial) string {
	if p.Agent != "" {
		return p.Agent
	}
	return fmt.Sprintf("%d/%d", p.Index, p.Of)
}

// mergeReasons keeps the per-agent reasons and adds the merged ones that
// say something new (the per-agent CPU reason is already there).
func mergeReasons(agents, merged []string) []string {
	out := append([]string(nil), agents...)
	for _, m := range merged {
		if strings.HasPrefix(m, "generator CPU") && len(agents) > 0 {
			continue
		}
		out = append(out, m)
	}
	return out
}

// mergedSteps computes the ramp's complete steps from the merged seconds.
func mergedSteps(p Plan, secs []Second, wins []classWindows) []Step {
	sd := p.Profile.Ramp.StepDuration.D()
	per := int(sd / time.Second)
	if per <= 0 {
		return nil
	}
	var steps []Step
	for i := 0; (i+1)*per <= len(secs) && i < p.Profile.Ramp.MaxSteps; i++ {
		var w classWindows
		st := Step{Index: i, Rate: round3(p.Profile.Ramp.StepRate(i)),
			StartS: float64(i * per), EndS: float64((i + 1) * per), Met: true}
		var sum float64
		for t := i * per; t < (i+1)*per; t++ {
			w.merge(&wins[t])
			sum += float64(secs[t].CallsUp)
			st.MaxCallsUp = max(st.MaxCallsUp, secs[t].CallsUp)
		}
		st.MeanCallsUp = round3(sum / float64(per))
		st.Measures = w.all().measures(sd.Seconds())
		for _, c := range evaluate(st.Measures, p.Targets) {
			if !c.Pass {
				st.Met = false
				st.Broken = append(st.Broken, c.Target)
			}
		}
		steps = append(steps, st)
	}
	return steps
}
