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
)

// maxChaosActions bounds the chaos list.
const maxChaosActions = 64

// ChaosAction is one failure injected during the run.
type ChaosAction struct {
	// At is when, since the run's start.
	At Duration `json:"at" yaml:"at"`
	// Kind is "kill", "term" or "stop".
	Kind string `json:"kind" yaml:"kind"`
	// Target names a process of Plan.Processes.
	Target string `json:"target" yaml:"target"`
	// For is how long a stop lasts (stop only; required). The SIGCONT is
	// sent when the run ends, at the latest.
	For Duration `json:"for,omitempty" yaml:"for,omitempty"`
}

// Event is one chaos action as executed (a stop gives two events: stop
// and cont).
type Event struct {
	// AtMs is when the signal was sent, in ms since Result.Start.
	AtMs float64 `json:"at_ms"`
	// Kind is "kill", "term", "stop" or "cont".
	Kind   string `json:"kind"`
	Target string `json:"target"`
	PID    int    `json:"pid"`
	// Err is why the signal could not be sent ("" when it was).
	Err string `json:"err,omitempty"`
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
				bad("chaos[%d]: for applies to stop only", i)
			}
		case ChaosStop:
			if a.For <= 0 {
				bad("chaos[%d]: a stop needs for > 0 (how long the process stays stopped)", i)
			}
		default:
			bad("chaos[%d].kind = %q, want kill, term or stop", i, a.Kind)
		}
		if a.At < 0 || (p.Bounds.MaxDuration > 0 && a.At >= p.Bounds.MaxDuration) {
			bad("chaos[%d].at = %v, want 0 <= at < bounds.max_duration", i, a.At.D())
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

// chaosStep is one signal to send.
type chaosStep struct {
	at     time.Duration
	kind   string
	target string
	pid    int
}

// chaos executes a plan's chaos actions and records the events.
type chaos struct {
	mu     sync.Mutex
	events []Event
}

// start runs the actions in the background (run) until ctx ends or end
// is called; end returns once run has (it may be called twice).
func (c *chaos) start(ctx context.Context, start time.Time, actions []ChaosAction, procs map[string]int) (end func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx, start, actions, procs)
	}()
	return func() { cancel(); <-done }
}

// run sends the actions' signals at their times since start until ctx
// ends; a pending SIGCONT is sent at once when ctx ends, so no process is
// left stopped. It returns when every signal due has been sent.
func (c *chaos) run(ctx context.Context, start time.Time, actions []ChaosAction, procs map[string]int) {
	var steps []chaosStep
	for _, a := range actions {
		pid := procs[a.Target]
		steps = append(steps, chaosStep{at: a.At.D(), kind: a.Kind, target: a.Target, pid: pid})
		if a.Kind == ChaosStop {
			steps = append(steps, chaosStep{at: (a.At + a.For).D(), kind: ChaosCont, target: a.Target, pid: pid})
		}
	}
	sort.SliceStable(steps, func(i, j int) bool { return steps[i].at < steps[j].at })
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i, s := range steps {
		timer.Reset(time.Until(start.Add(s.at)))
		select {
		case <-timer.C:
			c.signal(start, s)
		case <-ctx.Done():
			// Resume whatever this run stopped; send nothing else.
			for _, rest := range steps[i:] {
				if rest.kind == ChaosCont {
					c.signal(start, rest)
				}
			}
			return
		}
	}
}

func (c *chaos) signal(start time.Time, s chaosStep) {
	err := sendSignal(s.pid, s.kind)
	ev := Event{AtMs: round3(ms(time.Since(start))), Kind: s.kind, Target: s.target, PID: s.pid}
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
