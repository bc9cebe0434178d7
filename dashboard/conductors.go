package dashboard

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callrelay/callrelay/protocol"
)

// Conductors' reports (protocol.ConductorReport, on <prefix>.conductors):
// the dashboard keeps each conductor's last report, books every second's
// decision latency and decision rate in the history rings (history.go:
// the worst conductor's p50 and p99 per region and for the fleet, the
// decisions summed), and keeps each call's decision events (speaker
// switches, layer switches and cuts) in a ring of callEventsLen per call,
// for at most maxTimelineCalls calls, which the admin API's and the page's
// call views merge into the call's timeline. A report that does not
// authenticate, does not decode, is not newer than the last taken from its
// conductor, or was made more than reportSkew from this clock is dropped
// and counted by reason.

const (
	// maxConductors bounds the conductors tracked; more are dropped and
	// counted (overflow).
	maxConductors = 256
	// callEventsLen is the decision events kept per call.
	callEventsLen = 64
	// maxTimelineCalls bounds the calls with events kept; the call heard
	// of least recently makes room.
	maxTimelineCalls = 4096
	// reportSkew is how far a report's at may be from this clock.
	reportSkew = 10 * time.Second
)

// condDrops counts the reports dropped, by reason.
type condDrops struct {
	Forged    uint64 `json:"forged"`
	Malformed uint64 `json:"malformed"`
	Stale     uint64 `json:"stale"`
	Skewed    uint64 `json:"skewed"`
	Overflow  uint64 `json:"overflow"`
}

// condState is one conductor's last report.
type condState struct {
	last     protocol.ConductorReport
	lastSeen time.Time
}

// condSecond is one second's booking of a series, until the history takes
// it.
type condSecond struct {
	sec    int64
	series string
}

// callEvents is one call's ring of decision events.
type callEvents struct {
	ev   [callEventsLen]protocol.AdminEvent
	n    int
	last time.Time
}

// conductors holds the conductors' state; safe for concurrent use.
type conductors struct {
	mu      sync.Mutex
	conds   map[string]*condState
	pending map[condSecond]*condPoint
	calls   map[protocol.ID]*callEvents
	drops   condDrops
	taken   uint64
}

// condPoint is what one second holds of the conductors.
type condPoint struct {
	decisions  float64 // per second, summed
	p50, p99   time.Duration
	conductors uint16
}

// onConductorMsg takes one message of <prefix>.conductors.
func (s *Server) onConductorMsg(m *nats.Msg) {
	var r protocol.ConductorReport
	err := r.Unmarshal(m.Data, s.cfg.Key)
	c := &s.cond
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case errors.Is(err, protocol.ErrClusterMsgAuth):
		c.drops.Forged++
	case err != nil:
		c.drops.Malformed++
	default:
		c.add(&r, s.cfg.Now())
	}
}

// add takes an authentic report received at now (c.mu held).
func (c *conductors) add(r *protocol.ConductorReport, now time.Time) {
	if c.conds == nil {
		c.conds, c.pending, c.calls = map[string]*condState{}, map[condSecond]*condPoint{}, map[protocol.ID]*callEvents{}
	}
	if d := now.Sub(r.At); d > reportSkew || d < -reportSkew {
		c.drops.Skewed++
		return
	}
	st := c.conds[r.Conductor]
	switch {
	case st == nil && len(c.conds) >= maxConductors:
		c.drops.Overflow++
		return
	case st == nil:
		st = &condState{}
		c.conds[r.Conductor] = st
	case !r.Newer(&st.last):
		c.drops.Stale++
		return
	}
	st.last, st.lastSeen = *r, now
	c.taken++
	region := r.Region
	if region == "" {
		region = seriesNoRegion
	}
	rate := 0.0
	if r.Interval > 0 {
		rate = float64(r.InInterval) / r.Interval.Seconds()
	}
	for _, name := range [2]string{seriesAll, region} {
		k := condSecond{sec: now.Unix(), series: name}
		p := c.pending[k]
		if p == nil {
			p = &condPoint{}
			c.pending[k] = p
		}
		p.conductors++
		p.decisions += rate
		if r.InInterval > 0 {
			p.p50, p.p99 = max(p.p50, r.P50), max(p.p99, r.P99)
		}
	}
	for i := range r.Events {
		c.event(r.Conductor, &r.Events[i], now)
	}
}

