package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The subset of the Kubernetes API the manifests use. Decoding is strict
// (KnownFields), so a misspelt or misplaced key fails instead of being
// silently dropped by kubectl's lenient client-side path.

type k8sMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type k8sObject struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   k8sMeta           `yaml:"metadata"`
	Type       string            `yaml:"type"`       // Secret
	StringData map[string]string `yaml:"stringData"` // Secret
	Data       map[string]string `yaml:"data"`       // Secret, ConfigMap
	Spec       *k8sSpec          `yaml:"spec"`
}

// k8sSpec is the union of the specs used: Service, StatefulSet,
// Deployment, PodDisruptionBudget.
type k8sSpec struct {
	// Service
	ClusterIP string           `yaml:"clusterIP"`
	Type      string           `yaml:"type"`
	Ports     []k8sServicePort `yaml:"ports"`
	Selector  yaml.Node        `yaml:"selector"` // a map for a Service, a LabelSelector otherwise
	// Workloads
	ServiceName         string          `yaml:"serviceName"`
	Replicas            *int            `yaml:"replicas"`
	PodManagementPolicy string          `yaml:"podManagementPolicy"`
	UpdateStrategy      map[string]any  `yaml:"updateStrategy"`
	Strategy            map[string]any  `yaml:"strategy"`
	Template            *k8sPodTemplate `yaml:"template"`
	// PodDisruptionBudget
	MinAvailable   *int `yaml:"minAvailable"`
	MaxUnavailable *int `yaml:"maxUnavailable"`
}

type k8sServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort any    `yaml:"targetPort"`
	Protocol   string `yaml:"protocol"`
}

type k8sLabelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type k8sPodTemplate struct {
	Metadata k8sMeta    `yaml:"metadata"`
	Spec     k8sPodSpec `yaml:"spec"`
}

type k8sPodSpec struct {
	HostNetwork                   bool           `yaml:"hostNetwork"`
	DNSPolicy                     string         `yaml:"dnsPolicy"`
	TerminationGracePeriodSeconds *int           `yaml:"terminationGracePeriodSeconds"`
	Affinity                      map[string]any `yaml:"affinity"`
	SecurityContext               map[string]any `yaml:"securityContext"`
	Containers                    []k8sContainer `yaml:"containers"`
	Volumes                       []any          `yaml:"volumes"` // the forwarder's TLS certificate
}

