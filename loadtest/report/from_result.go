package report

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/callrelay/callrelay/loadtest"
)

// FromResult maps a load test result onto the page model: the verdict and
// its checks, the knee, the generator's health, and sections for calls,
// media quality, video and feedback, ramp steps and the generator.
func FromResult(r *loadtest.Result) Input {
	in := Input{
		Title:    "callrelay load test — " + r.Plan.Profile.Kind,
		Subtitle: subtitle(r),
		Meta:     meta(r),
		Verdict:  verdict(r.Verdict),
		Knee:     knee(r.Knee),
		Warnings: warnings(r),
	}
	in.Sections = append(in.Sections, callsSection(r), mediaSection(r))
	if hasTransports(r) {
		in.Sections = append(in.Sections, transportsSection(r))
	}
	if r.Geo != nil {
		in.Sections = append(in.Sections, geoSection(r))
	}
	if hasSessions(r) {
		in.Sections = append(in.Sections, sessionsSection(r))
	}
	if r.Plan.LateJoin.Share > 0 || r.Totals.All.LateJoin.Joined > 0 {
		in.Sections = append(in.Sections, lateJoinSection(r))
	}
	if t := r.Totals.All; t.Feedback.Reports > 0 || t.Video.SenderSeconds > 0 || t.Video.PacketsReceived > 0 {
		in.Sections = append(in.Sections, adaptationSection(r))
	}
	if len(r.Steps) > 0 {
		in.Sections = append(in.Sections, stepsSection(r.Steps))
	}
	markers := eventMarkers(r)
	if r.Relay != nil {
		in.Sections = append(in.Sections, relaySection(r, markers))
	}
	if len(r.Events) > 0 {
		in.Sections = append(in.Sections, chaosSection(r))
	}
	in.Sections = append(in.Sections, generatorSection(r))
	if len(r.Agents) > 0 {
		in.Sections = append(in.Sections, agentsSection(r.Agents))
	}
	for i := range in.Sections {
		for j := range in.Sections[i].Charts {
			c := &in.Sections[i].Charts[j]
			if c.Kind == KindLine && c.Options.Markers == nil {
				c.Options.Markers = markers
			}
		}
	}
	return in
}

func subtitle(r *loadtest.Result) string {
	relays := make([]string, len(r.Plan.Forwarders))
	for i, f := range r.Plan.Forwarders {
		relays[i] = f.String()
	}
	d := (time.Duration(r.DurationMs * float64(time.Millisecond))).Round(time.Second)
	return fmt.Sprintf("profile %s · %s · relays %s", r.Plan.Profile.Kind, d, strings.Join(relays, ", "))
}

func meta(r *loadtest.Result) []Field {
	m := []Field{
		{"started", r.Start.UTC().Format(time.RFC3339)},
		{"stopped", r.Stopped},
		{"call mix", fmt.Sprintf("%s one-to-one, groups of %d..%d",
			pct(100*r.Plan.Mix.OneToOne), r.Plan.Mix.GroupMin, r.Plan.Mix.GroupMax)},
		{"seed", strconv.FormatUint(r.Plan.Seed, 10)},
	}
	if r.Plan.Video.Share > 0 {
		m = append(m, Field{"video", pct(100*r.Plan.Video.Share) + " of participants send a camera"})
	}
	if l := r.Plan.LateJoin; l.Share > 0 {
		m = append(m, Field{"late joiners", fmt.Sprintf("%s of members, %s after their call started", pct(100*l.Share), l.After.D())})
	}
	if j := r.Plan.Rejoin; j.Off {
		m = append(m, Field{"re-joins", "off: a device that loses its forwarder is lost"})
	} else if j.Timeout > 0 {
		m = append(m, Field{"re-joins", "within " + j.Timeout.D().String()})
	}
	if r.Plan.RelayCores > 0 {
		m = append(m, Field{"relay cores", num3(r.Plan.RelayCores)})
	}
	if len(r.Agents) > 0 {
		return append(m, Field{"generator", fmt.Sprintf("%d agents (smallest: GOMAXPROCS %d, %d CPUs)", len(r.Agents), r.Generator.GOMAXPROCS, r.Generator.NumCPU)})
	}
	return append(m, Field{"generator", fmt.Sprintf("GOMAXPROCS %d, %d CPUs", r.Generator.GOMAXPROCS, r.Generator.NumCPU)})
}