// event keeps one decision event in its call's ring.
func (c *conductors) event(conductor string, e *protocol.ConductorEvent, now time.Time) {
	t := c.calls[e.Call]
	if t == nil {
		if len(c.calls) >= maxTimelineCalls {
			var oldest protocol.ID
			first := true
			for id, x := range c.calls {
				if first || x.last.Before(c.calls[oldest].last) {
					oldest, first = id, false
				}
			}
			delete(c.calls, oldest)
		}
		t = &callEvents{}
		c.calls[e.Call] = t
	}
	t.ev[t.n%callEventsLen] = adminEvent(conductor, e)
	t.n++
	t.last = now
}

// adminEvent is e as a timeline entry.
func adminEvent(conductor string, e *protocol.ConductorEvent) protocol.AdminEvent {
	out := protocol.AdminEvent{AtUnixMs: e.At.UnixMilli(), Conductor: conductor, Kind: e.Kind.String()}
	if !e.Participant.IsZero() {
		out.Participant = e.Participant.String()
	}
	switch e.Kind {
	case protocol.ConductorSpeaker:
		out.Detail = "dominant speaker; before: " + idOrNobody(e.Other)
	default:
		out.Detail = fmt.Sprintf("video from %s: %s -> %s", e.Other, rankName(e.From), rankName(e.To))
	}
	return out
}

func idOrNobody(id protocol.ID) string {
	if id.IsZero() {
		return "nobody"
	}
	return id.String()
}

// rankName names a layer rank as the conductor's decision does.
func rankName(r uint8) string {
	switch r {
	case 0xFF:
		return "none"
	case 1:
		return "low"
	case 2:
		return "high"
	}
	return fmt.Sprintf("rank %d", r)
}

// timeline is the call's decision events, oldest first.
func (c *conductors) timeline(call protocol.ID) []protocol.AdminEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.calls[call]
	if t == nil {
		return nil
	}
	out := make([]protocol.AdminEvent, 0, min(t.n, callEventsLen))
	for i := max(0, t.n-callEventsLen); i < t.n; i++ {
		out = append(out, t.ev[i%callEventsLen])
	}
	return out
}

// book moves the pending seconds up to h.last into the history (lock
// order: conductors, history), and forgets conductors silent for forget.
func (c *conductors) book(h *history, now time.Time, forget time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, cp := range c.pending {
		if k.sec > h.last {
			continue
		}
		delete(c.pending, k)
		if h.series == nil || k.sec <= h.last-historyLen {
			continue
		}
		p := h.at(k.series, k.sec)
		p.conductors += cp.conductors
		p.decisions += float32(cp.decisions)
		p.decideP50 = max(p.decideP50, uint32(cp.p50/time.Microsecond))
		p.decideP99 = max(p.decideP99, uint32(cp.p99/time.Microsecond))
	}
	for id, st := range c.conds {
		if now.Sub(st.lastSeen) > forget {
			delete(c.conds, id)
		}
	}
}

// ConductorView is one conductor as its last report shows it.
type ConductorView struct {
	ID         string    `json:"id"`
	Region     string    `json:"region"`
	Up         bool      `json:"up"`
	LastSeen   time.Time `json:"lastSeen"`
	Calls      uint32    `json:"calls"`
	Partitions uint16    `json:"partitions"`
	PerSecond  float64   `json:"decisionsPerSecond"`
	P50Ms      float64   `json:"p50Ms"`
	P99Ms      float64   `json:"p99Ms"`
	MaxMs      float64   `json:"maxMs"`
	Decisions  uint64    `json:"decisions"`
	EventsLost uint32    `json:"eventsLost"`
	Interval   float64   `json:"intervalSeconds"`
}

// view lists the conductors by id, and the drops.
func (c *conductors) view(now time.Time, down time.Duration) ([]ConductorView, condDrops) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ConductorView, 0, len(c.conds))
	for id, st := range c.conds {
		r := &st.last
		v := ConductorView{ID: id, Region: r.Region, Up: now.Sub(st.lastSeen) <= down, LastSeen: st.lastSeen.UTC(),
			Calls: r.Calls, Partitions: r.Partitions, Decisions: r.Decisions, EventsLost: r.EventsLost,
			P50Ms: ms(r.P50), P99Ms: ms(r.P99), MaxMs: ms(r.Max), Interval: r.Interval.Seconds()}
		if r.Interval > 0 {
			v.PerSecond = float64(r.InInterval) / r.Interval.Seconds()
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, c.drops
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
