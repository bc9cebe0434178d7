package loadtest

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Distributed runs: `loadtest agent` processes on other hosts take a share
// of a plan and report back; the controller merges their results.
//
// On the NATS subjects under <subject>.loadtest:
//
//   - agents: every waiting agent announces itself (AgentHello, JSON)
//     twice a second;
//   - plan: the controller publishes an Assignment (JSON): a run id, the
//     chosen agents in order, the plan without secrets, and a common start
//     time; agent i of n runs the arrivals whose index % n == i, so the
//     agents together make exactly the calls one process would;
//   - results.<run id>: each agent publishes its Partial (JSON), split in
//     chunks that fit the server's max payload.
//
// Assignments and partials are authenticated with an HMAC keyed from the
// relay's token signing key, which the controller and every agent hold:
// an agent never runs a plan (and so never sends traffic to addresses)
// that someone without that key published on the bus, and a stale
// assignment (its start time passed) is ignored. The per-second series are
// aligned by second since the common start, so the hosts' clocks must be
// synchronised (NTP); the controller is also where the relay's load
// reports are read and the chaos actions run.

// Subjects and limits of the agent protocol.
const (
	agentsSuffix  = ".loadtest.agents"
	planSuffix    = ".loadtest.plan"
	resultsSuffix = ".loadtest.results."

	helloEvery = 500 * time.Millisecond
	// startDelay is how far ahead of its publication an assignment's
	// start lies: time for every agent to receive it.
	startDelay = 1500 * time.Millisecond
	// maxStartAhead bounds how far in the future an agent accepts a start.
	maxStartAhead = time.Minute
	// resultGrace is how long after the run's maximum duration the
	// controller waits for partial results.
	resultGrace = 30 * time.Second
	maxChunks   = 4096
	hdrMAC      = "Loadtest-Mac"
	hdrAgent    = "Loadtest-Agent"
	hdrChunk    = "Loadtest-Chunk"
	hdrChunks   = "Loadtest-Chunks"
)

// AgentHello is an agent's announcement.
type AgentHello struct {
	Agent string `json:"agent"`
}

// Assignment is the plan the controller publishes to the agents.
type Assignment struct {
	RunID string `json:"run_id"`
	// Agents are the chosen agents: Agents[i] runs share i of
	// len(Agents).
	Agents []string `json:"agents"`
	// Plan has its defaults and seed filled in; no secrets.
	Plan Plan `json:"plan"`
	// StartAt is the common start of the run (wall clock).
	StartAt time.Time `json:"start_at"`
}

// ErrAgents is wrapped by the controller's errors about agents.
var ErrAgents = errors.New("loadtest: agents")

// macKey derives the agent protocol's HMAC key from the signing key.
func macKey(signingKey ed25519.PrivateKey) []byte {
	h := sha256.New()
	h.Write([]byte("callrelay loadtest agent protocol v1\x00"))
	h.Write(signingKey.Seed())
	return h.Sum(nil)
}

func mac(key []byte, parts ...[]byte) string {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return hex.EncodeToString(m.Sum(nil))
}

func macOK(key []byte, got string, parts ...[]byte) bool {
	want := mac(key, parts...)
	return hmac.Equal([]byte(got), []byte(want))
}

func newRunID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func agentID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "agent"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// RunAgent waits for an assignment on subject's agent protocol that names
// this agent and is authenticated with signingKey, runs its share of the
// plan (its own signing key mints the tokens), and publishes its partial
// result for the controller. It runs one plan and returns its partial;
// cancel ctx to stop waiting (or to end the run early: the figures so far
// are still published). progress is as for Run.
func RunAgent(ctx context.Context, nc *nats.Conn, subject string, signingKey ed25519.PrivateKey, progress io.Writer) (*Partial, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: no NATS connection", ErrAgents)
	}
	if len(signingKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: signing key has %d bytes, want %d", ErrPlan, len(signingKey), ed25519.PrivateKeySize)
	}
	if subject == "" {
		subject = DefaultSubject
	}
	key := macKey(signingKey)
	id := agentID()
	a, err := awaitAssignment(ctx, nc, subject, id, key)
	if err != nil {
		return nil, err
	}
	part := runShare(ctx, a, id, signingKey, progress)
	if err := publishPartial(nc, subject, key, part); err != nil {
		return part, err
	}
	return part, nil
}

