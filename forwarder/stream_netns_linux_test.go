package forwarder_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/protocol"
)

// Issue 19's proof in a network namespace: the device runs in a namespace
// the test creates (a veth pair on a private /30 to a second namespace the
// test creates, the host namespace, where the forwarder listens and the
// host members run; nothing is added to the root namespace) and whose UDP
// the test drops both ways with nftables inside the device's namespace
// (loopback inside it still works). Each test runs again inside the host
// namespace (netnsTest). The device is this test binary run again inside its namespace
// (`ip netns exec`, selected by netnsDeviceEnv): the client library opens
// sockets from many goroutines, so one thread's setns would not hold them
// all. It talks with the parent over stdin/stdout, one line a message.
//
// Both sides send RTP every mediaEvery with consecutive sequence numbers
// and a payload derived from the sequence (checked byte-exact on arrival);
// a gap is measured twice: the longest run of sequence numbers that never
// arrived (times mediaEvery), and the longest time between two arrivals.
//
// This needs root (CAP_NET_ADMIN), as CI and `make test` run here; without
// it the test fails, it does not skip.

const (
	netnsDeviceEnv = "CALLRELAY_NETNS_DEVICE"
	netnsHostEnv   = "CALLRELAY_NETNS_HOST"
	mediaEvery     = 20 * time.Millisecond
	netnsLine      = "NETNS "
)

// netnsDeviceConfig is what the parent tells the device (as JSON in
// netnsDeviceEnv).
type netnsDeviceConfig struct {
	UDP, TCP, TLS netip.AddrPort
	Token         []byte
	CAFile        string
}

// mediaRecorder counts what one side received since the last take.
type mediaRecorder struct {
	mu               sync.Mutex
	n, corrupt       int
	minSeq, maxSeq   int
	seen             map[int]bool
	last             time.Time
	maxArrivalGap    time.Duration
	total            atomic.Int64
	wantSSRC, prefix byte
}

type mediaStats struct {
	Received, Corrupt, LongestMissingRun int
	MaxArrivalGap                        time.Duration
}

func (s mediaStats) seqGap() time.Duration { return time.Duration(s.LongestMissingRun) * mediaEvery }

func (s mediaStats) String() string {
	return fmt.Sprintf("received %d, corrupt %d, longest missing run %d (%v), longest between arrivals %v",
		s.Received, s.Corrupt, s.LongestMissingRun, s.seqGap(), s.MaxArrivalGap.Round(time.Millisecond))
}

// rtpOf is packet seq from side (the SSRC's last byte), payload derived
// from both.
func rtpOf(side byte, seq uint16) []byte {
	p := []byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 1, 0, 0, 0, side}
	for i := range 60 {
		p = append(p, side^byte(seq)^byte(i))
	}
	return p
}

func (r *mediaRecorder) add(b []byte, at time.Time) {
	if len(b) < 12 || b[1] != 111 || b[11] != r.wantSSRC {
		return // RTCP, or not the peer's stream
	}
	seq := int(b[2])<<8 | int(b[3])
	r.total.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if string(b) != string(rtpOf(r.wantSSRC, uint16(seq))) {
		r.corrupt++
	}
	if r.seen == nil {
		r.seen, r.minSeq, r.maxSeq = map[int]bool{}, seq, seq
	}
	r.seen[seq] = true
	r.minSeq, r.maxSeq = min(r.minSeq, seq), max(r.maxSeq, seq)
	if !r.last.IsZero() {
		r.maxArrivalGap = max(r.maxArrivalGap, at.Sub(r.last))
	}
	r.last = at
	r.n++
}

// take returns the stats since the last take and starts anew (missing
// sequence numbers and the arrival gap then count from the last packet
// before the take).
func (r *mediaRecorder) take() mediaStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := mediaStats{Received: r.n, Corrupt: r.corrupt, MaxArrivalGap: r.maxArrivalGap}
	run := 0
	for q := r.minSeq; r.seen != nil && q <= r.maxSeq; q++ {
		if r.seen[q] {
			run = 0
			continue
		}
		run++
		s.LongestMissingRun = max(s.LongestMissingRun, run)
	}
	r.n, r.corrupt, r.maxArrivalGap = 0, 0, 0
	if r.seen != nil { // the next stats count from the last packet seen
		r.seen, r.minSeq = map[int]bool{r.maxSeq: true}, r.maxSeq
	}
	return s
}

