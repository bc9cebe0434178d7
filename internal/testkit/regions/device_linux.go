package regions

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A Device is the client library (client.Join: multi-connect, RTT
// measurement and CANDIDATE-RTTS reports, failover, MigrateTo) running in a
// city's namespace. The library opens sockets from goroutines of its own,
// which a thread moved by Do would not hold, so each device is a process
// of its own: the test binary run again under `ip netns exec` with
// DeviceEnv set, which DeviceMain (called from the test package's init or
// TestMain) turns into the device. It sends a 20 ms audio packet carrying
// its send time, and tells the test, one line each on its stdout, every
// packet it receives (sender, send and arrival time: sender and receiver
// share the machine's clock), every change of forwarder and of its
// candidate RTTs.

// DeviceEnv carries a device process's configuration (JSON).
const DeviceEnv = "CALLRELAY_REGIONS_DEVICE"

// DeviceConfig is what a device process joins with.
type DeviceConfig struct {
	Token      []byte           `json:"token"`
	Forwarders []netip.AddrPort `json:"forwarders"`
	SSRC       uint32           `json:"ssrc"`
	// FailoverAfter is the session's (default 5 s: a failover would move
	// the device by itself, and the tests look at the conductor's moves).
	FailoverAfter time.Duration `json:"failover_after"`
	// RetransmitInitial is the join's (client default if zero): an answer
	// to a retransmitted request gives no RTT sample (Karn), so a device
	// whose candidates answer slowly (a join's store write over a WAN)
	// learns their RTTs only if it waits longer before retransmitting.
	RetransmitInitial time.Duration `json:"retransmit_initial"`
	Local             netip.Addr    `json:"local"` // set by StartDevice
}

// DeviceMain runs this process as a device and exits when DeviceEnv is
// set; otherwise it returns at once.
func DeviceMain() {
	v := os.Getenv(DeviceEnv)
	if v == "" {
		return
	}
	var cfg DeviceConfig
	if err := json.Unmarshal([]byte(v), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "device: %s: %v\n", DeviceEnv, err)
		os.Exit(2)
	}
	os.Exit(runDevice(cfg))
}

// devicePacket is an audio-sized RTP packet from ssrc whose payload starts
// with its send time.
func devicePacket(ssrc uint32, seq uint16, sent time.Time) []byte {
	b := make([]byte, 12+8+72)
	b[0], b[1] = 0x80, 111
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], uint32(seq)*960)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	binary.BigEndian.PutUint64(b[12:], uint64(sent.UnixNano()))
	return b
}

