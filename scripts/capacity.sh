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
# CASE picks the traffic (one or more, space-separated; default one2one):
#   one2one  one-to-one audio, both devices on one relay (every relay of RELAYS);
#   trunk    one-to-one audio spanning two forwarders of one cluster over the
#            trunk (fast.spread: each call's devices on different forwarders,
#            every frame crosses the trunk once). Both forwarders are pinned to
#            RELAY_CPU, so the figure is what one relay core does for a spanning
#            call, both ends' work included, and the generator's core stays
#            its own; their CPU is summed (--relay-pids-more). A nats-server
#            (heartbeats, on GEN_CPU) makes them a cluster. Forwarder only.
#   group4   4-person group audio, every member sending, no conductor (no
#            dominant-speaker selection: each packet fanned out to the 3
#            others). Forwarder and reflector (coturn is one-to-one here).
#   group4c, group8c
#            4- and 8-person group audio WITH a conductor: a redis-server, a
#            nats-server and a `callrelay conductor` (--max-forwarded 3) run on
#            GEN_CPU beside the generator (their CPU is not the relay's), the
#            forwarder (RELAY_CPU) joins them as a one-forwarder cluster and
#            publishes its members' RFC 6464 levels; the conductor's decisions
#            gate the audio: at most 3 voices forwarded per call. The devices
#            talk by the talkspurt model (speech at level 25 with the voice
#            flag, silence at 120). The generator cannot know which frames the
#            conductor lets through: loss is counted per stream from sequence
#            gaps (a gap of 1-2 frames is loss, a longer one gating), and each
#            result's "forwarding" says what was sent, what a relay forwarding
#            everything would have written, what arrived, and how many voices
#            each receiver heard per 200 ms. The reflector has no conductor:
#            the generator chooses for it, members 0-2 of each call fanned out
#            and the others' frames sent from an address nobody registered,
#            which the reflector reads, looks up and drops (the forwarder reads
#            and drops a gated frame): the same datagrams in, at least as many
#            copies out as the forwarder writes (its set may hold fewer than 3).
#   video    4-person group calls with simulcast video: every member sends its
#            audio and 3 video layers (one packet per layer per 20 ms: 250,
#            600 and 1,100 bytes of payload; a key frame every second), no
#            conductor: the forwarder gives each receiver the lowest layer of
#            each sender (its default policy) and every voice. The reflector
#            fans out the audio and layer 0; layers 1 and 2 go to it from the
#            unregistered address (read, looked up, dropped). Loss per stream
#            (every gap counts).
#
# IO=packet (root) moves the generator's frames around its kernel's socket
# stack (loadtest --fast-io packet, loadtest/fast_io.go). Both ends live in
# network namespaces the run makes, nothing is added to this (the root)
# one: no address, route, neighbour or sysctl. The generator's namespace
# (NETNS, default crgen) holds crv-g, with no address; the relay's
# (RELAY_NS, default crrel) holds crv-r, the veth pair's other end (MAC
# 02:cc:00:00:00:01, at 10.211.0.1/30), routes the devices' range
# 198.18.0.0/15 to crv-g through a static neighbour whose MAC no interface
# has (the generator's kernel drops those frames right after its ring
# tapped them: no socket, no ICMP), forwards on crv-r (the baseline pairs'
# frames bounce there) and sets rps_cpus of crv-r's receive queue to
# RELAY_CPU (the relay pays its own kernel receive path). crv-g's stays
# empty: the relay's frames are taken in (the generator ring's tap, the
# drop) on the core that sent them, the relay's, in its send call, where
# its CPU figure counts them; GEN_RPS=1 moves that to GEN_CPU instead, by
# an IPI per batch, whose softirq time this kernel (no
# IRQ_TIME_ACCOUNTING) charges to whatever task it interrupts, not to the
# generator (docs/capacity.md, Packet I/O). Every relay-side process runs
# in RELAY_NS (ip netns exec, still pinned by taskset/chrt): the relays,
# listening on 10.211.0.1, and for trunk/group4c/group8c the nats-server,
# redis-server and conductor on its 127.0.0.1, and the readiness checks.
# The generator stays in this namespace: only its AF_PACKET socket is
# opened in NETNS (--fast-netns, --fast-iface crv-g, --fast-gateway
# crv-r's MAC); it sends raw frames and reads them from a TPACKET_V3 ring.
# Its /proc/<pid>/stat reading of the relays' CPU works across namespaces.
# Deleting both namespaces when done removes all of it. coturn is left
# out (the TURN target needs kernel sockets). IO=socket (the default) is
# the plain UDP path over 127.0.0.0/8, every process in this namespace.
#
# Output in $OUT/<case>/: <relay>.json and <relay>.html (each ramp's
# load-test result and report), capacity.json and capacity.html (side by
# side, labelled with the case, with the forwarder/reflector and
# forwarder/coturn ratios of packets per CPU-second at the same steps).
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
CASE=${CASE:-one2one}             # one2one, trunk, group4, group4c, group8c, video (several: space-separated)
IO=${IO:-socket}                  # socket or packet (see above)
NETNS=${NETNS:-crgen}              # IO=packet: the generator's network namespace
RELAY_NS=${RELAY_NS:-crrel}        # IO=packet: the relays' network namespace
RELAY_MAC=02:cc:00:00:00:01        # IO=packet: crv-r's (the generator's --fast-gateway)
HOST=127.0.0.1 # where the relays' media sockets listen
rns=()         # IO=packet: ip netns exec RELAY_NS, before every relay-side command
case $IO in
socket) ;;
packet)
	[ "$(id -u)" -eq 0 ] || { echo "capacity: IO=packet needs root (ip netns, veth, AF_PACKET)" >&2; exit 1; }
	[ "$NETNS" != "$RELAY_NS" ] || { echo "capacity: NETNS and RELAY_NS must differ" >&2; exit 1; }
	HOST=10.211.0.1
	rns=(ip netns exec "$RELAY_NS") ;;