// targetNames and targetUnits describe loadtest.Check.Target values.
var targetNames = map[string]string{
	"setup_success_pct":     "setup success",
	"setup_p95_ms":          "p95 setup latency",
	"loss_pct":              "packet loss",
	"delay_p95_ms":          "p95 one-way delay",
	"dropped_calls_pct":     "dropped calls",
	"rejoin_silence_p99_ms": "p99 re-join silence",
}

func targetValue(target string, v float64) string {
	switch {
	case strings.HasSuffix(target, "_ms"):
		return ms(v)
	case strings.HasSuffix(target, "_pct"):
		return pct(v)
	}
	return num3(v)
}

func verdict(v loadtest.Verdict) Verdict {
	out := Verdict{Pass: v.Pass}
	missed := 0
	for _, c := range v.Checks {
		name := targetNames[c.Target]
		if name == "" {
			name = c.Target
		}
		op := map[string]string{">=": "≥", "<=": "≤"}[c.Op]
		if op == "" {
			op = c.Op
		}
		out.Checks = append(out.Checks, Check{Target: name, Measured: targetValue(c.Target, c.Measured),
			Limit: op + " " + targetValue(c.Target, c.Limit), Pass: c.Pass})
		if !c.Pass {
			missed++
		}
	}
	switch {
	case len(v.Checks) == 0:
		out.Summary = "no targets given"
	case missed == 0:
		out.Summary = fmt.Sprintf("all %d targets met", len(v.Checks))
	default:
		out.Summary = fmt.Sprintf("%d of %d targets missed", missed, len(v.Checks))
	}
	return out
}

func knee(k *loadtest.Knee) *Knee {
	if k == nil {
		return nil
	}
	if !k.Found {
		return &Knee{Found: false, Summary: "the first step already broke " + strings.Join(k.BrokenTargets, ", ")}
	}
	out := &Knee{Found: true, Facts: []Field{
		{"last step meeting every target", strconv.Itoa(k.Step)},
		{"arrival rate (calls/s)", num3(k.Rate)},
		{"concurrent calls", num3(k.ConcurrentCalls)},
		{"relay packets/s (in + out)", num3(k.PacketsPerSec)},
	}}
	if k.RelayCores > 0 {
		out.Facts = append(out.Facts,
			Field{"concurrent calls per relay core", num3(k.ConcurrentCallsPerCore)},
			Field{"packets/s per relay core", num3(k.PacketsPerSecPerCore)})
	}
	if k.BrokeAtStep >= 0 {
		out.Summary = fmt.Sprintf("%s concurrent calls at step %d; step %d broke %s",
			num3(k.ConcurrentCalls), k.Step, k.BrokeAtStep, strings.Join(k.BrokenTargets, ", "))
	} else {
		out.Summary = fmt.Sprintf("no step broke a target; %s concurrent calls is a lower bound", num3(k.ConcurrentCalls))
	}
	return out
}

func warnings(r *loadtest.Result) []string {
	g := r.Generator
	var w []string
	for _, a := range r.Agents {
		switch {
		case a.Missing:
			w = append(w, fmt.Sprintf("agent %s (%d of %d) sent no result: its share of the calls is missing", a.ID, a.Index, a.Of))
		case a.Err != "":
			w = append(w, fmt.Sprintf("agent %s could not run its share: %s", a.ID, a.Err))
		}
	}
	if r.Relay != nil && r.Relay.BadReports > 0 {
		w = append(w, fmt.Sprintf("%d forwarder load reports failed authentication (wrong cluster key, or forged)", r.Relay.BadReports))
	}
	if g.Bottleneck {
		w = append(w, g.Reasons...)
		if len(g.Reasons) == 0 {
			w = append(w, "the load generator was a bottleneck")
		}
	}
	if g.SkippedArrivals > 0 {
		w = append(w, fmt.Sprintf("%d call arrivals skipped: the plan's concurrent-call bound was reached", g.SkippedArrivals))
	}
	return w
}

// pick returns f applied to every second, NaN where ok says there is no
// measurement.
func pick(secs []loadtest.Second, f func(loadtest.Second) (float64, bool)) []Point {
	pts := make([]Point, len(secs))
	for i, s := range secs {
		v, ok := f(s)
		if !ok {
			v = math.NaN()
		}
		pts[i] = Point{X: float64(s.T), Y: v}
	}
	return pts
}

// targetLine returns a threshold for the check on target, if the plan has one.
func targetLine(r *loadtest.Result, target string) []Threshold {
	for _, c := range r.Verdict.Checks {
		if c.Target == target {
			return []Threshold{{Value: c.Limit, Label: "target " + targetValue(target, c.Limit)}}
		}
	}
	return nil
}
