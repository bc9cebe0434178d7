// Package forwarder is the data plane: it moves opaque, end-to-end encrypted
// media packets between the members of a call on ONE UDP port, admits
// participants by their signed join tokens, and keeps each session alive by
// authenticated keepalives.
//
// It must never decrypt or rewrite media (packets leave byte-exact), never
// allocate, lock globally or log per packet, and never let bad input from
// one source disturb the calls in progress.
package forwarder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Forwarder serves one UDP port. Create it with New, run it with Run.
type Forwarder struct {
	coop  coopState // control yields to the readers with one P (yield.go)
	cfg   Config
	log   *zap.Logger
	addr  netip.AddrPort
	v6    bool
	conns []*net.UDPConn
	rdrs  []*reader
	// sockBuf: the socket buffers granted (sockbuf.go).
	sockBuf sockBufs

	routes atomic.Pointer[routes]

	// STUN from members and from strangers travel in separate queues with
	// separate pools of buffers, so strangers can never use up what members'
	// keepalives need.
	knownFree, newFree, ctrlKnown, ctrlNew chan *ctrlMsg
	ctrlDrops                              counters // drops decided by the control goroutine

	started atomic.Bool

	// The cluster (zero on a lone forwarder): trunk sockets, one per reader;
	// the addresses other forwarders and devices are told; this forwarder's
	// tag in trunk frames; the store writer; NATS messages for the control
	// goroutine.
	trunkConns     []*net.UDPConn
	trunkRdrs      []*trunkReader
	trunkV6        bool
	trunkAdvertise netip.AddrPort
	mediaAdvertise netip.AddrPort
	mediaAdv6      netip.AddrPort // a dual-stack forwarder's IPv6 media address (dualstack.go)
	tag            uint64
	writer         *statestore.Writer
	clusterIn      chan clusterMsg
	live           *liveness // how peers are judged (liveness.go)
	nudge          []byte

	draining                       atomic.Bool
	drainStarted                   atomic.Int64 // unix ns
	nSessions, nCalls, nPeers      atomic.Int64
	joins, joinErrors, addrChanges atomic.Uint64
	cookieChallenges, migrations   atomic.Uint64
	resume                         resumeCounters // resumption tickets (resume.go)
	stateErrors, stateDropped      atomic.Uint64
	clusterBad, clusterDrops       atomic.Uint64
	natsErrors                     atomic.Uint64
	trunkFamilySkipped             atomic.Uint64 // peers' trunks our trunk socket's family cannot reach

	// The conductor's side (audio.go, decisions.go).
	audio                                       audioParams
	adapt                                       adaptParams
	police                                      policeParams
	onsets, metaSent, metaBytes                 atomic.Uint64
	decisions, decisionsStale, decisionsUnknown atomic.Uint64
	decisionLapses                              atomic.Uint64 // calls put on the default policy for want of a fresh decision
	nLapsed                                     atomic.Int64  // calls on it now
	notices                                     noticeCounters
	speakerUpdates                              atomic.Uint64
	subsApplied, subsRejected                   atomic.Uint64
	targetsSent, keyFramesAsked                 atomic.Uint64
	probes, probeBytes                          atomic.Uint64

	// Cluster traffic's freshness: the first sequence of this process's
	// trunk streams (README 6), the replay windows of the streams heard
	// (trunk_replay.go), stale and misplaced messages (freshness.go).
	trunkSeq0 uint64
	trunkWin  trunkWindows
	fresh     freshCounters

	// Overload throttling (load.go, admission.go).
	thr throttleStats
	// Dependencies' latency: call-state writes, NATS round trips.
	storeLatency, natsRTT latencyHistogram
	// Senders' moves as the members here heard them (sender_moves.go).
	moves               moveStats
	lookupIn, lookupOut chan *lookup

	// The operator's commands and captures (admin.go, capture.go).
	adminIn    chan *nats.Msg
	adminCount adminCounters           // taken by op and result, refused by reason
	capture    atomic.Pointer[capture] // nil unless a capture runs

	stream *streamServer // TCP and TLS legs (stream.go); nil when off
}

