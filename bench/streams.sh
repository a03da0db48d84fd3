#!/usr/bin/env bash
# Stream throughput of `cnspr connect`, compared in one run and under the same conditions
# with two references:
#
#   (a) cnspr:      `head -c N /dev/zero | cnspr connect beta SERVICE` on one device, the
#                   bytes coming out of `cnspr listen SERVICE` on the other: the real CLI
#                   commands through two `cnspr serve` daemons;
#   (b) dumbpipe:   the same bytes through `dumbpipe connect TICKET` into `dumbpipe listen`
#                   (crates.io crate `dumbpipe`, the pipe tool of the iroh project);
#   (c) bare quinn: the "bare quinn" line of `cargo bench -p transport --bench transport`
#                   (one quinn ChaCha20-Poly1305 stream between two processes, quinn's
#                   default settings, from namespace A to namespace B over the same veth).
#
# N is 2 GiB (CNSPR_BENCH_BYTES overrides it). (a) and (b) alternate, CNSPR_BENCH_ROUNDS
# times each (default 3), and their medians are reported, with the ratios
# cnspr/dumbpipe (target >= 3x) and cnspr/bare quinn (target >= 100%). A transfer is timed
# at the receiver, from the arrival of the first byte to the arrival of the last one (set-up
# of connections and streams is not counted); the byte count received must equal N.
#
# Network: two network namespaces made here, cnsprbenchA-PID and cnsprbenchB-PID, joined
# by a veth pair (10.78.0.1/24 and 10.78.0.2/24), IPv4 only, with no other link and no
# route out: both cnspr daemons and both dumbpipe ends run there, on the same link.
# dumbpipe has no option to turn off iroh's relay servers or its DNS/pkarr address lookup
# (it always uses iroh's default "N0" preset), so these namespaces are what keeps it off
# the internet: its attempts fail at once there. The veth's MTU is 1500 bytes (Ethernet)
# unless CNSPR_BENCH_MTU says otherwise (9000: a jumbo-frame LAN; 65535: loopback-class).
# Everything started here is killed by PID and the namespaces are deleted on exit, also
# on failure. Each round also prints each process's share of a CPU over a second of the
# transfer and what the rest of the machine used meanwhile (CNSPR_BENCH_CPU_WINDOW
# seconds; CNSPR_BENCH_PERF=DIR also records it with perf), the bytes per UDP send from
# namespace A and the datagrams B sent back, and the two cnspr daemons' CPU time per GiB
# of the stream (from their counters over the whole transfer). After the transfers it runs
# `cargo bench -p transport --bench cipher` (the cipher alone, on one CPU, with packets of
# this path's size) and prints what 3x dumbpipe would leave each daemon per GiB once the
# cipher is paid, against what the daemons spent. CNSPR_BENCH_BIN measures a
# given cnspr binary instead of building this tree's. The script prints figures; it exits
# non-zero only when something broke (a wrong byte count, a process that failed or hung).
#
# Run as root (from the repository root, or with the script's path from anywhere):
#
#   sudo bash bench/streams.sh
#   sudo CNSPR_BENCH_BYTES=268435456 bash bench/streams.sh     # 256 MiB
#
# Needs: root (network namespaces; without root it prints why and exits 0), iproute2
# (`ip`), coreutils, cargo (it runs `cargo build --release` and builds the transport
# bench, respecting CARGO_TARGET_DIR) and, once, access to crates.io to install dumbpipe
# with `cargo install dumbpipe --locked` into ${CARGO_TARGET_DIR:-target}/bench-tools (kept
# there for later runs). Without dumbpipe the cnspr and quinn figures are still printed.
# Under sudo, cargo runs as root: build once as yourself first (`cargo build --release`,
# `cargo bench -p transport --no-run`) to keep root-owned files out of target/.
set -euo pipefail
export LC_ALL=C

