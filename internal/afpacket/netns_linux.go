//go:build linux

package afpacket

import (
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NetNSPath is the file of network namespace ns: a name under
// /var/run/netns (ip netns add), or ns itself when it is a path.
func NetNSPath(ns string) string {
	if strings.Contains(ns, "/") {
		return ns
	}
	return "/var/run/netns/" + ns
}

// InNetNS runs fn on a thread moved into network namespace ns (empty: fn
// runs here): sockets fn opens belong to ns and keep to it wherever they
// are used from. The thread goes back to its namespace afterwards; if it
// cannot, it is never reused (it ends with its goroutine).
func InNetNS(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	target, err := unix.Open(NetNSPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("afpacket: network namespace %s: %w", ns, err)
	}
	defer unix.Close(target)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("afpacket: this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("afpacket: enter %s: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and exits with this goroutine
		done <- err
	}()
	return <-done
}
