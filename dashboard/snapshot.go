package dashboard

import (
	"fmt"
	"strings"
	"time"
)

// Snapshot is everything the page shows, as /api/state and /events send it.
type Snapshot struct {
	At         time.Time       `json:"at"`
	Verdict    Verdict         `json:"verdict"`
	Forwarders []ForwarderView `json:"forwarders"`
	Cluster    ClusterTotals   `json:"cluster"`
	Partitions PartitionsView  `json:"partitions"`
	Health     HealthView      `json:"health"`
	Dropped    dropCounts      `json:"dropped"`
}

// Verdict is the one-glance answer.
type Verdict struct {
	// Status is OK, DEGRADED (something needs a look; calls flow),
	// THROTTLING (joins are being refused for capacity) or DOWN (no
	// forwarder up, or the dashboard cannot hear the cluster).
	Status string `json:"status"`
	// Text is the headline, such as "THROTTLING on fwd-b (level 2: new
	// one-to-one calls refused)".
	Text string `json:"text"`
	// Issues lists everything worth a look, worst first.
	Issues []string `json:"issues"`
}

// ClusterTotals adds up the forwarders that are up.
type ClusterTotals struct {
	Up            int           `json:"up"`
	Known         int           `json:"known"`
	Sessions      uint64        `json:"sessions"`
	CallsOneToOne uint64        `json:"callsOneToOne"`
	CallsGroup    uint64        `json:"callsGroup"`
	Classes       []ClassCounts `json:"classes"`
}

// PartitionsView says who holds the conductor partitions.
type PartitionsView struct {
	Total     int         `json:"total"`
	Checked   bool        `json:"checked"` // false until the first sweep, or without Redis
	CheckedAt time.Time   `json:"checkedAt"`
	Error     string      `json:"error,omitempty"`
	Owner     []int       `json:"owner"` // per partition, index into Owners, -1 unowned
	Owners    []OwnerView `json:"owners"`
	Unowned   []int       `json:"unowned"`
}

// OwnerView is one conductor instance holding partitions.
type OwnerView struct {
	Owner      string `json:"owner"`     // "<conductor id>/<nonce>"
	Conductor  string `json:"conductor"` // the id part
	Partitions int    `json:"partitions"`
	MinEpoch   uint64 `json:"minEpoch"`
	MaxEpoch   uint64 `json:"maxEpoch"`
}

// HealthView is the dashboard's own view of its dependencies.
type HealthView struct {
	Redis Probe `json:"redis"`
	NATS  Probe `json:"nats"`
}

// Probe is one health check.
type Probe struct {
	Configured bool      `json:"configured"`
	Checked    bool      `json:"checked"`
	OK         bool      `json:"ok"`
	LatencyMs  float64   `json:"latencyMs"`
	Error      string    `json:"error,omitempty"`
	At         time.Time `json:"at"`
}

// totals adds up the forwarders that are up.
func totals(fwds []ForwarderView) ClusterTotals {
	t := ClusterTotals{Known: len(fwds), Classes: make([]ClassCounts, len(classNames))}
	for c := range classNames {
		t.Classes[c] = ClassCounts{Class: c, Name: classNames[c]}
	}
	for i := range fwds {
		f := &fwds[i]
		// Admissions count for every forwarder still on the page: a
		// forwarder that just died refused joins a minute ago all the same.
		for c, cc := range f.Classes {
			tc := &t.Classes[c]
			tc.Admitted1 += cc.Admitted1
			tc.Refused1 += cc.Refused1
			tc.Admitted5 += cc.Admitted5
			tc.Refused5 += cc.Refused5
			tc.AdmittedTotal += cc.AdmittedTotal
			tc.RefusedTotal += cc.RefusedTotal
		}
		if !f.Up {
			continue
		}
		t.Up++
		t.Sessions += uint64(f.Sessions)
		t.CallsOneToOne += uint64(f.CallsOneToOne)
		t.CallsGroup += uint64(f.CallsGroup)
	}
	return t
}

// verdict decides the headline from the rest of the snapshot.
func verdict(s *Snapshot) Verdict {
	var down, throttling []string
	issues := []string{} // never null in the JSON
	for i := range s.Forwarders {
		f := &s.Forwarders[i]
		switch {
		case !f.Up:
			down = append(down, f.ID)
			continue
		case f.Level > 0:
			throttling = append(throttling, fmt.Sprintf("%s (%s)", f.ID, f.LevelText))
		}
		if f.Draining {
			issues = append(issues, f.ID+" is draining: it admits nobody new")
		}
		if f.StateDegraded {
			issues = append(issues, fmt.Sprintf("%s cannot reach Redis: %d call-state changes queued", f.ID, f.StateQueued))
		}
		if r := f.refusing(); r != "" && f.Level == 0 {
			issues = append(issues, fmt.Sprintf("%s refused joins in the last minute (%s)", f.ID, r))
		}
	}
	issues = append(issues, spillIssues(s.Forwarders)...)
	if len(down) > 0 {
		issues = append([]string{"down (silent for more than a few seconds): " + listSome(down)}, issues...)
	}
	h := s.Health
	if h.NATS.Checked && !h.NATS.OK {
		issues = append(issues, "NATS unreachable from the dashboard: "+h.NATS.Error)
	}
	if h.Redis.Configured && h.Redis.Checked && !h.Redis.OK {
		issues = append(issues, "Redis unreachable from the dashboard: "+h.Redis.Error)
	}
	if p := s.Partitions; p.Checked && p.Error == "" && len(p.Unowned) > 0 {
		issues = append(issues, fmt.Sprintf("%d of %d conductor partitions have no owner: their calls get no speaker decisions", len(p.Unowned), p.Total))
	}
	switch {
	case s.Cluster.Up == 0:
		text := "DOWN: no forwarder is sending heartbeats"
		if len(down) > 0 {
			text = "DOWN: every forwarder is silent (" + listSome(down) + ")"
		}
		if h.NATS.Checked && !h.NATS.OK {
			text = "DOWN: the dashboard cannot reach NATS"
		}
		return Verdict{Status: "DOWN", Text: text, Issues: issues}
	case len(throttling) > 0:
		return Verdict{Status: "THROTTLING", Text: "THROTTLING on " + listSome(throttling), Issues: issues}
	case len(issues) > 0:
		return Verdict{Status: "DEGRADED", Text: "DEGRADED: " + issues[0], Issues: issues}
	}
	return Verdict{Status: "OK", Text: fmt.Sprintf("OK: %d forwarder(s) up, admitting every join", s.Cluster.Up), Issues: []string{}}
}

// listSome joins the first few names and says how many more there are: a
// fleet's headline stays one line.
func listSome(names []string) string {
	const some = 8
	if len(names) <= some {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%d forwarders: %s and %d more", len(names), strings.Join(names[:some], ", "), len(names)-some)
}