// awaitAssignment announces the agent until a valid assignment naming it
// arrives.
func awaitAssignment(ctx context.Context, nc *nats.Conn, subject, id string, key []byte) (*Assignment, error) {
	msgs := make(chan *nats.Msg, 16)
	sub, err := nc.Subscribe(subject+planSuffix, func(m *nats.Msg) {
		select {
		case msgs <- m:
		default: // a flood of plans: drop, the real one is repeated
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing: %w", ErrAgents, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	hello, _ := json.Marshal(AgentHello{Agent: id})
	tick := time.NewTicker(helloEvery)
	defer tick.Stop()
	_ = nc.Publish(subject+agentsSuffix, hello)
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
			_ = nc.Publish(subject+agentsSuffix, hello)
		case m := <-msgs:
			if !macOK(key, m.Header.Get(hdrMAC), m.Data) {
				continue // not from a holder of the signing key
			}
			var a Assignment
			if json.Unmarshal(m.Data, &a) != nil || !slices.Contains(a.Agents, id) {
				continue
			}
			if now := time.Now(); a.StartAt.Before(now.Add(-time.Second)) || a.StartAt.After(now.Add(maxStartAhead)) {
				continue // stale or far-fetched: a replay
			}
			return &a, nil
		}
	}
}

// runShare runs agent id's share of a; errors go into the partial.
func runShare(ctx context.Context, a *Assignment, id string, signingKey ed25519.PrivateKey, progress io.Writer) *Partial {
	idx := slices.Index(a.Agents, id)
	n := len(a.Agents)
	fail := func(err error) *Partial {
		return &Partial{RunID: a.RunID, Agent: id, Index: idx, Of: n, Plan: a.Plan, Stopped: "failed", Err: err.Error()}
	}
	p := a.Plan.WithDefaults()
	p.SigningKey = signingKey
	p.Chaos, p.Processes, p.Services, p.NATS = nil, nil, nil, nil // the controller's business
	p.share = share{index: idx, of: n}
	p.Bounds.MaxConcurrentCalls = (p.Bounds.MaxConcurrentCalls + n - 1) / n
	if err := p.Validate(); err != nil {
		return fail(err)
	}
	select {
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-time.After(time.Until(a.StartAt)):
	}
	res, r, err := run(ctx, &runner{p: p, members: make(map[*member]int), keep: true, noStop: true}, progress)
	if err != nil {
		return fail(err)
	}
	part := partialOf(res, r)
	part.RunID, part.Agent, part.Index, part.Of = a.RunID, id, idx, n
	part.Plan.SigningKey = nil
	return part
}

// publishPartial sends the partial in authenticated chunks.
func publishPartial(nc *nats.Conn, subject string, key []byte, part *Partial) error {
	b, err := json.Marshal(part)
	if err != nil {
		return fmt.Errorf("%w: encoding the result: %w", ErrAgents, err)
	}
	size := int(nc.MaxPayload()) - 4096
	if size < 4096 {
		size = 4096
	}
	chunks := (len(b) + size - 1) / size
	if chunks > maxChunks {
		return fmt.Errorf("%w: result of %d bytes is too large", ErrAgents, len(b))
	}
	for i := range chunks {
		data := b[i*size : min((i+1)*size, len(b))]
		m := nats.NewMsg(subject + resultsSuffix + part.RunID)
		m.Data = data
		ci, cn := strconv.Itoa(i), strconv.Itoa(chunks)
		m.Header.Set(hdrAgent, part.Agent)
		m.Header.Set(hdrChunk, ci)
		m.Header.Set(hdrChunks, cn)
		m.Header.Set(hdrMAC, mac(key, []byte(part.RunID), []byte{0}, []byte(part.Agent), []byte{0}, []byte(ci), []byte{0}, []byte(cn), []byte{0}, data))
		if err := nc.PublishMsg(m); err != nil {
			return fmt.Errorf("%w: publishing the result: %w", ErrAgents, err)
		}
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("%w: publishing the result: %w", ErrAgents, err)
	}
	return nil
}

// assembler puts agents' chunked partials back together.
type assembler struct {
	runID  string
	key    []byte
	agents []string
	sub    *nats.Subscription

	mu     sync.Mutex
	chunks map[string][][]byte
	done   map[string]*Partial
	ready  chan struct{} // closed when every agent's partial is in
	bad    int
}

// stop stops listening for results (it may be called twice).
func (s *assembler) stop() { _ = s.sub.Unsubscribe() }

// received says how many agents' partials are in.
func (s *assembler) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.done)
}

// partials returns the agents' partials in the order of s.agents, nil
// for an agent whose partial is not in.
func (s *assembler) partials() []*Partial {
	s.mu.Lock()
	defer s.mu.Unlock()
	parts := make([]*Partial, 0, len(s.agents))
	for _, id := range s.agents {
		parts = append(parts, s.done[id])
	}
	return parts
}

