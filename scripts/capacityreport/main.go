// Command capacityreport combines the load-test results of one capacity
// run (scripts/capacity.sh: the same fast-engine ramp against each relay in
// turn, the relay pinned to one core and the generator to another) into
// capacity.json and capacity.html: per relay its knee per core and its
// packets per CPU-second, and the first relay's (the forwarder's) ratios
// to the others (the bare reflector, coturn), step by step at the same
// load.
//
// -case names the traffic (one2one, trunk, group4, group4c, group8c,
// video: scripts/capacity.sh's CASE) and the report says what it is; for
// the cases where the relay forwards part of what it gets (a conductor's
// gating, simulcast layers) it also says what was sent and what forwarded.
//
//	go run ./scripts/capacityreport -out DIR -case one2one -load "$(uptime)" forwarder=f.json reflector=r.json coturn=c.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/callrelay/callrelay/loadtest"
)

// Relay is one relay's figures.
type Relay struct {
	Name string `json:"name"`
	// Knee is the ramp's knee (Found false: even the first step broke, or
	// the generator was the limit: GeneratorBound).
	Knee *loadtest.Knee `json:"knee"`
	// PacketsPerCPUSecond is the median, over the steps that met the
	// targets, of the step's packets (in + out) per second of relay CPU.
	PacketsPerCPUSecond float64 `json:"packets_per_cpu_second"`
	// Steps are the ramp's steps, condensed.
	Steps []Step `json:"steps"`
	// GeneratorPacketsPerCPUSecond is what the generator itself moved per
	// second of its own CPU over the run.
	GeneratorPacketsPerCPUSecond float64  `json:"generator_packets_per_cpu_second"`
	GeneratorBottleneck          bool     `json:"generator_bottleneck"`
	GeneratorReasons             []string `json:"generator_reasons,omitempty"`
	Stopped                      string   `json:"stopped"`
	// Forwarding is what the relay forwarded of what the devices sent
	// (cases group4c, group8c, video: loadtest.Forwarding).
	Forwarding *loadtest.Forwarding `json:"forwarding,omitempty"`
}

// Step is one ramp step of one relay.
type Step struct {
	Index               int      `json:"index"`
	MeanCallsUp         float64  `json:"mean_calls_up"`
	PacketsPerSec       float64  `json:"packets_per_sec"`
	RelayCPUPct         float64  `json:"relay_cpu_pct"`
	PacketsPerCPUSecond float64  `json:"packets_per_cpu_second"`
	GeneratorCPUPct     float64  `json:"generator_cpu_pct"`
	LossPct             float64  `json:"loss_pct"`
	RelayAddedP99Ms     float64  `json:"relay_added_delay_p99_ms"`
	Met                 bool     `json:"met"`
	Broken              []string `json:"broken,omitempty"`
}

// Ratio compares the forwarder with another relay at the same steps.
type Ratio struct {
	Of string `json:"of"` // "forwarder/reflector"
	// PacketsPerCPUSecond is the median over the steps both ran of the
	// forwarder's packets per CPU-second over the other's.
	PacketsPerCPUSecond float64 `json:"packets_per_cpu_second"`
	Steps               int     `json:"steps"`
}

// Report is capacity.json.
type Report struct {
	// Case is the traffic (scripts/capacity.sh's CASE), CaseText what it
	// is.
	Case        string  `json:"case"`
	CaseText    string  `json:"case_text"`
	LoadAverage string  `json:"load_average"`
	Relays      []Relay `json:"relays"`
	Ratios      []Ratio `json:"ratios"`
	// Forwarding: some relay's result has a forwarding summary.
	Forwarding bool `json:"-"`
}