// New validates cfg and binds the forwarder's sockets, so Addr is known
// before Run.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lap := netip.MustParseAddrPort(cfg.Listen)
	network := listenNetwork(lap) // [::] serves both families on one socket (dualstack.go)
	n := cfg.Readers
	if !reusePortSupported {
		n = 1
	}
	f := &Forwarder{cfg: cfg, log: cfg.Logger, audio: audioParamsOf(cfg.Audio), adapt: adaptParamsOf(cfg.Adapt),
		police: policeParamsOf(cfg.Police)}
	f.moves.init()
	if cfg.Cluster.ID != "" {
		f.log = f.log.With(zap.String("forwarder", cfg.Cluster.ID))
	}
	addr := cfg.Listen
	for i := 0; i < n; i++ {
		c, err := listenUDP(network, addr, n > 1)
		if err != nil {
			f.closeConns()
			return nil, fmt.Errorf("forwarder: listen on %s: %w", addr, err)
		}
		f.sizeBuffers(c, sockMedia) // room for bursts (sockbuf.go)
		f.conns = append(f.conns, c)
		if i == 0 {
			// With port 0 the kernel picked one; the others join it.
			f.addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
			f.v6 = isV6Socket(f.addr)
			addr = f.addr.String()
		}
	}
	f.addr = netip.AddrPortFrom(f.addr.Addr().Unmap(), f.addr.Port())
	if err := f.newReaders(n); err != nil {
		f.closeConns()
		return nil, err
	}
	f.coop.on = runtime.GOMAXPROCS(0) == 1 // yield.go
	f.lookupIn, f.lookupOut = make(chan *lookup, lookupQueue), make(chan *lookup, lookupQueue)
	f.knownFree, f.newFree = make(chan *ctrlMsg, ctrlQueue), make(chan *ctrlMsg, ctrlQueue)
	f.ctrlKnown, f.ctrlNew = make(chan *ctrlMsg, ctrlQueue), make(chan *ctrlMsg, ctrlQueue)
	for i := 0; i < ctrlQueue; i++ {
		f.knownFree <- &ctrlMsg{free: f.knownFree}
		f.newFree <- &ctrlMsg{free: f.newFree}
	}
	f.routes.Store(&routes{bySrc: map[netip.AddrPort]*route{}, byCall: map[protocol.ID]*callRoute{}})
	// The 12-byte Rejoin without a reason (README 5.8): no larger than the
	// smallest RTP packet, so every media packet from an unknown address
	// can be answered without amplification.
	nudge, err := protocol.MarshalRelayApp(0, &protocol.Rejoin{})
	if err != nil {
		f.closeConns()
		return nil, err
	}
	f.nudge = nudge
	for _, r := range f.rdrs {
		r.nudgeLimiter = newSTUNLimiter(nudgeRate, nudgeBurst)
		r.nudgeAll = newSTUNLimiter(nudgeAllRate/float64(n), nudgeAllRate/float64(n))
	}
	if err := f.setupCluster(n); err != nil {
		f.closeConns()
		return nil, err
	}
	if cfg.Stream.enabled() {
		if f.stream, err = f.newStreamServer(); err != nil {
			f.closeConns()
			return nil, err
		}
	}
	return f, nil
}

// newReaders makes a reader for each of the n media sockets.
func (f *Forwarder) newReaders(n int) error {
	for _, c := range f.conns {
		pc, err := newPacketConn(c)
		if err != nil {
			return err
		}
		f.rdrs = append(f.rdrs, &reader{f: f, idx: len(f.rdrs), pc: pc, c: new(counters), pace: newPacer(f.cfg.BatchWait),
			knownLimiter: newSTUNLimiter(f.cfg.STUNRate, f.cfg.STUNBurst),
			// SO_REUSEPORT spreads one IP's ports over all readers: each
			// reader gets its share of the per-IP budget.
			newLimiter: newSTUNLimiter(f.cfg.JoinRate/float64(n), max(1, f.cfg.JoinBurst/float64(n)))})
		r := f.rdrs[len(f.rdrs)-1]
		r.coop.sock = c
		r.coop.try, _ = pc.(tryReader)
	}
	return nil
}

