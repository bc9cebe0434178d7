package deploy_test

import (
	"bytes"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const composeFile = "compose/docker-compose.yml"

// composeService is the subset of the Compose service schema this file
// uses; decoding is strict, so a misspelt key fails the test.
type composeService struct {
	Image           string            `yaml:"image"`
	Build           *composeBuild     `yaml:"build"`
	Command         []string          `yaml:"command"`
	Entrypoint      []string          `yaml:"entrypoint"`
	Environment     map[string]string `yaml:"environment"`
	EnvFile         string            `yaml:"env_file"`
	Restart         string            `yaml:"restart"`
	DependsOn       yaml.Node         `yaml:"depends_on"`
	Ports           []string          `yaml:"ports"`
	Volumes         []string          `yaml:"volumes"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Networks        map[string]struct {
		IPv4Address string `yaml:"ipv4_address"`
	} `yaml:"networks"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type composeFileT struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Networks map[string]any            `yaml:"networks"`
	// x- extension fields hold the YAML anchors.
	XCallrelay any `yaml:"x-callrelay"`
	XRedis     any `yaml:"x-redis"`
	XNATS      any `yaml:"x-nats"`
}

func loadCompose(t *testing.T) composeFileT {
	t.Helper()
	data, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var c composeFileT
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	return c
}

// dependsOn returns the services of depends_on, list or map form.
func dependsOn(t *testing.T, name string, n yaml.Node) []string {
	t.Helper()
	var out []string
	switch n.Kind {
	case 0:
	case yaml.SequenceNode:
		if err := n.Decode(&out); err != nil {
			t.Errorf("service %s: depends_on: %v", name, err)
		}
	case yaml.MappingNode:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := n.Decode(&m); err != nil {
			t.Errorf("service %s: depends_on: %v", name, err)
		}
		for k, v := range m {
			switch v.Condition {
			case "service_started", "service_healthy", "service_completed_successfully":
			default:
				t.Errorf("service %s: depends_on %s: condition %q", name, k, v.Condition)
			}
			out = append(out, k)
		}
	default:
		t.Errorf("service %s: depends_on is neither a list nor a map", name)
	}
	return out
}

// flagValue returns the value of --name in args ("--name v" or "--name=v").
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == "--"+name || a == "-"+name {
			if i+1 < len(args) {
				return args[i+1], true
			}
			return "", true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	if len(c.Services) == 0 {
		t.Fatal("no services")
	}
	count := map[string]int{}
	hostPorts := map[string]string{}
	ips := map[string]string{}
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s: neither image nor build", name)
		}
		if s.Build != nil {
			ctx := filepath.Join("compose", s.Build.Context)
			if _, err := os.Stat(filepath.Join(ctx, "go.mod")); err != nil {
				t.Errorf("service %s: build context %s holds no go.mod", name, s.Build.Context)
			}
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("service %s: dockerfile: %v", name, err)
			}
		}
		for _, d := range dependsOn(t, name, s.DependsOn) {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("service %s depends on %s, which is not a service", name, d)
			}
		}
		for _, p := range s.Ports {
			// [ip:]host:container[/proto]
			spec, proto, _ := strings.Cut(p, "/")
			if proto == "" {
				proto = "tcp"
			}
			parts := strings.Split(spec, ":")
			if len(parts) < 2 {
				t.Errorf("service %s: port %q does not publish a host port", name, p)
				continue
			}
			key := parts[len(parts)-2] + "/" + proto
			if other, dup := hostPorts[key]; dup {
				t.Errorf("host port %s published by both %s and %s", key, other, name)
			}
			hostPorts[key] = name
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				continue // a named volume
			}
			if strings.HasPrefix(src, "./nats-auth/") {
				continue // written by `callrelay nats-auth` at deploy time: TestComposeNATSAuth
			}
			if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
				t.Errorf("service %s mounts %s, which is not in the repository: %v", name, src, err)
			}
		}
		if s.EnvFile != "" {
			p := filepath.Join("compose", s.EnvFile)
			if _, err := os.Stat(p); err != nil {
				if _, err := os.Stat(p + ".example"); err != nil {
					t.Errorf("service %s: env_file %s and %s.example are both missing", name, s.EnvFile, s.EnvFile)
				}
			}
		}
		for net, n := range s.Networks {
			if _, ok := c.Networks[net]; !ok {
				t.Errorf("service %s on network %s, which is not declared", name, net)
			}
			if n.IPv4Address != "" {
				if other, dup := ips[n.IPv4Address]; dup {
					t.Errorf("address %s given to both %s and %s", n.IPv4Address, other, name)
				}
				ips[n.IPv4Address] = name
			}
		}
		if len(s.Command) > 0 {
			switch s.Command[0] {
			case "forwarder", "conductor", "dashboard":
				count[s.Command[0]]++
				checkCallrelayService(t, c, name, s)
			}
		}
		switch {
		case strings.HasPrefix(s.Image, "nats:2"):
			count["nats"]++
			checkNATSRoutes(t, c, name, s)
		case strings.HasPrefix(s.Image, "redis:"):
			if len(s.Command) > 0 && s.Command[0] == "redis-server" {
				count["redis"]++
				if v, _ := flagValue(s.Command, "cluster-enabled"); v != "yes" {
					t.Errorf("service %s: redis-server without --cluster-enabled yes", name)
				}
			} else if strings.Contains(strings.Join(s.Command, " "), "--cluster create") {
				count["redis-init"]++
				if s.Restart != "no" {
					t.Errorf("service %s: the one-shot cluster create must have restart: \"no\"", name)
				}
			}
		case strings.HasPrefix(s.Image, "prom/prometheus"):
			count["prometheus"]++
		case strings.HasPrefix(s.Image, "grafana/grafana"):
			count["grafana"]++
			vols := strings.Join(s.Volumes, " ")
			for _, want := range []string{"../grafana/provisioning:/etc/grafana/provisioning", "callrelay-throttling.json:/var/lib/grafana/dashboards/callrelay"} {
				if !strings.Contains(vols, want) {
					t.Errorf("grafana does not mount %s", want)
				}
			}
		}
	}
	want := map[string]int{"nats": 3, "redis": 6, "redis-init": 1, "forwarder": 3, "conductor": 2, "dashboard": 1, "prometheus": 1, "grafana": 1}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%d %s services, want %d", count[k], k, n)
		}
	}

	// The scrape config's targets are these services: host:port must be a
	// service whose --metrics-listen has that port.
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var pc struct {
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(prom, &pc); err != nil {
		t.Fatal(err)
	}
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, _ := strings.Cut(target, ":")
				s, ok := c.Services[host]
				if !ok {
					t.Errorf("prometheus.yml scrapes %s, which is not a compose service", target)
					continue
				}
				ml := s.Environment["CALLRELAY_METRICS_LISTEN"]
				if v, ok := flagValue(s.Command, "metrics-listen"); ok {
					ml = v
				}
				if !strings.HasSuffix(ml, ":"+port) {
					t.Errorf("prometheus.yml scrapes %s, but %s serves metrics on %q", target, host, ml)
				}
			}
		}
	}
}

