#!/usr/bin/env bash
# The membership scenario of `cargo bench --bench mesh`, run against HashiCorp Serf
# (Debian package `serf`) on the same kind of network: N hosts (default 10), one network
# namespace each, on one bridge. Prints Serf's failure detection (kill -9 until every other
# member lists it `failed`), user-event latency until every member's handler ran (without
# and with Serf's default coalescing), graceful leave (until every other member lists it
# `left`), and idle traffic per member. Then, when run from the repository, the cnspr
# benchmark itself, so the two are compared in one run.
#
# Root only. Usage: bench/serf.sh [HOSTS]   (CNSPR_BENCH_ROUNDS, default 5; SERF_ONLY=1
# skips the cnspr part)
set -euo pipefail

N=${1:-10}
ROUNDS=${CNSPR_BENCH_ROUNDS:-5}
command -v serf >/dev/null || { echo "serf is not installed (apt-get install serf): skipping"; exit 0; }
[[ $(id -u) -eq 0 ]] || { echo "network namespaces need root: skipping"; exit 0; }

TAG="sf$$"
WORK=$(mktemp -d)
declare -a PIDS
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill -9 "$p" 2>/dev/null || true; done
  for ((i = 0; i < N; i++)); do ip netns del "${TAG}h$i" 2>/dev/null || true; done
  ip netns del "${TAG}s" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ns() { date +%s%N; }
ns() { ip netns exec "${TAG}h$1" "${@:2}"; }

# Network: a bridge in its own namespace, one veth per host, 10.77.0.(i+1)/24.
ip netns add "${TAG}s"
ip -n "${TAG}s" link add name sw0 type bridge
ip -n "${TAG}s" link set sw0 up
for ((i = 0; i < N; i++)); do
  h="${TAG}h$i"
  ip netns add "$h"
  ip -n "$h" link add eth0 type veth peer name "p$i" netns "${TAG}s"
  ip -n "${TAG}s" link set "p$i" master sw0
  ip -n "${TAG}s" link set "p$i" up
  ip -n "$h" addr add "10.77.0.$((i + 1))/24" dev eth0
  ip -n "$h" link set eth0 up
  ip -n "$h" link set lo up
  ip -n "$h" route add default dev eth0
  mkdir -p "$WORK/$i"
  printf '#!/bin/sh\ndate +%%s%%N >> %s/%s/b\n' "$WORK" "$i" > "$WORK/$i/b.sh"
  chmod +x "$WORK/$i/b.sh"
done

start_agent() {
  local i=$1
  # Not through `ns`: a function would run in a subshell and $! would not be serf's PID
  # (`ip netns exec` execs serf, so here it is).
  ip netns exec "${TAG}h$i" serf agent -node="m$i" -bind="10.77.0.$((i + 1)):7946" -rpc-addr=127.0.0.1:7373 \
    -event-handler="user:b=$WORK/$i/b.sh" -log-level=err >"$WORK/$i/log" 2>&1 &
  PIDS[i]=$!
  until ns "$i" serf members >/dev/null 2>&1; do sleep 0.05; done
}

# status_of WATCHER NODE: NODE's status in WATCHER's member list.
status_of() {
  ns "$1" serf members -name="^m$2\$" -format=json 2>/dev/null |
    python3 -c 'import json,sys; m=json.load(sys.stdin)["members"]; print(m[0]["status"] if m else "none")'
}