BYTES=${CNSPR_BENCH_BYTES:-$((2 << 30))}
ROUNDS=${CNSPR_BENCH_ROUNDS:-3}
MTU=${CNSPR_BENCH_MTU:-1500}
[[ $BYTES =~ ^[0-9]+$ ]] && ((BYTES >= 2)) || { echo "CNSPR_BENCH_BYTES must be a byte count >= 2" >&2; exit 2; }
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS >= 1)) || { echo "CNSPR_BENCH_ROUNDS must be >= 1" >&2; exit 2; }
[[ $MTU =~ ^[0-9]+$ ]] && ((MTU >= 1280 && MTU <= 65535)) || { echo "CNSPR_BENCH_MTU must be 1280..65535" >&2; exit 2; }
if [[ $(id -u) -ne 0 ]]; then
  echo "bench/streams.sh needs root (it creates network namespaces): skipping"
  exit 0
fi
for tool in ip sysctl cargo dd head wc mkfifo ps awk realpath; do
  command -v "$tool" >/dev/null || { echo "bench/streams.sh: '$tool' is not installed" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
export CARGO_TARGET_DIR=$TARGET
TOOLS=$TARGET/bench-tools
# CNSPR_BENCH_BIN: a cnspr binary to measure instead of building this tree's (to compare
# two builds under the same conditions).
CNSPR=${CNSPR_BENCH_BIN:-$TARGET/release/cnspr}
DUMBPIPE=$TOOLS/bin/dumbpipe
cd "$ROOT"

NSA=cnsprbenchA-$$
NSB=cnsprbenchB-$$
WORK=$(mktemp -d /tmp/cnspr-streams-bench.XXXXXX)
# Time limit of one transfer: generous (1 MB/s); only there to turn a hang into a failure.
XFER_LIMIT=$((120 + BYTES / 1000000))
declare -a PIDS=()
NETNS_MADE=0

# Kills PID and its descendants (by PID).
kill_tree() {
  local p
  for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$p"; done
  kill -9 "$1" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local p ns t0=$SECONDS
  disown -a 2>/dev/null # no "Killed" job reports
  for p in "${PIDS[@]}"; do kill_tree "$p"; done
  if ((NETNS_MADE)); then
    for ns in "$NSA" "$NSB"; do
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
  fi
  for p in "${PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null && ((SECONDS - t0 < 5)); do sleep 0.05; done
  done
  if ((NETNS_MADE)); then
    ip netns del "$NSA" 2>/dev/null
    ip netns del "$NSB" 2>/dev/null
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "bench/streams.sh: FAILED: $*" >&2
  exit 1
}

# Prints the last lines of a log file, indented, to stderr.
show() {
  [[ -s $1 ]] && { echo "--- $1:" >&2; tail -n "${2:-20}" "$1" | sed 's/^/    /' >&2; }
  return 0
}

# until_ok SECONDS WHAT CMD...: polls CMD until it succeeds; fails after SECONDS.
until_ok() {
  local limit=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@"; do
    ((SECONDS - t0 < limit)) || fail "timed out after ${limit} s waiting for $what"
    sleep 0.05
  done
}

# finish PID SECONDS WHAT [LOG]: waits for the background process PID to exit; fails if
# it does not within SECONDS or exits non-zero.
finish() {
  local pid=$1 limit=$2 what=$3 log=${4:-} t0=$SECONDS rc=0
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - t0 >= limit)); then
      [[ -n $log ]] && show "$log"
      fail "$what did not exit within ${limit} s"
    fi
    sleep 0.05
  done
  wait "$pid" || rc=$?
  if ((rc != 0)); then
    [[ -n $log ]] && show "$log"
    fail "$what exited with status $rc"
  fi
}

# Reads a stream on stdin and writes "FIRST_US END_US COUNT": the arrival times (µs) of
# its first byte and of byte $1 (the expected count), and how many bytes came in all
# (reading on to the end after $1 bytes, so that surplus bytes are counted too).
count_stream() {
  local want=$1 log=$WORK/dd.$BASHPID one first end rest=0 extra
  one=$(head -c 1 | wc -c)
  first=$EPOCHREALTIME
  if ((one == 1)); then
    dd of=/dev/null bs=1M iflag=fullblock,count_bytes count=$((want - 1)) 2>"$log" || true
    end=$EPOCHREALTIME
    rest=$(awk '/bytes/ && /copied/ { print $1 }' "$log")
  else
    end=$first
  fi
  extra=$(wc -c)
  echo "${first/./} ${end/./} $((one + ${rest:-0} + extra))"
}

