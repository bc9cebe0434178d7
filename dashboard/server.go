package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/httpserve"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Server is the dashboard: a NATS listener, a poller and an HTTP server.
type Server struct {
	cfg  Config
	log  *zap.Logger
	http *httpserve.Server
	auth auth
	fwd  *tracker

	mu     sync.Mutex // guards parts and health
	parts  PartitionsView
	health HealthView

	// pushed is the latest push's fleet messages (fleet.go); tick is
	// closed and replaced at every push, waking the event streams.
	pushed atomic.Pointer[pushedMsgs]
	fleet  fleetState // the push loop's
	hist   history
	tickMu sync.Mutex
	tick   chan struct{}
	done   chan struct{} // closed when Run winds down: event streams end

	// lookups holds a token per drill-down listening for a decision.
	lookups chan struct{}

	malformed malformedRecords

	// adminBadReplies counts forwarders' answers to admin commands that
	// did not authenticate or answered another command (admin.go).
	adminBadReplies atomic.Uint64
	// adminReqs counts admin API requests by action and result (admin.go).
	adminReqs *prometheus.CounterVec

	cond conductors // the conductors' reports (conductors.go)
}

// malformedRecords counts the records read from the state store that did
// not decode, by record; each is also said where it was read (the call
// drill-down, the partitions view).
type malformedRecords struct{ call, checkpoint, lease atomic.Uint64 }

// New checks cfg and listens on cfg.Listen (on loopback only when no token
// is set); Run serves.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, auth: newAuth(cfg.ViewerToken, cfg.AdminToken), fwd: newTracker(cfg.MaxForwarders),
		tick: make(chan struct{}), done: make(chan struct{}), lookups: make(chan struct{}, cfg.MaxDecisionLookups)}
	hcfg := cfg.HTTP
	hcfg.Logger = cfg.Logger
	var err error
	if s.http, err = httpserve.Listen(cfg.Listen, hcfg); err != nil {
		return nil, fmt.Errorf("dashboard: listening on %s: %w", cfg.Listen, err)
	}
	if ip := tcpIP(s.http.Addr()); s.auth.open() && !ip.IsLoopback() {
		_ = s.http.Close()
		return nil, fmt.Errorf("dashboard: --listen %s (%s) is not a loopback address and no token is set: "+
			"set --viewer-token and --admin-token (make them with `callrelay token dashboard`), or listen on 127.0.0.1", cfg.Listen, ip)
	}
	s.parts = PartitionsView{Total: cfg.Partitions, Owner: []int{}, Owners: []OwnerView{}, Unowned: []int{}}
	s.adminReqs = newAdminRequests()
	s.health.Redis.Configured = cfg.Leases != nil
	s.health.NATS.Configured = true
	return s, nil
}

// Addr is the page's address.
func (s *Server) Addr() net.Addr { return s.http.Addr() }

// tcpIP is the IP of a TCP address (unspecified for any other).
func tcpIP(a net.Addr) net.IP {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP
	}
	return net.IPv4zero
}