*) echo "capacity: IO $IO: want socket or packet" >&2; exit 1 ;;
esac
for c in $CASE; do
	case $c in one2one | trunk | group4 | group4c | group8c | video) ;;
	*) echo "capacity: CASE $c: want one2one, trunk, group4, group4c, group8c or video" >&2; exit 1 ;;
	esac
	case $c in group4c | group8c)
		command -v redis-server >/dev/null && command -v nats-server >/dev/null ||
			{ echo "capacity: CASE $c needs redis-server and nats-server on PATH" >&2; exit 1; } ;;
	esac
done

# RT=N runs the relays and the generator SCHED_FIFO at priority N (chrt;
# root): on a machine shared with other work, their pinned cores are then
# theirs whenever they want them, so a delay knee is the relay's, not a
# neighbour's compile (docs/capacity.md, cost per packet). Off by default.
rt=()
[ -z "${RT:-}" ] || rt=(chrt -f "$RT")
command -v taskset >/dev/null || { echo "capacity: taskset (util-linux) is needed" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "capacity: needs 2 cores (relay and generator on their own)" >&2; exit 1; }
case " $IO/$CASE/$RELAYS " in
" socket/"*one2one*" coturn "*)
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
# write_plan CASE: the case's ramp plan, $OUT/CASE/plan.yaml.
write_plan() {
	local mix='{one_to_one: 1}' spread=false more= sockets=2
	# One packet socket speaks for every device address: a second one only
	# doubles the system calls, wake-ups and IPIs per tick.
	[ "$IO" != packet ] || sockets=1
	case $1 in
	trunk) spread=true ;;
	group4) mix='{one_to_one: 0, group_min: 4, group_max: 4}' ;;
	group4c) mix='{one_to_one: 0, group_min: 4, group_max: 4}' more=', forwarded: 3' ;;
	group8c) mix='{one_to_one: 0, group_min: 8, group_max: 8}' more=', forwarded: 3' ;;
	video) mix='{one_to_one: 0, group_min: 4, group_max: 4}' more=', video_layers: 3' ;;
	esac
	cat >"$OUT/$1/plan.yaml" <<PLAN
