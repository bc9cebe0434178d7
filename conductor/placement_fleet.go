package conductor

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// Fleet is what the forwarders' heartbeats and load reports say about the
// cluster (protocol/README.md 7.2, 7.6): each forwarder's addresses,
// region, throttle level and draining flag, and the trunk RTTs between
// regions. Placement (the conductor) and the locator (`callrelay locate`)
// read it. It subscribes to <prefix>.forwarders; messages that do not
// authenticate or parse, or are stale (README 7, Freshness: not newer by
// (started, sequence) than the last of their kind taken from their
// forwarder, or made over 10 s from our clock), are dropped and counted.
// Safe for concurrent use.
type Fleet struct {
	key     protocol.ClusterKey
	timeout time.Duration
	bad     prometheus.Counter
	sub     *nats.Subscription

	mu   sync.Mutex
	fwds map[string]*fleetMember
	view *FleetView // nil: rebuild
	ann  protocol.ForwarderAnnounce
	rep  protocol.LoadReport
}

type fleetMember struct {
	media, media6 netip.AddrPort
	streams       protocol.StreamListeners
	region        string
	level         int
	draining      bool
	rtts          []protocol.RegionRTT
	heard         time.Time
	// ann, rep: the newest heartbeat and load report taken (README 7,
	// Freshness), kept for fleetForget after the forwarder leaves the
	// view, so that its last messages sent again do not bring it back.
	ann, rep fleetMark
}

// fleetMark is a message's (started, sequence).
type fleetMark struct {
	started time.Time
	seq     uint64
}

// newer says whether (started, seq) comes after m.
func (m fleetMark) newer(started time.Time, seq uint64) bool {
	return started.After(m.started) || started.Equal(m.started) && seq > m.seq
}

// fleetMaxSkew: a heartbeat or load report made further than this from
// our clock is stale (README 7: an old one sent again, or a clock far
// off); fleetForget: how long a silent forwarder's marks are kept.
const (
	fleetMaxSkew = 10 * time.Second
	fleetForget  = 10 * time.Minute
)

// FleetView is one snapshot of the fleet, immutable once made.
type FleetView struct {
	At         time.Time
	Forwarders map[string]FleetForwarder
	// ByAddr maps every announced media address to its forwarder.
	ByAddr map[netip.AddrPort]string
	// RegionRTT: trunk RTT between two regions, keyed both ways; the
	// smallest a forwarder of either reported.
	RegionRTT map[[2]string]time.Duration
	// RegionLevels: a region's throttle level, the lowest of its live,
	// non-draining forwarders (the region has room while one of them has).
	RegionLevels map[string]int
}

// FleetForwarder is one live forwarder in a FleetView.
type FleetForwarder struct {
	ID            string
	Media, Media6 netip.AddrPort
	Streams       protocol.StreamListeners // its TCP and TLS listeners (heartbeat flag S)
	Region        string
	Level         int
	Draining      bool
}

// NewFleet makes a fleet view from messages sealed with key; forwarders
// silent for timeout are left out. bad counts rejected messages (nil:
// not counted).
func NewFleet(key protocol.ClusterKey, timeout time.Duration, bad prometheus.Counter) *Fleet {
	return &Fleet{key: key, timeout: timeout, bad: bad, fwds: make(map[string]*fleetMember)}
}

// Subscribe starts listening on nc; Close stops.
func (f *Fleet) Subscribe(nc *nats.Conn, prefix string) error {
	sub, err := nc.Subscribe(protocol.ForwardersSubject(prefix), func(m *nats.Msg) { f.Take(m.Data, time.Now()) })
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.sub = sub
	f.mu.Unlock()
	return nil
}

// Close stops the subscription.
func (f *Fleet) Close() {
	f.mu.Lock()
	sub := f.sub
	f.sub = nil
	f.mu.Unlock()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
}