# Prefixes running a program in namespace A or B with a clean environment (no proxies, no
# stray configuration); `ip netns exec` and `env` exec it, so `$!` is the program's PID.
CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$WORK/home" RUST_LOG=warn NO_COLOR=1)
IN_A=(ip netns exec "$NSA" "${CLEAN_ENV[@]}")
IN_B=(ip netns exec "$NSB" "${CLEAN_ENV[@]}")

mbps() { awk -v b="$1" -v us="$2" 'BEGIN { printf "%.1f", b / us }'; }
median() {
  printf '%s\n' "$@" | sort -g | awk -v f="${MEDIAN_FMT:-%.1f}" '{ v[NR] = $1 }
    END { if (NR % 2) printf f, v[(NR + 1) / 2]; else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- build ------------------
echo "== building (cargo build --release; transport bench; dumbpipe)" >&2
if [[ -z ${CNSPR_BENCH_BIN:-} ]]; then
  cargo build --release >&2 || fail "cargo build --release"
fi
[[ -x $CNSPR ]] || fail "no $CNSPR after the build"
cargo bench -p transport --bench transport --no-run >&2 || fail "building the transport bench"
cargo bench -p transport --bench cipher --no-run >&2 || fail "building the cipher bench"

DP_WHY=""
if [[ ! -x $DUMBPIPE ]]; then
  echo "installing dumbpipe into $TOOLS" >&2
  # Its own temporary build directory, not the project's target directory.
  if ! env -u CARGO_TARGET_DIR cargo install dumbpipe --locked --root "$TOOLS" >"$WORK/install.log" 2>&1; then
    show "$WORK/install.log" 10
    why=$(grep -m1 '^error' "$WORK/install.log" || tail -n 1 "$WORK/install.log")
    DP_WHY="cargo install dumbpipe --locked failed: ${why:-no output}"
  fi
fi
if [[ -z $DP_WHY && ! -x $DUMBPIPE ]]; then
  DP_WHY="$DUMBPIPE missing after cargo install"
fi
DP_VERSION=""
[[ -z $DP_WHY ]] && DP_VERSION=$("$DUMBPIPE" --version 2>/dev/null | head -n 1)

# ---------------------------------------------------------------- network ----------------
NETNS_MADE=1
ip netns add "$NSA" || fail "cannot create network namespace $NSA"
ip netns add "$NSB" || fail "cannot create network namespace $NSB"
for ns in "$NSA" "$NSB"; do
  # IPv4 only: both tools then use the same addresses on the same link (a kernel without
  # IPv6 has nothing to turn off).
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    2>/dev/null || true
done
ip -n "$NSA" link add eth0 type veth peer name eth0 netns "$NSB"
ip -n "$NSA" addr add 10.78.0.1/24 dev eth0
ip -n "$NSB" addr add 10.78.0.2/24 dev eth0
for ns in "$NSA" "$NSB"; do
  ip -n "$ns" link set eth0 mtu "$MTU" || fail "cannot set the veth's MTU to $MTU"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  # No default route: only 10.78.0.0/24 and loopback are reachable from here.
  [[ -z $(ip -n "$ns" route show default) ]] || fail "namespace $ns has a default route"
done
mkdir -p "$WORK/home"

# ---------------------------------------------------------------- cnspr daemons ----------
# The cnspr command of device a (alpha, namespace A) and b (beta, namespace B).
CN_a=("${IN_A[@]}" "$CNSPR" --state-dir "$WORK/a/state" --socket "$WORK/a/cnspr.sock" --config "$WORK/a/config.toml")
CN_b=("${IN_B[@]}" "$CNSPR" --state-dir "$WORK/b/state" --socket "$WORK/b/cnspr.sock" --config "$WORK/b/config.toml")
# cn DEV ARGS...: runs the cnspr CLI of device DEV (a or b).
cn() {
  local -n cmd=CN_$1
  shift
  "${cmd[@]}" "$@"
}

declare -A ID ADDR DPID
ADDR[a]=10.78.0.1:7373
ADDR[b]=10.78.0.2:7373
for dev in a b; do
  mkdir -p "$WORK/$dev/handlers"
  : >"$WORK/$dev/config.toml"
  name=alpha
  [[ $dev == b ]] && name=beta
  cn "$dev" init --name "$name" >/dev/null || fail "cnspr init ($name)"
  ID[$dev]=$(cn "$dev" id)
  [[ -n ${ID[$dev]} ]] || fail "cnspr id ($name) printed nothing"
done
start_daemon() {
  local dev=$1
  local -n cmd=CN_$dev
  "${cmd[@]}" serve --no-mdns --no-port-mapping --listen "${ADDR[$dev]}" --handlers "$WORK/$dev/handlers" \
    >"$WORK/$dev/daemon.log" 2>&1 &
  DPID[$dev]=$!
  PIDS+=("$!")
}
daemon_up() {
  kill -0 "${DPID[$1]}" 2>/dev/null || { show "$WORK/$1/daemon.log"; fail "cnspr daemon $1 exited"; }
  cn "$1" --json status >/dev/null 2>&1
}
peer_active() { # DEV PEER_ID
  cn "$1" --json peers 2>/dev/null | tr -d ' \n' | sed 's/},{/}\n{/g' |
    grep -F "\"id\":\"$2\"" | grep -qF '"state":"active"'
}
start_daemon a
start_daemon b
until_ok 30 "daemon alpha to answer" daemon_up a
until_ok 30 "daemon beta to answer" daemon_up b
cn a trust "${ID[b]}" --name beta --addr "${ADDR[b]}" >/dev/null || fail "cnspr trust (alpha trusts beta)"
cn b trust "${ID[a]}" --name alpha --addr "${ADDR[a]}" >/dev/null || fail "cnspr trust (beta trusts alpha)"
until_ok 30 "alpha to see beta active" peer_active a "${ID[b]}"
until_ok 30 "beta to see alpha active" peer_active b "${ID[a]}"

# udp_out NS: UDP datagrams sent so far in namespace NS.
udp_out() {
  ip netns exec "$1" cat /proc/net/snmp |
    awk '$1 == "Udp:" && $2 ~ /^[0-9]+$/ { print $5; exit }'
}

# ---------------------------------------------------------------- one transfer -----------
# transfer TOOL ROUND: moves BYTES from namespace A to namespace B with TOOL (cnspr or
# dumbpipe); sets RATE to the rate in MB/s.
transfer() {
  local tool=$1 round=$2 dir=$WORK/$1.$2 svc=bench$2
  local lpid rpid hpid cpid first end got ticket=""
  mkdir -p "$dir"
  mkfifo "$dir/rx" "$dir/tx"
  # Receiving side, in B: its output into the counter.
  if [[ $tool == cnspr ]]; then
    "${CN_b[@]}" listen "$svc" </dev/null >"$dir/rx" 2>"$dir/listen.err" &
  else
    "${IN_B[@]}" "$DUMBPIPE" listen --ipv4-addr 10.78.0.2:7374 </dev/null >"$dir/rx" 2>"$dir/listen.err" &
  fi
  lpid=$!
  PIDS+=("$lpid")
  count_stream "$BYTES" <"$dir/rx" >"$dir/count" &
  rpid=$!
  PIDS+=("$rpid")
  if [[ $tool == cnspr ]]; then
    listening() {
      kill -0 "$lpid" 2>/dev/null || { show "$dir/listen.err"; fail "cnspr listen exited"; }
      cn b --json expose 2>/dev/null | grep -qF "\"$svc\""
    }
  else
    listening() {
      kill -0 "$lpid" 2>/dev/null || { show "$dir/listen.err"; fail "dumbpipe listen exited"; }
      grep -qs '^dumbpipe connect ' "$dir/listen.err"
    }
  fi
  until_ok 60 "$tool listen to be ready" listening
  local sent0 back0 ca0="" cb0=""
  sent0=$(udp_out "$NSA")
  back0=$(udp_out "$NSB")
  if [[ $tool == cnspr ]]; then
    ca0=$(ticks "${DPID[a]}")
    cb0=$(ticks "${DPID[b]}")
  fi
  # Sending side, in A.
  head -c "$BYTES" /dev/zero >"$dir/tx" &
  hpid=$!
  PIDS+=("$hpid")
  if [[ $tool == cnspr ]]; then
    "${CN_a[@]}" connect beta "$svc" <"$dir/tx" >/dev/null 2>"$dir/connect.err" &
  else
    ticket=$(sed -n 's/^dumbpipe connect //p' "$dir/listen.err" | tail -n 1)
    "${IN_A[@]}" "$DUMBPIPE" connect --ipv4-addr 10.78.0.1:0 "$ticket" <"$dir/tx" >/dev/null 2>"$dir/connect.err" &
  fi
  cpid=$!
  PIDS+=("$cpid")
  sample_cpu "$tool" "$round" "$hpid" "$cpid" "$lpid" "$rpid"

  finish "$rpid" "$XFER_LIMIT" "the $tool transfer (receiver)" "$dir/connect.err"
  read -r first end got <"$dir/count"
  if ((got != BYTES)); then
    show "$dir/connect.err"
    show "$dir/listen.err"
    fail "$tool round $round: received $got bytes, sent $BYTES"
  fi
  finish "$hpid" 30 "head (the $tool sender's input)"
  finish "$cpid" 30 "$tool connect" "$dir/connect.err"
  finish "$lpid" 30 "$tool listen" "$dir/listen.err"
  ((end > first)) || fail "$tool round $round: no time elapsed"
  local sent=$(($(udp_out "$NSA") - sent0))
  local back=$(($(udp_out "$NSB") - back0))
  ((sent > 0)) && echo "round $round: $tool made $sent UDP sends from A (a segmented send counts once):" \
    "$((BYTES / sent)) bytes of the stream per send; $back from B (acknowledgements)"
  if [[ -n $ca0 ]]; then
    local ca1 cb1
    ca1=$(ticks "${DPID[a]}")
    cb1=$(ticks "${DPID[b]}")
    local k
    k=$(awk -v hz="$(getconf CLK_TCK)" -v n="$BYTES" 'BEGIN { printf "%.6f", hz * n / 2^30 }')
    CPU_A+=("$(awk -v a=$((ca1 - ca0)) -v k="$k" 'BEGIN { printf "%.2f", a / k }')")
    CPU_B+=("$(awk -v b=$((cb1 - cb0)) -v k="$k" 'BEGIN { printf "%.2f", b / k }')")
    echo "round $round: $tool: the daemons' CPU time per GiB of the stream:" \
      "$(awk -v a="${CPU_A[-1]}" -v b="${CPU_B[-1]}" 'BEGIN { printf "%.2f s (A %.2f, B %.2f)", a + b, a, b }')"
  fi
  RATE=$(mbps $((BYTES - 1)) $((end - first)))
}

# ---------------------------------------------------------------- CPU counters -----------
# ticks PID: the CPU time (clock ticks: user + system, all threads) the process has used,
# or nothing if it is gone.
ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  awk '{ print $12 + $13 }' <<<"$stat"
}
# busy: the machine's busy clock ticks (all CPUs), from /proc/stat.
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }

