package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// rttPath is a UDP relay that a device takes for its forwarder, as an
// attacker on its path (or one who can spoof its address) has it: it keeps
// every request of the device that carries CANDIDATE-RTTS, can delay the
// forwarder's answers (the device then measures a longer RTT), can hold the
// device's own datagrams back, and sends from the address the forwarder
// knows the device by.
type rttPath struct {
	front, back *net.UDPConn // the device's side, the forwarder's
	fwd         netip.AddrPort
	delay       atomic.Int64 // forwarder to device, ns
	hold        atomic.Bool  // drop the device's datagrams
	wg          sync.WaitGroup
	mu          sync.Mutex
	device      netip.AddrPort
	reports     []*stun.Message // the device's requests with CANDIDATE-RTTS, oldest first
}

func newRTTPath(t *testing.T, fwd netip.AddrPort) *rttPath {
	t.Helper()
	p := &rttPath{fwd: fwd}
	var err error
	p.front, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	p.back, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	p.wg.Add(2)
	go p.fromDevice()
	go p.toDevice()
	t.Cleanup(func() { _ = p.front.Close(); _ = p.back.Close(); p.wg.Wait() })
	return p
}

func (p *rttPath) addr() netip.AddrPort { return p.front.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *rttPath) fromDevice() {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, src, err := p.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := append([]byte(nil), buf[:n]...)
		p.mu.Lock()
		p.device = src
		if m := (&stun.Message{Raw: append([]byte(nil), b...)}); stun.IsMessage(b) && m.Decode() == nil && m.Contains(protocol.AttrCandidateRTTs) {
			p.reports = append(p.reports, m)
		}
		p.mu.Unlock()
		if !p.hold.Load() {
			_, _ = p.back.WriteToUDPAddrPort(b, p.fwd)
		}
	}
}

func (p *rttPath) toDevice() {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, _, err := p.back.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := append([]byte(nil), buf[:n]...)
		p.mu.Lock()
		to := p.device
		p.mu.Unlock()
		if d := time.Duration(p.delay.Load()); d > 0 {
			time.AfterFunc(d, func() { _, _ = p.front.WriteToUDPAddrPort(b, to) })
		} else {
			_, _ = p.front.WriteToUDPAddrPort(b, to)
		}
	}
}

// replay sends b to the forwarder from the device's address.
func (p *rttPath) replay(t *testing.T, b []byte) {
	t.Helper()
	_, err := p.back.WriteToUDPAddrPort(b, p.fwd)
	require.NoError(t, err)
}

// captured returns the device's first request that carried a report, and
// the report.
func (p *rttPath) captured(t *testing.T) (*stun.Message, protocol.CandidateRTTs) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.NotEmpty(t, p.reports, "the path saw a keepalive with CANDIDATE-RTTS")
	m := p.reports[0]
	v, err := m.Get(protocol.AttrCandidateRTTs)
	require.NoError(t, err)
	var r protocol.CandidateRTTs
	require.NoError(t, protocol.ParseCandidateRTTs(v, &r))
	return m, r
}

// conductorView is what a conductor hears of one member on the metadata
// subjects: every RTT report, in order, and how many batches named the
// member's call.
type conductorView struct {
	mu      sync.Mutex
	reports []protocol.CandidateRTTs
	batches int
}

func watchMetadata(t *testing.T, e *clusterEnv, call, participant protocol.ID) *conductorView {
	t.Helper()
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	v := &conductorView{}
	sub, err := nc.Subscribe(forwarder.Default().Cluster.Subject+".meta.*", func(msg *nats.Msg) {
		var b protocol.MetadataBatch
		if b.Unmarshal(msg.Data, e.key) != nil {
			return
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, c := range b.Calls {
			if c.Call != call {
				continue
			}
			v.batches++
			for _, m := range c.Members {
				if m.Participant == participant && m.Flags&protocol.MetaRTT != 0 {
					v.reports = append(v.reports, m.RTTs)
				}
			}
		}
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return v
}

func (v *conductorView) state() (reports []protocol.CandidateRTTs, batches int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]protocol.CandidateRTTs(nil), v.reports...), v.batches
}

// waitBatches waits until n more batches named the call, and returns the
// reports seen by then.
func (v *conductorView) waitBatches(t *testing.T, n int) []protocol.CandidateRTTs {
	t.Helper()
	_, b0 := v.state()
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if _, b := v.state(); b < b0+n {
			return fmt.Errorf("%d of %d more batches", b-b0, n)
		}
		return nil
	})
	r, _ := v.state()
	return r
}