// checkCallrelayService checks a forwarder, conductor or dashboard: its
// --nats-url and --redis-url name services of this file, all three NATS
// nodes, the Redis Cluster scheme, and a cluster key.
func checkCallrelayService(t *testing.T, c composeFileT, name string, s composeService) {
	t.Helper()
	if s.EnvFile == "" {
		t.Errorf("service %s: no env_file (CALLRELAY_CLUSTER_KEY comes from it)", name)
	}
	natsURL, ok := flagValue(s.Command, "nats-url")
	if !ok {
		natsURL = s.Environment["CALLRELAY_NATS_URL"]
	}
	natsHosts := 0
	for _, u := range strings.Split(natsURL, ",") {
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "nats" {
			t.Errorf("service %s: NATS URL %q", name, u)
			continue
		}
		if ns, ok := c.Services[pu.Hostname()]; !ok || !strings.HasPrefix(ns.Image, "nats:") {
			t.Errorf("service %s: NATS URL %s names no NATS service", name, u)
		}
		natsHosts++
	}
	if natsHosts != 3 {
		t.Errorf("service %s: --nats-url lists %d servers, want all 3", name, natsHosts)
	}
	redisURL, ok := flagValue(s.Command, "redis-url")
	if !ok {
		redisURL = s.Environment["CALLRELAY_REDIS_URL"]
	}
	rest, ok := strings.CutPrefix(redisURL, "redis+cluster://")
	if !ok {
		t.Errorf("service %s: --redis-url %q, want redis+cluster://host:port,...", name, redisURL)
	}
	for _, hp := range strings.Split(rest, ",") {
		host, port, _ := strings.Cut(hp, ":")
		rs, ok := c.Services[host]
		if !ok || !strings.HasPrefix(rs.Image, "redis:") {
			t.Errorf("service %s: Redis seed %s names no Redis service", name, hp)
			continue
		}
		if p, _ := flagValue(rs.Command, "port"); p != port {
			t.Errorf("service %s: Redis seed %s, but %s listens on %q", name, hp, host, p)
		}
	}
	checkHTTPPrivate(t, name, s)
	switch s.Command[0] {
	case "forwarder":
		if s.Environment["CALLRELAY_ID"] != name {
			t.Errorf("forwarder %s: CALLRELAY_ID %q, want the service name", name, s.Environment["CALLRELAY_ID"])
		}
		listen, _ := flagValue(s.Command, "listen")
		adv, _ := flagValue(s.Command, "media-advertise")
		_, lport, _ := strings.Cut(listen, ":")
		_, aport, _ := strings.Cut(adv, ":")
		published := false
		for _, p := range s.Ports {
			if strings.HasSuffix(p, ":"+lport+"/udp") && strings.Contains(p, ":"+aport+":") {
				published = true
			}
		}
		if !published {
			t.Errorf("forwarder %s: --listen %s / --media-advertise %s not published as UDP (ports %v)", name, listen, adv, s.Ports)
		}
		trunk, _ := flagValue(s.Command, "trunk-listen")
		tip, _, _ := strings.Cut(trunk, ":")
		if s.Networks["callrelay"].IPv4Address != tip {
			t.Errorf("forwarder %s: --trunk-listen %s is not its fixed address %s", name, trunk, s.Networks["callrelay"].IPv4Address)
		}
		if s.StopGracePeriod == "" {
			t.Errorf("forwarder %s: no stop_grace_period (the default 10s cuts the drain short)", name)
		}
	case "conductor":
		if s.Environment["CALLRELAY_ID"] == "" {
			t.Errorf("conductor %s: no CALLRELAY_ID", name)
		}
	}
}