engine: fast
fast: {sockets: $sockets, probe_every: 20, baseline_pairs: 4, spread: $spread$more}
mix: $mix
call_duration: {mean: 1h, min: 1h, max: 1h}
profile:
  kind: ramp
  ramp: {start: $RATE, step: 0.001, step_duration: $STEP, max_steps: $STEPS}
bounds: {max_duration: $((secs * STEPS + 30))s, max_concurrent_calls: 100000, max_calls: 100000}
targets: {loss_pct: $LOSS_TARGET, relay_added_delay_p99: $DELAY_TARGET, delay_p95: 1s, setup_success_pct: 99, setup_p95: 2s}
PLAN
}

relay_pid=
more_pids=() # the trunk case's second forwarder and nats-server
stop_relay() {
	local pid i rev=()
	for ((i = ${#more_pids[@]} - 1; i >= 0; i--)); do rev+=("${more_pids[i]}"); done # last started first: the conductor before its redis and nats
	for pid in $relay_pid ${rev[@]+"${rev[@]}"}; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	relay_pid=
	more_pids=()
}
# cpu_mask N: the hex mask of core N (rps_cpus).
cpu_mask() { printf '%x' $((1 << $1)); }

# netns_up (IO=packet): the two namespaces, the veth pair between them, and
# in RELAY_NS crv-r's address, the neighbour and route to the devices,
# forwarding and RPS; nothing in this namespace. netns_down removes them
# (the veth pair goes with them).
netns_up() {
	netns_down
	ip netns add "$NETNS"
	ip netns add "$RELAY_NS"
	ip link add crv-r netns "$RELAY_NS" address "$RELAY_MAC" type veth peer name crv-g netns "$NETNS" address 02:cc:00:00:00:02
	ip -n "$NETNS" link set lo up
	ip -n "$NETNS" link set crv-g up
	ip -n "$RELAY_NS" link set lo up
	ip -n "$RELAY_NS" addr add 10.211.0.1/30 dev crv-r
	ip -n "$RELAY_NS" link set crv-r up
	ip -n "$RELAY_NS" neigh replace 10.211.0.2 lladdr 02:cc:00:00:00:03 dev crv-r nud permanent
	ip -n "$RELAY_NS" route replace 198.18.0.0/15 via 10.211.0.2 dev crv-r
	ip netns exec "$RELAY_NS" sh -c "echo 1 >/proc/sys/net/ipv4/conf/crv-r/forwarding &&
		echo $(cpu_mask "$RELAY_CPU") >/sys/class/net/crv-r/queues/rx-0/rps_cpus"
	local gen_mask=0 # the relay's frames are taken in on the core that sent them: the relay's
	[ "${GEN_RPS:-0}" = 0 ] || gen_mask=$(cpu_mask "$GEN_CPU")
	ip netns exec "$NETNS" sh -c "echo $gen_mask >/sys/class/net/crv-g/queues/rx-0/rps_cpus"
}
netns_down() {
	ip netns del "$RELAY_NS" 2>/dev/null || true
	ip netns del "$NETNS" 2>/dev/null || true
}
# in_relay_ns CMD...: CMD in the relays' namespace (IO=packet), else here.
in_relay_ns() { ${rns[@]+"${rns[@]}"} "$@"; }
# port_open PORT: whether something listens on 127.0.0.1:PORT where the relays run.
port_open() { in_relay_ns bash -c ": </dev/tcp/127.0.0.1/$1" 2>/dev/null; }
cleanup() {
	stop_relay
	[ "$IO" != packet ] || netns_down
}
trap cleanup EXIT
gen_io=()
if [ "$IO" = packet ]; then
	netns_up
	gen_io=(--fast-io packet --fast-netns "$NETNS" --fast-iface crv-g --fast-gateway "$RELAY_MAC")
fi

# start_forwarder NAME PORT [ARGS...]: a forwarder on RELAY_CPU (in
# RELAY_NS with IO=packet); its pid in $!.
start_forwarder() {
	local name=$1 port=$2
	shift 2
	${rns[@]+"${rns[@]}"} ${rt[@]+"${rt[@]}"} taskset -c "$RELAY_CPU" "$OUT/callrelay" forwarder --listen "$HOST:$port" --public-key "$CALLRELAY_PUBLIC_KEY" \
		--readers 1 --cpu-cores 1 --drain-deadline 1s --log-level warn --stats-every 0 "$@" >"$OUT/$kase/$name.log" 2>&1 &
}

# start_trunk_pair: forwarders A (relay_pid, at $port) and B (more_pids, at
# $((port+1))) in one cluster over a nats-server (all in RELAY_NS with
# IO=packet); waits (poll, 15 s) until each counts the other a peer. Sets
# fwds.
start_trunk_pair() {
	local nport=$((PORT + 100)) key m
	key=$("$OUT/callrelay" token cluster-key | sed -n "s/^CALLRELAY_CLUSTER_KEY=//p")
	${rns[@]+"${rns[@]}"} taskset -c "$GEN_CPU" nats-server -a 127.0.0.1 -p "$nport" >"$OUT/$kase/nats.log" 2>&1 &
	more_pids+=($!)
	for _ in $(seq 100); do
		port_open "$nport" && break
		sleep 0.1
	done
	for n in a b; do
		local p=$port t=$((port + 200)) mport=$((port + 300))
		[ $n = b ] && p=$((port + 1)) t=$((port + 201)) mport=$((port + 301))
		CALLRELAY_CLUSTER_KEY=$key start_forwarder "forwarder-$n" "$p" --id "capacity-$n" --trunk-listen "127.0.0.1:$t" \
			--nats-url "nats://127.0.0.1:$nport" --metrics-listen "127.0.0.1:$mport"
		if [ $n = a ]; then relay_pid=$!; else more_pids+=($!); fi
	done
	for _ in $(seq 150); do
		m=0
		for mport in $((port + 300)) $((port + 301)); do
			in_relay_ns curl -fsS "http://127.0.0.1:$mport/metrics" 2>/dev/null | grep -q '^callrelay_forwarder_peers 1$' && m=$((m + 1))
		done
		[ $m = 2 ] && break
		sleep 0.1
	done
	[ $m = 2 ] || { echo "capacity: the trunk pair never saw each other" >&2; cat "$OUT/$kase"/forwarder-*.log >&2; exit 1; }
	fwds="$HOST:$port,$HOST:$((port + 1))"
	PORT=$((PORT + 1))
}

# start_conducted: a redis-server, a nats-server and a conductor on
# GEN_CPU (more_pids), and the forwarder (relay_pid, at $port) on RELAY_CPU
# in their cluster (all in RELAY_NS with IO=packet); waits (poll, 20 s)
# until the conductor holds every partition.
start_conducted() {
	local nport=$((PORT + 100)) rport=$((PORT + 400)) cport=$((PORT + 500)) key
	key=$("$OUT/callrelay" token cluster-key | sed -n "s/^CALLRELAY_CLUSTER_KEY=//p")
	${rns[@]+"${rns[@]}"} taskset -c "$GEN_CPU" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/$kase/redis.log" 2>&1 &
	more_pids+=($!)
	${rns[@]+"${rns[@]}"} taskset -c "$GEN_CPU" nats-server -a 127.0.0.1 -p "$nport" >"$OUT/$kase/nats.log" 2>&1 &
	more_pids+=($!)
	for p in "$rport" "$nport"; do
		for _ in $(seq 100); do
			port_open "$p" && break
			sleep 0.1
		done
	done
	${rns[@]+"${rns[@]}"} taskset -c "$GEN_CPU" "$OUT/callrelay" conductor --id capacity-conductor --cluster-key "$key" --redis-url "redis://127.0.0.1:$rport" \
		--nats-url "nats://127.0.0.1:$nport" --max-forwarded 3 --metrics-listen "127.0.0.1:$cport" --log-level warn >"$OUT/$kase/conductor.log" 2>&1 &
	more_pids+=($!)
	CALLRELAY_CLUSTER_KEY=$key start_forwarder forwarder "$port" --id capacity-a --trunk-listen "127.0.0.1:$((port + 200))" \
		--nats-url "nats://127.0.0.1:$nport" --redis-url "redis://127.0.0.1:$rport"
	relay_pid=$!
	local owned=
	for _ in $(seq 200); do
		owned=$(in_relay_ns curl -fsS "http://127.0.0.1:$cport/metrics" 2>/dev/null | sed -n 's/^callrelay_conductor_partitions_owned \([0-9]*\).*/\1/p' || true)
		[ "${owned:-0}" -ge 64 ] && break
		sleep 0.1
	done
	[ "${owned:-0}" -ge 64 ] || { echo "capacity: the conductor holds ${owned:-no} partitions" >&2; cat "$OUT/$kase/conductor.log" >&2; exit 1; }
}

# relays_of CASE: the relays the case runs.
relays_of() {
	case $1 in
	trunk) echo forwarder ;;
	group4 | group4c | group8c | video) echo "$RELAYS" | tr ' ' '\n' | grep -v '^coturn$' | tr '\n' ' ' ;;
	*) echo "$RELAYS" | tr ' ' '\n' | { if [ "$IO" = packet ]; then grep -v '^coturn$'; else cat; fi; } | tr '\n' ' ' ;;
	esac
}

