package dashboard

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/httpserve"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Config is what the dashboard needs. Start from Default() and override.
type Config struct {
	// NATS carries the forwarders' heartbeats (required).
	NATS *nats.Conn
	// Subject is the cluster's NATS subject prefix; heartbeats arrive on
	// <Subject>.forwarders.
	Subject string
	// Key authenticates the heartbeats (the cluster key, required).
	Key protocol.ClusterKey
	// Store serves the call drill-down and Leases the conductor partitions'
	// holders. Usually the same *statestore.Redis. Either may be nil: the
	// page then says the state store is not configured.
	Store  statestore.Store
	Leases statestore.Leases
	// Partitions is the cluster's partition count (the conductors' and
	// forwarders' number).
	Partitions int
	// Listen is the TCP address of the page (use 127.0.0.1:0 in tests).
	// With neither token set it must be a loopback address.
	Listen string
	// ViewerToken and AdminToken are the bearer tokens of the page and its
	// API (see auth.go): a viewer sees everything but device addresses, an
	// admin sees those too. Either, both or neither may be set; neither:
	// every request is a viewer's, on loopback only.
	ViewerToken, AdminToken string
	// HTTP bounds the page's server: timeouts and the connection cap
	// (HTTP.Logger is set from Logger).
	HTTP   httpserve.Config
	Logger *zap.Logger
	// Now is the clock; it decides when a forwarder counts as down and
	// which second a report's deltas fall in.
	Now func() time.Time

	// DownAfter: a forwarder silent this long is shown as down.
	DownAfter time.Duration
	// ForgetAfter: a forwarder silent this long leaves the page.
	ForgetAfter time.Duration
	// PushEvery is the period of the server-sent snapshots.
	PushEvery time.Duration
	// PollEvery is the period of the partition and health checks.
	PollEvery time.Duration
	// ProbeTimeout bounds one health probe and one partition sweep.
	ProbeTimeout time.Duration
	// MaxForwarders bounds the forwarders tracked; heartbeats from more
	// are counted and dropped.
	MaxForwarders int
	// DecisionWait bounds how long a call drill-down listens on the call's
	// subject for the conductor's decision (conductors republish at least
	// every second).
	DecisionWait time.Duration
	// MaxDecisionLookups bounds the drill-downs listening at once; more
	// are answered without the video layers.
	MaxDecisionLookups int

	// AdminAPI serves the admin API (admin.go) to AdminToken's bearers;
	// off by default. AdminTimeout bounds a forwarder's answer to one
	// command (a capture: its seconds more).
	AdminAPI     bool
	AdminTimeout time.Duration
}

// Default returns the production defaults.
func Default() Config {
	return Config{
		Subject:       "callrelay",
		Partitions:    64,
		Listen:        "127.0.0.1:8080",
		HTTP:          defaultHTTP(),
		Logger:        zap.NewNop(),
		Now:           time.Now,
		DownAfter:     3 * time.Second,
		ForgetAfter:   10 * time.Minute,
		PushEvery:     time.Second,
		PollEvery:     2 * time.Second,
		ProbeTimeout:  1500 * time.Millisecond,
		MaxForwarders: 1024,

		DecisionWait:       1500 * time.Millisecond,
		MaxDecisionLookups: 4,
		AdminTimeout:       3 * time.Second,
	}
}

// defaultHTTP bounds the page's server: a browser tab holds an event stream
// and a few requests.
func defaultHTTP() httpserve.Config {
	h := httpserve.Default()
	h.Name, h.MaxConns = "http", 256
	return h
}

// Validate says what to fix.
func (c Config) Validate() error {
	var errs []error
	if c.NATS == nil {
		errs = append(errs, errors.New("dashboard: no NATS connection: set --nats-url"))
	}
	if c.Subject == "" {
		errs = append(errs, errors.New("dashboard: empty subject prefix: use the forwarders' one (default callrelay)"))
	}
	if c.Key.IsZero() {
		errs = append(errs, errors.New("dashboard: no cluster key: set --cluster-key (or CALLRELAY_CLUSTER_KEY) to the forwarders' key"))
	}
	if c.Partitions < 1 || c.Partitions > protocol.MaxPartitions {
		errs = append(errs, fmt.Errorf("dashboard: %d partitions: want 1..%d, the conductors' number", c.Partitions, protocol.MaxPartitions))
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("dashboard: empty listen address: want host:port such as 127.0.0.1:8080"))
	}
	for _, t := range []struct{ what, tok string }{{"--viewer-token", c.ViewerToken}, {"--admin-token", c.AdminToken}} {
		if t.tok != "" {
			if err := checkToken(t.what, t.tok); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.AdminAPI && (c.AdminToken == "" || c.AdminTimeout <= 0) {
		errs = append(errs, fmt.Errorf("dashboard: --admin-api needs --admin-token (its bearers may act on calls) and a positive admin timeout (%v)", c.AdminTimeout))
	}
	if c.ViewerToken != "" && c.ViewerToken == c.AdminToken {
		errs = append(errs, errors.New("dashboard: --viewer-token and --admin-token are the same: a viewer would see device addresses; make two"))
	}
	http := c.HTTP
	http.Logger = zap.NewNop() // set by New
	if c.HTTP.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("dashboard: --max-conns %d: want at least 1", c.HTTP.MaxConns))
	} else if err := http.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("dashboard: %w", err))
	}
	if c.Logger == nil || c.Now == nil {
		errs = append(errs, errors.New("dashboard: Logger and Now must be set (start from Default())"))
	}
	if c.DownAfter <= 0 || c.ForgetAfter < c.DownAfter {
		errs = append(errs, fmt.Errorf("dashboard: down after %v, forget after %v: want 0 < down after <= forget after", c.DownAfter, c.ForgetAfter))
	}
	if c.PushEvery <= 0 || c.PollEvery <= 0 || c.ProbeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("dashboard: push every %v, poll every %v, probe timeout %v: all must be positive", c.PushEvery, c.PollEvery, c.ProbeTimeout))
	}
	if c.MaxForwarders < 1 {
		errs = append(errs, fmt.Errorf("dashboard: max forwarders %d: want at least 1", c.MaxForwarders))
	}
	if c.DecisionWait <= 0 || c.MaxDecisionLookups < 1 {
		errs = append(errs, fmt.Errorf("dashboard: decision wait %v, max decision lookups %d: want a positive wait and at least 1 lookup",
			c.DecisionWait, c.MaxDecisionLookups))
	}
	return errors.Join(errs...)
}