// Take applies one message from <prefix>.forwarders heard at now.
func (f *Fleet) Take(data []byte, now time.Time) {
	t, err := protocol.PeekClusterMsgType(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case err != nil:
	case t == protocol.ClusterMsgForwarderAnnounce:
		if err = f.ann.Unmarshal(data, f.key); err == nil {
			m := f.member(f.ann.ID, false, fleetMark{f.ann.Started, f.ann.Seq}, f.ann.At, now)
			if m != nil {
				m.media, m.media6, m.streams, m.draining = f.ann.Media, f.ann.Media6, f.ann.Streams, f.ann.Draining
			}
			return
		}
	case t == protocol.ClusterMsgLoadReport:
		if err = f.rep.Unmarshal(data, f.key); err == nil {
			m := f.member(f.rep.Forwarder, true, fleetMark{f.rep.Started, f.rep.Seq}, f.rep.At, now)
			if m == nil {
				return
			}
			m.level, m.draining = int(f.rep.Level), f.rep.Draining
			m.region = f.rep.Ops.Region
			m.rtts = append(m.rtts[:0], f.rep.RTTs...)
			return
		}
	default:
		return // another type on the subject: not ours to judge
	}
	if f.bad != nil {
		f.bad.Inc()
	}
}

// member returns id's member for a message (a load report if report)
// made at, or nil when the message is stale: made over fleetMaxSkew from
// now, or not newer than the last of its kind taken from id. Stale
// messages are counted with the bad ones.
func (f *Fleet) member(id string, report bool, mark fleetMark, at, now time.Time) *fleetMember {
	stale := func() *fleetMember {
		if f.bad != nil {
			f.bad.Inc()
		}
		return nil
	}
	if d := now.Sub(at); d > fleetMaxSkew || d < -fleetMaxSkew {
		return stale()
	}
	m := f.fwds[id]
	if m == nil {
		m = &fleetMember{}
		f.fwds[id] = m
	}
	last := &m.ann
	if report {
		last = &m.rep
	}
	if !last.newer(mark.started, mark.seq) {
		return stale()
	}
	*last = mark
	m.heard = now
	f.view = nil
	return m
}

// View returns the fleet as of now (rebuilt at most every 100 ms).
func (f *Fleet) View(now time.Time) *FleetView {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.view != nil && now.Sub(f.view.At) < 100*time.Millisecond {
		return f.view
	}
	v := &FleetView{At: now, Forwarders: map[string]FleetForwarder{}, ByAddr: map[netip.AddrPort]string{},
		RegionRTT: map[[2]string]time.Duration{}, RegionLevels: map[string]int{}}
	for id, m := range f.fwds {
		if silent := now.Sub(m.heard); silent > f.timeout {
			if silent > f.timeout+fleetForget {
				delete(f.fwds, id)
			}
			continue
		}
		v.Forwarders[id] = FleetForwarder{ID: id, Media: m.media, Media6: m.media6, Streams: m.streams, Region: m.region, Level: m.level, Draining: m.draining}
		for _, a := range []netip.AddrPort{m.media, m.media6} {
			if a.IsValid() {
				v.ByAddr[a] = id
			}
		}
		if !m.draining {
			if l, ok := v.RegionLevels[m.region]; !ok || m.level < l {
				v.RegionLevels[m.region] = m.level
			}
		}
		for _, r := range m.rtts {
			if m.region == "" || r.Region == m.region {
				continue
			}
			for _, k := range [][2]string{{m.region, r.Region}, {r.Region, m.region}} {
				if old, ok := v.RegionRTT[k]; !ok || r.RTT < old {
					v.RegionRTT[k] = r.RTT
				}
			}
		}
	}
	f.view = v
	return v
}

// InRegions lists the live, non-draining forwarders of the given regions,
// in the order of regions, then by id.
func (v *FleetView) InRegions(regions []string) []FleetForwarder {
	var out []FleetForwarder
	for _, r := range regions {
		start := len(out)
		for _, fw := range v.Forwarders {
			if fw.Region == r && !fw.Draining && fw.Media.IsValid() {
				out = append(out, fw)
			}
		}
		slices.SortFunc(out[start:], func(a, b FleetForwarder) int { return cmpString(a.ID, b.ID) })
	}
	return out
}