// Rejoin nudges: per device address, a few a second (the first one does
// the job; the rest cover loss); per reader, a fixed budget in all, so a
// spoofed flood from many addresses is answered by little.
const (
	nudgeRate    = 2
	nudgeBurst   = 3
	nudgeAllRate = 2000
)

// setupCluster binds the trunk sockets and prepares the state writer.
func (f *Forwarder) setupCluster(n int) error {
	cc := &f.cfg.Cluster
	if cc.Store != nil {
		f.writer = statestore.NewWriter(cc.Store, statestore.WriterConfig{QueueLimit: cc.StateQueue, Logger: f.log})
	}
	f.mediaAdvertise = cc.MediaAdvertise
	if !f.mediaAdvertise.IsValid() && !f.addr.Addr().IsUnspecified() {
		f.mediaAdvertise = f.addr
	}
	if !cc.enabled() {
		return nil
	}
	f.tag = protocol.ForwarderTag(cc.ID)
	f.clusterIn = make(chan clusterMsg, clusterQueue)
	f.adminIn = make(chan *nats.Msg, adminQueue)
	f.live = newLiveness(cc, time.Now())
	f.trunkSeq0 = protocol.TrunkSeqStart(time.Now())
	network := listenNetwork(netip.MustParseAddrPort(cc.TrunkListen))
	addr := cc.TrunkListen
	for i := 0; i < n; i++ {
		c, err := listenUDP(network, addr, n > 1)
		if err != nil {
			return fmt.Errorf("forwarder: trunk listen on %s: %w", addr, err)
		}
		f.sizeBuffers(c, sockTrunk)
		f.trunkConns = append(f.trunkConns, c)
		if i == 0 {
			bound := c.LocalAddr().(*net.UDPAddr).AddrPort()
			f.trunkV6 = isV6Socket(bound)
			addr = bound.String()
			f.trunkAdvertise = cc.TrunkAdvertise
			if !f.trunkAdvertise.IsValid() {
				if bound.Addr().IsUnspecified() {
					return fmt.Errorf("forwarder: trunk bound to %s: give the address other forwarders reach it at (--trunk-advertise)", bound)
				}
				f.trunkAdvertise = netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
			}
		}
	}
	if !f.mediaAdvertise.IsValid() {
		return fmt.Errorf("forwarder: media bound to %s: give the address devices reach it at (--media-advertise)", f.addr)
	}
	if err := f.setupMedia6(cc.MediaAdvertise6); err != nil {
		return err
	}
	for i, tc := range f.trunkConns {
		in, err := newPacketConn(tc)
		if err != nil {
			return err
		}
		send, err := newPacketConn(tc)
		if err != nil {
			return err
		}
		out, err := newPacketConn(f.conns[i])
		if err != nil {
			return err
		}
		r := f.rdrs[i]
		r.tpc, r.tcodec = send, protocol.NewTrunkCodec(cc.Key)
		r.tcodec.Number(uint8(i), f.trunkSeq0) // stream i (README 6); Readers <= 256 and the control's is 255
		r.tbufs = new([readBatch][maxDatagram + protocol.TrunkOverhead]byte)
		f.trunkRdrs = append(f.trunkRdrs, &trunkReader{f: f, in: in, out: out, c: r.c, codec: protocol.NewTrunkCodec(cc.Key)})
		t := f.trunkRdrs[len(f.trunkRdrs)-1]
		t.coop.sock = tc
		t.coop.try, _ = in.(tryReader)
	}
	return nil
}

// TrunkAddr is the trunk address other forwarders send to (zero on a lone
// forwarder).
func (f *Forwarder) TrunkAddr() netip.AddrPort { return f.trunkAdvertise }

// Addr is the UDP address the forwarder serves.
func (f *Forwarder) Addr() netip.AddrPort { return f.addr }

