package report

import (
	"fmt"
	"strconv"

	"github.com/callrelay/callrelay/loadtest"
)

// adaptationSection shows the network adaptation: the video mix's bitrates
// and simulcast layers, and the receivers' feedback (what NACK recovered,
// what was given up).
func adaptationSection(r *loadtest.Result) Section {
	secs := r.Seconds
	cats := make([]string, len(secs))
	for i, s := range secs {
		cats[i] = strconv.Itoa(s.T)
	}
	always := func(f func(loadtest.Measures) float64) []Point {
		return pick(secs, func(s loadtest.Second) (float64, bool) { return f(s.All), true })
	}
	layers := func(i int) Series {
		return Series{Name: fmt.Sprintf("%d layer(s)", i+1), Points: always(func(m loadtest.Measures) float64 { return float64(m.Video.Layers[i]) })}
	}
	u := strconv.FormatUint
	return Section{Title: "Video and feedback",
		Note: "Receivers run the client library's feedback: NACKs (answered by the relay from its cache), receiver reports with REMB, PLIs, duplicates dropped. " +
			"A receiver cannot tell loss from a gap the relay made on purpose (held-back audio, a video layer it stopped forwarding), so those are NACKed and given up too.",
		Charts: []Chart{
			{Kind: KindLine, Title: "Video bitrate", XLabel: "seconds", YLabel: "kbit/s", Series: []Series{
				{Name: "sent by cameras", Points: always(func(m loadtest.Measures) float64 { return m.Video.SentKbps })},
				{Name: "received by subscribers", Points: always(func(m loadtest.Measures) float64 { return m.Video.ReceivedKbps })},
			}},
			{Kind: KindStackedBars, Title: "Cameras by simulcast layers sent", Categories: cats, Series: []Series{layers(0), layers(1), layers(2)}},
			{Kind: KindLine, Title: "NACK recovery (packets per second)", XLabel: "seconds", YLabel: "packets", Series: []Series{
				{Name: "audio recovered", Points: always(func(m loadtest.Measures) float64 { return float64(m.Feedback.Audio.Recovered) })},
				{Name: "video recovered", Points: always(func(m loadtest.Measures) float64 { return float64(m.Feedback.Video.Recovered) })},
				{Name: "video given up", Points: always(func(m loadtest.Measures) float64 { return float64(m.Feedback.Video.Unrecovered) })},
			}},
		},
		Tables: []Table{{
			Title: "Video and feedback per class",
			Columns: []string{"class", "camera-seconds", "sent kbit/s", "received kbit/s", "video packets received", "video decrypt failures", "key frames",
				"PLIs to cameras", "RR+REMB sent", "NACK packets", "duplicates", "audio recovered", "audio given up", "video recovered", "video given up"},
			Rows: classRows(r.Totals, func(m loadtest.Measures) []string {
				v, f := m.Video, m.Feedback
				return []string{u(v.SenderSeconds, 10), num3(v.SentKbps), num3(v.ReceivedKbps), u(v.PacketsReceived, 10), u(v.DecryptFailures, 10),
					u(v.KeyFrames, 10), u(v.PLIs, 10), u(f.Reports, 10), u(f.NACKs, 10), u(f.Duplicates, 10),
					u(f.Audio.Recovered, 10), u(f.Audio.Unrecovered, 10), u(f.Video.Recovered, 10), u(f.Video.Unrecovered, 10)}
			}),
		}},
	}
}
