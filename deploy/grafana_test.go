package deploy_test

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const (
	dashboardPath        = "grafana/callrelay-throttling.json"
	datasourcesPath      = "grafana/provisioning/datasources/prometheus.yml"
	dashboardsProvPath   = "grafana/provisioning/dashboards/callrelay.yml"
	throttleLevelMetric  = "callrelay_forwarder_throttle_level"
	throttleNamesSource  = "../forwarder/load.go"
	throttleNamesVarName = "throttleNames"
)

// dashboard is the part of Grafana's dashboard JSON the tests check;
// other keys are left to Grafana.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []templateVar `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          *int         `json:"id"`
	Type        string       `json:"type"`
	Title       string       `json:"title"`
	GridPos     *gridPos     `json:"gridPos"`
	Datasource  *dsRef       `json:"datasource"`
	Targets     []target     `json:"targets"`
	Panels      []panel      `json:"panels"` // a collapsed row's panels
	FieldConfig *fieldConfig `json:"fieldConfig"`
}

type gridPos struct {
	H, W, X, Y int
}

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	Expr       string `json:"expr"`
	RefID      string `json:"refId"`
	Datasource *dsRef `json:"datasource"`
}

type fieldConfig struct {
	Defaults struct {
		Mappings []struct {
			Type    string                     `json:"type"`
			Options map[string]json.RawMessage `json:"options"`
		} `json:"mappings"`
	} `json:"defaults"`
}

type templateVar struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "..."} in newer Grafana
	Definition string          `json:"definition"`
	Datasource *dsRef          `json:"datasource"`
}

// queryText returns a query variable's PromQL, whichever form it has.
func (v templateVar) queryText() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var obj struct {
		Query string `json:"query"`
	}
	if json.Unmarshal(v.Query, &obj) == nil && obj.Query != "" {
		return obj.Query
	}
	return v.Definition
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatalf("read %s: %v", dashboardPath, err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: not valid dashboard JSON: %v", dashboardPath, err)
	}
	return d
}

// flatPanels returns every panel, rows' nested panels included.
func flatPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatPanels(p.Panels)...)
	}
	return out
}

func panelName(p panel) string {
	id := "no id"
	if p.ID != nil {
		id = "id " + strconv.Itoa(*p.ID)
	}
	return fmt.Sprintf("panel %q (%s)", p.Title, id)
}

// grafanaBuiltins are variables Grafana defines itself.
var grafanaBuiltins = map[string]bool{
	"__rate_interval": true, "__interval": true, "__interval_ms": true, "__range": true, "__range_s": true,
	"__range_ms": true, "__dashboard": true, "__org": true, "__user": true, "__timeFilter": true,
}

var grafanaVarRef = regexp.MustCompile(`\$(?:\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|([A-Za-z0-9_]+))`)

// TestDashboard checks the dashboard's identity, layout, datasources,
// variables and every query against the metrics the code exports.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	metrics := exportedMetrics(t)
	if d.Title == "" {
		t.Errorf("%s: no title", dashboardPath)
	}
	if d.UID == "" || len(d.UID) > 40 {
		t.Errorf("%s: uid %q: want 1 to 40 characters (links and provisioning rely on it)", dashboardPath, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("%s: schemaVersion %d: want 36 or more (datasource references by uid)", dashboardPath, d.SchemaVersion)
	}

	vars := map[string]templateVar{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
		if v.Type != "query" {
			continue
		}
		q := v.queryText()
		if err := checkPromQLShape(q); err != nil {
			t.Errorf("%s: variable %q query %q: %v", dashboardPath, v.Name, q, err)
		}
		for _, name := range metrics.missing(q) {
			t.Errorf("%s: variable %q queries %s, which the code does not export", dashboardPath, v.Name, name)
		}
	}
	for _, want := range []string{"datasource", "forwarder"} {
		if _, ok := vars[want]; !ok {
			t.Errorf("%s: no %q template variable", dashboardPath, want)
		}
	}
	if len(d.Panels) == 0 {
		t.Fatalf("%s: no panels", dashboardPath)
	}
	ids := map[int]string{}
	var placed []panel
	for _, p := range flatPanels(d.Panels) {
		name := panelName(p)
		if p.Title == "" {
			t.Errorf("%s: %s: no title", dashboardPath, name)
		}
		if p.ID == nil {
			t.Errorf("%s: %s: no id", dashboardPath, name)
		} else if other, dup := ids[*p.ID]; dup {
			t.Errorf("%s: %s: id also used by %s", dashboardPath, name, other)
		} else {
			ids[*p.ID] = name
		}
		if err := checkGridPos(p.GridPos); err != nil {
			t.Errorf("%s: %s: %v", dashboardPath, name, err)
		} else {
			for _, q := range placed {
				if overlap(*p.GridPos, *q.GridPos) {
					t.Errorf("%s: %s overlaps %s", dashboardPath, name, panelName(q))
				}
			}
			placed = append(placed, p)
		}
		if p.Type == "row" {
			continue
		}
		checkDatasourceVar(t, vars, name, p.Datasource)
		if len(p.Targets) == 0 {
			t.Errorf("%s: %s: no targets", dashboardPath, name)
		}
		checkTargets(t, p, vars, metrics)
	}
}