# sample_cpu TOOL ROUND HEAD CONNECT LISTEN COUNTER: where the CPU goes during a transfer,
# from the processes' own counters over CPU_WINDOW seconds of the transfer (from 0.5 s
# after its start, so set-up is not counted). Prints each process's share of one CPU,
# and what the rest of the machine used meanwhile; prints why not if the transfer ended
# before the window did. With CNSPR_BENCH_PERF=DIR, perf samples the same processes in
# that window into DIR/TOOL.ROUND.data.
CPU_WINDOW=${CNSPR_BENCH_CPU_WINDOW:-1}
sample_cpu() {
  local tool=$1 round=$2 names=(head) pids=("$3") i t0 t1 b0 b1 s0 s1 ours=0 line=""
  names+=("$tool-connect" "$tool-listen")
  pids+=("$4" "$5")
  if [[ $tool == cnspr ]]; then
    names+=(daemon-A daemon-B)
    pids+=("${DPID[a]}" "${DPID[b]}")
  fi
  sleep 0.5
  local dd
  dd=$(ps -o pid=,comm= --ppid "$6" 2>/dev/null | awk '$2 == "dd" { print $1; exit }')
  if [[ -n $dd ]]; then
    names+=(dd)
    pids+=("$dd")
  fi
  declare -a before after
  b0=$(busy)
  s0=$EPOCHREALTIME
  for i in "${!pids[@]}"; do before[i]=$(ticks "${pids[i]}"); done
  if [[ -n ${CNSPR_BENCH_PERF:-} ]] && command -v perf >/dev/null; then
    # The same window, sampled by perf (software clock): `perf report -i FILE`.
    mkdir -p "$CNSPR_BENCH_PERF"
    perf record -q -e cpu-clock -F 999 -g -p "$(IFS=,; echo "${pids[*]}")" \
      -o "$CNSPR_BENCH_PERF/$tool.$round.data" -- sleep "$CPU_WINDOW" >/dev/null 2>&1 ||
      echo "round $round: perf record failed" >&2
  else
    sleep "$CPU_WINDOW"
  fi
  for i in "${!pids[@]}"; do after[i]=$(ticks "${pids[i]}"); done
  s1=$EPOCHREALTIME
  b1=$(busy)
  local hz
  hz=$(getconf CLK_TCK)
  for i in "${!pids[@]}"; do
    t0=${before[i]} t1=${after[i]}
    if [[ -z $t0 || -z $t1 ]]; then
      echo "round $round: $tool transfer ended within the CPU window (${names[i]} gone): no CPU figures"
      return 0
    fi
    ours=$((ours + t1 - t0))
    line+=" ${names[i]} $(awk -v t=$((t1 - t0)) -v hz="$hz" -v us=$((${s1/./} - ${s0/./})) \
      'BEGIN { printf "%.0f%%", 100 * t / hz / (us / 1e6) }'),"
  done
  line+=" rest of the machine $(awk -v t=$((b1 - b0 - ours)) -v hz="$hz" -v us=$((${s1/./} - ${s0/./})) \
    'BEGIN { printf "%.0f%%", 100 * t / hz / (us / 1e6) }')"
  echo "round $round: $tool CPU (% of one CPU over ${CPU_WINDOW} s):${line}"
}