// Run serves until ctx ends, then closes the listener and the NATS
// subscription. It returns nil on a clean stop.
func (s *Server) Run(ctx context.Context) error {
	subject := protocol.ForwardersSubject(s.cfg.Subject)
	sub, err := s.cfg.NATS.Subscribe(subject, s.onMsg)
	if err != nil {
		_ = s.http.Close()
		return fmt.Errorf("dashboard: subscribing to %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	csub, err := s.cfg.NATS.Subscribe(protocol.ConductorsSubject(s.cfg.Subject), s.onConductorMsg)
	if err != nil {
		_ = s.http.Close()
		return fmt.Errorf("dashboard: subscribing to %s: %w", protocol.ConductorsSubject(s.cfg.Subject), err)
	}
	defer func() { _ = csub.Unsubscribe() }()
	// The server has the subscription before the page is served: a
	// heartbeat published once the page answers is not missed.
	if err := s.cfg.NATS.FlushTimeout(s.cfg.ProbeTimeout); err != nil {
		s.log.Warn("NATS did not confirm the heartbeat subscription yet", zap.String("subject", subject), zap.Error(err))
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.http.Serve(s.routes()) }()
	s.logListening(subject)

	var wg sync.WaitGroup
	loopCtx, stop := context.WithCancel(ctx)
	wg.Add(2)
	go func() { defer wg.Done(); s.pollLoop(loopCtx) }()
	go func() { defer wg.Done(); s.pushLoop(loopCtx) }()

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("dashboard: serving: %w", err)
	}
	stop()
	wg.Wait()
	close(s.done) // the event streams end, so Shutdown need not wait for them
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if serr := s.http.Shutdown(sctx); serr != nil {
		_ = s.http.Close()
	}
	return err
}

// logListening says where the page is and who may read it.
func (s *Server) logListening(subject string) {
	fields := []zap.Field{zap.String("addr", "http://"+s.Addr().String()), zap.String("subject", subject),
		zap.Int("partitions", s.cfg.Partitions), zap.Int("max_conns", s.cfg.HTTP.MaxConns)}
	switch {
	case s.auth.open():
		s.log.Info("dashboard listening on loopback only, without a token: anyone on this host may read it, "+
			"device addresses hidden; set --viewer-token and --admin-token to listen elsewhere and to see addresses", fields...)
	case s.cfg.AdminToken == "":
		s.log.Info("dashboard listening; a viewer token is required, device addresses hidden (no admin token set)", fields...)
	default:
		s.log.Info("dashboard listening; a token is required, device addresses shown to the admin token only", fields...)
	}
}

// onMsg takes one heartbeat. Nothing is believed before it authenticates.
func (s *Server) onMsg(m *nats.Msg) {
	now := s.cfg.Now()
	t, err := protocol.PeekClusterMsgType(m.Data)
	if err != nil {
		s.fwd.drop(&s.fwd.drops.Malformed)
		return
	}
	switch t {
	case protocol.ClusterMsgForwarderAnnounce:
		var a protocol.ForwarderAnnounce
		if err := a.Unmarshal(m.Data, s.cfg.Key); err != nil {
			s.dropped(err)
			return
		}
		s.fwd.addAnnounce(&a, now)
	case protocol.ClusterMsgLoadReport:
		var r protocol.LoadReport
		if err := r.Unmarshal(m.Data, s.cfg.Key); err != nil {
			s.dropped(err)
			return
		}
		s.fwd.addReport(&r, now)
	default:
		s.fwd.drop(&s.fwd.drops.Unexpected)
	}
}

func (s *Server) dropped(err error) {
	if errors.Is(err, protocol.ErrClusterMsgAuth) {
		s.fwd.drop(&s.fwd.drops.Forged)
		s.log.Debug("dropped a heartbeat that does not authenticate", zap.Error(err))
		return
	}
	s.fwd.drop(&s.fwd.drops.Malformed)
}

// Snapshot builds the current picture.
func (s *Server) Snapshot() Snapshot {
	now := s.cfg.Now()
	snap := Snapshot{At: now.UTC()}
	snap.Forwarders, snap.Dropped = s.fwd.view(now, s.cfg.DownAfter, s.cfg.ForgetAfter)
	snap.Cluster = totals(snap.Forwarders)
	s.mu.Lock()
	snap.Partitions, snap.Health = s.parts, s.health
	s.mu.Unlock()
	snap.Verdict = verdict(&snap)
	return snap
}

// pushLoop publishes a snapshot every PushEvery to the event streams.
func (s *Server) pushLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PushEvery)
	defer t.Stop()
	for {
		s.push()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) push() {
	s.fwd.record(&s.hist, s.cfg.Now(), s.cfg.DownAfter)
	s.cond.book(&s.hist, s.cfg.Now(), s.cfg.ForgetAfter)
	snap := s.Snapshot()
	m, err := s.fleet.next(&snap, s.hist.lastPoints())
	if err != nil {
		s.log.Error("encoding the fleet view", zap.Error(err))
		return
	}
	s.pushed.Store(m)
	s.tickMu.Lock()
	close(s.tick)
	s.tick = make(chan struct{})
	s.tickMu.Unlock()
}

// next returns the channel closed at the next push.
func (s *Server) next() <-chan struct{} {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	return s.tick
}

