package loadtest

import (
	"fmt"
	"io"
	"os"
	"time"
)

// progress writes the live progress line: rewritten in place (\r) on a
// terminal, one line per second otherwise.
type progress struct {
	w    io.Writer
	term bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.term = true
		}
	}
	return p
}

// Line formats one progress line for second s.
func progressLine(s Second, refusedSoFar int) string {
	return fmt.Sprintf("%-8s %6s  calls up %4d  participants %5d  setups %3d/%-3d  refused %d (total %d)  loss %5.2f%%  delay p95 %6.1f ms  cpu %3.0f%%",
		s.Phase, (time.Duration(s.T+1) * time.Second).String(), s.CallsUp, s.ParticipantsUp,
		s.All.Setups.Admitted, s.All.Setups.Attempted, s.All.Setups.Refused.Total(), refusedSoFar,
		s.All.LossPct, s.All.DelayMs.P95, s.GeneratorCPUPct)
}

func (p *progress) line(s Second, res *Result) {
	if p == nil || p.w == nil {
		return
	}
	refused := 0
	for _, x := range res.Seconds {
		refused += x.All.Setups.Refused.Total()
	}
	l := progressLine(s, refused)
	if p.term {
		fmt.Fprintf(p.w, "\r%s\x1b[K", l)
		return
	}
	fmt.Fprintln(p.w, l)
}

func (p *progress) done(res *Result) {
	if p == nil || p.w == nil {
		return
	}
	if p.term {
		fmt.Fprintln(p.w)
	}
	t := res.Totals.All
	fmt.Fprintf(p.w, "done (%s) after %.1fs: %d calls, setups %d/%d admitted, loss %.2f%%, delay p95 %.1f ms, verdict %s\n",
		res.Stopped, res.DurationMs/1000, t.CallsStarted, t.Setups.Admitted, t.Setups.Attempted,
		t.LossPct, t.DelayMs.P95, map[bool]string{true: "PASS", false: "FAIL"}[res.Verdict.Pass])
	if res.Generator.Bottleneck {
		fmt.Fprintf(p.w, "warning: the load generator was the bottleneck: %v\n", res.Generator.Reasons)
	}
}
