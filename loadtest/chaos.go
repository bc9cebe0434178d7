package loadtest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Chaos action kinds.
const (
	// ChaosKill sends SIGKILL: the process dies at once (a crash).
	ChaosKill = "kill"
	// ChaosTerm sends SIGTERM: a forwarder drains and exits.
	ChaosTerm = "term"
	// ChaosStop sends SIGSTOP, then SIGCONT after For (a hung process,
	// or Redis away for a while).
	ChaosStop = "stop"
	// ChaosCont is the event of the SIGCONT that ends a stop.
	ChaosCont = "cont"
	// ChaosDown takes a service of Plan.Services down (Service.Down), and
	// brings it back up (Service.Up) after For: Redis or NATS stopped for
	// a while, its clients' connections refused, unlike a stop's hang.
	ChaosDown = "down"
	// ChaosUp is the event of the Service.Up that ends a down.
	ChaosUp = "up"
)

// maxChaosActions bounds the chaos list.
const maxChaosActions = 64

// ChaosAction is one failure injected during the run.
type ChaosAction struct {
	// At is when, since the run's start.
	At Duration `json:"at" yaml:"at"`
	// Kind is "kill", "term", "stop" or "down".
	Kind string `json:"kind" yaml:"kind"`
	// Target names a process of Plan.Processes (kill, term, stop) or a
	// service of Plan.Services (down).
	Target string `json:"target" yaml:"target"`
	// For is how long a stop or a down lasts (required with them). The
	// SIGCONT is sent, and the service brought up, when the run ends at
	// the latest.
	For Duration `json:"for,omitempty" yaml:"for,omitempty"`
}

// Event is one chaos action as executed (a stop gives two events: stop
// and cont).
type Event struct {
	// AtMs is when the signal was sent, in ms since Result.Start.
	AtMs float64 `json:"at_ms"`
	// Kind is "kill", "term", "stop", "cont", "down" or "up".
	Kind   string `json:"kind"`
	Target string `json:"target"`
	// PID is the process signalled (0 for a service's down and up).
	PID int `json:"pid"`
	// Err is why the signal could not be sent, or the service taken down
	// or brought up ("" when it was).
	Err string `json:"err,omitempty"`
	// TookMs is how long a service's down or up took (its command, say);
	// AtMs is when it began.
	TookMs float64 `json:"took_ms,omitempty"`
	// MaxGapAfterMs is the longest media gap (Measures.MaxGapMs over all
	// classes) in the seconds from this event's second to the next
	// event's second, or the end of the run: WindowEndS is that window's
	// end in seconds since Result.Start. The seconds holding an event
	// belong to the windows on both sides of it.
	MaxGapAfterMs float64 `json:"max_gap_after_ms"`
	WindowEndS    float64 `json:"window_end_s"`
}

// validateChaos checks the chaos actions against Processes; self is this
// process's pid, never a valid target.
func (p Plan) validateChaos(self int) []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrPlan}, a...)...))
	}
	if len(p.Chaos) > maxChaosActions {
		bad("chaos has %d actions, at most %d", len(p.Chaos), maxChaosActions)
	}
	for i, a := range p.Chaos {
		switch a.Kind {
		case ChaosKill, ChaosTerm:
			if a.For != 0 {
				bad("chaos[%d]: for applies to stop and down only", i)
			}
		case ChaosStop, ChaosDown:
			if a.For <= 0 {
				bad("chaos[%d]: a %s needs for > 0 (how long the target stays %s)", i, a.Kind, map[string]string{ChaosStop: "stopped", ChaosDown: "down"}[a.Kind])
			}
		default:
			bad("chaos[%d].kind = %q, want kill, term, stop or down", i, a.Kind)
		}
		if a.At < 0 || (p.Bounds.MaxDuration > 0 && a.At >= p.Bounds.MaxDuration) {
			bad("chaos[%d].at = %v, want 0 <= at < bounds.max_duration", i, a.At.D())
		}
		if a.Kind == ChaosDown {
			if sv, ok := p.Services[a.Target]; !ok || sv.Down == nil || sv.Up == nil {
				bad("chaos[%d].target = %q is not a known service (give how to take it down and up in Services: --chaos-down and --chaos-up)", i, a.Target)
			}
			continue
		}
		pid, ok := p.Processes[a.Target]
		switch {
		case !ok:
			bad("chaos[%d].target = %q is not a known process (give its pid in Processes)", i, a.Target)
		case pid <= 1 || pid == self:
			bad("chaos[%d].target %q has pid %d: refusing to signal it", i, a.Target, pid)
		}
	}
	return errs
}