# ---------------------------------------------------------------- measure ----------------
echo "== cnspr connect vs dumbpipe: $((BYTES >> 20)) MiB ($BYTES bytes) per transfer, $ROUNDS rounds each," \
  "two network namespaces on a veth pair (10.78.0.1 -> 10.78.0.2, MTU $MTU), $(nproc) CPUs"
[[ -n $DP_WHY ]] && echo "dumbpipe unavailable: $DP_WHY (its figures are skipped)"
[[ -n $DP_VERSION ]] && echo "using $DP_VERSION ($DUMBPIPE)"
echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -a CN DP CPU_A CPU_B
for ((r = 1; r <= ROUNDS; r++)); do
  transfer cnspr "$r"
  CN+=("$RATE")
  echo "round $r: cnspr connect $RATE MB/s"
  if [[ -z $DP_WHY ]]; then
    transfer dumbpipe "$r"
    DP+=("$RATE")
    echo "round $r: dumbpipe      $RATE MB/s"
  fi
done

# The daemons are done; the quinn bench gets the machine to itself.
cn a stop >/dev/null 2>&1 || true
cn b stop >/dev/null 2>&1 || true
finish "${DPID[a]}" 30 "cnspr daemon alpha (after stop)" "$WORK/a/daemon.log"
finish "${DPID[b]}" 30 "cnspr daemon beta (after stop)" "$WORK/b/daemon.log"