// sendEvery writes side's packets until stop.
func sendEvery(side byte, write func([]byte) error, stop <-chan struct{}) {
	tick := time.NewTicker(mediaEvery)
	defer tick.Stop()
	for seq := uint16(0); ; seq++ {
		_ = write(rtpOf(side, seq)) // errors while the path is down are the point
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// TestNetnsDevice is the device side, run by the tests below inside their
// namespace; run directly (netnsDeviceEnv unset) it does nothing.
func TestNetnsDevice(t *testing.T) {
	raw := os.Getenv(netnsDeviceEnv)
	if raw == "" {
		return
	}
	var dc netnsDeviceConfig
	require.NoError(t, json.Unmarshal([]byte(raw), &dc))
	pemBytes, err := os.ReadFile(dc.CAFile)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pemBytes))
	out := func(format string, a ...any) { fmt.Printf(netnsLine+format+"\n", a...) }
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{dc.UDP}, Token: dc.Token,
		Streams:   map[netip.AddrPort]client.StreamEndpoints{dc.UDP: {TCP: dc.TCP, TLS: dc.TLS}},
		TLSConfig: &tls.Config{RootCAs: roots, ServerName: "callrelay.test"}, UDPHeadStart: 100 * time.Millisecond,
		UDPRetryEvery: 500 * time.Millisecond, FailoverAfter: 400 * time.Millisecond, JoinTimeout: 2 * time.Second,
		RejoinTimeout: 10 * time.Second})
	require.NoError(t, err)
	out("JOINED %s", s.Transport())
	rec := &mediaRecorder{wantSSRC: 'h'}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); sendEvery('d', s.WriteRTP, stop) }()
	go func() {
		defer wg.Done()
		for p := range s.Media() {
			rec.add(p.Data, p.Received)
			p.Release()
		}
	}()
	go func() {
		defer wg.Done()
		for ev := range s.Events() {
			out("EVENT %s %s %d", ev.Kind, ev.Transport, ev.Took.Milliseconds())
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() && in.Text() != "QUIT" {
		st, _ := json.Marshal(rec.take())
		out("STATS %s", st)
	}
	close(stop)
	_ = s.Close()
	wg.Wait()
}

// netns is a pair of namespaces the test creates, joined by a veth pair:
// the host namespace (hostNS), where the forwarder and the host members
// run, and the device's (name). IPv4 (host, peer), or IPv6 only (host6,
// peer6; then the device's namespace has no IPv4 address at all,
// loopback's included, and so no IPv4 route). Nothing is added to the
// root namespace: test traffic goes only to addresses inside namespaces
// the test created.
type netns struct {
	name, hostNS string
	host, peer   netip.Addr
	host6, peer6 netip.Addr
}

// netnsWire is a netns as the test, run again inside the host namespace,
// gets it (as JSON in netnsHostEnv).
type netnsWire struct {
	Name, HostNS             string
	Host, Peer, Host6, Peer6 netip.Addr
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%s: %s (these tests need root: CAP_NET_ADMIN)", strings.Join(args, " "), out)
}

var netnsSeq atomic.Int32

// netnsTest runs body inside the host namespace of a new netns (IPv6 only
// on v6only): it creates both namespaces, then runs this test again (this
// binary, `ip netns exec`, selected by netnsHostEnv) in the host
// namespace, so that every socket the forwarder, its stream listeners and
// the host members open, from whatever goroutine, is there (one thread's
// setns would not hold the client library's sockets). The run's output is
// logged; its failure (or its not running the test) fails the test.
// Cleanup deletes both namespaces.
func netnsTest(t *testing.T, v6only bool, body func(t *testing.T, n *netns)) {
	if raw := os.Getenv(netnsHostEnv); raw != "" {
		var w netnsWire
		require.NoError(t, json.Unmarshal([]byte(raw), &w))
		body(t, &netns{name: w.Name, hostNS: w.HostNS, host: w.Host, peer: w.Peer, host6: w.Host6, peer6: w.Peer6})
		return
	}
	n := newNetnsFamily(t, v6only)
	cfg, err := json.Marshal(netnsWire{Name: n.name, HostNS: n.hostNS, Host: n.host, Peer: n.peer, Host6: n.host6, Peer6: n.peer6})
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command("ip", "netns", "exec", n.hostNS, exe, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsHostEnv+"="+string(cfg))
	out, err := cmd.CombinedOutput()
	t.Logf("in host namespace %s:\n%s", n.hostNS, out)
	require.NoError(t, err, "the test failed inside host namespace %s (output above)", n.hostNS)
	require.Contains(t, string(out), "--- PASS: "+t.Name()+" ", "the test did not run inside host namespace %s", n.hostNS)
}

// newNetnsFamily creates a host namespace and a device namespace and a
// veth pair between them: 10.211.0.1/30 (host) and 10.211.0.2/30
// (device), or for v6only fd00:211::1/126 and fd00:211::2/126 (no
// duplicate address detection, so the addresses work at once) with the
// device namespace's loopback 127.0.0.1 removed, so that it has no IPv4
// address and no IPv4 route. The host namespace's loopback is up (host
// members beside an IPv6-only device use 127.0.0.1). The addresses never
// clash with others: each pair of namespaces is a world of its own.
func newNetnsFamily(t *testing.T, v6only bool) *netns {
	id := fmt.Sprintf("crh%d%d", os.Getpid()%100000, netnsSeq.Add(1))
	n := &netns{name: id, hostNS: id + "h"} // the veth ends: id+"h" (host), id+"d" (device, filterUDP)
	for _, ns := range []string{n.hostNS, n.name} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() }) // takes the veth pair with it
	}
	run(t, "ip", "-n", n.hostNS, "link", "add", id+"h", "type", "veth", "peer", "name", id+"d", "netns", n.name)
	if v6only {
		n.host6, n.peer6 = netip.MustParseAddr("fd00:211::1"), netip.MustParseAddr("fd00:211::2")
		run(t, "ip", "-n", n.hostNS, "addr", "add", n.host6.String()+"/126", "dev", id+"h", "nodad")
		run(t, "ip", "-n", n.name, "addr", "add", n.peer6.String()+"/126", "dev", id+"d", "nodad")
	} else {
		n.host, n.peer = netip.MustParseAddr("10.211.0.1"), netip.MustParseAddr("10.211.0.2")
		run(t, "ip", "-n", n.hostNS, "addr", "add", n.host.String()+"/30", "dev", id+"h")
		run(t, "ip", "-n", n.name, "addr", "add", n.peer.String()+"/30", "dev", id+"d")
	}
	for _, l := range [][2]string{{n.hostNS, id + "h"}, {n.hostNS, "lo"}, {n.name, id + "d"}, {n.name, "lo"}} {
		run(t, "ip", "-n", l[0], "link", "set", l[1], "up")
	}
	if v6only {
		run(t, "ip", "-n", n.name, "addr", "del", "127.0.0.1/8", "dev", "lo")
	}
	return n
}