func main() {
	out := flag.String("out", ".", "directory for capacity.json and capacity.html")
	load := flag.String("load", "", "the machine's load average during the run (uptime)")
	kind := flag.String("case", "one2one", "the traffic: one2one, trunk, group4, group4c, group8c or video")
	flag.Parse()
	text, ok := cases[*kind]
	if !ok {
		fail(fmt.Errorf("-case %q: want one2one, trunk, group4, group4c, group8c or video", *kind))
	}
	rep := Report{Case: *kind, CaseText: text, LoadAverage: strings.TrimSpace(*load)}
	for _, arg := range flag.Args() {
		name, file, ok := strings.Cut(arg, "=")
		if !ok {
			fail(fmt.Errorf("argument %q: want name=result.json", arg))
		}
		r, err := readRelay(name, file)
		if err != nil {
			fail(err)
		}
		rep.Relays = append(rep.Relays, r)
		rep.Forwarding = rep.Forwarding || r.Forwarding != nil
	}
	for _, r := range rep.Relays[min(1, len(rep.Relays)):] {
		rep.Ratios = append(rep.Ratios, ratio(rep.Relays[0], r))
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		fail(err)
	}
	if err := os.WriteFile(filepath.Join(*out, "capacity.json"), b, 0o644); err != nil {
		fail(err)
	}
	f, err := os.Create(filepath.Join(*out, "capacity.html"))
	if err != nil {
		fail(err)
	}
	defer f.Close()
	if err := page.Execute(f, rep); err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "capacityreport:", err)
	os.Exit(1)
}

func readRelay(name, file string) (Relay, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Relay{}, err
	}
	var res loadtest.Result
	if err := json.Unmarshal(b, &res); err != nil {
		return Relay{}, fmt.Errorf("%s: %w", file, err)
	}
	r := Relay{Name: name, Knee: res.Knee, Stopped: res.Stopped, GeneratorPacketsPerCPUSecond: res.Generator.PacketsPerCPUSecond,
		GeneratorBottleneck: res.Generator.Bottleneck, GeneratorReasons: res.Generator.Reasons, Forwarding: res.Forwarding}
	var good []float64
	for _, s := range res.Steps {
		st := Step{Index: s.Index, MeanCallsUp: s.MeanCallsUp, PacketsPerSec: s.Measures.RelayPacketsPerSec, RelayCPUPct: s.RelayCPUPct,
			PacketsPerCPUSecond: s.PacketsPerRelayCPUSecond, GeneratorCPUPct: s.GeneratorCPUPct, LossPct: s.Measures.LossPct,
			RelayAddedP99Ms: s.Measures.RelayAddedDelayP99Ms, Met: s.Met, Broken: s.Broken}
		r.Steps = append(r.Steps, st)
		if s.Met && s.PacketsPerRelayCPUSecond > 0 {
			good = append(good, s.PacketsPerRelayCPUSecond)
		}
	}
	r.PacketsPerCPUSecond = median(good)
	return r, nil
}

func ratio(a, b Relay) Ratio {
	var rs []float64
	for i := 0; i < len(a.Steps) && i < len(b.Steps); i++ {
		if a.Steps[i].PacketsPerCPUSecond > 0 && b.Steps[i].PacketsPerCPUSecond > 0 {
			rs = append(rs, a.Steps[i].PacketsPerCPUSecond/b.Steps[i].PacketsPerCPUSecond)
		}
	}
	return Ratio{Of: a.Name + "/" + b.Name, PacketsPerCPUSecond: median(rs), Steps: len(rs)}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return float64(int64(m*1000)) / 1000
}

// cases says what each case's traffic is.
var cases = map[string]string{
	"one2one": "one-to-one audio calls, both devices on one relay",
	"trunk": "one-to-one audio calls spanning two forwarders of one cluster over the trunk (each call's devices on different forwarders, " +
		"both forwarders pinned to the relay core, their CPU summed): every frame crosses the trunk once; packets are the devices' in + out, not the trunk's",
	"group4":  "4-person group audio, every member sending, no conductor: each packet fanned out to the 3 others",
	"group4c": conducted(4),
	"group8c": conducted(8),
	"video": "4-person group calls with simulcast video, no conductor: every member sends its audio and 3 video layers (one packet per layer per 20 ms, " +
		"250/600/1,100-byte payloads); the forwarder gives each receiver every voice and the lowest layer of each sender. " +
		"The reflector fans out the audio and layer 0; layers 1-2 reach it from an unregistered address and are read and dropped",
}

func conducted(n int) string {
	return fmt.Sprintf("%d-person group audio with a conductor (redis-server, nats-server and callrelay conductor --max-forwarded 3 on the generator's core) "+
		"gating the audio by the members' RFC 6464 levels (talkspurt model): at most 3 voices forwarded per call. "+
		"The reflector has no conductor: members 0-2 of each call are fanned out, the others' frames reach it from an unregistered address and are read and dropped, "+
		"so both relays read the same datagrams and the reflector writes at least as many copies", n)
}

