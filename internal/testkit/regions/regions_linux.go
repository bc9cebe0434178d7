package regions

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/callrelay/callrelay/internal/testkit/linkem"
)

// Site is a region or a city.
type Site struct {
	Name string // 1..16 bytes of [a-z0-9-]
	// Home is a city's region; empty for a region.
	Home string
	// Access impairs a city's traffic to and from its home region, each
	// way; unused for a region.
	Access linkem.Profile
	// Direct are a multi-homed city's own links to regions other than its
	// home (a second network, say a mobile one with its breakout
	// elsewhere), each way: its traffic to such a region takes that link
	// instead of its access link and the link between the regions.
	Direct map[string]linkem.Profile
}

// Link impairs the traffic between two regions, each way.
type Link struct {
	A, B   string
	OneWay linkem.Profile
}

// Spec describes a topology. Two regions without a Link pass each other's
// packets unimpaired.
type Spec struct {
	Sites []Site
	Links []Link
	Seed  int64 // for the emulator's loss and jitter
}

// Topology is a running multi-region network.
type Topology struct {
	name   string
	wan    string
	spec   Spec
	sites  map[string]*site
	order  []*site
	links  map[[2]string]linkem.Profile
	router *linkem.Router
}

type site struct {
	Site
	idx  int
	ns   string
	addr netip.Addr
}

var seq atomic.Int32

// netnsPrefix starts every namespace this package makes.
const netnsPrefix = "crg"

// New builds the topology of spec; it is removed when t ends.
func New(t testing.TB, spec Spec) *Topology {
	t.Helper()
	sweep(t)
	tp := &Topology{name: fmt.Sprintf("%s%d-%d", netnsPrefix, os.Getpid(), seq.Add(1)), spec: spec,
		sites: map[string]*site{}, links: map[[2]string]linkem.Profile{}}
	tp.wan = tp.name + "-w"
	if err := tp.check(); err != nil {
		t.Fatal(err)
	}
	addNetns(t, tp.wan)
	run(t, "ip", "netns", "exec", tp.wan, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
	var sites []linkem.Site
	for _, s := range tp.order {
		tp.addSite(t, s)
		sites = append(sites, linkem.Site{Name: s.Name, Prefix: netip.PrefixFrom(s.addr, 24).Masked()})
	}
	tun, err := openTUN(tp.wan, "emu0")
	if err != nil {
		t.Fatalf("regions: TUN in %s: %v (needs root and /dev/net/tun)", tp.wan, err)
	}
	tp.router, err = linkem.NewRouter(tun, sites, spec.Seed)
	if err != nil {
		_ = tun.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.router.Close() }) // before the namespaces go (cleanups run last first)
	run(t, "ip", "-n", tp.wan, "link", "set", "emu0", "up")
	run(t, "ip", "-n", tp.wan, "route", "add", "default", "dev", "emu0", "table", "100")
	for _, s := range tp.order {
		run(t, "ip", "-n", tp.wan, "rule", "add", "iif", wanDev(s), "lookup", "100")
	}
	for _, l := range spec.Links {
		tp.links[[2]string{l.A, l.B}] = l.OneWay
		tp.links[[2]string{l.B, l.A}] = l.OneWay
	}
	tp.apply(t)
	return tp
}