func runDevice(cfg DeviceConfig) int {
	var omu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		omu.Lock()
		defer omu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
		_ = out.Flush()
	}
	if cfg.FailoverAfter == 0 {
		cfg.FailoverAfter = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	s, err := client.Join(ctx, client.Config{Forwarders: cfg.Forwarders, Token: cfg.Token, LocalAddr: cfg.Local,
		FailoverAfter: cfg.FailoverAfter, JoinTimeout: 10 * time.Second, RetransmitInitial: cfg.RetransmitInitial, LoserGrace: 2 * time.Second})
	cancel()
	if err != nil {
		say("e join: %v", err)
		return 1
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { // what arrives
		defer wg.Done()
		for p := range s.Media() {
			if p.Kind == protocol.KindRTP && len(p.Data) >= 20 {
				say("r %d %d %d %d", binary.BigEndian.Uint32(p.Data[8:12]), binary.BigEndian.Uint16(p.Data[2:4]), binary.BigEndian.Uint64(p.Data[12:20]), p.Received.UnixNano())
			}
			p.Release()
		}
	}()
	go func() { // audio every 20 ms
		defer wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for seq := uint16(1); ; seq++ {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			_ = s.WriteRTP(devicePacket(cfg.SSRC, seq, time.Now()))
		}
	}()
	go func() { // forwarder changes, sampled every 5 ms, and RTTs every 20
		defer wg.Done()
		reportChanges(s, say, stop)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	eof := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(eof) }()
	select {
	case <-sig:
	case <-eof:
	}
	close(stop)
	_ = s.Close() // ends Media
	wg.Wait()
	say("x")
	return 0
}

// reportChanges says each change of s's forwarder (sampled every 5 ms)
// and of its candidate RTTs (every 20 ms) until stop.
func reportChanges(s *client.Session, say func(string, ...any), stop <-chan struct{}) {
	tk := time.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	var fwd netip.AddrPort
	var rtts string
	for n := 0; ; n++ {
		if f := s.Forwarder(); f != fwd {
			fwd = f
			say("f %s %d", f, time.Now().UnixNano())
		}
		if n%4 == 0 {
			if r := formatRTTs(s.CandidateRTTs()); r != rtts {
				rtts = r
				say("t %d%s", time.Now().UnixNano(), r)
			}
		}
		select {
		case <-stop:
			return
		case <-tk.C:
		}
	}
}

func formatRTTs(m map[netip.AddrPort]time.Duration) string {
	var b strings.Builder
	for _, a := range slices.SortedFunc(func(yield func(netip.AddrPort) bool) {
		for a := range m {
			if !yield(a) {
				return
			}
		}
	}, func(a, b netip.AddrPort) int { return a.Compare(b) }) {
		fmt.Fprintf(&b, " %s=%d", a, m[a])
	}
	return b.String()
}

// Arrival is one packet a device received.
type Arrival struct {
	Seq      uint16
	Sent, At time.Time
}

// Move is a device's change of forwarder.
type Move struct {
	At time.Time
	To netip.AddrPort
}

// RTTChange is a device's RTT to a candidate as it stood from At.
type RTTChange struct {
	At  time.Time
	To  netip.AddrPort
	RTT time.Duration
}

// Device is the test's handle on a device process.
type Device struct {
	SSRC  uint32
	City  string
	proc  *Process
	stdin *os.File

	mu     sync.Mutex
	fwds   []Move // the first is the join
	rtts   map[netip.AddrPort]time.Duration
	rttLog []RTTChange
	rx     map[uint32][]Arrival
	ended  chan struct{} // closed when its output ends
	failed string
}

// StartDevice starts a device process in city that joins with cfg and
// returns once it joined (30 s at most: a race-built binary starts
// slowly on a busy machine). It leaves the call when the test ends.
func StartDevice(t testing.TB, tp *Topology, city string, cfg DeviceConfig) *Device {
	t.Helper()
	cfg.Local = tp.Addr(city)
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("device %#x in %s", cfg.SSRC, city)
	p := tp.Command(city, exe)
	p.Cmd.Env = append(os.Environ(), DeviceEnv+"="+string(raw))
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.Cmd.Stdout, p.Cmd.Stdin = outW, inR
	d := &Device{SSRC: cfg.SSRC, City: city, proc: p, stdin: inW, rtts: map[netip.AddrPort]time.Duration{},
		rx: map[uint32][]Arrival{}, ended: make(chan struct{})}
	p.Start(t, label)
	_, _ = outW.Close(), inR.Close()
	go d.read(outR)
	t.Cleanup(func() { d.Leave(); _ = outR.Close() }) // runs before the process's own cleanup
	testenv.CheckFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		d.mu.Lock()
		defer d.mu.Unlock()
		switch {
		case d.failed != "":
			t.Fatalf("%s: %s", label, d.failed)
		case len(d.fwds) == 0:
			return fmt.Errorf("%s has not joined", label)
		}
		return nil
	})
	return d
}

func (d *Device) read(r io.Reader) {
	defer close(d.ended)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		d.mu.Lock()
		switch f[0] {
		case "r":
			if len(f) == 5 {
				ssrc, _ := strconv.ParseUint(f[1], 10, 32)
				seq, _ := strconv.ParseUint(f[2], 10, 16)
				sent, _ := strconv.ParseInt(f[3], 10, 64)
				at, _ := strconv.ParseInt(f[4], 10, 64)
				d.rx[uint32(ssrc)] = append(d.rx[uint32(ssrc)], Arrival{uint16(seq), time.Unix(0, sent), time.Unix(0, at)})
			}
		case "f":
			if len(f) == 3 {
				a, _ := netip.ParseAddrPort(f[1])
				at, _ := strconv.ParseInt(f[2], 10, 64)
				d.fwds = append(d.fwds, Move{time.Unix(0, at), a})
			}
		case "t":
			if len(f) < 2 {
				break
			}
			at, _ := strconv.ParseInt(f[1], 10, 64)
			clear(d.rtts)
			for _, kv := range f[2:] {
				k, v, _ := strings.Cut(kv, "=")
				a, _ := netip.ParseAddrPort(k)
				ns, _ := strconv.ParseInt(v, 10, 64)
				d.rtts[a] = time.Duration(ns)
				d.rttLog = append(d.rttLog, RTTChange{time.Unix(0, at), a, time.Duration(ns)})
			}
		case "e":
			d.failed = strings.Join(f[1:], " ")
		}
		d.mu.Unlock()
	}
}