// checkDatasourceVar fails unless ds (when set) is the dashboard's
// datasource variable.
func checkDatasourceVar(t *testing.T, vars map[string]templateVar, where string, ds *dsRef) {
	t.Helper()
	if ds == nil {
		return // inherits the panel's
	}
	name := strings.Trim(strings.TrimPrefix(ds.UID, "$"), "{}")
	if v, ok := vars[name]; !ok || v.Type != "datasource" {
		t.Errorf("%s: %s: datasource uid %q: want ${datasource}, the dashboard's datasource variable, so the "+
			"dashboard works with any Prometheus", dashboardPath, where, ds.UID)
	}
}

// checkTargets checks one panel's queries: refIds, datasource, PromQL
// shape, metric names and variables.
func checkTargets(t *testing.T, p panel, vars map[string]templateVar, metrics metricSet) {
	t.Helper()
	refIDs := map[string]bool{}
	for i, tg := range p.Targets {
		where := fmt.Sprintf("%s target %d (refId %q)", panelName(p), i, tg.RefID)
		if tg.RefID == "" || refIDs[tg.RefID] {
			t.Errorf("%s: %s: refId empty or not unique in the panel", dashboardPath, where)
		}
		refIDs[tg.RefID] = true
		checkDatasourceVar(t, vars, where, tg.Datasource)
		if err := checkPromQLShape(tg.Expr); err != nil {
			t.Errorf("%s: %s: expr %q: %v", dashboardPath, where, tg.Expr, err)
		}
		for _, name := range metrics.missing(tg.Expr) {
			t.Errorf("%s: %s: expr queries %s, which forwarder/metrics.go and conductor/metrics.go do not export",
				dashboardPath, where, name)
		}
		for _, m := range grafanaVarRef.FindAllStringSubmatch(tg.Expr, -1) {
			v := m[1] + m[2]
			if _, ok := vars[v]; !ok && !grafanaBuiltins[v] {
				t.Errorf("%s: %s: expr uses $%s, which is neither a dashboard variable nor a Grafana built-in", dashboardPath, where, v)
			}
		}
	}
}

func checkGridPos(g *gridPos) error {
	switch {
	case g == nil:
		return fmt.Errorf("no gridPos")
	case g.W < 1 || g.H < 1:
		return fmt.Errorf("gridPos %+v: width and height must be positive", *g)
	case g.X < 0 || g.Y < 0 || g.X+g.W > 24:
		return fmt.Errorf("gridPos %+v: outside the 24-column grid", *g)
	}
	return nil
}

func overlap(a, b gridPos) bool {
	return a.X < b.X+b.W && b.X < a.X+a.W && a.Y < b.Y+b.H && b.Y < a.Y+a.H
}

