package loadtest

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callrelay/callrelay/protocol"
)

// ForwarderSecond is what one forwarder reported about itself in one
// second of the run (its LoadReports on <subject>.forwarders).
type ForwarderSecond struct {
	// Level is the highest throttle level (0..4) reported in the second.
	Level int `json:"level"`
	// Sessions is the forwarder's session count in its last report of the
	// second.
	Sessions int `json:"sessions"`
	// CPUPct and MemoryPct are the highest CPU and memory load signals of
	// the second, in percent of the forwarder's capacity (the reports'
	// permille / 10).
	CPUPct    float64 `json:"cpu_pct"`
	MemoryPct float64 `json:"memory_pct"`
	// Draining and StateDegraded are true when any report of the second
	// said so.
	Draining      bool `json:"draining,omitempty"`
	StateDegraded bool `json:"state_degraded,omitempty"`
	// Reports counts the valid reports of the second.
	Reports int `json:"reports"`
}

// RelayHealth summarises the forwarders' LoadReports over the run (present
// only when the plan gave a NATS connection).
type RelayHealth struct {
	// Subject is where the reports were read (<prefix>.forwarders).
	Subject string `json:"subject"`
	// Reports counts valid LoadReports; BadReports messages that looked
	// like LoadReports but failed authentication or decoding (forged, or
	// a wrong cluster key); StaleReports valid reports whose sequence did
	// not advance (replays, reordering); OtherMessages other cluster
	// messages on the subject (forwarder announcements) and non-messages.
	Reports       int `json:"reports"`
	BadReports    int `json:"bad_reports"`
	StaleReports  int `json:"stale_reports"`
	OtherMessages int `json:"other_messages"`
	// PeakLevel is the highest throttle level of any forwarder; CPUMaxPct
	// and MemoryMaxPct the highest CPU and memory signals.
	PeakLevel    int     `json:"peak_level"`
	CPUMaxPct    float64 `json:"cpu_max_pct"`
	MemoryMaxPct float64 `json:"memory_max_pct"`
	// Forwarders has one entry per forwarder id seen, sorted by id.
	Forwarders []ForwarderSummary `json:"forwarders"`
}

// ForwarderSummary is one forwarder's figures over the run.
type ForwarderSummary struct {
	ID string `json:"id"`
	// SecondsSeen counts the seconds with at least one report.
	SecondsSeen int `json:"seconds_seen"`
	// PeakLevel is the highest throttle level; PeakLevelAtS the first
	// second it was reached; SecondsThrottled the seconds above level 0.
	PeakLevel        int `json:"peak_level"`
	PeakLevelAtS     int `json:"peak_level_at_s"`
	SecondsThrottled int `json:"seconds_throttled"`
	// CPUMeanPct is the mean of the per-second CPU signal over the seconds
	// seen; CPUMaxPct, MemoryMaxPct and SessionsMax the largest.
	CPUMeanPct   float64 `json:"cpu_mean_pct"`
	CPUMaxPct    float64 `json:"cpu_max_pct"`
	MemoryMaxPct float64 `json:"memory_max_pct"`
	SessionsMax  int     `json:"sessions_max"`
	// Drained is true when the forwarder reported draining at some point.
	Drained bool `json:"drained,omitempty"`
}

// Load signal indices in protocol.LoadReport.Signals.
const (
	signalCPU    = 0
	signalMemory = 3
)

// ForwardersSubject returns the subject forwarders publish their
// heartbeats and LoadReports on, for a subject prefix.
func ForwardersSubject(prefix string) string { return protocol.ForwardersSubject(prefix) }

// relayMonitor reads the forwarders' LoadReports during a run.
type relayMonitor struct {
	key     protocol.ClusterKey
	subject string
	sub     *nats.Subscription

	mu                         sync.Mutex
	stopped                    bool
	cur                        map[string]ForwarderSecond
	last                       map[string]reportID
	reports, bad, stale, other int
}

// reportID orders one forwarder's reports: a restart (new Started)
// begins a new sequence.
type reportID struct {
	started time.Time
	seq     uint64
}

