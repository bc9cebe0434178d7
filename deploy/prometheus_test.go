package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/template"

	"go.yaml.in/yaml/v3"
)

const (
	alertsPath     = "prometheus/alerts.yml"
	prometheusPath = "prometheus/prometheus.yml"
)

// ruleFile mirrors Prometheus's rule file format (rulefmt), so a strict
// decode rejects keys Prometheus would reject or ignore.
type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name        string            `yaml:"name"`
	Interval    string            `yaml:"interval"`
	QueryOffset string            `yaml:"query_offset"`
	Limit       int               `yaml:"limit"`
	Labels      map[string]string `yaml:"labels"`
	Rules       []rule            `yaml:"rules"`
}

type rule struct {
	Record        string            `yaml:"record"`
	Alert         string            `yaml:"alert"`
	Expr          string            `yaml:"expr"`
	For           string            `yaml:"for"`
	KeepFiringFor string            `yaml:"keep_firing_for"`
	Labels        map[string]string `yaml:"labels"`
	Annotations   map[string]string `yaml:"annotations"`
}

// promConfig mirrors the part of Prometheus's configuration file that
// prometheus.yml uses; a key outside it fails the strict decode (extend the
// struct when the example grows).
type promConfig struct {
	Global struct {
		ScrapeInterval     string `yaml:"scrape_interval"`
		EvaluationInterval string `yaml:"evaluation_interval"`
	} `yaml:"global"`
	RuleFiles []string `yaml:"rule_files"`
	Alerting  struct {
		Alertmanagers []struct {
			StaticConfigs []staticConfig `yaml:"static_configs"`
		} `yaml:"alertmanagers"`
	} `yaml:"alerting"`
	ScrapeConfigs []struct {
		JobName        string         `yaml:"job_name"`
		MetricsPath    string         `yaml:"metrics_path"`
		Scheme         string         `yaml:"scheme"`
		ScrapeInterval string         `yaml:"scrape_interval"`
		StaticConfigs  []staticConfig `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

type staticConfig struct {
	Targets []string          `yaml:"targets"`
	Labels  map[string]string `yaml:"labels"`
}

// decodeStrict decodes one YAML document into v, failing on unknown keys.
func decodeStrict(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := dec.Decode(new(any)); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: want a single YAML document (%v)", path, err)
	}
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	decodeStrict(t, alertsPath, &rf)
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no rule groups", alertsPath)
	}
	return rf
}

// promDuration is Prometheus's duration syntax (model.ParseDuration).
var promDuration = regexp.MustCompile(`^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$`)

var alertName = regexp.MustCompile(`^[A-Z][A-Za-z0-9]+$`)

// requiredAnnotations are what on-call reads in a notification.
var requiredAnnotations = []string{"summary", "description", "runbook"}

// TestAlertRules checks every alerting rule in alerts.yml: its fields, the
// shape of its expression, the metrics it queries and its annotation
// templates.
func TestAlertRules(t *testing.T) {
	rf := loadRules(t)
	metrics := exportedMetrics(t)
	groups := map[string]bool{}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || groups[g.Name] {
			t.Errorf("%s: group name %q is empty or not unique (Prometheus requires unique names)", alertsPath, g.Name)
		}
		groups[g.Name] = true
		if len(g.Rules) == 0 {
			t.Errorf("%s: group %q has no rules", alertsPath, g.Name)
		}
		for i, r := range g.Rules {
			where := fmt.Sprintf("%s: group %q rule %d (alert %q)", alertsPath, g.Name, i, r.Alert)
			key := r.Alert + "/" + r.Labels["severity"]
			if alerts[key] {
				t.Errorf("%s: a second alert with this name and severity", where)
			}
			alerts[key] = true
			for _, problem := range checkRule(r, metrics) {
				t.Errorf("%s: %s", where, problem)
			}
		}
	}
}

// checkRule returns what is wrong with one alerting rule.
func checkRule(r rule, metrics metricSet) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if r.Record != "" {
		bad("recording rule %q: alerts.yml holds alerting rules only; put recording rules in a file of their own", r.Record)
	}
	if !alertName.MatchString(r.Alert) {
		bad("alert name %q: want CamelCase, e.g. CallrelayForwarderDown", r.Alert)
	}
	if r.For == "" {
		bad("no for: every alert must say how long its condition holds before it fires (for: 0s if at once)")
	} else if !promDuration.MatchString(r.For) {
		bad("for: %q is not a Prometheus duration (e.g. 30s, 2m, 1h)", r.For)
	}
	if err := checkPromQLShape(r.Expr); err != nil {
		bad("expr %q: %v", r.Expr, err)
	}
	if strings.Contains(r.Expr, "$") {
		bad("expr %q: contains $: variables and templates belong in annotations", r.Expr)
	}
	for _, name := range metrics.missing(r.Expr) {
		bad("expr queries %s, which forwarder/metrics.go and conductor/metrics.go do not export", name)
	}
	switch sev := r.Labels["severity"]; sev {
	case "warning", "critical":
	case "":
		bad("no labels.severity (want warning or critical)")
	default:
		bad("labels.severity %q: want warning or critical", sev)
	}
	for k, v := range r.Labels {
		if strings.Contains(v, "{{") {
			bad("label %s=%q is templated: a templated label splits the alert into many; put it in an annotation", k, v)
		}
	}
	for _, k := range requiredAnnotations {
		if strings.TrimSpace(r.Annotations[k]) == "" {
			bad("annotations.%s is missing or empty", k)
		}
	}
	for k, v := range r.Annotations {
		if err := parseAnnotation(v); err != nil {
			bad("annotations.%s does not parse as a Prometheus template: %v", k, err)
		}
	}
	return problems
}

// parseAnnotation parses an annotation as Prometheus does: Go text/template
// with $labels, $externalLabels and $value defined, and Prometheus's
// template functions (stubbed: only their names matter for parsing).
func parseAnnotation(text string) error {
	stub := func(...any) any { return nil }
	funcs := template.FuncMap{}
	for _, name := range []string{"query", "first", "label", "value", "strvalue", "args", "reReplaceAll", "safeHtml",
		"match", "title", "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel", "stripPort", "stripDomain",
		"humanize", "humanize1024", "humanizeDuration", "humanizePercentage", "humanizeTimestamp", "toTime",
		"toDuration", "pathPrefix", "externalURL", "parseDuration", "now"} {
		funcs[name] = stub
	}
	defs := "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"
	_, err := template.New("annotation").Funcs(funcs).Option("missingkey=zero").Parse(defs + text)
	return err
}

// TestAlertsCoverOnCallSignals fails when an alert on-call depends on is
// deleted: each signal below must be queried by at least one alert.
func TestAlertsCoverOnCallSignals(t *testing.T) {
	rf := loadRules(t)
	for _, tc := range []struct {
		what   string
		needle string // a substring of some alert's expr
	}{
		{"throttling active", "callrelay_forwarder_throttle_level"},
		{"refusals by class", "callrelay_forwarder_join_refusals_by_class_total"},
		{"forwarder down", `up{job="callrelay-forwarder"}`},
		{"forwarders absent", `absent(up{job="callrelay-forwarder"})`},
		{"Redis writes failing", "callrelay_statestore_degraded"},
		{"state store errors", "callrelay_statestore_errors_total"},
		{"conductor partitions unowned", "callrelay_conductor_partitions_owned"},
		{"conductor store unreachable", "callrelay_conductor_store_unreachable"},
		{"conductor behind", "callrelay_conductor_group_decision_stride"},
		{"stale decisions", `callrelay_forwarder_decisions_total{outcome="stale"}`},
		{"calls without a conductor decision", "callrelay_forwarder_calls_without_decision"},
		{"metadata rejected", "callrelay_conductor_metadata_rejected_total"},
		{"conductor decisions slow", "callrelay_conductor_decision_latency_seconds_bucket"},
		{"admin commands refused by forwarders", "callrelay_forwarder_admin_refused_total"},
		{"admin API refusing credentials", "callrelay_dashboard_admin_requests_total"},
		{"conductor reports dropped", "callrelay_dashboard_conductor_reports_dropped_total"},
	} {
		found := false
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				found = found || strings.Contains(r.Expr, tc.needle)
			}
		}
		if !found {
			t.Errorf("%s: no alert for %s (no expr contains %s)", alertsPath, tc.what, tc.needle)
		}
	}
}

var jobMatcher = regexp.MustCompile(`job\s*=\s*"([^"]*)"`)

