package conductor

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// Locator answers a device's (or its signalling service's) "which
// forwarders for region R": GET /v1/locate?region=R gives the live,
// non-draining forwarders of R and of its neighbours, nearest region
// first, from the forwarders' own heartbeats and load reports (a Fleet).
// The JSON is client.Located. Bad input is answered 400 and counted; the
// answer is bounded (MaxForwarders). Serve it through internal/httpserve
// (connection caps and deadlines).
type Locator struct {
	fleet *Fleet
	cfg   LocatorConfig
	reqs  *prometheus.CounterVec
	secs  prometheus.Histogram
	now   func() time.Time
}

// LocatorConfig configures a Locator.
type LocatorConfig struct {
	// Neighbours lists each region's neighbours, nearest first
	// (ParseRegionTable). A region without an entry gets the regions its
	// forwarders measured over their trunks, nearest first (at most
	// MaxNeighbours).
	Neighbours    map[string][]string
	MaxNeighbours int // default 2
	MaxForwarders int // per answer; default 16
	Registerer    prometheus.Registerer
	Now           func() time.Time
}

// ParseRegionTable parses "eu:uk,za;uk:eu;za:eu" (region, colon, its
// neighbours nearest first; entries separated by semicolons).
func ParseRegionTable(s string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		region, list, ok := strings.Cut(entry, ":")
		if !ok || protocol.ValidRegion(region) != nil || region == "" {
			return nil, fmt.Errorf("region table: %q: want region:neighbour,neighbour (printable ASCII, no space)", entry)
		}
		if _, dup := out[region]; dup {
			return nil, fmt.Errorf("region table: %q listed twice", region)
		}
		var ns []string
		for _, n := range strings.Split(list, ",") {
			if n = strings.TrimSpace(n); n == "" {
				continue
			}
			if protocol.ValidRegion(n) != nil || n == region || slices.Contains(ns, n) {
				return nil, fmt.Errorf("region table: %q: bad or repeated neighbour %q", region, n)
			}
			ns = append(ns, n)
		}
		out[region] = ns
	}
	return out, nil
}

// NewLocator makes a Locator over f.
func NewLocator(f *Fleet, cfg LocatorConfig) *Locator {
	if cfg.MaxNeighbours <= 0 {
		cfg.MaxNeighbours = 2
	}
	if cfg.MaxForwarders <= 0 {
		cfg.MaxForwarders = 16
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Locator{fleet: f, cfg: cfg, now: cfg.Now,
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_locate_requests_total",
			Help: "Locator requests by outcome: ok, bad_request (answered 400), unknown_region (404: no forwarder there or near), method (405)."},
			[]string{"outcome"}),
		secs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrelay_locate_seconds",
			Help: "Time to answer a locator request.", Buckets: prometheus.ExponentialBuckets(1e-5, 4, 8)}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(l.reqs, l.secs)
	}
	return l
}

// locatedForwarder is client.LocatedForwarder (the wire form is theirs).
type locatedForwarder struct {
	ID          string  `json:"id"`
	Region      string  `json:"region"`
	UDP         string  `json:"udp"`
	UDP6        string  `json:"udp6,omitempty"`
	TCP         string  `json:"tcp,omitempty"` // stream listeners for devices without UDP,
	TLS         string  `json:"tls,omitempty"` // of UDP's family (IPv4) when it has both
	Level       int     `json:"level"`
	RegionRTTMs float64 `json:"region_rtt_ms"`
}

type located struct {
	Region     string             `json:"region"`
	Forwarders []locatedForwarder `json:"forwarders"`
}

// ServeHTTP answers GET /v1/locate?region=R.
func (l *Locator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() { l.secs.Observe(time.Since(start).Seconds()) }()
	fail := func(code int, outcome, msg string) {
		l.reqs.WithLabelValues(outcome).Inc()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
	}
	switch {
	case r.Method != http.MethodGet:
		fail(http.StatusMethodNotAllowed, "method", "GET only")
		return
	case r.URL.Path != "/v1/locate":
		fail(http.StatusNotFound, "bad_request", "not found: GET /v1/locate?region=R")
		return
	case len(r.URL.RawQuery) > 256:
		fail(http.StatusBadRequest, "bad_request", "query too long")
		return
	}
	q := r.URL.Query()
	region := q.Get("region")
	if len(q) != 1 || len(q["region"]) != 1 || region == "" || protocol.ValidRegion(region) != nil {
		fail(http.StatusBadRequest, "bad_request", "want exactly one region=R, R 1..32 printable ASCII without space")
		return
	}
	ans, err := l.Locate(region)
	if err != nil {
		fail(http.StatusNotFound, "unknown_region", err.Error())
		return
	}
	l.reqs.WithLabelValues("ok").Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=30")
	_ = json.NewEncoder(w).Encode(ans)
}

// errNoForwarders: nothing live in a region or its neighbours.
var errNoForwarders = errors.New("no live forwarder in the region or its neighbours")

// Locate is the answer for region.
func (l *Locator) Locate(region string) (located, error) {
	view := l.fleet.View(l.now())
	regions := append([]string{region}, l.neighbours(view, region)...)
	out := located{Region: region, Forwarders: []locatedForwarder{}}
	fws := view.InRegions(regions)
	// Within a region, the least throttled first (InRegions keeps regions
	// in order and sorts each by id).
	slices.SortStableFunc(fws, func(a, b FleetForwarder) int {
		ia, ib := slices.Index(regions, a.Region), slices.Index(regions, b.Region)
		if ia != ib {
			return ia - ib
		}
		return a.Level - b.Level
	})
	for _, fw := range fws[:min(len(fws), l.cfg.MaxForwarders)] {
		lf := locatedForwarder{ID: fw.ID, Region: fw.Region, UDP: fw.Media.String(), Level: fw.Level}
		if fw.Media6.IsValid() {
			lf.UDP6 = fw.Media6.String()
		}
		v6 := !fw.Media.Addr().Unmap().Is4()
		if a := fw.Streams.For(protocol.TransportTCP, v6); a.IsValid() {
			lf.TCP = a.String()
		}
		if a := fw.Streams.For(protocol.TransportTLS, v6); a.IsValid() {
			lf.TLS = a.String()
		}
		if fw.Region != region {
			lf.RegionRTTMs = float64(view.RegionRTT[[2]string{region, fw.Region}].Microseconds()) / 1000
		}
		out.Forwarders = append(out.Forwarders, lf)
	}
	if len(out.Forwarders) == 0 {
		return out, errNoForwarders
	}
	return out, nil
}

// neighbours are the configured neighbours of region, else the regions
// its forwarders' trunks measured, nearest first.
func (l *Locator) neighbours(view *FleetView, region string) []string {
	if ns, ok := l.cfg.Neighbours[region]; ok {
		return ns
	}
	type near struct {
		region string
		rtt    time.Duration
	}
	var all []near
	for k, rtt := range view.RegionRTT {
		if k[0] == region && k[1] != region {
			all = append(all, near{k[1], rtt})
		}
	}
	slices.SortFunc(all, func(a, b near) int {
		if a.rtt != b.rtt {
			return int(a.rtt - b.rtt)
		}
		return cmpString(a.region, b.region)
	})
	var out []string
	for _, n := range all[:min(len(all), l.cfg.MaxNeighbours)] {
		out = append(out, n.region)
	}
	return out
}
