package layering

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// node is one package of the module, its imports of other packages of the
// module, by path relative to the module ("forwarder", "internal/bwe").
type node struct {
	imports []string // of its non-test files
	tests   []string // of its _test.go files (in-package and external), itself aside
}

type graph map[string]*node

// rule is one sentence of the layering: packages that from accepts must
// not reach (directly, or through a chain of non-test imports when chains
// is set) a package that bad rejects; tests extends it to the direct
// imports of their _test.go files.
type rule struct {
	says   string
	from   func(p string) bool
	bad    func(from, to string) bool
	chains bool
	tests  bool
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// isLeaf: a leaf library is any internal/ package outside internal/testkit.
func isLeaf(p string) bool { return strings.HasPrefix(p, "internal/") && !under(p, "internal/testkit") }

// plane names the process package p belongs to, or "".
func plane(p string) string {
	for _, pl := range []string{"forwarder", "conductor", "dashboard"} {
		if under(p, pl) {
			return pl
		}
	}
	return ""
}

// only accepts packages under own and the listed ones, and leaf libraries.
func only(own string, allowed ...string) func(from, to string) bool {
	return func(_, to string) bool {
		if under(to, own) || isLeaf(to) {
			return false
		}
		for _, a := range allowed {
			if under(to, a) {
				return false
			}
		}
		return true
	}
}

func in(dir string) func(string) bool { return func(p string) bool { return under(p, dir) } }

var rules = []rule{
	{says: "forwarder, conductor and dashboard never import each other: they meet through protocol (NATS) and " +
		"statestore (Redis); move a format two of them read there, and a test that needs two of them to systemtest",
		from: func(p string) bool { return plane(p) != "" },
		bad:  func(from, to string) bool { return plane(to) != "" && plane(to) != plane(from) }, chains: true, tests: true},
	{says: "forwarder (the data plane) imports only protocol, statestore and internal leaf libraries",
		from: in("forwarder"), bad: only("forwarder", "protocol", "statestore"), chains: true},
	{says: "conductor (the decision plane) imports only protocol, statestore and internal leaf libraries",
		from: in("conductor"), bad: only("conductor", "protocol", "statestore"), chains: true},
	{says: "statestore and client (the shared lower layer) import only protocol and internal leaf libraries",
		from: func(p string) bool { return under(p, "statestore") || under(p, "client") },
		bad: func(from, to string) bool {
			own := strings.SplitN(from, "/", 2)[0]
			return only(own, "protocol")(from, to)
		}, chains: true},
	{says: "protocol imports nothing of ours",
		from: in("protocol"), bad: func(_, to string) bool { return !under(to, "protocol") }},
	{says: "internal leaf libraries (internal/ outside internal/testkit) import no callrelay package but each other",
		from: isLeaf, bad: func(_, to string) bool { return !isLeaf(to) }},
	{says: "only tests import internal/testkit: non-test code outside it never does",
		from: func(p string) bool { return !under(p, "internal/testkit") },
		bad:  func(_, to string) bool { return under(to, "internal/testkit") }},
	{says: "cmd/ wires the processes: only cmd/ imports demo, and nothing imports cmd/",
		from: func(p string) bool { return !under(p, "cmd") },
		bad:  func(_, to string) bool { return under(to, "demo") || under(to, "cmd") }},
}

// check returns one line per broken rule and edge (or shortest chain),
// sorted: "forwarder -> statestore -> conductor: <rule>".
func check(g graph, rules []rule) []string {
	var out []string
	for p, n := range g {
		for _, r := range rules {
			if !r.from(p) {
				continue
			}
			for _, chain := range reach(g, p, r.chains) {
				if to := chain[len(chain)-1]; r.bad(p, to) {
					out = append(out, strings.Join(chain, " -> ")+": "+r.says)
				}
			}
			if !r.tests {
				continue
			}
			for _, to := range n.tests {
				if r.bad(p, to) {
					out = append(out, p+" (its tests) -> "+to+": "+r.says)
				}
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// reach returns, for every package p imports (through chains of non-test
// imports when chains is set), the shortest chain from p to it.
func reach(g graph, p string, chains bool) [][]string {
	from := map[string]string{p: ""}
	queue := []string{p}
	var out [][]string
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		n := g[q]
		if n == nil || (q != p && !chains) {
			continue
		}
		for _, to := range n.imports {
			if _, seen := from[to]; seen {
				continue
			}
			from[to] = q
			queue = append(queue, to)
			chain := []string{to}
			for at := q; at != ""; at = from[at] {
				chain = append([]string{at}, chain...)
			}
			out = append(out, chain)
		}
	}
	return out
}

// load reads the module's import graph with the go command.
func load(t *testing.T) graph {
	t.Helper()
	mod, err := exec.Command("go", "list", "-m", "-f", "{{.Path}}\n{{.Dir}}").Output()
	require.NoError(t, err, "go list -m: %s", stderr(err))
	modPath, modDir, ok := strings.Cut(strings.TrimSpace(string(mod)), "\n")
	require.True(t, ok, "go list -m printed %q", mod)
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,TestImports,XTestImports", "./...")
	cmd.Dir = modDir
	out, err := cmd.Output()
	require.NoError(t, err, "go list ./...: %s", stderr(err))
	rel := func(paths []string, self string) []string {
		var r []string
		for _, ip := range paths {
			if ip == modPath || strings.HasPrefix(ip, modPath+"/") {
				if p := strings.TrimPrefix(strings.TrimPrefix(ip, modPath), "/"); p != self {
					r = append(r, p)
				}
			}
		}
		sort.Strings(r)
		return slices.Compact(r)
	}
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var pkg struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&pkg); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		self := strings.TrimPrefix(strings.TrimPrefix(pkg.ImportPath, modPath), "/")
		g[self] = &node{imports: rel(pkg.Imports, self), tests: rel(append(pkg.TestImports, pkg.XTestImports...), self)}
	}
	return g
}

func stderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// TestLayering holds the module to the rules and names every edge that
// breaks one.
func TestLayering(t *testing.T) {
	g := load(t)
	// The rules name these packages: if one moved, they would pass on
	// nothing, so the test fails until they follow it.
	for _, p := range []string{"forwarder", "conductor", "dashboard", "protocol", "statestore", "client", "demo",
		"cmd/callrelay", "internal/bwe", "internal/talkspurt", "internal/logging", "internal/embedredis",
		"internal/httpserve", "internal/testkit/testenv"} {
		require.Contains(t, g, p, "package %s is gone: make the rules follow it", p)
	}
	// And the graph is real: edges known to exist are in it.
	require.Contains(t, g["forwarder"].imports, "protocol")
	require.Contains(t, g["dashboard"].imports, "statestore")
	require.Contains(t, g["conductor"].tests, "internal/testkit/testenv")
	if broken := check(g, rules); len(broken) > 0 {
		t.Errorf("%d import edges break the layering (STYLE.md, docs/architecture.md):\n\t%s",
			len(broken), strings.Join(broken, "\n\t"))
	}
}

// TestCheckFinds runs the rules on a made-up graph with edges breaking
// each rule, and again with those edges taken out.
func TestCheckFinds(t *testing.T) {
	g := graph{
		"protocol":   {imports: []string{"internal/logging"}},
		"statestore": {imports: []string{"protocol", "conductor"}},
		"client":     {imports: []string{"protocol", "internal/bwe"}},
		"forwarder": {imports: []string{"protocol", "statestore", "client"},
			tests: []string{"client", "internal/testkit/testenv"}},
		"conductor":                 {imports: []string{"protocol"}, tests: []string{"forwarder"}},
		"dashboard":                 {imports: []string{"protocol", "statestore"}},
		"loadtest":                  {imports: []string{"client", "internal/testkit/testenv"}, tests: []string{"forwarder"}},
		"demo":                      {imports: []string{"forwarder", "conductor", "dashboard", "internal/embedredis"}},
		"cmd/callrelay":             {imports: []string{"demo", "forwarder"}},
		"internal/bwe":              {imports: []string{"protocol"}},
		"internal/talkspurt":        {imports: []string{"internal/bwe"}},
		"internal/logging":          {},
		"internal/embedredis":       {},
		"internal/testkit/testenv":  {imports: []string{"client"}},
		"internal/testkit/calltest": {imports: []string{"client", "internal/testkit/testenv"}},
		"systemtest":                {tests: []string{"forwarder", "conductor", "internal/testkit/calltest"}},
		"tool":                      {imports: []string{"cmd/callrelay"}},
	}
	want := []string{
		"conductor (its tests) -> forwarder: " + rules[0].says,
		"dashboard -> statestore -> conductor: " + rules[0].says,
		"forwarder -> client: " + rules[1].says,
		"forwarder -> statestore -> conductor: " + rules[0].says,
		"forwarder -> statestore -> conductor: " + rules[1].says,
		"internal/bwe -> protocol: " + rules[5].says,
		"loadtest -> internal/testkit/testenv: " + rules[6].says,
		"protocol -> internal/logging: " + rules[4].says,
		"statestore -> conductor: " + rules[3].says,
		"tool -> cmd/callrelay: " + rules[7].says,
	}
	sort.Strings(want)
	require.Equal(t, want, check(g, rules))

	// Without those edges the graph passes: tests may import client and
	// testkit, systemtest anything, demo and cmd the processes.
	g["protocol"].imports = nil
	g["statestore"].imports = []string{"protocol"}
	g["forwarder"].imports = []string{"protocol", "statestore"}
	g["conductor"].tests = []string{"internal/testkit/testenv"}
	g["loadtest"].imports = []string{"client"}
	g["internal/bwe"].imports = nil
	delete(g, "tool")
	require.Empty(t, check(g, rules))
}
