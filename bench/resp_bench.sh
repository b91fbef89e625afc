#!/usr/bin/env bash
# resp_bench.sh - sluice's RESP server against Redis, measured with
# redis-benchmark on this machine. Prints figures only; asserts nothing.
#
# Usage: bench/resp_bench.sh
#
#   SLUICE_BIN      sluice binary (default build/runtime/sluice; use a Release build)
#   CLIENTS         redis-benchmark connections (default 50)
#   SECONDS_PER_RUN target length of each measured run (default 4)
#   BENCH_TMP       where the data directories go (default $TMPDIR or /tmp;
#                   use a disk, not a tmpfs, for the fsync pairs to mean anything)
#
# One run starts:
#   - redis-server A: --save '' --appendonly no             (pairs with FSYNC never)
#   - redis-server B: --appendonly yes --appendfsync everysec (pairs with FSYNC interval)
#   - a sluice node with topics bench_never (FSYNC never) and bench_interval
#     (FSYNC interval, the topic default of fsync.interval.ms)
# and measures, each unpipelined and with -P 16:
#   - PING (PING_MBULK) against sluice and Redis A
#   - sluice `PRODUCE topic key <100 B>` against Redis `XADD stream * field <100 B>`
#     for each fsync pair (topic and stream have one partition/stream each)
# Each run's -n is calibrated from a short run so it lasts about
# SECONDS_PER_RUN. The client runs on the same cores as the servers.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$root/build/runtime/sluice}
CLIENTS=${CLIENTS:-50}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-4}
VALUE=$(printf 'v%.0s' $(seq 100)) # 100 bytes

for tool in redis-server redis-benchmark redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "resp_bench: $tool not found" >&2; exit 2; }
done
[ -x "$SLUICE_BIN" ] || { echo "resp_bench: no sluice binary at $SLUICE_BIN" >&2; exit 2; }

work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/resp-bench.XXXXXX")
pids=()
declare -A server_pid # port -> pid of the server listening there
cleanup() {
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "resp_bench: timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.1
    done
}

pong() {
    [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]
}

start_redis() { # NAME PORT ARGS...
    local name=$1 port=$2
    shift 2
    mkdir -p "$work/$name"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$work/$name" --daemonize no \
        --logfile "$work/$name/log" "$@" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    server_pid[$port]=$!
    wait_for "redis-server $name on port $port" 20 pong "$port"
}

start_sluice() { # sets sluice_port (not run in a subshell: the node must stay our child)
    "$SLUICE_BIN" serve --data "$work/sluice" --port 0 --http-port -1 \
        </dev/null >/dev/null 2>"$work/sluice.log" &
    pids+=($!)
    local pid=$!
    wait_for "sluice's ready line" 20 grep -q 'serve: ready' "$work/sluice.log"
    sluice_port=$(sed -n 's/.*serve: ready resp=[^ ]*:\([0-9]*\) .*/\1/p' "$work/sluice.log" | head -1)
    server_pid[$sluice_port]=$pid
}

# check PORT CMD...: the command must not reply an error (redis-benchmark
# would count errors as requests).
check() {
    local port=$1
    shift
    local out
    out=$(redis-cli -p "$port" "$@" 2>&1)
    case "$out" in
    ERR* | *NOTFOUND* | *NOAUTH* | *"unknown command"* | *"Could not connect"*)
        echo "resp_bench: '$*' on port $port failed: $out" >&2
        exit 1
        ;;
    esac
}