// TestPrometheusConfig checks the scrape config example: it parses, loads
// alerts.yml, and scrapes every job the alerts match on.
func TestPrometheusConfig(t *testing.T) {
	var cfg promConfig
	decodeStrict(t, prometheusPath, &cfg)
	dir := filepath.Dir(prometheusPath)
	loadsAlerts := false
	for _, pattern := range cfg.RuleFiles {
		matches, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil || len(matches) == 0 {
			t.Errorf("%s: rule_files entry %q matches no file beside it (Prometheus resolves it relative to the config's folder)",
				prometheusPath, pattern)
		}
		for _, m := range matches {
			loadsAlerts = loadsAlerts || filepath.Clean(m) == filepath.Clean(alertsPath)
		}
	}
	if !loadsAlerts {
		t.Errorf("%s: rule_files %q does not load %s", prometheusPath, cfg.RuleFiles, filepath.Base(alertsPath))
	}
	jobs := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		if jobs[sc.JobName] {
			t.Errorf("%s: job_name %q appears twice", prometheusPath, sc.JobName)
		}
		jobs[sc.JobName] = true
		n := 0
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				n++
				if host, port, ok := strings.Cut(target, ":"); !ok || host == "" || port == "" {
					t.Errorf("%s: job %q target %q: want host:port (the --metrics-listen address)", prometheusPath, sc.JobName, target)
				}
			}
		}
		if n == 0 {
			t.Errorf("%s: job %q has no targets", prometheusPath, sc.JobName)
		}
	}
	for _, want := range []string{"callrelay-forwarder", "callrelay-conductor"} {
		if !jobs[want] {
			t.Errorf("%s: no scrape job %q", prometheusPath, want)
		}
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			for _, m := range jobMatcher.FindAllStringSubmatch(r.Expr, -1) {
				if !jobs[m[1]] {
					t.Errorf("%s: alert %q matches job=%q, which %s does not scrape", alertsPath, r.Alert, m[1], prometheusPath)
				}
			}
		}
	}
}

// TestPromtool runs Prometheus's own checks, which parse PromQL for real.
// `make test` installs promtool (scripts/deps.sh: Debian's prometheus
// package) where it is missing.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not on PATH: run `make deps` (it installs Debian's prometheus package), or install Prometheus's promtool")
	}
	for _, args := range [][]string{
		{"check", "rules", alertsPath},
		{"check", "config", prometheusPath},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// The dashboard's queries, as recording rules with the Grafana
	// variables filled in, so promtool parses them too.
	var rules []map[string]string
	for _, p := range flatPanels(loadDashboard(t).Panels) {
		for _, tg := range p.Targets {
			expr := grafanaVarRef.ReplaceAllStringFunc(tg.Expr, func(v string) string {
				if strings.Contains(v, "interval") || strings.Contains(v, "range") {
					return "1m"
				}
				return ".*"
			})
			rules = append(rules, map[string]string{"record": fmt.Sprintf("panel_%d_%s", *p.ID, tg.RefID), "expr": expr})
		}
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on %s's queries (record panel_<id>_<refId>): %v\n%s", dashboardPath, err, out)
	}
}
