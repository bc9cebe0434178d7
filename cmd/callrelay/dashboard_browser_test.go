package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

// dashboardURL matches the demo's dashboard line: the page with the admin
// token the demo made, which the page trades for a session cookie.
var dashboardURL = regexp.MustCompile(`(?m)^dashboard: (http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{32})$`)

// The live dashboard in headless Chromium (Debian's chromium, which `make
// test` installs where missing) against a running demo whose forwarders
// are sized for 5 sessions each: the page loads without a console error or
// an uncaught exception, shows every forwarder at level 0, and when a spike
// of group calls pushes the forwarders over capacity its throttle badges
// change, by themselves (server-sent events). The screenshot is saved to
// $CALLRELAY_ARTIFACTS (default: the system's temporary directory).
func TestDashboardInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	require.NoError(t, err, "chromium not on PATH: run `make deps` (it installs Debian's chromium)")
	demo := start(t, env(), "demo", "--duration", "60s", "--interval", "500ms", "--dashboard", "127.0.0.1:0",
		"--capacity-sessions", "5", "--spike-calls", "3", "--spike-after", "20s")
	var url string
	testenv.CheckFor(t, readyTimeout, 50*time.Millisecond, func() error {
		if demo.exited() {
			t.Fatalf("demo exited:\n%s\n%s", demo.stdout, demo.stderr)
		}
		m := dashboardURL.FindStringSubmatch(demo.stdout.String())
		if m == nil {
			return fmt.Errorf("no dashboard line yet")
		}
		url = m[1]
		return nil
	})

	ctx, problems := newBrowser(t, chromium)
	levels := func() []string {
		ls, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
			`Array.from(document.querySelectorAll('tr[data-forwarder] .level')).map(e => e.dataset.level)`))
		require.NoError(t, err)
		return ls
	}
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(url),
		chromedp.WaitVisible(`tr[data-forwarder="demo-1"]`), chromedp.WaitVisible(`tr[data-forwarder="demo-2"]`),
		chromedp.WaitVisible(`tr[data-forwarder="demo-3"]`)))
	before := levels()
	// The spike is due --spike-after into the demo's run, by its clock: the
	// levels read above are the ones before it only if the demo has not
	// announced it yet (at load 20-35 the demo and Chromium took more than
	// the 8 s this test used to allow, and the page's after-spike levels,
	// 4,4,2, were taken for levels before it).
	require.NotContains(t, demo.stdout.String(), "spike: ", "the page was up only after the spike began: levels %v", before)
	require.Equal(t, []string{"0", "0", "0"}, before, "3 of 5 sessions each before the spike")

	// The spike: the page must change by itself.
	testenv.CheckFor(t, 40*time.Second, 200*time.Millisecond, func() error {
		for _, l := range levels() {
			if l != "0" {
				return nil
			}
		}
		return fmt.Errorf("no forwarder shown throttling yet")
	})
	time.Sleep(2 * time.Second) // a few more snapshots: any rendering error would show
	verdict, err := chromedp.Run(ctx, chromedp.Text("#verdict"))
	require.NoError(t, err)
	conn, err := chromedp.Run(ctx, chromedp.Text("#conn"))
	require.NoError(t, err)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.Contains(t, verdict, "THROTTLING on demo-")
	require.True(t, strings.HasPrefix(conn, "live"), "the page is live, not stale or broken: %q", conn)
	dir := os.Getenv("CALLRELAY_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	shot := filepath.Join(dir, "callrelay-dashboard.png")
	require.NoError(t, os.WriteFile(shot, png, 0o644))
	t.Logf("dashboard screenshot: %s (%d bytes); levels %v; %s", shot, len(png), levels(), verdict)
	require.Empty(t, problems(), "console errors or exceptions")
	code, _ := demo.stop(t, syscall.SIGINT)
	require.Equal(t, 0, code, "the demo ends cleanly:\n%s", demo.stderr)
}

// newBrowser starts headless Chromium for the test and records console
// errors, warnings and uncaught exceptions; problems returns them.
func newBrowser(t *testing.T, chromium string) (ctx context.Context, problems func() []string) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1100))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancelTimeout)
	var mu sync.Mutex
	var seen []string
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning {
				seen = append(seen, fmt.Sprintf("console %s: %v", ev.Type, ev.Args))
			}
		case *runtime.EventExceptionThrown:
			seen = append(seen, fmt.Sprintf("uncaught: %s %v", ev.ExceptionDetails.Text, ev.ExceptionDetails.Exception))
		}
	}))
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}