// blockUDP drops (or, on false, lets through again) every UDP datagram
// between the device's namespace and the host namespace, both ways, with
// an nftables table in the device's namespace (nftables from Debian's package, scripts/deps.sh).
// Loopback inside the namespace is not touched.
func (n *netns) blockUDP(t *testing.T, on bool) {
	if !on {
		run(t, "ip", "netns", "exec", n.name, "nft", "delete", "table", "inet", "udpblock")
		return
	}
	n.filterUDP(t, "drop")
}

// filterUDP is blockUDP with another verdict for the namespace's own
// datagrams: "reject" answers each with ICMP port unreachable, as a
// firewall that refuses rather than drops (the device's socket then
// reports ECONNREFUSED, which also means "the forwarder died").
func (n *netns) filterUDP(t *testing.T, verdict string) {
	dev := n.name + "d"
	cmd := exec.Command("ip", "netns", "exec", n.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`table inet udpblock {
	chain in { type filter hook input priority 0; iifname %q meta l4proto udp drop; }
	chain out { type filter hook output priority 0; oifname %q meta l4proto udp %s; }
}
`, dev, dev, verdict))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "nft: %s (these tests need root and nftables)", out)
}

// forwarder is r's UDP address as a device in n reaches it.
func (n *netns) forwarder(r *relay) netip.AddrPort {
	if n.host6.IsValid() {
		return netip.AddrPortFrom(n.host6, r.f.Addr().Port())
	}
	return r.f.Addr()
}

