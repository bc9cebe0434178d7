#!/usr/bin/env bash
# make capacity: the relay's knee per core and its cost per packet, side by
# side with the bare batched reflector (callrelay reflector) and coturn
# (Debian's turnserver relaying TURN ChannelData; installed here with
# apt-get when missing), on the same traffic in one run. Each relay in turn is pinned to core RELAY_CPU
# (taskset) and the fast load generator (callrelay loadtest --engine fast) to
# GEN_CPU; the generator ramps one-to-one audio calls (they last the whole
# run, so every step adds RATE x STEP calls) until a target breaks: loss >=
# 0.1 %, the relay-added p99 delay >= 5 ms (probe calls against the
# generator's direct baseline pairs, same run), setups failing (a throttled
# forwarder refuses joins with 508). A step where the generator was the
# limit (its CPU, late ticks, socket drops) is marked generator-bound and no
# knee is claimed from it. The relay's CPU comes from /proc/<pid>/stat.
#
# coturn runs with one relay thread (-m 1), a generated long-term
# credential user, no TLS, loopback peers allowed; the generator's TURN
# target (loadtest/fast_turn.go) gives each call's first device an
# allocation with a channel to its peer, so that every frame crosses
# coturn once, in and out, as it crosses the forwarder. Allocations are
# not refreshed: keep STEP x STEPS under 5 minutes.
#
# Output in $OUT: <relay>.json and <relay>.html (each ramp's load-test
# result and report), capacity.json and capacity.html (side by side, with
# the forwarder/reflector and forwarder/coturn ratios of packets per
# CPU-second at the same steps).
# A benchmark: never part of `make test`.
set -euo pipefail

OUT=${OUT:-capacity-out}
RELAY_CPU=${RELAY_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
RATE=${RATE:-40}       # calls/s arriving (steady; every step adds RATE x STEP calls)
STEP=${STEP:-5s}       # step length
STEPS=${STEPS:-12}     # at most this many steps
RELAYS=${RELAYS:-forwarder reflector coturn}
PORT=${PORT:-17911}
LOSS_TARGET=${LOSS_TARGET:-0.1}   # percent
DELAY_TARGET=${DELAY_TARGET:-5ms} # relay-added p99 (raise it only on a machine too loaded to measure 5 ms, and say so)

command -v taskset >/dev/null || { echo "capacity: taskset (util-linux) is needed" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "capacity: needs 2 cores (relay and generator on their own)" >&2; exit 1; }
case " $RELAYS " in
*" coturn "*)
	if ! command -v turnserver >/dev/null; then
		as_root=()
		[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
		echo "capacity: installing Debian's coturn (turnserver) with apt-get"
		{ ${as_root[@]+"${as_root[@]}"} apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive ${as_root[@]+"${as_root[@]}"} apt-get install -y -qq coturn; } ||
			{ echo "capacity: coturn is needed for RELAYS=coturn: apt-get install coturn (or leave coturn out of RELAYS)" >&2; exit 1; }
	fi ;;
esac
mkdir -p "$OUT"
go build -o "$OUT/callrelay" ./cmd/callrelay
eval "$("$OUT/callrelay" token keygen | sed 's/^/export /')"

secs=${STEP%s}
cat > "$OUT/plan.yaml" <<PLAN
engine: fast
fast: {sockets: 2, probe_every: 20, baseline_pairs: 4}
mix: {one_to_one: 1}
call_duration: {mean: 1h, min: 1h, max: 1h}
profile:
  kind: ramp
  ramp: {start: $RATE, step: 0.001, step_duration: $STEP, max_steps: $STEPS}
bounds: {max_duration: $((secs * STEPS + 30))s, max_concurrent_calls: 100000, max_calls: 100000}
targets: {loss_pct: $LOSS_TARGET, relay_added_delay_p99: $DELAY_TARGET, delay_p95: 1s, setup_success_pct: 99, setup_p95: 2s}
PLAN

relay_pid=
stop_relay() {
	if [ -n "$relay_pid" ]; then
		kill "$relay_pid" 2>/dev/null || true
		wait "$relay_pid" 2>/dev/null || true
		relay_pid=
	fi
}
trap stop_relay EXIT

args=()
for relay in $RELAYS; do
	port=$((PORT++))
	extra=()
	case $relay in
	forwarder)
		taskset -c "$RELAY_CPU" "$OUT/callrelay" forwarder --listen "127.0.0.1:$port" --public-key "$CALLRELAY_PUBLIC_KEY" \
			--readers 1 --cpu-cores 1 --drain-deadline 1s --log-level warn --stats-every 0 >"$OUT/forwarder.log" 2>&1 &
		target=forwarder ;;
	reflector)
		taskset -c "$RELAY_CPU" "$OUT/callrelay" reflector --listen "127.0.0.1:$port" >"$OUT/reflector.log" 2>&1 &
		target=reflector ;;
	coturn)
		CALLRELAY_LOADTEST_TURN_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
		export CALLRELAY_LOADTEST_TURN_PASSWORD
		rm -f "$OUT/turndb"
		taskset -c "$RELAY_CPU" turnserver -n --no-tls --no-dtls --no-cli -L 127.0.0.1 --relay-ip 127.0.0.1 -p "$port" \
			-a -u "capacity:$CALLRELAY_LOADTEST_TURN_PASSWORD" -r callrelay --allow-loopback-peers -m 1 \
			--userdb "$OUT/turndb" --pidfile "$OUT/turnserver.pid" --log-file "$OUT/coturn.log" --simple-log >/dev/null 2>&1 &
		target=turn
		extra=(--turn-user capacity) ;;
	*) echo "capacity: unknown relay $relay" >&2; exit 1 ;;
	esac
	relay_pid=$!
	sleep 1
	kill -0 "$relay_pid" || { cat "$OUT/$relay.log" >&2; exit 1; }
	echo "== $relay (pid $relay_pid, core $RELAY_CPU; generator on core $GEN_CPU)"
	taskset -c "$GEN_CPU" "$OUT/callrelay" loadtest --plan "$OUT/plan.yaml" --forwarders "127.0.0.1:$port" \
		--signing-key "$CALLRELAY_SIGNING_KEY" --fast-target "$target" "${extra[@]}" --relay-pid "$relay_pid" --relay-cores 1 \
		--out "$OUT/$relay.json" --report "$OUT/$relay.html" || true
	stop_relay
	args+=("$relay=$OUT/$relay.json")
done
go run ./scripts/capacityreport -out "$OUT" -load "$(uptime)" "${args[@]}"
echo "capacity: $OUT/capacity.json, $OUT/capacity.html"
