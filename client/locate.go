package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Located is a locator's answer (`callrelay locate`, README "Regions"):
// the forwarders of the device's region and of its neighbours, nearest
// region first.
type Located struct {
	Region     string             `json:"region"`
	Forwarders []LocatedForwarder `json:"forwarders"`
}

// LocatedForwarder is one forwarder of a locator's answer.
type LocatedForwarder struct {
	ID     string `json:"id"`
	Region string `json:"region"`
	// UDP is the media address devices join, UDP6 the IPv6 one of a
	// dual-stack forwarder (empty if none).
	UDP  string `json:"udp"`
	UDP6 string `json:"udp6,omitempty"`
	// TCP and TLS are its stream listeners, when it announces them.
	TCP string `json:"tcp,omitempty"`
	TLS string `json:"tls,omitempty"`
	// Level is its throttle level (0..4); Draining forwarders are not
	// listed.
	Level int `json:"level"`
	// RegionRTT is the measured trunk RTT between the asked region and
	// this forwarder's, in ms (0 in the asked region).
	RegionRTTMs float64 `json:"region_rtt_ms"`
}

// maxLocateAnswer bounds what Locate reads.
const maxLocateAnswer = 256 << 10

// Locate asks the locator at base (e.g. "https://locate.example.net")
// which forwarders serve region. hc nil uses http.DefaultClient; ctx
// bounds the request.
func Locate(ctx context.Context, hc *http.Client, base, region string) (*Located, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("%w: locator %q: %w", ErrConfig, base, err)
	}
	u = u.JoinPath("v1", "locate")
	u.RawQuery = url.Values{"region": {region}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: locate: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLocateAnswer))
	if err != nil {
		return nil, fmt.Errorf("client: locate: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("client: locate: %s: %s", resp.Status, body)
	}
	var l Located
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, fmt.Errorf("client: locate: answer: %w", err)
	}
	return &l, nil
}

// Apply puts the answer's forwarders into cfg's candidate list (UDP, and
// IPv6 where given, in the answer's order, after those already there)
// and their TCP and TLS listeners into cfg.Streams. Addresses that do not
// parse are skipped; it returns how many forwarders it took.
func (l *Located) Apply(cfg *Config) int {
	n := 0
	for _, f := range l.Forwarders {
		a, err := netip.ParseAddrPort(f.UDP)
		if err != nil {
			continue
		}
		n++
		cfg.Forwarders = appendNew(cfg.Forwarders, a)
		if a6, err := netip.ParseAddrPort(f.UDP6); err == nil {
			cfg.Forwarders = appendNew(cfg.Forwarders, a6)
		}
		var se StreamEndpoints
		se.TCP, _ = netip.ParseAddrPort(f.TCP)
		se.TLS, _ = netip.ParseAddrPort(f.TLS)
		if se.TCP.IsValid() || se.TLS.IsValid() {
			if cfg.Streams == nil {
				cfg.Streams = make(map[netip.AddrPort]StreamEndpoints)
			}
			cfg.Streams[a] = se
		}
	}
	return n
}

func appendNew(s []netip.AddrPort, a netip.AddrPort) []netip.AddrPort {
	if slices.Contains(s, a) {
		return s
	}
	return append(s, a)
}

// CandidateRTTs returns the RTT last measured to each forwarder the
// session has exchanged authenticated STUN with (joins, keepalives).
func (s *Session) CandidateRTTs() map[netip.AddrPort]time.Duration {
	return s.cfg.creds.rtts.snapshot()
}

// CandidateRTTs is Session.CandidateRTTs for one Conn.
func (c *Conn) CandidateRTTs() map[netip.AddrPort]time.Duration { return c.cfg.creds.rtts.snapshot() }

// rttTable keeps the device's RTT to each candidate forwarder, measured on
// authenticated answers to requests sent once (Karn: a retransmitted
// request's answer says nothing), and builds the CANDIDATE-RTTS report
// keepalives carry (protocol/README.md 3.2). Shared by a Session's Conns
// through their credentials.
type rttTable struct {
	mu sync.Mutex
	m  map[netip.AddrPort]rttEntry
	// seq is the last report's sequence (nextSeq).
	seq uint64
}