// checkHTTPPrivate checks a forwarder's or conductor's metrics listen on
// the service's fixed address of the private network, never 0.0.0.0 (with
// a forwarder's media) nor a published port; and that a dashboard that
// listens on more than loopback gets its tokens from the env file.
func checkHTTPPrivate(t *testing.T, name string, s composeService) {
	t.Helper()
	fixed := s.Networks["callrelay"].IPv4Address
	if s.Command[0] == "dashboard" {
		listen, _ := flagValue(s.Command, "listen")
		if host, _, _ := strings.Cut(listen, ":"); host != "127.0.0.1" {
			ex, err := os.ReadFile(filepath.Join("compose", s.EnvFile+".example"))
			if err != nil {
				t.Fatalf("dashboard %s: %v", name, err)
			}
			for _, v := range []string{"CALLRELAY_DASHBOARD_VIEWER_TOKEN=", "CALLRELAY_DASHBOARD_ADMIN_TOKEN="} {
				if !bytes.Contains(ex, []byte("\n"+v)) {
					t.Errorf("dashboard %s listens on %s, but %s.example has no %s: it would refuse to start", name, listen, s.EnvFile, v)
				}
			}
		}
		return
	}
	ml := s.Environment["CALLRELAY_METRICS_LISTEN"]
	if v, ok := flagValue(s.Command, "metrics-listen"); ok {
		ml = v
	}
	host, port, _ := strings.Cut(ml, ":")
	if ml == "" || host != fixed {
		t.Errorf("%s: metrics on %q, want its fixed private address %s (never 0.0.0.0: devices reach the forwarders)", name, ml, fixed)
	}
	for _, p := range s.Ports {
		if strings.HasSuffix(strings.TrimSuffix(p, "/tcp"), ":"+port) {
			t.Errorf("%s: metrics port %s published (%s)", name, port, p)
		}
	}
}

// checkNATSRoutes checks a NATS node routes to the other nodes.
func checkNATSRoutes(t *testing.T, c composeFileT, name string, s composeService) {
	t.Helper()
	routes, _ := flagValue(s.Command, "routes")
	n := 0
	for _, r := range strings.Split(routes, ",") {
		u, err := url.Parse(r)
		if err != nil || u.Hostname() == name {
			t.Errorf("NATS %s: route %q", name, r)
			continue
		}
		if _, ok := c.Services[u.Hostname()]; !ok {
			t.Errorf("NATS %s routes to %s, which is not a service", name, r)
		}
		n++
	}
	if n != 2 {
		t.Errorf("NATS %s: %d routes, want the other 2 nodes", name, n)
	}
}
