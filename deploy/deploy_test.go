package deploy_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// metricSources are the files whose Prometheus metric names the deploy
// files may query, relative to this package's directory.
var metricSources = []string{
	"../forwarder/metrics.go",
	"../forwarder/freshness.go",
	"../forwarder/notices.go",
	"../forwarder/device.go",
	"../conductor/metrics.go",
	"../conductor/report.go",
	"../dashboard/metrics.go",
	"../dashboard/admin.go",
	"../forwarder/admin.go",
	"../forwarder/trunk_rtt.go",
	"../forwarder/sender_moves.go",
	"../conductor/placement_call.go",
	"../dashboard/trunks.go",
}

// metricKind says which suffixed series a metric family has.
type metricKind int

const (
	kindPlain     metricKind = iota // a counter, gauge or a NewDesc of unknown type
	kindHistogram                   // _bucket, _sum, _count
	kindSummary                     // _sum, _count
)

// exportedMetric is one metric name the code exports and where.
type exportedMetric struct {
	kind metricKind
	pos  string // file:line of the declaration
}

// metricSet is the set of metric names the code exports.
type metricSet map[string]exportedMetric

// exportedMetrics collects the metric names declared in metricSources: the
// string literal passed first to prometheus.NewDesc, and Name: in
// prometheus.*Opts composite literals. A declaration it cannot read (a
// name built at run time, Namespace or Subsystem) fails the test, so the
// check never passes by not seeing a metric.
func exportedMetrics(t *testing.T) metricSet {
	t.Helper()
	set := metricSet{}
	fset := token.NewFileSet()
	for _, path := range metricSources {
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatalf("parse %s for metric names: %v", path, err)
		}
		before := len(set)
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				if isPrometheusSel(n.Fun, "NewDesc") && len(n.Args) > 0 {
					addMetric(t, fset, set, n.Args[0], kindPlain)
				}
			case *ast.CompositeLit:
				sel, ok := n.Type.(*ast.SelectorExpr)
				if !ok || !isPrometheusSel(sel, sel.Sel.Name) || !strings.HasSuffix(sel.Sel.Name, "Opts") {
					return true
				}
				kind := kindPlain
				switch sel.Sel.Name {
				case "HistogramOpts", "NativeHistogramOpts":
					kind = kindHistogram
				case "SummaryOpts":
					kind = kindSummary
				}
				readOpts(t, fset, set, n, kind)
			}
			return true
		})
		if len(set) == before {
			t.Fatalf("%s declares no metrics the extractor recognises (prometheus.NewDesc or prometheus.*Opts{Name: ...}); "+
				"if the metrics moved, update metricSources in deploy/deploy_test.go", path)
		}
	}
	return set
}

func isPrometheusSel(e ast.Expr, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != name {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == "prometheus"
}

func readOpts(t *testing.T, fset *token.FileSet, set metricSet, lit *ast.CompositeLit, kind metricKind) {
	t.Helper()
	var name ast.Expr
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			t.Fatalf("%s: positional prometheus Opts literal; the metric-name extractor needs keyed fields", fset.Position(lit.Pos()))
		}
		key, _ := kv.Key.(*ast.Ident)
		switch {
		case key == nil:
		case key.Name == "Name":
			name = kv.Value
		case key.Name == "Namespace" || key.Name == "Subsystem":
			t.Fatalf("%s: %s in prometheus Opts; the metric-name extractor in deploy/deploy_test.go only reads Name: teach it to join them",
				fset.Position(kv.Pos()), key.Name)
		}
	}
	if name == nil {
		t.Fatalf("%s: prometheus Opts literal without Name", fset.Position(lit.Pos()))
	}
	addMetric(t, fset, set, name, kind)
}

func addMetric(t *testing.T, fset *token.FileSet, set metricSet, e ast.Expr, kind metricKind) {
	t.Helper()
	pos := fset.Position(e.Pos())
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		t.Fatalf("%s: metric name is not a string literal; the extractor in deploy/deploy_test.go cannot read it", pos)
	}
	name, err := strconv.Unquote(lit.Value)
	if err != nil {
		t.Fatalf("%s: %v", pos, err)
	}
	set[name] = exportedMetric{kind: kind, pos: fmt.Sprintf("%s:%d", filepath.Base(pos.Filename), pos.Line)}
}

// has reports whether name is an exported series: a metric itself, or a
// histogram's _bucket/_sum/_count or a summary's _sum/_count.
func (s metricSet) has(name string) bool {
	if _, ok := s[name]; ok {
		return true
	}
	for suffix, kinds := range map[string][]metricKind{
		"_bucket": {kindHistogram},
		"_sum":    {kindHistogram, kindSummary},
		"_count":  {kindHistogram, kindSummary},
	} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if m, ok := s[base]; ok {
			for _, k := range kinds {
				if m.kind == k {
					return true
				}
			}
		}
	}
	return false
}