// Run serves until ctx is done, then closes the sockets and returns. A
// Forwarder runs once.
func (f *Forwarder) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errors.New("forwarder: Run called twice")
	}
	f.log.Info("forwarder serving", zap.Stringer("addr", f.addr), zap.Int("readers", len(f.rdrs)),
		zap.String("id", f.cfg.Cluster.ID), zap.Stringer("trunk", f.trunkAdvertise))
	f.logBuffers()
	var wg sync.WaitGroup
	for _, r := range f.rdrs {
		wg.Add(1)
		go func() { defer wg.Done(); r.run() }()
	}
	for _, t := range f.trunkRdrs {
		wg.Add(1)
		go func() { defer wg.Done(); t.run() }()
	}
	wctx, stopWriter := context.WithCancel(context.Background())
	var wwg sync.WaitGroup
	if f.writer != nil {
		wwg.Add(2)
		go func() { defer wwg.Done(); f.writer.Run(wctx) }()
		go func() { defer wwg.Done(); f.runLookups(wctx) }()
	}
	if nc := f.cfg.Cluster.NATS; nc != nil {
		wwg.Add(1)
		go func() { defer wwg.Done(); f.measureNATS(wctx) }()
	}
	if f.live != nil && f.live.leases != nil {
		wwg.Add(1)
		go func() { defer wwg.Done(); f.live.runLease(wctx, f.cfg.Now, f.log) }()
	}
	sctx, stopStreams := context.WithCancel(context.Background())
	if f.stream != nil {
		wg.Add(1)
		go func() { defer wg.Done(); f.stream.run(sctx) }()
	}
	c := newControl(f)
	var sub *nats.Subscription
	if cc := &f.cfg.Cluster; cc.enabled() {
		var err error
		sub, err = cc.NATS.Subscribe(cc.announceSubject(), func(m *nats.Msg) { f.enqueueCluster(true, m.Data) })
		if err != nil {
			f.log.Warn("subscribing to forwarder heartbeats", zap.Error(err))
			f.natsErrors.Add(1)
		}
		c.announce(f.cfg.Now())
	}
	var adminSub *nats.Subscription
	if f.cfg.Cluster.enabled() {
		adminSub = f.subscribeAdmin()
	}
	f.runControl(ctx, c)
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	if adminSub != nil {
		_ = adminSub.Unsubscribe()
	}
	for _, cl := range c.calls {
		c.unsubscribe(cl)
	}
	f.flushWriter()
	stopWriter()
	wwg.Wait()
	stopStreams()
	f.closeConns()
	wg.Wait()
	f.log.Info("forwarder stopped", zap.Stringer("addr", f.addr))
	return nil
}

// flushWriter gives the store a moment to take the last changes (the leaves
// of a drain, say). The writer delivers every result, so they are read.
func (f *Forwarder) flushWriter() {
	if f.writer == nil {
		return
	}
	deadline := time.NewTimer(2 * time.Second)
	defer deadline.Stop()
	for f.writer.Pending() > 0 && !f.writer.Degraded() {
		select {
		case <-f.writer.Results():
		case <-deadline.C:
			return
		}
	}
	if n := f.writer.Pending(); n > 0 {
		f.log.Warn("stopping with call state changes not written", zap.Int("pending", n))
	}
}

// runControl is the control goroutine: it answers requests one at a time,
// members' before strangers', publishes the routes they change in batches,
// and between requests handles the timers, the store's results and the
// cluster's messages, until ctx is done.
func (f *Forwarder) runControl(ctx context.Context, c *control) {
	t := f.newControlTimers()
	defer t.stop()
	for {
		now := f.cfg.Now()
		m := f.nextRequest()
		if m == nil {
			// Idle: make this batch's changes visible, then wait.
			if c.publishDue(true, now) {
				c.publish(now)
			}
			var stop bool
			c.idle() // about to block (yield.go)
			if m, stop = c.wait(ctx, t, now); stop {
				c.publish(now)
				return
			}
			if m == nil {
				continue // an event was handled
			}
		}
		if c.admin.capture != nil {
			c.captureRequest(m.src, m.buf[:m.n]) // admin.go
		}
		c.handle(m.src, m.buf[:m.n])
		m.free <- m
		c.yieldUnits(yieldEvery / 4) // a request costs tens of µs
		if c.publishDue(false, now) {
			c.publish(now)
		}
		// A queue that never empties must not hold off shutdown, the
		// store's results, notices or the timers.
		if c.poll(ctx, t, now) {
			c.publish(now)
			return
		}
	}
}