func (s *assembler) onMsg(m *nats.Msg) {
	agent, ci, cn := m.Header.Get(hdrAgent), m.Header.Get(hdrChunk), m.Header.Get(hdrChunks)
	if !macOK(s.key, m.Header.Get(hdrMAC), []byte(s.runID), []byte{0}, []byte(agent), []byte{0}, []byte(ci), []byte{0}, []byte(cn), []byte{0}, m.Data) {
		s.mu.Lock()
		s.bad++
		s.mu.Unlock()
		return
	}
	i, err1 := strconv.Atoi(ci)
	n, err2 := strconv.Atoi(cn)
	if err1 != nil || err2 != nil || n < 1 || n > maxChunks || i < 0 || i >= n || !slices.Contains(s.agents, agent) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done[agent] != nil {
		return
	}
	cs := s.chunks[agent]
	if len(cs) != n {
		cs = make([][]byte, n)
		s.chunks[agent] = cs
	}
	cs[i] = slices.Clone(m.Data)
	var all []byte
	for _, c := range cs {
		if c == nil {
			return
		}
		all = append(all, c...)
	}
	var p Partial
	if err := json.Unmarshal(all, &p); err != nil || p.RunID != s.runID || p.Agent != agent {
		s.bad++
		delete(s.chunks, agent)
		return
	}
	s.done[agent] = &p
	delete(s.chunks, agent)
	if len(s.done) == len(s.agents) {
		close(s.ready)
	}
}

// RunController runs p on agents: it waits up to wait for that many agents
// to announce themselves on subject's agent protocol, publishes the plan
// (without secrets; the agents use their own signing key, which must be
// the same as p.SigningKey: it authenticates the plan) with each agent's
// share, and merges the partial results they send back (Merge). The
// controller makes no calls itself; it reads the relay's load reports
// (p.NATS, or nc when p.ClusterKey is set) and runs the chaos actions.
// An agent whose result does not arrive within the run's maximum duration
// and a grace period is listed as missing in Result.Agents.
func RunController(ctx context.Context, p Plan, nc *nats.Conn, subject string, agents int, wait time.Duration, progress io.Writer) (*Result, error) {
	p = p.WithDefaults()
	if p.Seed == 0 {
		p.Seed = uint64(time.Now().UnixNano())
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if nc == nil || agents < 1 || agents > 1000 || wait <= 0 {
		return nil, fmt.Errorf("%w: want a NATS connection, 1..1000 agents and a wait > 0", ErrAgents)
	}
	if subject == "" {
		subject = p.Subject
	}
	key := macKey(p.SigningKey)
	runID := newRunID()

	ids, err := awaitAgents(ctx, nc, subject, agents, wait)
	if err != nil {
		return nil, err
	}
	asm, err := listenResults(nc, subject, runID, key, ids)
	if err != nil {
		return nil, err
	}
	defer asm.stop()
	mon, err := controllerMonitor(p, nc)
	if err != nil {
		return nil, err
	}
	defer mon.stop()

	a := Assignment{RunID: runID, Agents: ids, Plan: p, StartAt: time.Now().Add(startDelay)}
	if err := publishAssignment(nc, subject, key, a); err != nil {
		return nil, err
	}
	if progress != nil {
		fmt.Fprintf(progress, "run %s: plan sent to %d agents, starting at %s\n", runID, len(ids), a.StartAt.UTC().Format(time.RFC3339Nano))
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(time.Until(a.StartAt)):
	}
	queues := watchQueues(ctx, p.Transports.Metrics)
	var ch chaos
	endChaos := ch.start(ctx, a.StartAt, p.Chaos, p.Processes, p.Services)
	defer endChaos()
	deadline := a.StartAt.Add(p.Bounds.MaxDuration.D() + p.JoinTimeout.D() + resultGrace)
	relaySecs, cancelled := awaitResults(ctx, asm, mon, deadline, progress)
	endChaos()
	mon.stop()
	asm.stop()

	parts := asm.partials()
	res := Merge(parts...)
	if res == nil {
		if cancelled {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: no agent sent a result within the run's time", ErrAgents)
	}
	res.Plan = p
	res.Agents = withMissing(res.Agents, ids, parts)
	res.StreamQueue = queues.finish(context.WithoutCancel(ctx))
	if cancelled {
		res.Stopped = "cancelled"
	}
	if mon != nil {
		addRelaySeconds(res.Seconds, relaySecs)
		res.Relay = mon.health(res.Seconds)
	}
	if len(p.Chaos) > 0 {
		res.Events = eventsSince(ch.result(), a.StartAt, res.Start)
		gapsAfterEvents(res.Events, res.Seconds, res.DurationMs)
	}
	newProgress(progress).done(res)
	return res, nil
}

// listenResults subscribes to the run's results from the agents ids;
// stop unsubscribes.
func listenResults(nc *nats.Conn, subject, runID string, key []byte, ids []string) (*assembler, error) {
	asm := &assembler{runID: runID, key: key, agents: ids, chunks: map[string][][]byte{},
		done: map[string]*Partial{}, ready: make(chan struct{})}
	sub, err := nc.Subscribe(subject+resultsSuffix+runID, asm.onMsg)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing: %w", ErrAgents, err)
	}
	asm.sub = sub
	return asm, nil
}

// controllerMonitor reads the relay's load reports, from p.NATS or, when
// p.ClusterKey is set, from nc; nil when neither.
func controllerMonitor(p Plan, nc *nats.Conn) (*relayMonitor, error) {
	monConn := p.NATS
	if monConn == nil && !p.ClusterKey.IsZero() {
		monConn = nc
	}
	if monConn == nil {
		return nil, nil
	}
	return startRelayMonitor(monConn, p.Subject, p.ClusterKey)
}

// publishAssignment sends the plan to the agents, authenticated.
func publishAssignment(nc *nats.Conn, subject string, key []byte, a Assignment) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("%w: encoding the plan: %w", ErrAgents, err)
	}
	m := nats.NewMsg(subject + planSuffix)
	m.Data = b
	m.Header.Set(hdrMAC, mac(key, b))
	if err := nc.PublishMsg(m); err != nil {
		return fmt.Errorf("%w: publishing the plan: %w", ErrAgents, err)
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("%w: publishing the plan: %w", ErrAgents, err)
	}
	return nil
}