// pollLoop checks the partitions and health every PollEvery.
func (s *Server) pollLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollEvery)
	defer t.Stop()
	for {
		s.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) poll(ctx context.Context) {
	nats := s.probeNATS(ctx)
	redis, parts := s.probeRedis(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.health.NATS = nats
	if redis.Checked {
		s.health.Redis = redis
	}
	if parts.Checked {
		s.parts = parts
	}
}

func (s *Server) probeNATS(ctx context.Context) Probe {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	start := time.Now()
	err := s.cfg.NATS.FlushWithContext(ctx)
	p := Probe{Configured: true, Checked: true, OK: err == nil, At: s.cfg.Now().UTC(),
		LatencyMs: float64(time.Since(start).Microseconds()) / 1000}
	if err != nil {
		p.Error = fmt.Sprintf("%v (connection %s)", err, s.cfg.NATS.Status())
	}
	return p
}

// probeRedis times one lease read (the Redis ping) and then reads every
// partition's holder within ProbeTimeout, a few at a time.
func (s *Server) probeRedis(ctx context.Context) (Probe, PartitionsView) {
	if s.cfg.Leases == nil {
		return Probe{}, PartitionsView{}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	start := time.Now()
	_, err := s.cfg.Leases.LeaseHolder(ctx, statestore.PartitionLease(0))
	if errors.Is(err, statestore.ErrNotFound) || errors.Is(err, statestore.ErrCorrupt) {
		err = nil // Redis answered; the sweep below counts and reports a malformed lease
	}
	p := Probe{Configured: true, Checked: true, OK: err == nil, At: s.cfg.Now().UTC(),
		LatencyMs: float64(time.Since(start).Microseconds()) / 1000}
	pv := PartitionsView{Total: s.cfg.Partitions, Checked: true, CheckedAt: p.At, Owner: []int{}, Owners: []OwnerView{}, Unowned: []int{}}
	if err != nil {
		if ctx.Err() != nil && parentDone(ctx) {
			return Probe{}, PartitionsView{} // shutting down: not a finding
		}
		p.Error = err.Error()
		pv.Error = "cannot read the partition leases: " + err.Error()
		return p, pv
	}
	holders, err := s.readHolders(ctx)
	if err != nil {
		pv.Error = "cannot read the partition leases: " + err.Error()
		return p, pv
	}
	pv.Owner = make([]int, len(holders))
	index := map[string]int{}
	for part, h := range holders {
		if h.Owner == "" {
			pv.Owner[part] = -1
			pv.Unowned = append(pv.Unowned, part)
			continue
		}
		i, ok := index[h.Owner]
		if !ok {
			i = len(pv.Owners)
			index[h.Owner] = i
			conductor, _, _ := strings.Cut(h.Owner, "/")
			pv.Owners = append(pv.Owners, OwnerView{Owner: h.Owner, Conductor: conductor, MinEpoch: h.Epoch, MaxEpoch: h.Epoch})
		}
		o := &pv.Owners[i]
		o.Partitions++
		o.MinEpoch, o.MaxEpoch = min(o.MinEpoch, h.Epoch), max(o.MaxEpoch, h.Epoch)
		pv.Owner[part] = i
	}
	return p, pv
}

// parentDone is a guess good enough for logs: the context ended before its
// own deadline.
func parentDone(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return !ok || time.Now().Before(d)
}

// readHolders reads every partition's lease holder (zero Lease: free) with
// a few workers.
func (s *Server) readHolders(ctx context.Context) ([]statestore.Lease, error) {
	const workers = 16
	holders := make([]statestore.Lease, s.cfg.Partitions)
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(workers, s.cfg.Partitions) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				part := int(next.Add(1) - 1)
				if part >= s.cfg.Partitions || firstErr.Load() != nil {
					return
				}
				l, err := s.cfg.Leases.LeaseHolder(ctx, statestore.PartitionLease(part))
				switch {
				case errors.Is(err, statestore.ErrNotFound):
				case err != nil:
					if errors.Is(err, statestore.ErrCorrupt) {
						s.malformed.lease.Add(1)
					}
					err = fmt.Errorf("partition %d: %w", part, err)
					firstErr.CompareAndSwap(nil, &err)
					return
				default:
					holders[part] = l
				}
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return nil, *e
	}
	return holders, nil
}