// check validates the spec and numbers the sites.
func (tp *Topology) check() error {
	if len(tp.spec.Sites) == 0 || len(tp.spec.Sites) > 64 {
		return fmt.Errorf("regions: %d sites, want 1..64", len(tp.spec.Sites))
	}
	for i, s := range tp.spec.Sites {
		if len(s.Name) == 0 || len(s.Name) > 16 || strings.Trim(s.Name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return fmt.Errorf("regions: site name %q: want 1..16 of [a-z0-9-]", s.Name)
		}
		if tp.sites[s.Name] != nil {
			return fmt.Errorf("regions: site %q twice", s.Name)
		}
		st := &site{Site: s, idx: i, ns: fmt.Sprintf("%s-s%d", tp.name, i), addr: netip.AddrFrom4([4]byte{10, 213, byte(i + 1), 2})}
		tp.sites[s.Name], tp.order = st, append(tp.order, st)
	}
	for _, s := range tp.order {
		if h := tp.sites[s.Home]; s.Home != "" && (h == nil || h.Home != "") {
			return fmt.Errorf("regions: city %q: home %q is not a region", s.Name, s.Home)
		}
		for r := range s.Direct {
			if d := tp.sites[r]; s.Home == "" || d == nil || d.Home != "" || r == s.Home {
				return fmt.Errorf("regions: site %q: a direct link to %q: want a city's link to a region other than its home", s.Name, r)
			}
		}
	}
	for _, l := range tp.spec.Links {
		a, b := tp.sites[l.A], tp.sites[l.B]
		if a == nil || b == nil || a.Home != "" || b.Home != "" || a == b {
			return fmt.Errorf("regions: link %q-%q: want two different regions", l.A, l.B)
		}
	}
	return nil
}

func wanDev(s *site) string { return "s" + strconv.Itoa(s.idx) }

// addSite makes s's namespace and its veth pair to the wan.
func (tp *Topology) addSite(t testing.TB, s *site) {
	addNetns(t, s.ns)
	gw := netip.AddrFrom4([4]byte{10, 213, byte(s.idx + 1), 1})
	run(t, "ip", "-n", tp.wan, "link", "add", wanDev(s), "type", "veth", "peer", "name", "eth0", "netns", s.ns)
	run(t, "ip", "-n", tp.wan, "addr", "add", gw.String()+"/24", "dev", wanDev(s))
	run(t, "ip", "-n", tp.wan, "link", "set", wanDev(s), "up")
	run(t, "ip", "-n", s.ns, "addr", "add", s.addr.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", s.ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", s.ns, "link", "set", "lo", "up")
	run(t, "ip", "-n", s.ns, "route", "add", "default", "via", gw.String())
}

// region is the region a site belongs to.
func (s *site) region() string {
	if s.Home != "" {
		return s.Home
	}
	return s.Name
}

// Profile is the impairment of the path from site from to site to: from's
// access link (a city's), the link between the two regions, to's access
// link; a city's direct link to the other's region replaces the first two
// (or, towards a city, the last two).
func (tp *Topology) Profile(from, to string) linkem.Profile {
	a, b := tp.sites[from], tp.sites[to]
	if d, ok := a.Direct[b.region()]; ok {
		if b.Home != "" {
			return compose(d, b.Access)
		}
		return d
	}
	if d, ok := b.Direct[a.region()]; ok {
		if a.Home != "" {
			return compose(a.Access, d)
		}
		return d
	}
	var parts []linkem.Profile
	if a.Home != "" {
		parts = append(parts, a.Access)
	}
	if a.region() != b.region() {
		parts = append(parts, tp.links[[2]string{a.region(), b.region()}])
	}
	if b.Home != "" {
		parts = append(parts, b.Access)
	}
	return compose(parts...)
}

// compose is the impairment of links in series: delays and jitters add
// up, a packet survives only if it survives each, and the slowest rate
// bounds the path.
func compose(ps ...linkem.Profile) linkem.Profile {
	var out linkem.Profile
	survive := 1.0
	for _, p := range ps {
		out.Delay += p.Delay
		out.Jitter += p.Jitter
		survive *= 1 - min(max(p.Loss, 0), 1)
		if p.RateBps > 0 && (out.RateBps == 0 || p.RateBps < out.RateBps) {
			out.RateBps, out.QueueBytes = p.RateBps, p.QueueBytes
		}
	}
	out.Loss = 1 - survive
	return out
}