for kase in $CASE; do
	mkdir -p "$OUT/$kase"
	write_plan "$kase"
	args=()
	for relay in $(relays_of "$kase"); do
		port=$((PORT++))
		extra=()
		fwds="$HOST:$port"
		case $relay in
		forwarder)
			if [ "$kase" = trunk ]; then
				start_trunk_pair
				extra=(--relay-pids-more "${more_pids[1]}")
			elif [ "$kase" = group4c ] || [ "$kase" = group8c ]; then
				start_conducted
			else
				start_forwarder forwarder "$port"
				relay_pid=$!
			fi
			target=forwarder ;;
		reflector)
			${rns[@]+"${rns[@]}"} ${rt[@]+"${rt[@]}"} taskset -c "$RELAY_CPU" "$OUT/callrelay" reflector --listen "$HOST:$port" >"$OUT/$kase/reflector.log" 2>&1 &
			relay_pid=$!
			target=reflector ;;
		coturn)
			CALLRELAY_LOADTEST_TURN_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
			export CALLRELAY_LOADTEST_TURN_PASSWORD
			rm -f "$OUT/turndb"
			${rt[@]+"${rt[@]}"} taskset -c "$RELAY_CPU" turnserver -n --no-tcp --no-tcp-relay --no-tls --no-dtls --no-cli -L 127.0.0.1 --relay-ip 127.0.0.1 -p "$port" \
				-a -u "capacity:$CALLRELAY_LOADTEST_TURN_PASSWORD" -r callrelay --allow-loopback-peers -m 1 \
				--userdb "$OUT/turndb" --pidfile "$OUT/turnserver.pid" --log-file "$OUT/$kase/coturn.log" --simple-log >/dev/null 2>&1 &
			relay_pid=$!
			target=turn
			extra=(--turn-user capacity) ;;
		*) echo "capacity: unknown relay $relay" >&2; exit 1 ;;
		esac
		sleep 1
		kill -0 "$relay_pid" || { cat "$OUT/$kase/$relay"*.log >&2; exit 1; }
		echo "== $kase: $relay (pid $relay_pid ${more_pids[*]+${more_pids[*]}}, core $RELAY_CPU; generator on core $GEN_CPU, IO=$IO)"
		${rt[@]+"${rt[@]}"} taskset -c "$GEN_CPU" "$OUT/callrelay" loadtest --plan "$OUT/$kase/plan.yaml" --forwarders "$fwds" \
			--signing-key "$CALLRELAY_SIGNING_KEY" --fast-target "$target" ${extra[@]+"${extra[@]}"} ${gen_io[@]+"${gen_io[@]}"} --relay-pid "$relay_pid" --relay-cores 1 \
			--out "$OUT/$kase/$relay.json" --report "$OUT/$kase/$relay.html" || true
		stop_relay
		args+=("$relay=$OUT/$kase/$relay.json")
	done
	go run ./scripts/capacityreport -out "$OUT/$kase" -case "$kase" -load "$(uptime)" "${args[@]}"
	echo "capacity: $OUT/$kase/capacity.json, $OUT/$kase/capacity.html"
done