// TestReplayedKeepaliveDoesNotMoveRTTs: an attacker who captured a
// device's keepalive (a version 2 token: MESSAGE-INTEGRITY under the
// session key, which the attacker cannot compute) sends it again later from
// the device's own address. Its old report (RTT ~0 ms) must not replace
// the device's current one (200 ms): the forwarder drops it, counts it
// (drops_total{reason="stale_rtt_report"}), and the conductor, listening
// on the metadata subjects, never sees it. The device's own reports go on
// being taken, and none of them is counted.
func TestReplayedKeepaliveDoesNotMoveRTTs(t *testing.T) {
	e := newClusterEnv(t)
	n := e.startWith(t, "fwd-a", func(c *forwarder.Config) {
		c.KeepaliveInterval, c.IdleTimeout = 200*time.Millisecond, 10*time.Second
	})
	call, participant := protocol.NewID(), protocol.NewID()
	devKey, err := client.GenerateDeviceKey()
	require.NoError(t, err)
	token, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: participant, Class: protocol.ClassGroup,
		MaxSize: 3, Expiry: time.Now().Add(time.Hour), DeviceKey: devKey.Public().(ed25519.PublicKey)})
	require.NoError(t, err)
	view := watchMetadata(t, e, call, participant)
	path := newRTTPath(t, n.f.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{path.addr()}, Token: token, DeviceKey: devKey, LocalAddr: loopback})
	require.NoError(t, err)
	defer dev.Close()
	stale := func() uint64 { return n.f.Stats().Drops[forwarder.DropStaleRTTReport] }

	// The device reports its RTT, near 0 on loopback; the attacker keeps
	// its first such keepalive.
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if r, _ := view.state(); len(r) < 2 {
			return fmt.Errorf("the conductor has %d reports", len(r))
		}
		return nil
	})
	old, oldReport := path.captured(t)
	require.NotZero(t, oldReport.Seq, "the client sequences its reports")

	// The device's path gets 200 ms longer; its next reports say so.
	const longer = 200 * time.Millisecond
	path.delay.Store(int64(longer))
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		r, _ := view.state()
		if last := r[len(r)-1]; last.Entries[0].RTT < longer {
			return fmt.Errorf("the conductor's latest RTT is %v", last.Entries[0].RTT)
		}
		return nil
	})
	// Hold the device's own keepalives back, and let the ones on their way
	// reach the conductor, so that any report it hears next is the replay's.
	path.hold.Store(true)
	before := view.waitBatches(t, 2)
	current := before[len(before)-1]
	require.Greater(t, current.Seq, oldReport.Seq)
	require.Less(t, oldReport.Entries[0].RTT, current.Entries[0].RTT, "the replay would take the member back to its old RTT")

	const replays = 5
	for range replays {
		path.replay(t, old.Raw)
	}
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := stale(); s != replays {
			return fmt.Errorf("%d replays counted, want %d", s, replays)
		}
		return nil
	})
	// A report taken would be in the forwarder's next tick (100 ms), before
	// the second batch naming the call (at least a second apart).
	after := view.waitBatches(t, 2)
	require.Equal(t, before, after, "the conductor heard no report since the replays")

	// The device's own reports are taken again, above the current one, and
	// none of them counted.
	path.hold.Store(false)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		r, _ := view.state()
		if last := r[len(r)-1]; last.Seq <= current.Seq {
			return fmt.Errorf("no new report (latest sequence %d)", last.Seq)
		}
		return nil
	})
	final, _ := view.state()
	for _, r := range final[len(before):] {
		require.GreaterOrEqual(t, r.Entries[0].RTT, longer, "the conductor's RTTs stay the device's current ones")
	}
	require.EqualValues(t, replays, stale(), "only the replays are counted")
	require.Zero(t, n.f.Stats().Drops[forwarder.DropBadRTTReport])
	require.NoError(t, dev.Err())
	t.Logf("replayed a keepalive of sequence %d (RTT %v) %d times after the device's %d (RTT %v): %d counted stale, the conductor heard %d reports before, none from the replays, %d after, RTT %v",
		oldReport.Seq, oldReport.Entries[0].RTT, replays, current.Seq, current.Entries[0].RTT, stale(), len(before), len(final)-len(before), final[len(final)-1].Entries[0].RTT)
}