// chaosStep is one signal to send, or one service to take down or up.
type chaosStep struct {
	at      time.Duration
	kind    string
	target  string
	pid     int
	service Service
}

// ends reports whether s ends a stop or a down: such steps are taken
// when the run ends early, so that nothing is left stopped or down.
func (s chaosStep) ends() bool { return s.kind == ChaosCont || s.kind == ChaosUp }

// chaos executes a plan's chaos actions and records the events.
type chaos struct {
	mu     sync.Mutex
	events []Event
}

// start runs the actions in the background (run) until ctx ends or end
// is called; end returns once run has (it may be called twice).
func (c *chaos) start(ctx context.Context, start time.Time, actions []ChaosAction, procs map[string]int, services map[string]Service) (end func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx, start, chaosSteps(actions, procs, services))
	}()
	return func() { cancel(); <-done }
}

// chaosSteps turns the actions into their steps, in time order: a stop
// is followed by its cont, a down by its up.
func chaosSteps(actions []ChaosAction, procs map[string]int, services map[string]Service) []chaosStep {
	var steps []chaosStep
	for _, a := range actions {
		s := chaosStep{at: a.At.D(), kind: a.Kind, target: a.Target, pid: procs[a.Target]}
		if a.Kind == ChaosDown {
			s.pid, s.service = 0, services[a.Target]
		}
		steps = append(steps, s)
		end := s
		end.at = (a.At + a.For).D()
		switch a.Kind {
		case ChaosStop:
			end.kind = ChaosCont
			steps = append(steps, end)
		case ChaosDown:
			end.kind = ChaosUp
			steps = append(steps, end)
		}
	}
	sort.SliceStable(steps, func(i, j int) bool { return steps[i].at < steps[j].at })
	return steps
}

// run takes the steps at their times since start until ctx ends; a
// pending SIGCONT is sent, and a pending up taken, at once when ctx ends,
// so that nothing is left stopped or down. Steps are taken one at a time:
// a slow down or up delays the steps after it. It returns when every step
// due has been taken.
func (c *chaos) run(ctx context.Context, start time.Time, steps []chaosStep) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i, s := range steps {
		timer.Reset(time.Until(start.Add(s.at)))
		select {
		case <-timer.C:
			c.take(ctx, start, s)
		case <-ctx.Done():
			// Resume whatever this run stopped or took down; nothing else.
			for _, rest := range steps[i:] {
				if rest.ends() {
					c.take(context.WithoutCancel(ctx), start, rest)
				}
			}
			return
		}
	}
}

// take sends s's signal, or calls s's service, and records the event. A
// service call is bounded by serviceTimeout.
func (c *chaos) take(ctx context.Context, start time.Time, s chaosStep) {
	began := time.Now()
	ev := Event{AtMs: round3(ms(began.Sub(start))), Kind: s.kind, Target: s.target, PID: s.pid}
	var err error
	switch s.kind {
	case ChaosDown, ChaosUp:
		call := s.service.Down
		if s.kind == ChaosUp {
			call = s.service.Up
		}
		sctx, cancel := context.WithTimeout(ctx, serviceTimeout)
		err = call(sctx)
		cancel()
		ev.TookMs = round3(ms(time.Since(began)))
	default:
		err = sendSignal(s.pid, s.kind)
	}
	if err != nil {
		ev.Err = err.Error()
	}
	c.mu.Lock()
	c.events = append(c.events, ev)
	c.mu.Unlock()
}

// result returns the events so far.
func (c *chaos) result() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.events...)
}

// gapsAfterEvents sets each event's MaxGapAfterMs and WindowEndS from the
// per-second series: the window of event i runs from its second to the
// second of event i+1 (both included) or to the end of the run.
func gapsAfterEvents(events []Event, secs []Second, durationMs float64) {
	for i := range events {
		from := int(events[i].AtMs / 1000)
		endMs := durationMs
		if i+1 < len(events) {
			endMs = events[i+1].AtMs
		}
		to := int(endMs / 1000)
		events[i].WindowEndS = round3(endMs / 1000)
		g := 0.0
		for _, s := range secs {
			if s.T >= from && s.T <= to {
				g = max(g, s.All.MaxGapMs)
			}
		}
		events[i].MaxGapAfterMs = g
	}
}
