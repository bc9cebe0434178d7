package loadtest

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// What the forwarders' TCP and TLS legs dropped: the generator cannot see
// a packet a forwarder dropped from a backed-up leg's send queue (it is
// simply not received), so it reads the forwarders' own counters from
// their Prometheus endpoints (forwarder --metrics-listen), before the run
// and after it, and reports the growth.

// Metric families read from the forwarders.
const (
	metricQueueDrops = "callrelay_forwarder_stream_queue_drops_total"
	metricRtxSkipped = "callrelay_forwarder_stream_retransmissions_skipped_total"
	metricRefused    = "callrelay_forwarder_stream_refused_total"
)

// scrapeTimeout bounds one read of a forwarder's metrics.
const scrapeTimeout = 3 * time.Second

// StreamQueue is what the forwarders' TCP and TLS legs dropped during the
// run, from their metrics (Transports.Metrics), TCP and TLS legs together
// (the forwarder counts them as one).
type StreamQueue struct {
	// Forwarders counts the metrics endpoints read both before and after
	// the run; Errors says why the others were not.
	Forwarders int      `json:"forwarders"`
	Errors     []string `json:"errors,omitempty"`
	// AudioDropped and VideoDropped count packets dropped from stream
	// legs' send queues (backed up: oldest video first, then audio).
	AudioDropped uint64 `json:"audio_dropped"`
	VideoDropped uint64 `json:"video_dropped"`
	// RetransmissionsSkipped counts NACKed packets not resent to stream
	// legs (they lose nothing).
	RetransmissionsSkipped uint64 `json:"retransmissions_skipped"`
	// ConnectionsRefused counts TCP and TLS connections the forwarders
	// closed at once, over their --stream-per-ip or --stream-max-conns
	// bound: a generator whose stream devices all come from one address
	// meets --stream-per-ip (16 by default) first.
	ConnectionsRefused uint64 `json:"connections_refused"`
}

// queueCounts are one forwarder's counters at one moment.
type queueCounts struct{ audio, video, rtx, refused uint64 }

// queueWatch holds the counters read before the run.
type queueWatch struct {
	urls   []string
	before []queueCounts
	errs   []error // by URL: the read before failed
}

// watchQueues reads every endpoint's counters (nil without endpoints).
func watchQueues(ctx context.Context, urls []string) *queueWatch {
	if len(urls) == 0 {
		return nil
	}
	w := &queueWatch{urls: urls}
	w.before, w.errs = scrapeAll(ctx, urls)
	return w
}

// finish reads the counters again and returns their growth.
func (w *queueWatch) finish(ctx context.Context) *StreamQueue {
	if w == nil {
		return nil
	}
	after, errs := scrapeAll(ctx, w.urls)
	q := &StreamQueue{}
	for i := range w.urls {
		if err := firstErr(w.errs[i], errs[i]); err != nil {
			q.Errors = append(q.Errors, err.Error())
			continue
		}
		q.Forwarders++
		q.AudioDropped += grown(w.before[i].audio, after[i].audio)
		q.VideoDropped += grown(w.before[i].video, after[i].video)
		q.RetransmissionsSkipped += grown(w.before[i].rtx, after[i].rtx)
		q.ConnectionsRefused += grown(w.before[i].refused, after[i].refused)
	}
	return q
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// grown is a counter's growth; one that went down was reset (the
// forwarder restarted), and all it holds is new.
func grown(before, after uint64) uint64 {
	if after < before {
		return after
	}
	return after - before
}

// scrapeAll reads the endpoints in parallel.
func scrapeAll(ctx context.Context, urls []string) ([]queueCounts, []error) {
	out, errs := make([]queueCounts, len(urls)), make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = scrape(ctx, u)
		}()
	}
	wg.Wait()
	return out, errs
}

// scrape reads one forwarder's stream counters from its metrics.
func scrape(ctx context.Context, u string) (queueCounts, error) {
	var c queueCounts
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return c, fmt.Errorf("loadtest: metrics %s: %w", u, err)
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c, fmt.Errorf("loadtest: metrics %s: %w", u, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("loadtest: metrics %s: %s", u, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return c, fmt.Errorf("loadtest: metrics %s: %w", u, err)
	}
	drops, ok := fams[metricQueueDrops]
	if !ok {
		return c, fmt.Errorf("loadtest: metrics %s: no %s: not a forwarder, or one without TCP and TLS legs", u, metricQueueDrops)
	}
	for _, m := range drops.GetMetric() {
		switch label(m, "kind") {
		case "audio":
			c.audio += counterValue(m)
		case "video":
			c.video += counterValue(m)
		}
	}
	c.rtx = sum(fams, metricRtxSkipped)
	c.refused = sum(fams, metricRefused)
	return c, nil
}

// sum adds up a counter family's series (0 when absent).
func sum(fams map[string]*dto.MetricFamily, name string) uint64 {
	var n uint64
	for _, m := range fams[name].GetMetric() {
		n += counterValue(m)
	}
	return n
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func counterValue(m *dto.Metric) uint64 {
	v := m.GetCounter().GetValue()
	if v < 0 || v != v { // negative or NaN: not a count
		return 0
	}
	return uint64(v)
}

// validMetricsURL says what is wrong with a metrics endpoint's URL.
func validMetricsURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want an http(s) URL such as http://10.0.0.5:9100/metrics")
	}
	return nil
}