// streams are r's TCP and TLS listeners as a device in n reaches them.
func (n *netns) streams(r *relay) (tcp, tlsAddr netip.AddrPort) {
	tcp, tlsAddr = r.f.StreamAddrs()
	if n.host6.IsValid() {
		tcp, tlsAddr = netip.AddrPortFrom(n.host6, tcp.Port()), netip.AddrPortFrom(n.host6, tlsAddr.Port())
	}
	return tcp, tlsAddr
}

// hostSide is where an IPv4 member in the host namespace joins r from,
// and at which address: n's host address, or (the host namespace's)
// loopback beside an IPv6-only n.
func (n *netns) hostSide(r *relay) (netip.AddrPort, netip.Addr) {
	if n.host6.IsValid() {
		return netip.AddrPortFrom(loopback, r.f.Addr().Port()), loopback
	}
	return r.f.Addr(), n.host
}

// netnsDevice is the device process, seen from the parent.
type netnsDevice struct {
	stdin io.WriteCloser
	lines chan string
}

// startDevice runs TestNetnsDevice inside n against r's listeners.
func startDevice(t *testing.T, n *netns, r *relay, pool []byte, ep client.StreamEndpoints, token []byte) *netnsDevice {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, pool, 0o600))
	cfg, err := json.Marshal(netnsDeviceConfig{UDP: n.forwarder(r), TCP: ep.TCP, TLS: ep.TLS, Token: token, CAFile: ca})
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command("ip", "netns", "exec", n.name, exe, "-test.run=^TestNetnsDevice$", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsDeviceEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	d := &netnsDevice{stdin: stdin, lines: make(chan string, 64)}
	go func() {
		defer close(d.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), netnsLine); ok {
				d.lines <- l
			}
		}
	}()
	t.Cleanup(func() {
		_, _ = io.WriteString(stdin, "QUIT\n")
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return d
}

// expect waits for the device's next line starting with prefix (others
// are logged and passed over).
func (d *netnsDevice) expect(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-d.lines:
			require.True(t, ok, "the device process ended before saying %q", prefix)
			t.Logf("device: %s", l)
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest
			}
		case <-deadline:
			t.Fatalf("the device did not say %q", prefix)
		}
	}
}

// stats asks the device for what it received since the last ask.
func (d *netnsDevice) stats(t *testing.T) mediaStats {
	_, err := io.WriteString(d.stdin, "STATS\n")
	require.NoError(t, err)
	var s mediaStats
	require.NoError(t, json.Unmarshal([]byte(d.expect(t, "STATS ")), &s))
	return s
}

// hostMember is a UDP member of the call in the host namespace, sending and
// recording like the device.
func hostMember(t *testing.T, fwd netip.AddrPort, addr netip.Addr, token []byte) *mediaRecorder {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{fwd}, Token: token, LocalAddr: addr})
	require.NoError(t, err)
	rec := &mediaRecorder{wantSSRC: 'd'}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); sendEvery('h', c.WriteRTP, stop) }()
	go func() {
		defer wg.Done()
		for p := range c.Media() {
			rec.add(p.Data, p.Received)
			p.Release()
		}
	}()
	t.Cleanup(func() { close(stop); _ = c.Close(); wg.Wait() })
	return rec
}

// netnsRelay is a forwarder with TCP and TLS listeners on n's host side
// (run inside the host namespace, netnsTest);
// for an IPv6-only n, a dual-stack one on [::].
func netnsRelay(t *testing.T, n *netns) (*relay, []byte) {
	cert, _ := testCert(t)
	r := runRelay(t, func(c *forwarder.Config) {
		c.Listen = netip.AddrPortFrom(n.host, 0).String()
		if n.host6.IsValid() {
			c.Listen = "[::]:0" // dual stack; the stream listeners too
		}
		c.Stream.TCPListen, c.Stream.TLSListen = c.Listen, c.Listen
		c.Stream.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		c.KeepaliveInterval = 100 * time.Millisecond
	})
	return r, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
}