# wait_all NODE STATUS T0: until every other member lists NODE with STATUS; prints ms since
# T0. Every member is polled by its own loop, so one slow check does not delay the others.
wait_all() {
  local k=$1 want=$2 t0=$3 i
  local dir
  dir=$(mktemp -d -p "$WORK")
  for ((i = 0; i < N; i++)); do
    [[ $i -eq $k ]] && continue
    (
      deadline=$(($(now_ns) + 60000000000))
      until [[ $(status_of "$i" "$k") == "$want" ]]; do
        (($(now_ns) < deadline)) || { echo "m$i never saw m$k $want" >&2; exit 1; }
        sleep 0.02
      done
      now_ns >"$dir/$i"
    ) &
  done
  wait
  local worst=0 t
  for f in "$dir"/*; do
    t=$(<"$f")
    ((t - t0 > worst)) && worst=$((t - t0))
  done
  [[ $(ls "$dir" | wc -l) -eq $((N - 1)) ]] || exit 1
  echo $((worst / 1000000))
}

all_alive() {
  local i j
  for ((i = 0; i < N; i++)); do
    for ((j = 0; j < N; j++)); do
      [[ $i -eq $j ]] && continue
      until [[ $(status_of "$i" "$j") == "alive" ]]; do sleep 0.05; done
    done
  done
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for ((i = 0; i < N; i++)); do start_agent "$i"; done
for ((i = 1; i < N; i++)); do ns "$i" serf join 10.77.0.1 >/dev/null; done
all_alive
echo "serf $(serf version | head -1): mesh of $N hosts alive"

# Idle traffic.
idle=10
read_tx() { ns "$1" cat "/sys/class/net/eth0/statistics/$2"; }
declare -a P0 B0
for ((i = 0; i < N; i++)); do P0[i]=$(read_tx "$i" tx_packets); B0[i]=$(read_tx "$i" tx_bytes); done
sleep "$idle"
pk=0; by=0
for ((i = 0; i < N; i++)); do
  pk=$((pk + $(read_tx "$i" tx_packets) - P0[i])); by=$((by + $(read_tx "$i" tx_bytes) - B0[i]))
done
SERF_IDLE=$(awk -v p=$pk -v n=$N -v s=$idle 'BEGIN{printf "%.1f", p/n/s}')
echo "serf idle traffic per member: $SERF_IDLE packets/s, $((by / N / idle)) bytes/s sent"

# User event latency until every other member's handler ran.
event_latency() { # $1: extra flags for `serf event`; $2: round count so far
  local t0 worst=0 i round=$2
  t0=$(now_ns)
  ns 0 serf event $1 b >/dev/null
  for ((i = 1; i < N; i++)); do
    local f="$WORK/$i/b" deadline=$(($(now_ns) + 30000000000))
    until [[ -f $f && $(wc -l <"$f") -ge $round ]]; do
      (($(now_ns) < deadline)) || { echo "m$i never ran the handler" >&2; exit 1; }
      sleep 0.005
    done
    local t
    t=$(sed -n "${round}p" "$f")
    ((t - t0 > worst)) && worst=$((t - t0))
  done
  echo $((worst / 1000000))
}
r=0
lat=""
for ((x = 0; x < 10; x++)); do r=$((r + 1)); lat+="$(event_latency -coalesce=false $r)"$'\n'; done
SERF_EVENT=$(printf '%s' "$lat" | median)
echo "serf user event, no coalescing, until all $((N - 1)) handlers ran: p50 $SERF_EVENT ms"
lat=""
for ((x = 0; x < 3; x++)); do r=$((r + 1)); lat+="$(event_latency "" $r)"$'\n'; done
echo "serf user event, default coalescing: p50 $(printf '%s' "$lat" | median) ms"

# Failure detection.
det=""
for ((x = 0; x < ROUNDS; x++)); do
  k=$((1 + x % (N - 1)))
  t0=$(now_ns)
  kill -9 "${PIDS[k]}"; wait "${PIDS[k]}" 2>/dev/null || true
  det+="$(wait_all "$k" failed "$t0")"$'\n'
  start_agent "$k"; ns "$k" serf join 10.77.0.1 >/dev/null; all_alive
done
SERF_DETECT=$(printf '%s' "$det" | median)
echo "serf failure detection (kill -9 until all others list it failed): p50 $SERF_DETECT ms over $ROUNDS"

# Graceful leave.
lv=""
for ((x = 0; x < ROUNDS; x++)); do
  k=$((1 + x % (N - 1)))
  t0=$(now_ns)
  ns "$k" serf leave >/dev/null 2>&1 || true
  lv+="$(wait_all "$k" left "$t0")"$'\n'
  wait "${PIDS[k]}" 2>/dev/null || true
  start_agent "$k"; ns "$k" serf join 10.77.0.1 >/dev/null; all_alive
done
SERF_LEAVE=$(printf '%s' "$lv" | median)
echo "serf graceful leave (until all others list it left): p50 $SERF_LEAVE ms over $ROUNDS"
echo "(each member polled every ~20 ms plus one \`serf members\` call: detection and leave are late by that much)"

# cnspr, same scenario, same run.
cd "$(dirname "$0")/.."
if [[ -z ${SERF_ONLY:-} && -f Cargo.toml ]] && command -v cargo >/dev/null; then
  echo "--- cnspr ---"
  # The ratios the cnspr bench prints are to these figures, measured just now.
  CNSPR_BENCH_HOSTS=$N CNSPR_BENCH_SERF_IDLE=$SERF_IDLE CNSPR_BENCH_SERF_EVENT_MS=$SERF_EVENT \
    CNSPR_BENCH_SERF_DETECT_MS=$SERF_DETECT CNSPR_BENCH_SERF_LEAVE_MS=$SERF_LEAVE \
    cargo bench -q --bench mesh 2>/dev/null
fi