// missing returns the metric names expr references that the code does not
// export, sorted.
func (s metricSet) missing(expr string) []string {
	var out []string
	for _, name := range metricRefs(expr) {
		if !s.has(name) {
			out = append(out, name)
		}
	}
	return out
}

var (
	metricRef = regexp.MustCompile(`(?:^|[^a-zA-Z0-9_:])(callrelay_[a-zA-Z0-9_:]+)`)
	quoted    = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
)

// metricRefs returns the callrelay_ metric names in a PromQL expression,
// sorted and without duplicates. Quoted strings (label values, regexes) are
// skipped.
func metricRefs(expr string) []string {
	seen := map[string]bool{}
	for _, m := range metricRef.FindAllStringSubmatch(quoted.ReplaceAllString(expr, `""`), -1) {
		seen[m[1]] = true
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// checkPromQLShape is a cheap look at a PromQL expression: not empty, no
// {{ templating, and (), [] and {} balanced outside quoted strings. It is
// not a parser; `promtool check rules` is (see README.md).
func checkPromQLShape(expr string) error {
	if strings.TrimSpace(expr) == "" {
		return fmt.Errorf("empty expression")
	}
	if strings.Contains(expr, "{{") {
		return fmt.Errorf("contains {{ templating: Prometheus does not template expressions, only annotations")
	}
	var stack []rune
	var openedAt []int
	closer := map[rune]rune{')': '(', ']': '[', '}': '{'}
	var quote rune // the open quote, 0 outside strings
	escaped := false
	for i, r := range expr {
		switch {
		case quote != 0:
			switch {
			case escaped:
				escaped = false
			case r == '\\' && quote != '`':
				escaped = true
			case r == quote:
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
			openedAt = append(openedAt, i)
		case closer[r] != 0:
			if len(stack) == 0 {
				return fmt.Errorf("unbalanced %q at offset %d: nothing open", r, i)
			}
			if top := stack[len(stack)-1]; top != closer[r] {
				return fmt.Errorf("%q at offset %d closes %q opened at offset %d", r, i, top, openedAt[len(openedAt)-1])
			}
			stack, openedAt = stack[:len(stack)-1], openedAt[:len(openedAt)-1]
		}
	}
	if quote != 0 {
		return fmt.Errorf("unterminated quoted string")
	}
	if len(stack) > 0 {
		return fmt.Errorf("%q opened at offset %d is never closed", stack[len(stack)-1], openedAt[len(openedAt)-1])
	}
	return nil
}

// TestMetricExtractor guards the guard: the names the other tests compare
// against must include metrics we know exist, with the right kinds.
func TestMetricExtractor(t *testing.T) {
	set := exportedMetrics(t)
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"callrelay_forwarder_throttle_level", true},
		{"callrelay_forwarder_join_refusals_by_class_total", true},
		{"callrelay_statestore_degraded", true},
		{"callrelay_conductor_partitions_owned", true},
		{"callrelay_conductor_metadata_rejected_total", true},
		{"callrelay_conductor_speaker_switch_latency_seconds_bucket", true},
		{"callrelay_conductor_speaker_switch_latency_seconds_count", true},
		{"callrelay_conductor_decide_seconds_sum", true},
		{"callrelay_forwarder_sessions_count", false}, // a gauge has no _count
		{"callrelay_forwarder_throttle", false},
	} {
		if got := set.has(tc.name); got != tc.want {
			t.Errorf("metricSet.has(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMetricRefs(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up{job="callrelay-forwarder"} == 0`, nil},
		{`sum by (reason) (rate(callrelay_forwarder_drops_total{reason!="x"}[5m]))`, []string{"callrelay_forwarder_drops_total"}},
		{`a{l=~"callrelay_fake"} / callrelay_b + callrelay_b`, []string{"callrelay_b"}},
		{`my_callrelay_x + callrelay_y:rate5m`, []string{"callrelay_y:rate5m"}},
	} {
		got := metricRefs(tc.expr)
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("metricRefs(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

func TestCheckPromQLShape(t *testing.T) {
	for _, tc := range []struct {
		expr    string
		wantErr string // substring; "" for no error
	}{
		{`sum by (a) (rate(x{y="z"}[5m])) > 0`, ""},
		{`x{re=~"a(b|c"}`, ""}, // parentheses in strings do not count
		{`x{re=~"a\"(b"}`, ""},
		{"  ", "empty"},
		{`rate(x[5m]`, "never closed"},
		{`rate(x[5m)]`, "closes"},
		{`x)`, "nothing open"},
		{`x{a="b}`, "unterminated"},
		{`x > {{ $value }}`, "templating"},
	} {
		err := checkPromQLShape(tc.expr)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("checkPromQLShape(%q) = %v, want no error", tc.expr, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("checkPromQLShape(%q) = %v, want an error containing %q", tc.expr, err, tc.wantErr)
		}
	}
}