# csv_run PORT PIPELINE N ARGS... -> "rps p50 p99"
csv_run() {
    local port=$1 pipeline=$2 n=$3
    shift 3
    redis-benchmark -p "$port" -c "$CLIENTS" -n "$n" -P "$pipeline" --csv "$@" 2>/dev/null |
        awk -F, 'NR == 2 { gsub(/"/, ""); print $2, $5, $7 }'
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# bench PORT PIPELINE ARGS... -> "rps p50 p99 cpu_us" of a run lasting
# ~SECONDS_PER_RUN; cpu_us is the server's CPU time per request (us), the
# figure least disturbed by redis-benchmark sharing the cores.
bench() {
    local port=$1 pipeline=$2
    shift 2
    local probe=20000
    [ "$pipeline" -gt 1 ] && probe=200000
    local rps
    rps=$(csv_run "$port" "$pipeline" "$probe" "$@" | awk '{ print $1 }')
    local n
    n=$(awk -v r="$rps" -v s="$SECONDS_PER_RUN" -v m="$probe" \
        'BEGIN { n = int(r * s / 1000 + 0.5) * 1000; if (n < m) n = m; print n }')
    local before after result
    before=$(cpu_ticks "${server_pid[$port]}")
    result=$(csv_run "$port" "$pipeline" "$n" "$@")
    after=$(cpu_ticks "${server_pid[$port]}")
    echo "$result $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$n" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
}

redis_never_port=$(free_port)
start_redis never "$redis_never_port" --save '' --appendonly no
redis_aof_port=$(free_port)
start_redis everysec "$redis_aof_port" --save '' --appendonly yes --appendfsync everysec
start_sluice
redis-cli -p "$sluice_port" TOPIC CREATE bench_never FSYNC never >/dev/null
redis-cli -p "$sluice_port" TOPIC CREATE bench_interval FSYNC interval >/dev/null
check "$sluice_port" PRODUCE bench_never key "$VALUE"
check "$sluice_port" PRODUCE bench_interval key "$VALUE"
check "$redis_never_port" XADD stream '*' field "$VALUE"
check "$redis_aof_port" XADD stream '*' field "$VALUE"
interval_ms=$(redis-cli -p "$sluice_port" TOPIC DESCRIBE bench_interval |
    awk 'prev == "fsync.interval.ms" { print; exit } { prev = $0 }')

echo "resp_bench: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "resp_bench: $(redis-server --version | cut -d' ' -f1-3), sluice $SLUICE_BIN"
echo "resp_bench: $CLIENTS clients, ~${SECONDS_PER_RUN}s per run, value 100 B," \
    "data on $(stat -f -c %T "$work") ($work)"
echo "resp_bench: fsync pairs: never = sluice FSYNC never vs redis no AOF;" \
    "interval = sluice FSYNC interval (${interval_ms} ms) vs redis appendfsync everysec"
echo

rows=()
row() { # LABEL SLUICE_RESULT REDIS_RESULT
    local label=$1
    read -r s_rps s_p50 s_p99 s_cpu <<<"$2"
    read -r r_rps r_p50 r_p99 r_cpu <<<"$3"
    rows+=("$(awk -v l="$label" -v a="$s_rps" -v b="$r_rps" -v c="$s_p50" -v d="$s_p99" \
        -v e="$r_p50" -v f="$r_p99" -v g="$s_cpu" -v h="$r_cpu" 'BEGIN {
            ratio = (b > 0) ? sprintf("%.2f", a / b) : "n/a"
            printf "%-30s %12.0f %12.0f %7s %8.3f %8.3f %8.3f %8.3f %8.2f %8.2f",
                l, a, b, ratio, c, d, e, f, g, h }')")
    echo "${rows[-1]}"
}

header=$(printf '%-30s %12s %12s %7s %8s %8s %8s %8s %8s %8s' case sluice_rps redis_rps ratio \
    s_p50ms s_p99ms r_p50ms r_p99ms s_cpu_us r_cpu_us)
echo "$header"
for p in 1 16; do
    row "PING_MBULK -P $p" "$(bench "$sluice_port" "$p" -t ping_mbulk)" \
        "$(bench "$redis_never_port" "$p" -t ping_mbulk)"
done
for pair in never interval; do
    if [ "$pair" = never ]; then rport=$redis_never_port; else rport=$redis_aof_port; fi
    for p in 1 16; do
        redis-cli -p "$rport" DEL stream >/dev/null
        row "produce fsync=$pair -P $p" \
            "$(bench "$sluice_port" "$p" PRODUCE "bench_$pair" key "$VALUE")" \
            "$(bench "$rport" "$p" XADD stream '*' field "$VALUE")"
    done
done
echo
echo "ratio = sluice rps / redis rps; latencies are redis-benchmark's p50/p99 in ms;"
echo "cpu_us = the server process's CPU time (user + system) per request, in microseconds."
echo "produce = sluice 'PRODUCE topic key value' vs redis 'XADD stream * field value'."