// TestDashboardThrottleLevelNames checks that panels showing the throttle
// level map its values to the names the forwarder uses (throttleNames in
// forwarder/load.go), so a renamed or added level shows up here.
func TestDashboardThrottleLevelNames(t *testing.T) {
	want := throttleNames(t)
	found := false
	for _, p := range flatPanels(loadDashboard(t).Panels) {
		shows := false
		for _, tg := range p.Targets {
			for _, m := range metricRefs(tg.Expr) {
				shows = shows || m == throttleLevelMetric
			}
		}
		if !shows || p.Type == "timeseries" {
			continue
		}
		found = true
		got := map[string]string{}
		if p.FieldConfig != nil {
			for _, m := range p.FieldConfig.Defaults.Mappings {
				if m.Type != "value" {
					continue
				}
				for value, raw := range m.Options {
					var opt struct {
						Text string `json:"text"`
					}
					if err := json.Unmarshal(raw, &opt); err != nil {
						t.Errorf("%s: %s: value mapping %q: %v", dashboardPath, panelName(p), value, err)
					}
					got[value] = opt.Text
				}
			}
		}
		for level, name := range want {
			if v := strconv.Itoa(level); got[v] != name {
				t.Errorf("%s: %s: value %s maps to %q, want %q (forwarder/load.go %s)",
					dashboardPath, panelName(p), v, got[v], name, throttleNamesVarName)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: %s: %d value mappings, want one per throttle level (%d)", dashboardPath, panelName(p), len(got), len(want))
		}
	}
	if !found {
		t.Errorf("%s: no stat or state-timeline panel shows %s", dashboardPath, throttleLevelMetric)
	}
}

// throttleNames reads the throttle level names from the forwarder's source.
func throttleNames(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), throttleNamesSource, nil, 0)
	if err != nil {
		t.Fatalf("parse %s: %v", throttleNamesSource, err)
	}
	var names []string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != throttleNamesVarName || len(vs.Values) != 1 {
			return true
		}
		lit, ok := vs.Values[0].(*ast.CompositeLit)
		if !ok {
			return false
		}
		for _, el := range lit.Elts {
			if b, ok := el.(*ast.BasicLit); ok && b.Kind == token.STRING {
				s, _ := strconv.Unquote(b.Value)
				names = append(names, s)
			}
		}
		return false
	})
	if len(names) == 0 {
		t.Fatalf("%s: no %s string list found; update throttleNamesSource in deploy/grafana_test.go", throttleNamesSource, throttleNamesVarName)
	}
	return names
}

// grafanaDatasources mirrors Grafana's datasource provisioning file.
type grafanaDatasources struct {
	APIVersion  int `yaml:"apiVersion"`
	Datasources []struct {
		Name      string         `yaml:"name"`
		UID       string         `yaml:"uid"`
		Type      string         `yaml:"type"`
		Access    string         `yaml:"access"`
		URL       string         `yaml:"url"`
		IsDefault bool           `yaml:"isDefault"`
		Editable  bool           `yaml:"editable"`
		JSONData  map[string]any `yaml:"jsonData"`
	} `yaml:"datasources"`
}

// grafanaProviders mirrors Grafana's dashboard provider provisioning file.
type grafanaProviders struct {
	APIVersion int `yaml:"apiVersion"`
	Providers  []struct {
		Name                  string `yaml:"name"`
		OrgID                 int    `yaml:"orgId"`
		Folder                string `yaml:"folder"`
		FolderUID             string `yaml:"folderUid"`
		Type                  string `yaml:"type"`
		DisableDeletion       bool   `yaml:"disableDeletion"`
		AllowUIUpdates        bool   `yaml:"allowUiUpdates"`
		UpdateIntervalSeconds int    `yaml:"updateIntervalSeconds"`
		Options               struct {
			Path                      string `yaml:"path"`
			FoldersFromFilesStructure bool   `yaml:"foldersFromFilesStructure"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

func TestGrafanaProvisioning(t *testing.T) {
	var ds grafanaDatasources
	decodeStrict(t, datasourcesPath, &ds)
	if ds.APIVersion != 1 {
		t.Errorf("%s: apiVersion %d, want 1", datasourcesPath, ds.APIVersion)
	}
	prom := 0
	for _, d := range ds.Datasources {
		if d.Type == "prometheus" {
			prom++
			if d.URL == "" || d.Name == "" {
				t.Errorf("%s: datasource %q: name and url are required", datasourcesPath, d.Name)
			}
		}
	}
	if prom == 0 {
		t.Errorf("%s: no datasource of type prometheus for the dashboard's datasource variable to pick", datasourcesPath)
	}

	var pv grafanaProviders
	decodeStrict(t, dashboardsProvPath, &pv)
	if pv.APIVersion != 1 {
		t.Errorf("%s: apiVersion %d, want 1", dashboardsProvPath, pv.APIVersion)
	}
	if len(pv.Providers) == 0 {
		t.Fatalf("%s: no providers", dashboardsProvPath)
	}
	for _, p := range pv.Providers {
		if p.Name == "" || p.Type != "file" || !strings.HasPrefix(p.Options.Path, "/") {
			t.Errorf("%s: provider %q: want a name, type file and an absolute options.path (where deploy/grafana is mounted)",
				dashboardsProvPath, p.Name)
		}
	}
}