var funcs = template.FuncMap{
	"add": func(a, b int) int { return a + b },
	"pct": func(a, b uint64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f %%", 100*float64(a)/float64(b))
	},
}

var page = template.Must(template.New("capacity").Funcs(funcs).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>callrelay capacity</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#eee}.bad{color:#b00}</style>
</head><body>
<h1>Capacity: relays side by side, one core each</h1>
<p>Case <b>{{.Case}}</b>: {{.CaseText}}.</p>
<p>Each relay pinned to one core, the generator to another, the same ramp: the knee is per core. Packets are the relay's in + out as the generator counts them.</p>
<p>Load average: {{.LoadAverage}}</p>
<h2>Summary</h2>
<table><tr><th>relay</th><th>packets per relay CPU-second (median of good steps)</th><th>knee found</th><th>knee calls</th><th>knee packets/s</th><th>generator-bound</th><th>generator packets per its CPU-second</th><th>stopped</th></tr>
{{range .Relays}}<tr><td>{{.Name}}</td><td>{{printf "%.0f" .PacketsPerCPUSecond}}</td>{{with .Knee}}<td>{{.Found}}</td><td>{{printf "%.0f" .ConcurrentCalls}}</td><td>{{printf "%.0f" .PacketsPerSec}}</td><td>{{.GeneratorBound}}</td>{{else}}<td>-</td><td>-</td><td>-</td><td>-</td>{{end}}<td>{{printf "%.0f" .GeneratorPacketsPerCPUSecond}}</td><td>{{.Stopped}}</td></tr>
{{end}}</table>
<h2>Ratios (same steps, same load)</h2>
<table><tr><th>ratio</th><th>packets per CPU-second</th><th>steps compared</th></tr>
{{range .Ratios}}<tr><td>{{.Of}}</td><td>{{printf "%.3f" .PacketsPerCPUSecond}}</td><td>{{.Steps}}</td></tr>{{end}}</table>
{{if .Forwarding}}<h2>Forwarded vs sent (whole run)</h2>
<table><tr><th>relay</th><th>stream</th><th>sent by the devices</th><th>copies if all forwarded</th><th>copies received</th><th>received / all</th></tr>
{{range .Relays}}{{$r := .}}{{with .Forwarding}}{{range $k, $s := .Sent}}{{if $s}}<tr><td>{{$r.Name}}</td><td>{{if eq $k 0}}audio{{else}}video layer {{add $k -1}}{{end}}</td><td>{{$s}}</td><td>{{index $r.Forwarding.Offered $k}}</td><td>{{index $r.Forwarding.Received $k}}</td><td>{{pct (index $r.Forwarding.Received $k) (index $r.Forwarding.Offered $k)}}</td></tr>
{{end}}{{end}}{{end}}{{end}}</table>
<table><tr><th>relay</th><th>voices a receiver heard per 200 ms window: windows with 0, 1, 2, ... 8+</th><th>most voices</th><th>windows over the forwarded limit</th></tr>
{{range .Relays}}{{$r := .}}{{with .Forwarding}}<tr><td>{{$r.Name}}</td><td>{{.AudioSenders}}</td><td>{{.MaxAudioSenders}}</td><td>{{printf "%.2f" .OverForwardedPct}} % (limit {{.Forwarded}}; 0: none)</td></tr>{{end}}{{end}}</table>{{end}}
{{range .Relays}}<h2>{{.Name}}: steps</h2>
<table><tr><th>step</th><th>mean calls up</th><th>packets/s</th><th>relay CPU %</th><th>packets per relay CPU-s</th><th>generator CPU %</th><th>loss %</th><th>relay-added p99 ms</th><th>met</th><th>broken</th></tr>
{{range .Steps}}<tr{{if not .Met}} class="bad"{{end}}><td>{{.Index}}</td><td>{{printf "%.0f" .MeanCallsUp}}</td><td>{{printf "%.0f" .PacketsPerSec}}</td><td>{{printf "%.1f" .RelayCPUPct}}</td><td>{{printf "%.0f" .PacketsPerCPUSecond}}</td><td>{{printf "%.1f" .GeneratorCPUPct}}</td><td>{{printf "%.3f" .LossPct}}</td><td>{{printf "%.2f" .RelayAddedP99Ms}}</td><td>{{.Met}}</td><td>{{range .Broken}}{{.}} {{end}}</td></tr>
{{end}}</table>{{end}}
</body></html>
`))