type rttEntry struct {
	srtt time.Duration // smoothed as TCP does (RFC 6298: 1/8)
	at   time.Time
}

// rttKeep is how long a measurement is reported; rttMax bounds the table.
const (
	rttKeep = 10 * time.Minute
	rttMax  = 32
)

// errBadRTT: a sample that cannot be an RTT (a clock step).
var errBadRTT = errors.New("client: RTT sample out of range")

// observe takes one sample for addr.
func (t *rttTable) observe(addr netip.AddrPort, rtt time.Duration, now time.Time) error {
	if rtt < 0 || rtt > protocol.MaxCandidateRTT {
		return errBadRTT
	}
	addr = unmap(addr)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[netip.AddrPort]rttEntry)
	}
	e, ok := t.m[addr]
	switch {
	case !ok || now.Sub(e.at) > rttKeep:
		e.srtt = rtt
	case rtt > 2*e.srtt+20*time.Millisecond || rtt < e.srtt/2:
		// A jump either way is news at once, not after eight samples; a
		// lone spike is gone with the next sample, and the conductor acts
		// only on a move it keeps wanting (PlacementConfig.Sustain).
		e.srtt = rtt
	default:
		e.srtt += (rtt - e.srtt) / 8
	}
	e.at = now
	t.m[addr] = e
	if len(t.m) > rttMax {
		t.evictOldest()
	}
	return nil
}

func (t *rttTable) evictOldest() {
	var old netip.AddrPort
	var at time.Time
	for a, e := range t.m {
		if at.IsZero() || e.at.Before(at) {
			old, at = a, e.at
		}
	}
	delete(t.m, old)
}

func (t *rttTable) snapshot() map[netip.AddrPort]time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[netip.AddrPort]time.Duration, len(t.m))
	for a, e := range t.m {
		out[a] = e.srtt
	}
	return out
}

// nextSeq is a new report's sequence: the Unix time in milliseconds, or one
// above the last sequence if that is not more, as DEVICE-PROOF's counter.
// So reports grow across the Conns of a Session and the forwarders they
// reach, and a restarted device (a new Session) carries on above the
// reports its old one sent to a session the forwarder still holds. t.mu
// must be held.
func (t *rttTable) nextSeq(now time.Time) uint64 {
	t.seq = max(t.seq+1, uint64(max(now.UnixMilli(), 0)))
	return t.seq
}

// report builds the report a request to via carries, sequenced: via first
// (marked), then the freshest others, at most protocol.MaxCandidateRTTs;
// nil when nothing was measured to via (the conductor needs the current
// path's RTT to judge).
func (t *rttTable) report(via netip.AddrPort, now time.Time) *protocol.CandidateRTTs {
	via = unmap(via)
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[via]
	if !ok || now.Sub(e.at) > rttKeep || !via.Addr().IsValid() || via.Addr().IsUnspecified() || via.Port() == 0 {
		return nil
	}
	r := &protocol.CandidateRTTs{N: 1, Seq: t.nextSeq(now)}
	r.Entries[0] = protocol.CandidateRTT{Addr: via, RTT: e.srtt, Via: true}
	others := make([]netip.AddrPort, 0, len(t.m))
	for a, o := range t.m {
		if a != via && now.Sub(o.at) <= rttKeep && a.Port() != 0 && !a.Addr().IsUnspecified() {
			others = append(others, a)
		}
	}
	slices.SortFunc(others, func(a, b netip.AddrPort) int { return t.m[b].at.Compare(t.m[a].at) })
	for _, a := range others[:min(len(others), protocol.MaxCandidateRTTs-1)] {
		r.Entries[r.N] = protocol.CandidateRTT{Addr: a, RTT: t.m[a].srtt}
		r.N++
	}
	return r
}