// controlTimers are the control goroutine's periodic events and the
// store's results.
type controlTimers struct {
	sweep, cluster, meta, load, feedback *time.Ticker
	results                              <-chan statestore.Result // nil without a store
}

func (f *Forwarder) newControlTimers() *controlTimers {
	t := &controlTimers{
		sweep:    time.NewTicker(f.cfg.IdleTimeout / sweepsPerIdleTimeout),
		cluster:  time.NewTicker(f.clusterPeriod()),
		meta:     time.NewTicker(f.cfg.Cluster.MetadataEvery),
		load:     time.NewTicker(f.cfg.LoadEvery),
		feedback: time.NewTicker(f.cfg.Adapt.FeedbackEvery),
	}
	if f.writer != nil {
		t.results = f.writer.Results()
	}
	return t
}

func (t *controlTimers) stop() {
	t.sweep.Stop()
	t.cluster.Stop()
	t.meta.Stop()
	t.load.Stop()
	t.feedback.Stop()
}

// sweepsPerIdleTimeout: idle sessions are looked for this often per idle
// timeout, so a silent session is forgotten between one idle timeout and
// a quarter more after its last request (README section 3).
const sweepsPerIdleTimeout = 4

// nextRequest takes a queued request without waiting: members' keepalives
// first, whatever else is queued.
func (f *Forwarder) nextRequest() *ctrlMsg {
	select {
	case m := <-f.ctrlKnown:
		return m
	default:
	}
	select {
	case m := <-f.ctrlNew:
		return m
	default:
		return nil
	}
}

// wait blocks until a request arrives (returned) or another event, which
// it handles. stop: ctx is done.
func (c *control) wait(ctx context.Context, t *controlTimers, now time.Time) (m *ctrlMsg, stop bool) {
	f := c.f
	select {
	case <-ctx.Done():
		return nil, true
	case m = <-f.ctrlKnown:
	case m = <-f.ctrlNew:
	case r := <-t.results:
		c.onResult(r, now)
	case cm := <-f.clusterIn:
		c.onCluster(cm, now)
	case am := <-f.adminIn:
		c.onAdmin(am, now)
	case <-t.sweep.C:
		c.sweep(now)
	case <-t.cluster.C:
		c.clusterTick(now)
	case <-t.meta.C:
		c.metaTick(now)
	case <-t.load.C:
		c.loadTick(f.cfg.Now())
	case <-t.feedback.C:
		c.feedbackTick(now)
	case l := <-f.lookupOut:
		c.onLookup(l, now)
	}
	return m, false
}

// poll handles at most one pending event without waiting. It reports
// whether ctx is done.
func (c *control) poll(ctx context.Context, t *controlTimers, now time.Time) (stop bool) {
	f := c.f
	select {
	case <-ctx.Done():
		return true
	case r := <-t.results:
		c.onResult(r, now)
	case cm := <-f.clusterIn:
		c.onCluster(cm, now)
	case am := <-f.adminIn:
		c.onAdmin(am, now)
	case <-t.sweep.C:
		c.sweep(now)
	case <-t.cluster.C:
		c.clusterTick(now)
	case <-t.meta.C:
		c.metaTick(now)
	case <-t.load.C:
		c.loadTick(f.cfg.Now())
	case <-t.feedback.C:
		c.feedbackTick(now)
	case l := <-f.lookupOut:
		c.onLookup(l, now)
	default:
	}
	return false
}

// clusterPeriod is the period of heartbeats, reconciles and drain messages.
func (f *Forwarder) clusterPeriod() time.Duration {
	d := f.cfg.Cluster.AnnounceEvery
	if d <= 0 {
		d = time.Second
	}
	return d
}