echo "== cargo bench -p transport --bench transport (CNSPR_BENCH_BYTES=$BYTES), $NSA -> $NSB over the veth"
# Its client in namespace A, its servers in B: the same veth as (a) and (b); --offline: it
# is built.
# In a PID namespace of its own, so that the server processes the bench kills (without
# waiting for them) are reaped when it ends.
PIDNS=()
command -v unshare >/dev/null && PIDNS=(unshare --pid --fork --kill-child)
ip netns exec "$NSA" "${PIDNS[@]}" env CNSPR_BENCH_BYTES="$BYTES" CNSPR_BENCH_SERVER_NETNS="$NSB" \
  CNSPR_BENCH_SERVER_IP=10.78.0.2 CNSPR_BENCH_CLIENT_IP=10.78.0.1 \
  cargo bench --offline -q -p transport --bench transport >"$WORK/quinn.out" 2>"$WORK/quinn.err" &
qpid=$!
PIDS+=("$qpid")
finish "$qpid" $((XFER_LIMIT * 4)) "cargo bench -p transport" "$WORK/quinn.err"
sed 's/^/    /' "$WORK/quinn.out"
QUINN=$(awk '$1 == "bare" && $2 == "quinn" && $5 == "MB/s" { print $4; exit }' "$WORK/quinn.out")
[[ $QUINN =~ ^[0-9.]+$ ]] || fail "no \"bare quinn ... MB/s\" line in the transport bench output"

