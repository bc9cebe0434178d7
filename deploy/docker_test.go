package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dockerInstr is one Dockerfile instruction, continuation lines joined.
type dockerInstr struct {
	line int
	cmd  string // upper case
	args string
}

// dockerStage is a FROM and the instructions under it.
type dockerStage struct {
	from, name string
	instrs     []dockerInstr
}

// parseDockerfile is a small line parser: comments and blank lines dropped,
// backslash continuations joined, instructions grouped by FROM. It knows
// nothing of parser directives beyond skipping them as comments.
func parseDockerfile(t *testing.T, path string) (args []dockerInstr, stages []dockerStage) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cur strings.Builder
	start, n := 0, 0
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		cmd, rest, _ := strings.Cut(text, " ")
		in := dockerInstr{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(rest)}
		switch in.cmd {
		case "FROM":
			f := strings.Fields(in.args)
			st := dockerStage{}
			for _, w := range f {
				if strings.HasPrefix(w, "--") {
					continue
				}
				if st.from == "" {
					st.from = w
				}
			}
			if len(f) >= 3 && strings.EqualFold(f[len(f)-2], "AS") {
				st.name = f[len(f)-1]
			}
			stages = append(stages, st)
		default:
			if len(stages) == 0 {
				if in.cmd != "ARG" {
					t.Errorf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
				}
				args = append(args, in)
				return
			}
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continuation
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur.Len() > 0 {
		t.Errorf("%s: ends inside a line continuation", path)
		flush()
	}
	return args, stages
}

func TestDockerfile(t *testing.T) {
	const path = "docker/Dockerfile"
	_, stages := parseDockerfile(t, path)
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages, want a build stage and a runtime stage", path, len(stages))
	}
	names := map[string]bool{}
	for _, st := range stages {
		if st.name != "" {
			names[strings.ToLower(st.name)] = true
		}
	}

	// The build stage: golang:1.26, static build flags.
	build := stages[0]
	if !strings.HasPrefix(build.from, "golang:") {
		t.Errorf("first stage FROM %s, want golang:1.26 (or golang:${GO_VERSION})", build.from)
	}
	var sawBuild, sawCGO bool
	for _, in := range build.instrs {
		if in.cmd == "ENV" && regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(in.args) {
			sawCGO = true
		}
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			sawBuild = true
			if strings.Contains(in.args, "CGO_ENABLED=0") {
				sawCGO = true
			}
			for _, want := range []string{"-trimpath", `-ldflags "-s -w"`, "./cmd/callrelay"} {
				if !strings.Contains(in.args, want) {
					t.Errorf("%s:%d: go build without %s", path, in.line, want)
				}
			}
		}
	}
	if !sawBuild || !sawCGO {
		t.Errorf("build stage: go build found %v, CGO_ENABLED=0 found %v; want both", sawBuild, sawCGO)
	}

	// Every stage after the build one is an image someone may run: each must
	// be distroless or scratch, non-root, with the exec-form entrypoint.
	for i, st := range stages {
		for _, in := range st.instrs {
			if in.cmd == "ADD" {
				for _, f := range strings.Fields(in.args) {
					if strings.Contains(f, "://") {
						t.Errorf("%s:%d: ADD of a URL (%s): fetch in a RUN with a checksum, or COPY", path, in.line, f)
					}
				}
			}
			if in.cmd == "COPY" {
				for _, f := range strings.Fields(in.args) {
					if from, ok := strings.CutPrefix(f, "--from="); ok && !names[strings.ToLower(from)] {
						t.Errorf("%s:%d: COPY --from=%s names no stage", path, in.line, from)
					}
				}
			}
		}
		if i == 0 {
			continue
		}
		if !strings.HasPrefix(st.from, "gcr.io/distroless/static") && st.from != "scratch" {
			t.Errorf("stage %d (%s) FROM %s, want gcr.io/distroless/static:* or scratch", i, st.name, st.from)
		}
		user, entry := "", ""
		for _, in := range st.instrs {
			switch in.cmd {
			case "USER":
				user = in.args
			case "ENTRYPOINT":
				entry = in.args
			}
		}
		uid, _, _ := strings.Cut(user, ":")
		if uid == "" || uid == "0" || uid == "root" {
			t.Errorf("stage %d (%s): USER %q, want a non-root user (65532)", i, st.name, user)
		} else if uid != "65532" && uid != "nonroot" {
			t.Errorf("stage %d (%s): USER %q, want 65532 (distroless nonroot)", i, st.name, user)
		}
		var ep []string
		if err := json.Unmarshal([]byte(entry), &ep); err != nil || len(ep) == 0 || ep[0] != "/callrelay" {
			t.Errorf("stage %d (%s): ENTRYPOINT %q, want the exec form [\"/callrelay\"]", i, st.name, entry)
		}
	}
	final := stages[len(stages)-1]
	if final.from != "gcr.io/distroless/static:nonroot" && final.from != "scratch" {
		t.Errorf("final (default) stage FROM %s, want gcr.io/distroless/static:nonroot or scratch", final.from)
	}
	exposed := ""
	for _, in := range final.instrs {
		if in.cmd == "EXPOSE" {
			exposed += " " + in.args + " "
		}
	}
	for _, p := range []string{"3478/udp", "7000/udp", "9100/tcp", "9101/tcp", "8080/tcp"} {
		if !strings.Contains(exposed, " "+p+" ") {
			t.Errorf("final stage does not EXPOSE %s", p)
		}
	}
}

// repoRoot is the directory of the main module's go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatal("go env GOMOD: not inside a module")
	}
	return filepath.Dir(mod)
}

// TestDockerBinaryStatic builds the binary the way the image's build stage
// does and checks what the image relies on: no dynamic loader, no shared
// libraries (distroless/static has neither), and that it runs.
func TestDockerBinaryStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	root := repoRoot(t)
	bin := filepath.Join(t.TempDir(), "callrelay")
	// Bounded: 8 minutes (a cold build cache on a loaded 2-core machine
	// took more than 4), or less when go test's own -timeout comes sooner.
	limit := 8 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-30*time.Second < limit {
		limit = time.Until(d) - 30*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/callrelay")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build -trimpath -ldflags \"-s -w\" ./cmd/callrelay: %v\n%s", err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s is not an ELF file: %v", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a PT_INTERP program header: dynamically linked, will not run on distroless/static")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatalf("reading DT_NEEDED: %v", err)
	}
	if len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v (DT_NEEDED)", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("binary has a .symtab: -ldflags \"-s -w\" did not strip it")
	}

	// No arguments: usage on stderr, exit status 2.
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	run := exec.CommandContext(rctx, bin)
	var stdout, stderr bytes.Buffer
	run.Stdout, run.Stderr = &stdout, &stderr
	err = run.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("callrelay with no arguments: %v, want exit status 2", err)
	}
	if !strings.Contains(stderr.String(), "usage: callrelay") {
		t.Errorf("callrelay with no arguments: stderr %q, want the usage", stderr.String())
	}
	for _, sub := range []string{"forwarder", "conductor", "dashboard"} {
		if !strings.Contains(stderr.String(), sub) {
			t.Errorf("usage does not list %s", sub)
		}
	}
}