// waitReceived polls until rec has n more packets.
func waitReceived(t *testing.T, rec *mediaRecorder, n int64, what string) {
	t.Helper()
	want := rec.total.Load() + n
	require.Eventually(t, func() bool { return rec.total.Load() >= want }, 20*time.Second, 10*time.Millisecond, what)
}

// TestNetnsJoinWithUDPBlocked: a device in a namespace whose UDP is
// refused from the start joins over TCP, and over TLS, and exchanges media
// byte-exact with a UDP member in the host namespace.
func TestNetnsJoinWithUDPBlocked(t *testing.T) { netnsTest(t, false, joinWithUDPBlocked) }

// TestNetnsIPv6OnlyJoinWithUDPBlocked: the same from a namespace with no
// IPv4 at all (loopback's 127.0.0.1 included, where the client's stream
// bridge would bind by default), to a dual-stack forwarder's TCP and TLS
// listeners over IPv6, with an IPv4 member in the host namespace.
func TestNetnsIPv6OnlyJoinWithUDPBlocked(t *testing.T) { netnsTest(t, true, joinWithUDPBlocked) }

func joinWithUDPBlocked(t *testing.T, n *netns) {
	n.blockUDP(t, true)
	r, ca := netnsRelay(t, n)
	tcp, tlsAddr := n.streams(r)
	member, local := n.hostSide(r)
	for _, tc := range []struct {
		want string
		ep   client.StreamEndpoints
	}{{"tcp", client.StreamEndpoints{TCP: tcp}}, {"tls", client.StreamEndpoints{TLS: tlsAddr}}} {
		t.Run(tc.want, func(t *testing.T) {
			call := protocol.NewID()
			host := hostMember(t, member, local, r.mint(t, call, protocol.ClassGroup, 4))
			dev := startDevice(t, n, r, ca, tc.ep, r.mint(t, call, protocol.ClassGroup, 4))
			require.Equal(t, tc.want, dev.expect(t, "JOINED "))
			waitReceived(t, host, 25, "the host member did not hear the device")
			heard := 0 // each stats call counts since the one before
			require.Eventually(t, func() bool {
				s := dev.stats(t)
				require.Zero(t, s.Corrupt, "device: %s", s)
				heard += s.Received
				return heard >= 25
			}, 20*time.Second, 100*time.Millisecond, "the device did not hear the host member")
			s := host.take()
			require.Zero(t, s.Corrupt, "host: %s", s)
		})
	}
}

// TestNetnsUDPBlockedMidCall: a device on UDP whose UDP is refused mid-call
// moves its leg to TCP or TLS make-before-break (a spare leg opened at the
// first sign of trouble, client/transport_session.go), with a media gap
// under a second each way, and back to UDP (make-before-break) when UDP is
// let through again.
func TestNetnsUDPBlockedMidCall(t *testing.T) { netnsTest(t, false, udpBlockedMidCall("drop")) }

// TestNetnsIPv6OnlyUDPBlockedMidCall: the same for a device with no IPv4
// at all, on a dual-stack forwarder, with an IPv4 member in the host namespace.
func TestNetnsIPv6OnlyUDPBlockedMidCall(t *testing.T) {
	netnsTest(t, true, udpBlockedMidCall("drop"))
}

// TestNetnsUDPRejectedMidCall: the same when the firewall rejects UDP
// (ICMP port unreachable, which a dead forwarder process also causes): the
// device tries the same forwarder's TCP/TLS leg first, and moves to it.
func TestNetnsUDPRejectedMidCall(t *testing.T) { netnsTest(t, false, udpBlockedMidCall("reject")) }

// udpBlockedMidCall is those tests' body, the device's UDP filtered with
// verdict mid-call.
func udpBlockedMidCall(verdict string) func(t *testing.T, n *netns) {
	return func(t *testing.T, n *netns) { udpFilteredMidCall(t, n, verdict) }
}

