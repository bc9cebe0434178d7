#!/usr/bin/env bash
# Ensures what `make test` needs is installed: Go, and a redis-server binary
# that internal/testenv starts on a private port for each test. NATS needs
# nothing: tests embed nats-server as a library.
#
# Tests never use a Redis on :6379 or a NATS on :4222 that may already run on
# this machine, so their presence neither helps nor satisfies this script.
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

# --- redis-server -------------------------------------------------------------
redis_version() {
	# "Redis server v=7.0.15 sha=..." -> "7.0.15"
	redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'
}

if command -v redis-server >/dev/null 2>&1; then
	echo "redis-server: found $(command -v redis-server) ($(redis_version))"
	exit 0
fi

# Not installed: install it with apt-get if we may, as root or via
# passwordless sudo (-n never prompts, so CI cannot hang on a password).
can_install=false
as_root=()
if [ "$(id -u)" -eq 0 ]; then
	can_install=true
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	can_install=true
	as_root=(sudo -n)
fi

if $can_install && command -v apt-get >/dev/null 2>&1; then
	echo "redis-server: not found; installing with ${as_root[*]+${as_root[*]} }apt-get"
	export DEBIAN_FRONTEND=noninteractive
	${as_root[@]+"${as_root[@]}"} apt-get update
	${as_root[@]+"${as_root[@]}"} apt-get install -y redis-server
	# apt may also start a redis service on :6379; tests do not use it.
	command -v redis-server >/dev/null 2>&1 ||
		die "redis-server: apt-get install finished but redis-server is still not on PATH"
	echo "redis-server: installed via apt-get: $(command -v redis-server) ($(redis_version))"
	exit 0
fi

die "redis-server: not found on PATH and cannot install it automatically
  (needs apt-get and either root or passwordless sudo). Install it, then rerun \`make deps\`:
    Debian/Ubuntu: sudo apt-get install redis-server
    Fedora/RHEL:   sudo dnf install redis
    macOS:         brew install redis
    from source:   https://redis.io/docs/latest/operate/oss_and_stack/install/
  Only the binary is needed; tests start their own server on a free port."