// awaitResults waits until every agent's partial is in, deadline passes
// or ctx ends (cancelled). Meanwhile it closes the relay's second every
// second (the relay's seconds it returns) and prints how many results
// are in.
func awaitResults(ctx context.Context, asm *assembler, mon *relayMonitor, deadline time.Time, progress io.Writer) (relaySecs []map[string]ForwarderSecond, cancelled bool) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-asm.ready:
			return relaySecs, false
		case <-timer.C:
			return relaySecs, false
		case <-ctx.Done():
			return relaySecs, true
		case <-tick.C:
			relaySecs = append(relaySecs, mon.closeSecond())
			if progress != nil {
				fmt.Fprintf(progress, "controller %6s  agents %d  results in %d\n", (time.Duration(len(relaySecs)) * time.Second).String(), len(asm.agents), asm.received())
			}
		}
	}
}

// withMissing adds the agents ids whose partial (parts, in the same
// order) never arrived to agents, and orders them by share.
func withMissing(agents []AgentInfo, ids []string, parts []*Partial) []AgentInfo {
	for i, id := range ids {
		if parts[i] == nil {
			agents = append(agents, AgentInfo{ID: id, Index: i, Of: len(ids), Missing: true})
		}
	}
	slices.SortStableFunc(agents, func(x, y AgentInfo) int { return x.Index - y.Index })
	return agents
}

// addRelaySeconds puts the relay's seconds, as the controller closed
// them, into the merged seconds.
func addRelaySeconds(secs []Second, relaySecs []map[string]ForwarderSecond) {
	for t := range secs {
		if t < len(relaySecs) {
			secs[t].Forwarders = relaySecs[t]
		}
	}
}

// eventsSince moves the chaos events' times, since the common start, to
// times since the result's start (the earliest agent's, within
// milliseconds of it).
func eventsSince(events []Event, commonStart, resultStart time.Time) []Event {
	shift := ms(resultStart.Sub(commonStart))
	for i := range events {
		events[i].AtMs = round3(events[i].AtMs - shift)
	}
	return events
}

// awaitAgents collects n distinct agent announcements within wait.
func awaitAgents(ctx context.Context, nc *nats.Conn, subject string, n int, wait time.Duration) ([]string, error) {
	hellos := make(chan string, 64)
	sub, err := nc.Subscribe(subject+agentsSuffix, func(m *nats.Msg) {
		var h AgentHello
		if json.Unmarshal(m.Data, &h) == nil && h.Agent != "" && len(h.Agent) <= 200 {
			select {
			case hellos <- h.Agent:
			default:
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing: %w", ErrAgents, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var ids []string
	for len(ids) < n {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, fmt.Errorf("%w: %d of %d agents announced themselves within %v", ErrAgents, len(ids), n, wait)
		case id := <-hellos:
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}