func udpFilteredMidCall(t *testing.T, n *netns, verdict string) {
	r, ca := netnsRelay(t, n)
	tcp, tlsAddr := n.streams(r)
	member, local := n.hostSide(r)
	call := protocol.NewID()
	host := hostMember(t, member, local, r.mint(t, call, protocol.ClassGroup, 4))
	dev := startDevice(t, n, r, ca, client.StreamEndpoints{TCP: tcp, TLS: tlsAddr}, r.mint(t, call, protocol.ClassGroup, 4))
	require.Equal(t, "udp", dev.expect(t, "JOINED "))
	waitReceived(t, host, 25, "the host member did not hear the device over UDP")
	host.take()
	dev.stats(t)

	n.filterUDP(t, verdict)
	ev := dev.expect(t, "EVENT ")
	require.Regexp(t, `^transport (tcp|tls) `, ev, "a spare TCP/TLS leg, make-before-break, not a failover")
	waitReceived(t, host, 25, "the host member did not hear the device after the move to "+ev)
	up, down := host.take(), dev.stats(t)
	t.Logf("UDP blocked, moved (%s): device->host %s; host->device %s", ev, up, down)
	checkGap(t, up, down)

	n.blockUDP(t, false)
	ev = dev.expect(t, "EVENT ")
	require.Regexp(t, `^transport udp `, ev)
	waitReceived(t, host, 25, "the host member did not hear the device after the move back to UDP")
	up, down = host.take(), dev.stats(t)
	t.Logf("UDP back, moved (%s): device->host %s; host->device %s", ev, up, down)
	checkGap(t, up, down)
}

// checkGap: under a second of media lost each way (by sequence numbers),
// nothing corrupt. The time between arrivals is logged, not asserted: on a
// loaded machine the sender itself may stall.
func checkGap(t *testing.T, up, down mediaStats) {
	t.Helper()
	for _, s := range []mediaStats{up, down} {
		require.Zero(t, s.Corrupt, "%s", s)
		require.Less(t, s.seqGap(), time.Second, "%s", s)
	}
}

// TestNetnsIPv6OnlyDevice: a device in a namespace with no IPv4 at all
// (no address, loopback's included, no route) joins, over IPv6 to a
// dual-stack forwarder ([::]), a call whose other members are IPv4 devices
// in the host namespace (its 127.0.0.1), and media goes byte-exact both ways.
func TestNetnsIPv6OnlyDevice(t *testing.T) { netnsTest(t, true, ipv6OnlyDevice) }

func ipv6OnlyDevice(t *testing.T, n *netns) {
	for _, what := range [][]string{{"addr", "show"}, {"route", "show", "table", "all"}} {
		out, err := exec.Command("ip", append([]string{"-n", n.name, "-4"}, what...)...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Empty(t, strings.TrimSpace(string(out)), "the namespace has IPv4: ip -4 %v", what)
	}
	r, ca := netnsRelay(t, n)
	require.True(t, r.f.Addr().Addr().IsUnspecified() && r.f.Addr().Addr().Is6(), "dual stack: bound %s", r.f.Addr())
	v4, local := n.hostSide(r)
	call := protocol.NewID()
	hosts := []*mediaRecorder{hostMember(t, v4, local, r.mint(t, call, protocol.ClassGroup, 4)),
		hostMember(t, v4, local, r.mint(t, call, protocol.ClassGroup, 4))}
	dev := startDevice(t, n, r, ca, client.StreamEndpoints{}, r.mint(t, call, protocol.ClassGroup, 4))
	require.Equal(t, "udp", dev.expect(t, "JOINED "))
	for i, h := range hosts {
		waitReceived(t, h, 25, fmt.Sprintf("IPv4 member %d did not hear the IPv6-only device", i))
	}
	heard := 0 // each stats call counts since the one before
	require.Eventually(t, func() bool {
		s := dev.stats(t)
		require.Zero(t, s.Corrupt, "device: %s", s)
		heard += s.Received
		return heard >= 50
	}, 20*time.Second, 100*time.Millisecond, "the IPv6-only device did not hear the IPv4 members")
	for i, h := range hosts {
		s := h.take()
		require.Zero(t, s.Corrupt, "IPv4 member %d: %s", i, s)
	}
	require.Equal(t, 3, r.f.Stats().Sessions)
}