// clusterTick: heartbeat, peers, store upkeep, drain.
func (c *control) clusterTick(now time.Time) {
	c.announce(now)
	c.expirePeers(now)
	c.stateTick(now)
	c.drainTick(now)
	c.adminTick(now)
	c.f.nPeers.Store(int64(len(c.peers)))
}

// Stats adds up every reader's counters.
func (f *Forwarder) Stats() Stats {
	var s Stats
	for _, r := range f.rdrs {
		s.add(r.c)
	}
	if f.stream != nil {
		for _, r := range f.stream.rdrs {
			s.add(r.c)
		}
		s.Stream = f.stream.c.stats()
	}
	s.add(&f.ctrlDrops)
	s.Sessions = int(f.nSessions.Load())
	s.Calls = int(f.nCalls.Load())
	s.Joins = f.joins.Load()
	s.JoinErrors = f.joinErrors.Load()
	s.AddressChanges = f.addrChanges.Load()
	s.CookieChallenges = f.cookieChallenges.Load()
	s.Migrations = f.migrations.Load()
	s.Resume = f.resume.stats()
	s.Draining = f.draining.Load()
	if f.writer != nil {
		s.StateDegraded = f.writer.Degraded()
		s.StateQueued = f.writer.Pending()
	}
	s.StateErrors = f.stateErrors.Load()
	s.StateDropped = f.stateDropped.Load()
	s.ClusterBad = f.clusterBad.Load()
	s.ClusterDrops = f.clusterDrops.Load()
	s.NATSErrors = f.natsErrors.Load()
	s.Peers = int(f.nPeers.Load())
	if f.live != nil {
		s.Peering = f.live.stats()
		s.Peering.TrunkFamilySkipped = f.trunkFamilySkipped.Load()
	}
	s.Onsets = f.onsets.Load()
	s.MetadataSent, s.MetadataBytes = f.metaSent.Load(), f.metaBytes.Load()
	s.Decisions, s.DecisionsStale, s.DecisionsUnknown = f.decisions.Load(), f.decisionsStale.Load(), f.decisionsUnknown.Load()
	s.DecisionLapses, s.CallsLapsed = f.decisionLapses.Load(), int(f.nLapsed.Load())
	s.Notices = f.notices.stats()
	s.Freshness = f.fresh.stats()
	s.SpeakerUpdates = f.speakerUpdates.Load()
	s.Subscriptions, s.SubsRejected = f.subsApplied.Load(), f.subsRejected.Load()
	s.TargetsSent, s.KeyFramesAsked = f.targetsSent.Load(), f.keyFramesAsked.Load()
	s.Probes, s.ProbeBytes = f.probes.Load(), f.probeBytes.Load()
	s.ThrottleLevel = ThrottleLevel(f.thr.level.Load())
	sig := [5]float64{}
	for i := range sig {
		sig[i] = float64(f.thr.signals[i].Load()) / 1000
	}
	s.Load = LoadSignals{CPU: sig[0], Packets: sig[1], QueueDrops: sig[2], Memory: sig[3], Sessions: sig[4]}
	for c := range s.Refusals {
		for r := range s.Refusals[c] {
			s.Refusals[c][r] = f.thr.refusals[c][r].Load()
		}
		s.Admissions[c] = f.thr.admissions[c].Load()
	}
	for l := range s.LevelChanges {
		s.LevelChanges[l] = f.thr.changes[l].Load()
	}
	s.LookupsFailed = f.thr.lookupFailed.Load()
	return s
}

func (f *Forwarder) countDrop(r DropReason) { f.ctrlDrops.drops[r].Add(1) }

// reply sends a control answer from the forwarder's port (control goroutine).
func (f *Forwarder) reply(b []byte, to netip.AddrPort) {
	if isStreamAddr(to) { // a TCP or TLS member (stream.go)
		if l := streamLegAt(to); l != nil {
			l.push(b, false)
		}
		return
	}
	if _, err := f.conns[0].WriteToUDPAddrPort(b, to); err != nil {
		f.countDrop(DropSendFailed)
	}
}

func (f *Forwarder) closeConns() {
	for _, c := range f.conns {
		_ = c.Close()
	}
	for _, c := range f.trunkConns {
		_ = c.Close()
	}
}