// apply sets every path of the router from the links.
func (tp *Topology) apply(t testing.TB) {
	for _, a := range tp.order {
		for _, b := range tp.order {
			if a != b {
				if err := tp.router.SetPath(a.Name, b.Name, tp.Profile(a.Name, b.Name)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// SetLink changes the link between regions a and b (each way), for
// packets read from now on.
func (tp *Topology) SetLink(t testing.TB, a, b string, oneWay linkem.Profile) {
	t.Helper()
	tp.links[[2]string{a, b}] = oneWay
	tp.links[[2]string{b, a}] = oneWay
	tp.apply(t)
}

// SetAccess changes city's link to region (each way), for packets read
// from now on: its access link when region is its home, else its direct
// link there (made if it had none).
func (tp *Topology) SetAccess(t testing.TB, city, region string, oneWay linkem.Profile) {
	t.Helper()
	c, r := tp.mustSite(city), tp.mustSite(region)
	switch {
	case c.Home == "" || r.Home != "":
		t.Fatalf("regions: SetAccess(%q, %q): want a city and a region", city, region)
	case c.Home == region:
		c.Access = oneWay
	default:
		d := make(map[string]linkem.Profile, len(c.Direct)+1) // the Spec's map stays the caller's
		for k, v := range c.Direct {
			d[k] = v
		}
		d[region] = oneWay
		c.Direct = d
	}
	tp.apply(t)
}

// Addr is the address of a site's namespace.
func (tp *Topology) Addr(name string) netip.Addr { return tp.mustSite(name).addr }

// Netns is the name of a site's namespace, for `ip netns exec`.
func (tp *Topology) Netns(name string) string { return tp.mustSite(name).ns }

// Router is the emulator, for its counters (PathStats by site names).
func (tp *Topology) Router() *linkem.Router { return tp.router }

func (tp *Topology) mustSite(name string) *site {
	s := tp.sites[name]
	if s == nil {
		panic("regions: no site " + strconv.Quote(name))
	}
	return s
}

// Do runs fn on an OS thread inside the site's namespace (then moved back)
// and returns its error; sockets fn creates stay in the namespace for their
// life. fn must
// not start goroutines that open sockets (they would open them outside),
// and must not call t.Fatal (it runs on a goroutine of its own).
func (tp *Topology) Do(name string, fn func() error) error {
	return inNetns(tp.mustSite(name).ns, fn)
}

// inNetns runs fn on a goroutine locked to its thread, moved into the
// namespace for fn and back to the host's afterwards. The thread must
// survive: a thread that exits takes with it the children it forked with a
// parent-death signal (testenv's redis-server is SIGKILLed when the thread
// that started it ends), and a thread left to die with a locked goroutine
// may be one of those. Only if the way back fails is the thread left
// locked, to end with its goroutine.
func inNetns(ns string, fn func() error) error {
	h, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer h.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("regions: entering %s: %w", ns, err)
			return
		}
		err = fn()
		if back := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); back != nil {
			errc <- errors.Join(err, fmt.Errorf("regions: leaving %s: %w (the thread ends with its goroutine)", ns, back))
			return // still locked: the thread is not reused
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// openTUN makes a TUN device in namespace ns and returns it, pollable.
func openTUN(ns, dev string) (*os.File, error) {
	var f *os.File
	err := inNetns(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(dev)
		if err != nil {
			_ = unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			_ = unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun:"+dev)
		return nil
	})
	return f, err
}

func addNetns(t testing.TB, ns string) {
	t.Helper()
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() }) // takes its veth ends with it
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s (regions need root: CAP_NET_ADMIN)", strings.Join(args, " "), err, out)
	}
}

// sweep removes namespaces this package made in test processes that are
// gone (killed before their cleanup ran).
func sweep(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, netnsPrefix)
		if !ok {
			continue
		}
		pid, _, ok := strings.Cut(rest, "-")
		if n, err := strconv.Atoi(pid); !ok || err != nil || n == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
				t.Logf("regions: removed %s, left by process %s", name, pid)
			}
		}
	}
}
