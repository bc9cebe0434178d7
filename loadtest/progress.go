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

// Line formats one progress line for second s: loss after NACK (before
// it in brackets), and the video received when there is some.
func progressLine(s Second, refusedSoFar int) string {
	l := fmt.Sprintf("%-8s %6s  calls up %4d  participants %5d  setups %3d/%-3d  refused %d (total %d)  loss %5.2f%% (raw %5.2f%%)  delay p95 %6.1f ms  cpu %3.0f%%",
		s.Phase, (time.Duration(s.T+1) * time.Second).String(), s.CallsUp, s.ParticipantsUp,
		s.All.Setups.Admitted, s.All.Setups.Attempted, s.All.Setups.Refused.Total(), refusedSoFar,
		s.All.LossPct, s.All.RawLossPct, s.All.DelayMs.P95, s.GeneratorCPUPct)
	if v := s.All.Video; v.SenderSeconds > 0 || v.PacketsReceived > 0 {
		l += fmt.Sprintf("  video %d cams, rx %.1f Mbit/s", v.SenderSeconds, v.ReceivedKbps/1000)
	}
	if a := s.All; a.SessionsLost > 0 || a.CallsDropped > 0 || a.RejoinSilenceMs.Count > 0 {
		l += fmt.Sprintf("  lost %d dropped %d rejoins %d", a.SessionsLost, a.CallsDropped, a.RejoinSilenceMs.Count)
	}
	if s.All.LateJoin.Joined > 0 {
		l += fmt.Sprintf("  late %d", s.All.LateJoin.Joined)
	}
	return l
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
	fmt.Fprintf(p.w, "done (%s) after %.1fs: %d calls, setups %d/%d admitted, loss %.2f%% after NACK (%.2f%% before), delay p95 %.1f ms, verdict %s\n",
		res.Stopped, res.DurationMs/1000, t.CallsStarted, t.Setups.Admitted, t.Setups.Attempted,
		t.LossPct, t.RawLossPct, t.DelayMs.P95, map[bool]string{true: "PASS", false: "FAIL"}[res.Verdict.Pass])
	f := t.Feedback
	fmt.Fprintf(p.w, "feedback: %d RR+REMB, %d NACK and %d PLI packets sent, %d duplicates dropped; audio recovered %d, video NACKed %d recovered %d given up %d\n",
		f.Reports, f.NACKs, f.PLIs, f.Duplicates, f.Audio.Recovered, f.Video.NACKed, f.Video.Recovered, f.Video.Unrecovered)
	fmt.Fprintln(p.w, sessionsLine(t))
	for _, k := range transportKeys {
		if m, ok := res.Transports[k]; ok {
			fmt.Fprintln(p.w, transportLine(k, m))
		}
	}
	if q := res.StreamQueue; q != nil {
		fmt.Fprintf(p.w, "forwarders' TCP and TLS legs: %d audio and %d video packets dropped from their send queues, %d retransmissions skipped (metrics of %d forwarders)\n",
			q.AudioDropped, q.VideoDropped, q.RetransmissionsSkipped, q.Forwarders)
		if q.ConnectionsRefused > 0 {
			fmt.Fprintf(p.w, "warning: the forwarders refused %d TCP and TLS connections over their --stream-per-ip or --stream-max-conns bound: raise them (every stream device of this generator comes from its address) or spread the devices over more generators\n", q.ConnectionsRefused)
		}
		for _, e := range q.Errors {
			fmt.Fprintf(p.w, "warning: %s\n", e)
		}
	}
	if l := t.LateJoin; l.Joined > 0 {
		fmt.Fprintf(p.w, "late joiners: %d joined, decrypted %d of the %d streams of the members up when they came (%d never decrypted, %d first decrypted after a rollover), %d audio packets failed\n",
			l.Joined, l.StreamsDecrypted, l.StreamsExpected, l.StreamsUndecryptable, l.StreamsAfterRollover, l.DecryptFailures)
	}
	if v := t.Video; v.SenderSeconds > 0 {
		fmt.Fprintf(p.w, "video: %d camera-seconds (1/2/3 layers: %d/%d/%d), sent %.0f kbit/s, received %.0f kbit/s (%d packets, %d failed), %d key frames, %d PLIs, %d targets, %d REMBs\n",
			v.SenderSeconds, v.Layers[0], v.Layers[1], v.Layers[2], v.SentKbps, v.ReceivedKbps, v.PacketsReceived, v.DecryptFailures,
			v.KeyFrames, v.PLIs, v.TargetBitrates, v.REMBs)
	}
	if res.Generator.Bottleneck {
		fmt.Fprintf(p.w, "warning: the load generator was the bottleneck: %v\n", res.Generator.Reasons)
	}
}

// sessionsLine is the summary's line on dropped calls and re-joins.
func sessionsLine(t Measures) string {
	l := fmt.Sprintf("sessions: %d calls dropped of %d set up (%.2f%%), %d sessions lost; ",
		t.CallsDropped, t.CallsStarted-t.CallsFailed, t.DroppedCallsPct, t.SessionsLost)
	if r := t.RejoinSilenceMs; r.Count > 0 {
		return l + fmt.Sprintf("%d re-joins, silence p50 %.0f ms, p99 %.0f ms, max %.0f ms", r.Count, r.P50, r.P99, r.Max)
	}
	return l + "no re-joins"
}

// transportLine is the summary's line on the devices of one transport.
func transportLine(key string, m TransportMeasures) string {
	line := fmt.Sprintf("%s: %d/%d joins admitted, setup p95 %.1f ms, loss %.2f%% after NACK (%.2f%% before, %d NACKs), delay p50/p95/p99 %.1f/%.1f/%.1f ms",
		key, m.Setups.Admitted, m.Setups.Attempted, m.SetupMs.P95, m.LossPct, m.RawLossPct, m.NACKs, m.DelayMs.P50, m.DelayMs.P95, m.DelayMs.P99)
	if m.OtherTransport > 0 {
		line += fmt.Sprintf(", %d joined over another transport", m.OtherTransport)
	}
	return line
}