// startRelayMonitor subscribes to prefix.forwarders on nc.
func startRelayMonitor(nc *nats.Conn, prefix string, key protocol.ClusterKey) (*relayMonitor, error) {
	m := &relayMonitor{key: key, subject: ForwardersSubject(prefix),
		cur: make(map[string]ForwarderSecond), last: make(map[string]reportID)}
	sub, err := nc.Subscribe(m.subject, func(msg *nats.Msg) { m.onMsg(msg.Data) })
	if err != nil {
		return nil, fmt.Errorf("loadtest: subscribing to %s: %w", m.subject, err)
	}
	// Make sure the server has the subscription before the run starts.
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("loadtest: subscribing to %s: %w", m.subject, err)
	}
	m.sub = sub
	return m, nil
}

// onMsg files one message of the forwarders' subject.
func (m *relayMonitor) onMsg(b []byte) {
	var r protocol.LoadReport
	t, err := protocol.PeekClusterMsgType(b)
	var decodeErr error
	if err == nil && t == protocol.ClusterMsgLoadReport {
		decodeErr = r.Unmarshal(b, m.key)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	switch {
	case err != nil || t != protocol.ClusterMsgLoadReport:
		m.other++
		return
	case decodeErr != nil:
		m.bad++
		return
	}
	id := reportID{started: r.Started, seq: r.Seq}
	if prev, ok := m.last[r.Forwarder]; ok && prev.started.Equal(id.started) && id.seq <= prev.seq {
		m.stale++
		return
	}
	m.last[r.Forwarder] = id
	m.reports++
	f := m.cur[r.Forwarder]
	f.Level = max(f.Level, int(r.Level))
	f.Sessions = int(r.Sessions)
	f.CPUPct = max(f.CPUPct, float64(r.Signals[signalCPU])/10)
	f.MemoryPct = max(f.MemoryPct, float64(r.Signals[signalMemory])/10)
	f.Draining = f.Draining || r.Draining
	f.StateDegraded = f.StateDegraded || r.StateDegraded
	f.Reports++
	m.cur[r.Forwarder] = f
}

// closeSecond returns the second's reports per forwarder (nil when there
// were none) and starts the next second.
func (m *relayMonitor) closeSecond() map[string]ForwarderSecond {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.cur) == 0 {
		return nil
	}
	out := m.cur
	m.cur = make(map[string]ForwarderSecond, len(out))
	return out
}

// stop unsubscribes; later messages are ignored.
func (m *relayMonitor) stop() {
	if m == nil {
		return
	}
	_ = m.sub.Unsubscribe()
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
}

// health summarises the monitor's counters and the seconds' reports.
func (m *relayMonitor) health(secs []Second) *RelayHealth {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	h := &RelayHealth{Subject: m.subject, Reports: m.reports, BadReports: m.bad, StaleReports: m.stale, OtherMessages: m.other}
	m.mu.Unlock()
	summariseRelay(h, secs)
	return h
}

// summariseRelay fills h's per-forwarder summaries and peaks from secs.
func summariseRelay(h *RelayHealth, secs []Second) {
	byID := map[string]*ForwarderSummary{}
	cpuSum := map[string]float64{}
	for _, s := range secs {
		for id, f := range s.Forwarders {
			fs := byID[id]
			if fs == nil {
				fs = &ForwarderSummary{ID: id, PeakLevel: -1}
				byID[id] = fs
			}
			fs.SecondsSeen++
			if f.Level > fs.PeakLevel {
				fs.PeakLevel, fs.PeakLevelAtS = f.Level, s.T
			}
			if f.Level > 0 {
				fs.SecondsThrottled++
			}
			cpuSum[id] += f.CPUPct
			fs.CPUMaxPct = max(fs.CPUMaxPct, f.CPUPct)
			fs.MemoryMaxPct = max(fs.MemoryMaxPct, f.MemoryPct)
			fs.SessionsMax = max(fs.SessionsMax, f.Sessions)
			fs.Drained = fs.Drained || f.Draining
		}
	}
	h.Forwarders = h.Forwarders[:0]
	for id, fs := range byID {
		fs.CPUMeanPct = round3(cpuSum[id] / float64(fs.SecondsSeen))
		h.PeakLevel = max(h.PeakLevel, fs.PeakLevel)
		h.CPUMaxPct = max(h.CPUMaxPct, fs.CPUMaxPct)
		h.MemoryMaxPct = max(h.MemoryMaxPct, fs.MemoryMaxPct)
		h.Forwarders = append(h.Forwarders, *fs)
	}
	sort.Slice(h.Forwarders, func(i, j int) bool { return h.Forwarders[i].ID < h.Forwarders[j].ID })
}
