package dashboard

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestZZBrowser(t *testing.T) {
	e := start(t)
	e.holdPartitions(t, "cond-1/00ff", 0, 1, 2)
	e.publish(t, announce("fwd-a", 1), e.key)
	e.publish(t, report("fwd-a", 1, 0), e.key)
	b := report("fwd-b", 1, 2)
	e.publish(t, b, e.key)
	e.clock.Add(time.Second)
	b.Seq, b.Refused[2] = 2, 9
	e.publish(t, b, e.key)
	time.Sleep(200 * time.Millisecond)
	out, err := exec.Command("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
		"--virtual-time-budget=3000", "--window-size=1400,1200", "--screenshot=/tmp/dash.png", e.base+"/").CombinedOutput()
	os.WriteFile("/tmp/chromium.log", out, 0o644)
	t.Log(err)
	dom, _ := exec.Command("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom", e.base+"/").Output()
	os.WriteFile("/tmp/dom.html", dom, 0o644)
}
