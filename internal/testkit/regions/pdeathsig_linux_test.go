package regions

import (
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRegionDoKeepsThreads: a child started with a parent-death signal (as
// testenv starts redis-server) outlives any number of Do calls. Do used to
// let its thread end with its goroutine, and when that thread was the one
// that had forked the child, the kernel killed the child: the tests' Redis
// vanished mid-test.
func TestRegionDoKeepsThreads(t *testing.T) {
	tp := New(t, Spec{Sites: []Site{{Name: "eu"}}})
	var children []*exec.Cmd
	for range 2 * runtime.GOMAXPROCS(0) {
		c := exec.Command("sleep", "60")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		require.NoError(t, c.Start())
		children = append(children, c)
	}
	t.Cleanup(func() {
		for _, c := range children {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	for range 200 {
		require.NoError(t, tp.Do("eu", func() error {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tp.Addr("eu"), 0)))
			if err == nil {
				_ = c.Close()
			}
			return err
		}))
	}
	time.Sleep(100 * time.Millisecond) // a parent-death SIGKILL is sent when the thread ends; this lets it land
	for i, c := range children {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil)
		require.NoError(t, err)
		require.Zero(t, pid, "child %d ended (%v): its forking thread was ended by Do", i, ws)
	}
}