type k8sContainer struct {
	Name         string   `yaml:"name"`
	Image        string   `yaml:"image"`
	Args         []string `yaml:"args"`
	VolumeMounts []any    `yaml:"volumeMounts"`
	Env          []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	Lifecycle      *struct {
		PreStop *struct {
			Exec *struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext map[string]any `yaml:"securityContext"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Host string `yaml:"host"`
		Path string `yaml:"path"`
		Port int    `yaml:"port"`
	} `yaml:"httpGet"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	PeriodSeconds       int `yaml:"periodSeconds"`
	FailureThreshold    int `yaml:"failureThreshold"`
}

var k8sKinds = map[string]string{
	"Namespace":           "v1",
	"Secret":              "v1",
	"ConfigMap":           "v1",
	"Service":             "v1",
	"StatefulSet":         "apps/v1",
	"Deployment":          "apps/v1",
	"PodDisruptionBudget": "policy/v1",
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func loadK8s(t *testing.T) []k8sObject {
	t.Helper()
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no k8s/*.yaml: %v", err)
	}
	var objs []k8sObject
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue // checked by TestK8sKustomize
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		for i := 0; ; i++ {
			var o k8sObject
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if o.Kind == "" && o.APIVersion == "" && o.Metadata.Name == "" {
				continue // an empty document (a leading ---)
			}
			if want, ok := k8sKinds[o.Kind]; !ok {
				t.Errorf("%s document %d: kind %q is not one this test knows", f, i, o.Kind)
			} else if o.APIVersion != want {
				t.Errorf("%s %s: apiVersion %q, want %q", f, o.Kind, o.APIVersion, want)
			}
			if !dnsLabel.MatchString(o.Metadata.Name) {
				t.Errorf("%s %s: metadata.name %q", f, o.Kind, o.Metadata.Name)
			}
			if o.Kind != "Namespace" && o.Metadata.Namespace != "callrelay" {
				t.Errorf("%s %s/%s: namespace %q, want callrelay", f, o.Kind, o.Metadata.Name, o.Metadata.Namespace)
			}
			objs = append(objs, o)
		}
	}
	return objs
}

func selectorLabels(t *testing.T, o k8sObject) map[string]string {
	t.Helper()
	if o.Spec == nil {
		return nil
	}
	if o.Kind == "Service" {
		var m map[string]string
		if err := o.Spec.Selector.Decode(&m); err != nil {
			t.Errorf("Service %s selector: %v", o.Metadata.Name, err)
		}
		return m
	}
	var s k8sLabelSelector
	if err := o.Spec.Selector.Decode(&s); err != nil {
		t.Errorf("%s %s selector: %v", o.Kind, o.Metadata.Name, err)
	}
	return s.MatchLabels
}

// selects reports whether every selector label is on the pod labels.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestK8sManifests(t *testing.T) {
	objs := loadK8s(t)
	byKind := map[string][]k8sObject{}
	names := map[string]bool{}
	for _, o := range objs {
		key := o.Kind + "/" + o.Metadata.Name
		if names[key] {
			t.Errorf("%s defined twice", key)
		}
		names[key] = true
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	for _, k := range []string{"Namespace", "Secret", "StatefulSet", "Deployment", "PodDisruptionBudget", "Service"} {
		if len(byKind[k]) == 0 {
			t.Errorf("no %s", k)
		}
	}

	var forwarder, conductor, dashboard *k8sObject
	for i := range objs {
		o := &objs[i]
		if o.Spec == nil || o.Spec.Template == nil {
			continue
		}
		sel := selectorLabels(t, *o)
		if !selects(sel, o.Spec.Template.Metadata.Labels) {
			t.Errorf("%s %s: selector %v does not match its pod labels %v", o.Kind, o.Metadata.Name, sel, o.Spec.Template.Metadata.Labels)
		}
		if len(o.Spec.Template.Spec.Containers) != 1 {
			t.Fatalf("%s %s: %d containers, want 1", o.Kind, o.Metadata.Name, len(o.Spec.Template.Spec.Containers))
		}
		c := o.Spec.Template.Spec.Containers[0]
		checkRefs(t, *o, c, names)
		switch {
		case len(c.Args) > 0 && c.Args[0] == "forwarder":
			forwarder = o
		case len(c.Args) > 0 && c.Args[0] == "conductor":
			conductor = o
		case len(c.Args) > 0 && c.Args[0] == "dashboard":
			dashboard = o
		}
		// Every probe must hit the port the process serves HTTP on.
		httpFlag := "metrics-listen"
		if c.Args[0] == "dashboard" {
			httpFlag = "listen"
		}
		listen, ok := flagValue(c.Args, httpFlag)
		if !ok {
			t.Errorf("%s %s: no --%s, so nothing serves its probes", o.Kind, o.Metadata.Name, httpFlag)
		}
		host, port, _ := strings.Cut(listen, ":")
		checkK8sHTTPPrivate(t, *o, httpFlag, host)
		for what, p := range map[string]*k8sProbe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s %s: no httpGet %s", o.Kind, o.Metadata.Name, what)
				continue
			}
			if strconv.Itoa(p.HTTPGet.Port) != port {
				t.Errorf("%s %s: %s on port %d, but --%s=%s", o.Kind, o.Metadata.Name, what, p.HTTPGet.Port, httpFlag, listen)
			}
			if o.Spec.Template.Spec.HostNetwork && p.HTTPGet.Host != host {
				t.Errorf("%s %s: %s on host %q, but --%s=%s (on hostNetwork the kubelet reaches the node's loopback)",
					o.Kind, o.Metadata.Name, what, p.HTTPGet.Host, httpFlag, listen)
			}
		}
		if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("%s %s: livenessProbe %s, want /healthz", o.Kind, o.Metadata.Name, c.LivenessProbe.HTTPGet.Path)
		}
		if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" {
			t.Errorf("%s %s: no cpu and memory requests", o.Kind, o.Metadata.Name)
		}
		if sc := o.Spec.Template.Spec.SecurityContext; sc["runAsNonRoot"] != true {
			t.Errorf("%s %s: pod securityContext without runAsNonRoot: true", o.Kind, o.Metadata.Name)
		}
	}
	if forwarder == nil || conductor == nil || dashboard == nil {
		t.Fatalf("want a forwarder, a conductor and a dashboard workload; found %v %v %v", forwarder != nil, conductor != nil, dashboard != nil)
	}
	checkForwarder(t, *forwarder)
	checkDashboardTokens(t, *dashboard, byKind["Secret"])

	// Conductors: a Deployment of 2, and a PDB that selects their pods.
	if conductor.Kind != "Deployment" || conductor.Spec.Replicas == nil || *conductor.Spec.Replicas != 2 {
		t.Errorf("conductor: %s with replicas %v, want a Deployment of 2", conductor.Kind, conductor.Spec.Replicas)
	}
	if c := conductor.Spec.Template.Spec.Containers[0]; c.Resources.Requests["cpu"] != "500m" || c.Resources.Requests["memory"] != "256Mi" {
		t.Errorf("conductor requests %v, want cpu 500m memory 256Mi (docs/capacity.md)", c.Resources.Requests)
	}
	pdbOK := false
	for _, p := range byKind["PodDisruptionBudget"] {
		if selects(selectorLabels(t, p), conductor.Spec.Template.Metadata.Labels) {
			if p.Spec.MinAvailable == nil || *p.Spec.MinAvailable != 1 {
				t.Errorf("PodDisruptionBudget %s: minAvailable %v, want 1", p.Metadata.Name, p.Spec.MinAvailable)
			}
			pdbOK = true
		}
		if selects(selectorLabels(t, p), forwarder.Spec.Template.Metadata.Labels) && p.Metadata.Name == "conductor" {
			t.Errorf("PodDisruptionBudget %s also selects forwarders", p.Metadata.Name)
		}
	}
	if !pdbOK {
		t.Error("no PodDisruptionBudget selects the conductor pods")
	}

	// The dashboard has a Service that selects it and targets its port.
	svcOK := false
	for _, s := range byKind["Service"] {
		if selects(selectorLabels(t, s), dashboard.Spec.Template.Metadata.Labels) {
			svcOK = true
			for _, p := range s.Spec.Ports {
				found := false
				for _, cp := range dashboard.Spec.Template.Spec.Containers[0].Ports {
					if p.TargetPort == cp.Name || p.TargetPort == cp.ContainerPort {
						found = true
					}
				}
				if !found {
					t.Errorf("Service %s targets %v, not a dashboard container port", s.Metadata.Name, p.TargetPort)
				}
			}
		}
	}
	if !svcOK {
		t.Error("no Service selects the dashboard")
	}
}

// checkK8sHTTPPrivate checks a process serves HTTP (metrics, health, the
// dashboard) on a private address: on hostNetwork (the forwarder, whose
// node address devices reach) the node's loopback only, which the kubelet
// probes and no device reaches, and no Prometheus annotation pointing at
// the node's address; elsewhere the pod's own network namespace.
func checkK8sHTTPPrivate(t *testing.T, o k8sObject, flag, host string) {
	t.Helper()
	if !o.Spec.Template.Spec.HostNetwork {
		if strings.Contains(host, "HOST_IP") {
			t.Errorf("%s %s: --%s on the node's address", o.Kind, o.Metadata.Name, flag)
		}
		return
	}
	if host != "127.0.0.1" {
		t.Errorf("%s %s on hostNetwork: --%s on %q, want 127.0.0.1: every other address of the node may be one devices reach",
			o.Kind, o.Metadata.Name, flag, host)
	}
	if o.Spec.Template.Metadata.Annotations["prometheus.io/scrape"] == "true" {
		t.Errorf("%s %s: prometheus.io/scrape on a hostNetwork pod: its metrics belong on the node's loopback, where a scrape of the pod's address does not reach",
			o.Kind, o.Metadata.Name)
	}
}

// checkDashboardTokens checks the dashboard reads both tokens from a
// Secret, whose placeholders the dashboard refuses (a token has no spaces),
// so it never starts open on the cluster network with made-up tokens.
func checkDashboardTokens(t *testing.T, o k8sObject, secrets []k8sObject) {
	t.Helper()
	found := map[string]string{}
	for _, ef := range o.Spec.Template.Spec.Containers[0].EnvFrom {
		for _, sec := range secrets {
			if ef.SecretRef != nil && ef.SecretRef.Name == sec.Metadata.Name {
				for k, v := range sec.StringData {
					found[k] = v
				}
			}
		}
	}
	for _, k := range []string{"CALLRELAY_DASHBOARD_VIEWER_TOKEN", "CALLRELAY_DASHBOARD_ADMIN_TOKEN"} {
		v, ok := found[k]
		switch {
		case !ok:
			t.Errorf("dashboard: no %s in the Secrets it reads: without tokens it refuses --listen=0.0.0.0", k)
		case !strings.Contains(v, " "):
			t.Errorf("dashboard: %s placeholder %q would be accepted as a token: put a space in it", k, v)
		}
	}
}

// checkRefs checks the Secret and ConfigMap a container reads exist.
func checkRefs(t *testing.T, o k8sObject, c k8sContainer, names map[string]bool) {
	t.Helper()
	sawSecret := false
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil && !names["ConfigMap/"+ef.ConfigMapRef.Name] {
			t.Errorf("%s %s reads ConfigMap %s, which is not defined", o.Kind, o.Metadata.Name, ef.ConfigMapRef.Name)
		}
		if ef.SecretRef != nil {
			sawSecret = true
			if !names["Secret/"+ef.SecretRef.Name] {
				t.Errorf("%s %s reads Secret %s, which is not defined", o.Kind, o.Metadata.Name, ef.SecretRef.Name)
			}
		}
	}
	if !sawSecret {
		t.Errorf("%s %s: no secretRef: where does CALLRELAY_CLUSTER_KEY come from?", o.Kind, o.Metadata.Name)
	}
}

func checkForwarder(t *testing.T, o k8sObject) {
	t.Helper()
	if o.Kind != "StatefulSet" {
		t.Errorf("forwarder is a %s, want a StatefulSet (stable ids)", o.Kind)
	}
	ps := o.Spec.Template.Spec
	c := ps.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		} else {
			env[e.Name] = e.Value
		}
	}
	if env["CALLRELAY_ID"] != "fieldRef:metadata.name" {
		t.Errorf("forwarder CALLRELAY_ID = %q, want the pod name from the downward API", env["CALLRELAY_ID"])
	}
	if !ps.HostNetwork {
		t.Error("forwarder without hostNetwork: devices need the node's address (see the comment in the manifest)")
	} else if ps.DNSPolicy != "ClusterFirstWithHostNet" {
		t.Errorf("forwarder on hostNetwork with dnsPolicy %q: cluster names (NATS, Redis) would not resolve; want ClusterFirstWithHostNet", ps.DNSPolicy)
	}
	adv, ok := flagValue(c.Args, "media-advertise")
	if !ok {
		t.Error("forwarder without --media-advertise")
	} else if ip, _, _ := strings.Cut(adv, ":"); ip != "$(HOST_IP)" || env["HOST_IP"] != "fieldRef:status.hostIP" {
		t.Errorf("forwarder --media-advertise=%s, HOST_IP %q: want $(HOST_IP) from status.hostIP", adv, env["HOST_IP"])
	}
	for _, f := range []string{"listen", "trunk-listen"} {
		if _, ok := flagValue(c.Args, f); !ok {
			t.Errorf("forwarder without --%s", f)
		}
	}

	// Drain: readiness on /readyz (503 while draining); preStop sends
	// SIGTERM and waits at most W seconds; drain deadline D < W < grace G.
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("forwarder readinessProbe is not httpGet /readyz")
	}
	ddStr, ok := flagValue(c.Args, "drain-deadline")
	if !ok {
		t.Fatal("forwarder without an explicit --drain-deadline")
	}
	dd, err := time.ParseDuration(ddStr)
	if err != nil {
		t.Fatalf("--drain-deadline=%s: %v", ddStr, err)
	}
	if ps.TerminationGracePeriodSeconds == nil {
		t.Fatal("forwarder without terminationGracePeriodSeconds (default 30s)")
	}
	grace := time.Duration(*ps.TerminationGracePeriodSeconds) * time.Second
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil {
		t.Fatal("forwarder without an exec preStop hook")
	}
	hook := strings.Join(c.Lifecycle.PreStop.Exec.Command, " ")
	if !regexp.MustCompile(`kill -(TERM|15) 1\b`).MatchString(hook) {
		t.Errorf("preStop %q does not send SIGTERM to PID 1", hook)
	}
	if !strings.HasSuffix(c.Lifecycle.PreStop.Exec.Command[0], "sh") {
		t.Errorf("preStop runs %s", c.Lifecycle.PreStop.Exec.Command[0])
	}
	if strings.HasPrefix(c.Lifecycle.PreStop.Exec.Command[0], "/busybox/") && !strings.HasSuffix(c.Image, "-debug") {
		t.Errorf("preStop needs /busybox but image %s is not the debug target (distroless/static has no shell)", c.Image)
	}
	m := regexp.MustCompile(`-lt (\d+)`).FindStringSubmatch(hook)
	if m == nil {
		t.Fatalf("preStop %q: no bounded wait (`[ $i -lt N ]`)", hook)
	}
	n, _ := strconv.Atoi(m[1])
	wait := time.Duration(n) * time.Second
	if !(dd < wait && wait < grace) {
		t.Errorf("want --drain-deadline (%v) < preStop wait (%v) < terminationGracePeriodSeconds (%v)", dd, wait, grace)
	}
	if c.Resources.Requests["cpu"] != "2" || c.Resources.Requests["memory"] != "512Mi" {
		t.Errorf("forwarder requests %v, want cpu 2 memory 512Mi (the load-test knee, docs/capacity.md)", c.Resources.Requests)
	}
	if cores, _ := flagValue(c.Args, "cpu-cores"); cores != c.Resources.Requests["cpu"] {
		t.Errorf("forwarder --cpu-cores=%s, but requests %s CPU: the throttling load signal would be wrong", cores, c.Resources.Requests["cpu"])
	}
	if _, ok := c.Resources.Limits["cpu"]; ok {
		t.Error("forwarder has a CPU limit: CFS throttling delays a real-time relay")
	}
}

// TestK8sKustomize renders deploy/k8s with `kubectl kustomize` (offline: no
// cluster needed): the kustomization lists every manifest file and
// kustomize accepts them all. `make deps` installs kubectl (Debian's
// kubernetes-client) where it is missing; without it the test fails.
func TestK8sKustomize(t *testing.T) {
	data, err := os.ReadFile("k8s/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Resources  []string `yaml:"resources"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("k8s/kustomization.yaml: %v", err)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		listed[r] = true
	}
	files, _ := filepath.Glob("k8s/*.yaml")
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !listed[b] {
			t.Errorf("k8s/kustomization.yaml does not list %s", b)
		}
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl not on PATH: run `make deps` (it installs Debian's kubernetes-client), or install kubectl")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, kubectl, "kustomize", "k8s").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/k8s: %v\n%s", err, out)
	}
	// Top-level kinds only: nested ones are indented.
	n := bytes.Count(append([]byte("\n"), out...), []byte("\nkind: "))
	if want := len(loadK8s(t)); n != want {
		t.Errorf("kubectl kustomize rendered %d objects, the manifests hold %d", n, want)
	}
}