# The cipher alone, on one CPU (no namespace needed: no network): its cost per GiB is the
# part of each daemon's CPU time per GiB that neither the daemon nor quinn can take away.
# One packet's payload on this path: the datagram (the MTU less IPv4 and UDP headers,
# within the endpoint's 16 KiB cap) less a short QUIC header (1 + 8-byte connection ID +
# 4-byte packet number) and the 16-byte tag.
PAYLOAD=$(( (MTU - 28 < 16384 ? MTU - 28 : 16384) - 29 ))
echo "== cargo bench -p transport --bench cipher (CNSPR_BENCH_PAYLOAD=$PAYLOAD)"
CNSPR_BENCH_PAYLOAD=$PAYLOAD cargo bench --offline -q -p transport --bench cipher \
  >"$WORK/cipher.out" 2>"$WORK/cipher.err" || { show "$WORK/cipher.err"; fail "cargo bench -p transport --bench cipher"; }
sed 's/^/    /' "$WORK/cipher.out"
read -r SEAL OPEN < <(awk '$1 == "cipher" && $2 == "per" { print $5, $8 }' "$WORK/cipher.out")
[[ $SEAL =~ ^[0-9.]+$ && $OPEN =~ ^[0-9.]+$ ]] || fail "no \"cipher per GiB\" line in the cipher bench output"

# ---------------------------------------------------------------- report -----------------
CNM=$(median "${CN[@]}")
echo "== results ($((BYTES >> 20)) MiB per transfer; medians of $ROUNDS rounds)"
printf 'cnspr connect  %8s MB/s   (rounds: %s)\n' "$CNM" "${CN[*]}"
if [[ -z $DP_WHY ]]; then
  DPM=$(median "${DP[@]}")
  printf 'dumbpipe       %8s MB/s   (rounds: %s)\n' "$DPM" "${DP[*]}"
else
  printf 'dumbpipe       %8s        (%s)\n' "-" "$DP_WHY"
fi
printf 'bare quinn     %8s MB/s   (cargo bench -p transport, same veth)\n' "$QUINN"
line="cnspr connect $CNM MB/s ="
if [[ -z $DP_WHY ]]; then
  line+=" $(awk -v a="$CNM" -v b="$DPM" 'BEGIN { printf "%.1f", a / b }')x dumbpipe (target 3x),"
fi
line+=" $(awk -v a="$CNM" -v b="$QUINN" 'BEGIN { printf "%.0f", 100 * a / b }')% of bare quinn (target 100%)"
echo "$line"
if [[ -z $DP_WHY && ${#CPU_A[@]} -gt 0 ]]; then
  # What 3x would take on this machine: a GiB passes in T s, so a daemon spending C s of
  # CPU per GiB needs C / T of a CPU; the cipher's part of that cannot be taken away.
  awk -v d="$DPM" -v a="$(MEDIAN_FMT=%.2f median "${CPU_A[@]}")" -v b="$(MEDIAN_FMT=%.2f median "${CPU_B[@]}")" \
    -v s="$SEAL" -v o="$OPEN" -v cpus="$(nproc)" 'BEGIN {
      t = 2^30 / (3 * d * 1e6)
      printf "3x dumbpipe is %.1f MB/s, a GiB in %.2f s: at the daemons'"'"' CPU time per GiB (sender %.2f s, receiver %.2f s, medians)\n", 3 * d, t, a, b
      printf "  it takes %.0f%% and %.0f%% of a CPU, %.2f of the %d CPUs before the bench'"'"'s own head and dd; the cipher alone\n", 100 * a / t, 100 * b / t, (a + b) / t, cpus
      printf "  (%.2f s and %.2f s per GiB on one CPU) would take %.0f%% and %.0f%% of a CPU\n", s, o, 100 * s / t, 100 * o / t
    }'
fi
