#!/usr/bin/env bash
# Ensures what `make test` needs is installed:
#   - Go;
#   - redis-server, which internal/testkit/testenv starts on a private port for each
#     test (tests never use a Redis on :6379 or a NATS on :4222 that may
#     already run on this machine; NATS is embedded as a library);
#   - promtool (Debian's prometheus package), which checks the alert rules
#     and the dashboards' queries in deploy/;
#   - chromium, which the dashboard's browser test drives headless;
#   - tshark, which opens the admin API's pcapng captures in the system test;
#   - kubectl (Debian's kubernetes-client), whose offline `kubectl kustomize`
#     renders the Kubernetes manifests in deploy/k8s;
#   - nft (Debian's nftables), with which the TCP/TLS fallback tests drop UDP
#     in a network namespace they create (they run as root, as CI does);
#   - turnserver (Debian's coturn), which the load generator's TURN tests
#     start on a loopback port (loadtest/fast_turn_test.go) and make
#     capacity measures beside the forwarder.
# Missing ones are installed with apt-get, as root or through passwordless
# sudo; otherwise the script says what to install and fails.
set -euo pipefail

die() {
	echo "deps: $*" >&2
	exit 1
}

# --- Go ---------------------------------------------------------------------
if ! command -v go >/dev/null 2>&1; then
	die "go: not found on PATH. Install Go (the version in go.mod) from https://go.dev/dl/ and put its bin directory on PATH."
fi
echo "go: found $(command -v go) ($(go env GOVERSION))"

# --- apt-installed tools ------------------------------------------------------
can_install=false
as_root=()
if [ "$(id -u)" -eq 0 ]; then
	can_install=true
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	can_install=true
	as_root=(sudo -n)
fi
command -v apt-get >/dev/null 2>&1 || can_install=false

missing_pkgs=()
missing_bins=()
need() { # need BINARY DEBIAN-PACKAGE
	if command -v "$1" >/dev/null 2>&1; then
		echo "$1: found $(command -v "$1")"
	else
		missing_bins+=("$1")
		missing_pkgs+=("$2")
	fi
}
need redis-server redis-server
need promtool prometheus
need chromium chromium
need kubectl kubernetes-client
need nft nftables # the TCP/TLS proof tests drop a network namespace's UDP with it
need tshark tshark # reads the admin API's captures (systemtest TestAdminActionsOnALiveCall)
need turnserver coturn # the fast engine's TURN target (loadtest TestFastThroughTURN, make capacity)

if [ ${#missing_pkgs[@]} -eq 0 ]; then
	exit 0
fi
if ! $can_install; then
	die "not found on PATH: ${missing_bins[*]}; cannot install automatically
  (needs apt-get and either root or passwordless sudo). Install them, then rerun \`make deps\`:
    Debian/Ubuntu: sudo apt-get install ${missing_pkgs[*]}
    other systems: redis-server (https://redis.io), promtool (https://prometheus.io/download/), chromium, kubectl"
fi
echo "installing with ${as_root[*]+${as_root[*]} }apt-get: ${missing_pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark's package asks whether non-root users may capture: no (it only reads files here).
echo "wireshark-common wireshark-common/install-setuid boolean false" | ${as_root[@]+"${as_root[@]}"} debconf-set-selections 2>/dev/null || true
${as_root[@]+"${as_root[@]}"} apt-get update
# Services these packages may start (redis on :6379, prometheus on :9090)
# are not used by the tests.
${as_root[@]+"${as_root[@]}"} apt-get install -y "${missing_pkgs[@]}"
for b in "${missing_bins[@]}"; do
	command -v "$b" >/dev/null 2>&1 || die "$b: apt-get install finished but $b is still not on PATH"
	echo "$b: installed: $(command -v "$b")"
done
