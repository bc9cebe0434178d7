// Package deploy holds what operators load next to callrelay, not Go code:
// Prometheus alerting rules and a scrape config (prometheus/), and a Grafana
// dashboard with provisioning files (grafana/), and the packaging: a
// Dockerfile (docker/), a compose file for a local cluster (compose/) and
// Kubernetes manifests (k8s/); README.md says how to load and run them.
//
// Its tests keep those files honest against the code: every metric an alert
// or a panel queries must be one forwarder/metrics.go or conductor/metrics.go
// exports, so a renamed metric fails `go test` instead of silently emptying
// a dashboard or an alert at 3 a.m. This package must never import the
// packages it describes: the tests read their source, they do not run them.
package deploy
