package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const capacityDoc = "../docs/capacity.md"

// callrelaySources reads the non-test Go files of cmd/callrelay.
func callrelaySources(t *testing.T) string {
	t.Helper()
	files, err := filepath.Glob("../cmd/callrelay/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cmd/callrelay sources: %v", err)
	}
	var b strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
		b.WriteByte('\n')
	}
	return b.String()
}

// flagDefined reports whether the sources register the flag on a FlagSet:
// fs.XxxVar(&v, "name", ...) (or a pointer p for &v), fs.Xxx("name", ...)
// or fs.Var(&v, "name", ...), or as an entry of a settings table registered
// in a loop, {"name", "meaning", ...} (natsconfig.go does that for the
// --nats-* flags).
func flagDefined(src, name string) bool {
	q := regexp.QuoteMeta(name)
	direct := regexp.MustCompile(`\bfs\.[A-Z]\w*\(\s*(?:&?[^,()"]+(?:\([^()]*\))?,\s*)?"` + q + `"`)
	table := regexp.MustCompile(`\{\s*"` + q + `",\s*"`)
	return direct.MatchString(src) || table.MatchString(src)
}

// docCommands returns the shell lines of fenced code blocks (continuations
// joined, heredoc bodies dropped) and the inline code spans of a Markdown
// file, and the heredoc bodies keyed by their delimiter's first line.
func docCommands(md string) (lines, spans, heredocs []string) {
	inFence := false
	var hereEnd string
	var here strings.Builder
	var cont strings.Builder
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			inFence = !inFence
			continue
		}
		if !inFence {
			for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(l, -1) {
				spans = append(spans, m[1])
			}
			continue
		}
		if hereEnd != "" {
			if strings.TrimSpace(l) == hereEnd {
				heredocs = append(heredocs, here.String())
				here.Reset()
				hereEnd = ""
				continue
			}
			here.WriteString(l + "\n")
			continue
		}
		if m := regexp.MustCompile(`<<-?'?(\w+)'?`).FindStringSubmatch(l); m != nil {
			hereEnd = m[1]
		}
		if strings.HasSuffix(strings.TrimSpace(l), `\`) {
			cont.WriteString(strings.TrimSuffix(strings.TrimSpace(l), `\`) + " ")
			continue
		}
		cont.WriteString(l)
		lines = append(lines, cont.String())
		cont.Reset()
	}
	return lines, spans, heredocs
}

var (
	callrelayCmd = regexp.MustCompile(`(?:^|[\s"(])(?:go run \./cmd/callrelay|callrelay)\s+([a-z][-a-z0-9]*)((?:\s+[^\s|;&)#]+)*)`)
	flagRe       = regexp.MustCompile(`(?:^|\s)--?([a-z][-a-z0-9]*)`)
	benchCmd     = regexp.MustCompile(`go test .*-bench\s+'?([^'\s]+)'?.*?((?:\s+\./[a-z/]+/?)+)\s*(?:#.*)?$`)
)

func TestCapacityDoc(t *testing.T) {
	data, err := os.ReadFile(capacityDoc)
	if err != nil {
		t.Fatalf("docs/capacity.md: %v", err)
	}
	md := string(data)
	src := callrelaySources(t)
	lines, spans, heredocs := docCommands(md)

	checked := 0
	check := func(where, text string) {
		for _, m := range callrelayCmd.FindAllStringSubmatch(text, -1) {
			sub := m[1]
			if !regexp.MustCompile(`"` + regexp.QuoteMeta(sub) + `":\s*\{`).MatchString(src) {
				t.Errorf("%s: `callrelay %s`: no such subcommand in cmd/callrelay/main.go", where, sub)
				continue
			}
			for _, f := range flagRe.FindAllStringSubmatch(m[2], -1) {
				checked++
				if !flagDefined(src, f[1]) {
					t.Errorf("%s: `callrelay %s ... --%s`: no flag %q registered in cmd/callrelay (fs.*Var / fs.String ...)", where, sub, f[1], f[1])
				}
			}
		}
	}
	for _, l := range lines {
		check("code block", l)
	}
	for _, s := range spans {
		check("inline code", s)
		// A flag quoted alone (`--max-partitions 7`) must exist too.
		if strings.HasPrefix(s, "--") {
			name := strings.TrimPrefix(strings.Fields(s)[0], "--")
			checked++
			if !flagDefined(src, name) {
				t.Errorf("inline code `%s`: no flag %q in cmd/callrelay", s, name)
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d flags found in docs/capacity.md commands: is the extractor broken?", checked)
	}

	// Benchmarks named in go test -bench commands exist in those packages.
	benches := 0
	for _, l := range lines {
		m := benchCmd.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		var testSrc strings.Builder
		for _, pkg := range strings.Fields(m[2]) {
			files, _ := filepath.Glob(filepath.Join("..", pkg, "*_test.go"))
			if len(files) == 0 {
				t.Errorf("%q: package %s has no tests", l, pkg)
			}
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				testSrc.Write(b)
			}
		}
		for _, name := range strings.Split(m[1], "|") {
			benches++
			if !regexp.MustCompile(`func Benchmark` + regexp.QuoteMeta(name)).MatchString(testSrc.String()) {
				t.Errorf("%q: no Benchmark%s* in %s", l, name, m[2])
			}
		}
	}
	if benches < 4 {
		t.Errorf("only %d benchmarks found in docs/capacity.md commands", benches)
	}

	// Load-test plans quoted in heredocs use only keys loadtest/plan.go knows.
	plan, err := os.ReadFile("../loadtest/plan.go")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, m := range regexp.MustCompile(`yaml:"([a-z0-9_]+)`).FindAllStringSubmatch(string(plan), -1) {
		keys[m[1]] = true
	}
	if len(heredocs) == 0 {
		t.Error("docs/capacity.md quotes no load-test plan")
	}
	for _, h := range heredocs {
		var v map[string]any
		if err := yaml.Unmarshal([]byte(h), &v); err != nil {
			t.Errorf("plan in docs/capacity.md: %v\n%s", err, h)
			continue
		}
		var walk func(path string, v any)
		walk = func(path string, v any) {
			m, ok := v.(map[string]any)
			if !ok {
				return
			}
			for k, sub := range m {
				if !keys[k] {
					t.Errorf("plan in docs/capacity.md: key %s%s is not a yaml field of loadtest/plan.go", path, k)
				}
				walk(path+k+".", sub)
			}
		}
		walk("", v)
	}

	for _, want := range []string{"1,000 calls", "10,000 calls", "100,000 calls", "--plan", "BenchmarkPartition10kCalls", "BenchmarkJoinWrite", "BenchmarkMetadataPer1000Calls", "BenchmarkHotPath"} {
		if !strings.Contains(md, want) {
			t.Errorf("docs/capacity.md does not mention %s", want)
		}
	}
}