// Leave closes the device's stdin, upon which it leaves the call and
// exits, and waits for that (5 s at most, then it is killed).
func (d *Device) Leave() {
	_ = d.stdin.Close()
	select {
	case <-d.proc.Done():
	case <-time.After(5 * time.Second):
		d.proc.Stop()
	}
}

// Forwarder is the forwarder the device is on now.
func (d *Device) Forwarder() netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.fwds) == 0 {
		return netip.AddrPort{}
	}
	return d.fwds[len(d.fwds)-1].To
}

// Moves are the device's changes of forwarder since it joined.
func (d *Device) Moves() []Move {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.fwds) < 2 {
		return nil
	}
	return slices.Clone(d.fwds[1:])
}

// RTTs are the device's latest RTTs to its candidates.
func (d *Device) RTTs() map[netip.AddrPort]time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[netip.AddrPort]time.Duration, len(d.rtts))
	for a, r := range d.rtts {
		out[a] = r
	}
	return out
}

// RTTSeen is when the device's RTT to fwd first stood at least at rtt
// after since (zero: not yet).
func (d *Device) RTTSeen(fwd netip.AddrPort, rtt time.Duration, since time.Time) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.rttLog {
		if c.To == fwd && c.RTT >= rtt && !c.At.Before(since) {
			return c.At
		}
	}
	return time.Time{}
}

// From is what the device received from ssrc, in arrival order.
func (d *Device) From(ssrc uint32) []Arrival {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.rx[ssrc])
}

// HeardSince is how many packets sent by ssrc at or after since arrived.
func (d *Device) HeardSince(ssrc uint32, since time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, a := range d.rx[ssrc] {
		if !a.Sent.Before(since) {
			n++
		}
	}
	return n
}

// MaxGap is the longest silence in arrivals (in arrival order) among the
// packets sent in [from, to), and when it ended: a move's media gap, when
// from is after anything else that disturbed the path.
func MaxGap(arr []Arrival, from, to time.Time) (gap time.Duration, ended time.Time) {
	var at []time.Time
	for _, a := range arr {
		if !a.Sent.Before(from) && a.Sent.Before(to) {
			at = append(at, a.At)
		}
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(at); i++ {
		if g := at[i].Sub(at[i-1]); g > gap {
			gap, ended = g, at[i]
		}
	}
	return gap, ended
}

// LostRun is the longest run of consecutive packets that never arrived
// among those sent in [from, to) (by sequence number, between two that
// arrived; a device sends one every 20 ms, so a run of n is n*20 ms of
// the sender's audio gone, however late the others come), and when the
// packet just before it was sent.
func LostRun(arr []Arrival, from, to time.Time) (run int, after time.Time) {
	var in []Arrival
	for _, a := range arr {
		if !a.Sent.Before(from) && a.Sent.Before(to) {
			in = append(in, a)
		}
	}
	slices.SortFunc(in, func(a, b Arrival) int { return int(a.Seq) - int(b.Seq) }) // a window shorter than 21 minutes: no wrap
	for i := 1; i < len(in); i++ {
		if n := int(in[i].Seq) - int(in[i-1].Seq) - 1; n > run {
			run, after = n, in[i-1].Sent
		}
	}
	return run, after
}

// Delays are the one-way delays of the packets sent in [from, to), sorted.
func Delays(arr []Arrival, from, to time.Time) []time.Duration {
	var out []time.Duration
	for _, a := range arr {
		if !a.Sent.Before(from) && a.Sent.Before(to) {
			out = append(out, a.At.Sub(a.Sent))
		}
	}
	slices.Sort(out)
	return out
}
