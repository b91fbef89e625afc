#!/usr/bin/env bash
# features_bench.sh - feature views on a real node (issue 7, "Benchmark"),
# against Debian's redis-server in the same run, measured with
# redis-benchmark. Prints figures only; asserts nothing but that every step
# finishes.
#
# Usage: bench/features_bench.sh
#
#   SLUICE_BIN       sluice binary (default build/runtime/sluice; a Release build)
#   KEYS             distinct keys (default 100000)
#   EVENTS_PER_KEY   events per key, spread over the last 24 h (default 5)
#   CLIENTS          redis-benchmark connections (default 50)
#   SECONDS_PER_RUN  target length of each measured run (default 4)
#   ROUNDS           FEATURES/HGETALL runs per side, alternating (default 3;
#                    the rows give medians)
#   INGEST_RATE      events/s PRODUCEd during the "ingesting" rows (default 5000)
#   FRESH_SAMPLES    PRODUCE -> visible samples for the freshness figure (default 300)
#   BENCH_TMP        where the data directories go (default $TMPDIR or /tmp)
#
# The view: 3 aggregates x 3 ranges = 9 features per key, over 1-minute
# buckets, keys "u:<12 digits>" (what redis-benchmark's __rand_int__
# makes with -r KEYS):
#
#   s.stream("clicks", {timestamp = function(r) return r.value.ts end})
#     :window(s.tumbling("1m", {grace = "1d"}))
#     :aggregate{clicks = s.count(), spend = s.sum("price"), top = s.max("price")}
#     :features("activity", {ranges = {"5m", "1h", "24h"}})
#
# Redis gets, per key, a hash "u:<12 digits>" holding the same 9 values
# (the vector as of the load, from the node; "" for a null), so HGETALL
# answers what FEATURES answers. Measured, each unpipelined and with -P 16:
#
#   FEATURES activity u:__rand_int__          vs  HGETALL u:__rand_int__
#   MFEATURES activity <100 x u:__rand_int__>     vs  HGETALL u:__rand_int__ -P 100
#
# (the MFEATURES rows count requests of 100 keys on both sides, with 50
# clients and with 1)
#
# (each also with the vector cache off: --features-cache-mb 0, every vector
# computed; nothing is written during these runs, so with the cache on, a
# key is computed once and then answered from memory)
# and freshness: a client PRODUCEs one event (timestamped now) for a key and,
# as soon as PRODUCE is acknowledged, polls FEATURES activity KEY on a second
# connection until the key's clicks_5m has grown: the time from the
# acknowledgement to the new value being visible, p50 and p99, against the
# target of the commit interval (100 ms) + 10 ms; once right after the load,
# once after restarting the node on the same data (a commit's cost grows
# with what the pipeline's write caches hold). Run on one machine: the
# client shares the cores with the servers (nproc is printed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$root/build/runtime/sluice}
KEYS=${KEYS:-100000}
EVENTS_PER_KEY=${EVENTS_PER_KEY:-5}
CLIENTS=${CLIENTS:-50}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-4}
ROUNDS=${ROUNDS:-3}
INGEST_RATE=${INGEST_RATE:-5000}
FRESH_SAMPLES=${FRESH_SAMPLES:-300}
PYTHON=${PYTHON:-/usr/bin/python3}

for tool in redis-server redis-benchmark redis-cli "$PYTHON"; do
    command -v "$tool" >/dev/null || { echo "features_bench: $tool not found" >&2; exit 2; }
done
[ -x "$SLUICE_BIN" ] || { echo "features_bench: no sluice binary at $SLUICE_BIN" >&2; exit 2; }
"$PYTHON" -c 'import redis' 2>/dev/null || { echo "features_bench: $PYTHON lacks redis" >&2; exit 2; }

work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/features-bench.XXXXXX")
pids=()
declare -A server_pid # port -> pid
cleanup() {
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # DESCRIPTION SECONDS COMMAND...
    local what=$1 limit=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "features_bench: timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.1
    done
}

pong() {
    [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]
}

start_redis() { # PORT
    mkdir -p "$work/redis"
    redis-server --port "$1" --bind 127.0.0.1 --dir "$work/redis" --daemonize no --save '' \
        --appendonly no --logfile "$work/redis/log" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    server_pid[$1]=$!
    wait_for "redis-server on port $1" 20 pong "$1"
}

start_sluice() { # [SERVE OPTIONS...]; sets sluice_port
    "$SLUICE_BIN" serve --data "$work/sluice" --port 0 --http-port -1 "$@" \
        </dev/null >/dev/null 2>"$work/sluice.log" &
    pids+=($!)
    local pid=$!
    wait_for "sluice's ready line" 20 grep -q 'serve: ready resp=[^ ]*:[0-9]' "$work/sluice.log"
    sluice_port=$(sed -n 's/.*serve: ready resp=[^ ]*:\([0-9]*\) .*/\1/p' "$work/sluice.log" | head -1)
    server_pid[$sluice_port]=$pid
}

# The driver: load, copy to Redis, freshness (see the top of the file).
cat >"$work/driver.py" <<'EOF'
import json, random, sys, time
import redis

SCRIPT = """
local s = require("sluice")
s.pipeline{name = "features_bench"}
s.stream("clicks", {timestamp = function(r) return r.value.ts end})
  :window(s.tumbling("1m", {grace = "1d"}))
  :aggregate{clicks = s.count(), spend = s.sum("price"), top = s.max("price")}
  :features("activity", {ranges = {"5m", "1h", "24h"}})
"""

def key(i):
    return "u:%012d" % i

def caught_up(r):
    desc = r.execute_command("PIPELINE", "DESCRIBE", "features_bench")
    fields = dict(zip(desc[0::2], desc[1::2]))
    if fields[b"state"] != b"running":
        sys.exit("features_bench: the pipeline failed: %s" % fields[b"error"].decode())
    return all(t[2] == t[3] or (t[2] == -1 and t[3] == 0) for t in fields[b"tasks"])

def wait_caught_up(r, limit=1800):
    deadline = time.monotonic() + limit
    while not caught_up(r):
        if time.monotonic() > deadline:
            sys.exit("features_bench: the pipeline did not catch up")
        time.sleep(0.05)

def load(port, keys, per_key):
    r = redis.Redis(port=port)
    r.execute_command("TOPIC", "CREATE", "clicks", "PARTITIONS", 2)
    r.execute_command("PIPELINE", "SUBMIT", "features_bench", SCRIPT)
    rnd = random.Random(1)
    now = int(time.time() * 1000)
    started = time.monotonic()
    args, p = [], r.pipeline(transaction=False)
    for i in range(keys):
        for _ in range(per_key):
            args += [key(i), json.dumps({"ts": now - rnd.randrange(86400000),
                                         "price": rnd.randrange(1, 1000)})]
        if len(args) >= 2000:
            p.execute_command("PRODUCEBATCH", "clicks", *args)
            args = []
            if len(p) >= 16:
                p.execute()
    if args:
        p.execute_command("PRODUCEBATCH", "clicks", *args)
    p.execute()
    wait_caught_up(r)
    print("load: %d events for %d keys produced and aggregated in %.1f s"
          % (keys * per_key, keys, time.monotonic() - started))

def copy(sluice_port, redis_port, keys):
    """Each key's vector into a Redis hash of the same 9 fields."""
    s, r = redis.Redis(port=sluice_port), redis.Redis(port=redis_port)
    p = r.pipeline(transaction=False)
    for first in range(0, keys, 500):
        batch = [key(i) for i in range(first, min(first + 500, keys))]
        for k, v in zip(batch, s.execute_command("MFEATURES", "activity", *batch)):
            p.hset(k, mapping={f: "" if x is None else x for f, x in json.loads(v).items()})
        p.execute()
    one = r.hgetall(key(0))
    print("redis: %d hashes of %d fields (%s)" % (r.dbsize(), len(one), key(0)))

def freshness(port, samples):
    prod, query = redis.Redis(port=port), redis.Redis(port=port)
    lat = []
    for i in range(samples):
        k = "fresh:%d" % (i % 50)
        raw = query.execute_command("FEATURES", "activity", k)
        before = json.loads(raw)["clicks_5m"] if raw else 0
        prod.execute_command("PRODUCE", "clicks", k,
                             json.dumps({"ts": int(time.time() * 1000), "price": 1}))
        acked = time.monotonic()
        while True:
            raw = query.execute_command("FEATURES", "activity", k)
            if raw and json.loads(raw)["clicks_5m"] > before:
                break
            if time.monotonic() - acked > 10:
                sys.exit("features_bench: a produced event was not visible within 10 s")
        lat.append((time.monotonic() - acked) * 1000)
    lat.sort()
    print("freshness %.2f %.2f %.2f" % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]))

def ingest(port, keys, per_second):
    """PRODUCEs per_second events (timestamped now, random keys of the
    load) in 10 batches a second, until killed."""
    r = redis.Redis(port=port)
    rnd = random.Random(2)
    batch = max(per_second // 10, 1)
    next_at = time.monotonic()
    while True:
        args = []
        now = int(time.time() * 1000)
        for _ in range(batch):
            args += [key(rnd.randrange(keys)), json.dumps({"ts": now, "price": 1})]
        r.execute_command("PRODUCEBATCH", "clicks", *args)
        next_at += 0.1
        time.sleep(max(0.0, next_at - time.monotonic()))

cmd = sys.argv[1]
if cmd == "ingest":
    ingest(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "load":
    load(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "copy":
    copy(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "freshness":
    freshness(int(sys.argv[2]), int(sys.argv[3]))
EOF

csv_run() { # PORT PIPELINE N ARGS... -> "rps p50 p99" (CLIENTS connections)
    local port=$1 pipeline=$2 n=$3
    shift 3
    redis-benchmark -p "$port" -c "$CLIENTS" -n "$n" -P "$pipeline" -r "$KEYS" --csv "$@" \
        2>/dev/null | awk -F, 'NR == 2 { gsub(/"/, ""); print $2, $5, $7 }'
}

cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

bench() { # PORT PIPELINE ARGS... -> "rps p50 p99 cpu_us", a run of ~SECONDS_PER_RUN
    local port=$1 pipeline=$2
    shift 2
    local probe=${PROBE:-20000} # requests of the run that sizes the measured one
    [ "$pipeline" -gt 1 ] && probe=$((probe * 5))
    local rps n before after result
    rps=$(csv_run "$port" "$pipeline" "$probe" "$@" | awk '{ print $1 }')
    n=$(awk -v r="$rps" -v s="$SECONDS_PER_RUN" -v m="$probe" \
        'BEGIN { n = int(r * s / 1000 + 0.5) * 1000; if (n < m) n = m; print n }')
    before=$(cpu_ticks "${server_pid[$port]}")
    result=$(csv_run "$port" "$pipeline" "$n" "$@")
    after=$(cpu_ticks "${server_pid[$port]}")
    echo "$result $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$n" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
}

check() { # PORT CMD...: must not reply an error (redis-benchmark counts errors as requests)
    local port=$1 out
    shift
    out=$(redis-cli -p "$port" "$@" 2>&1)
    case "$out" in
    ERR* | *NOTFOUND* | *"unknown command"* | *"Could not connect"* | "")
        echo "features_bench: '$*' on port $port failed: ${out:-(nil)}" >&2
        exit 1
        ;;
    esac
}

redis_port=$(free_port)
start_redis "$redis_port"
start_sluice

echo "features_bench: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "features_bench: $(redis-server --version | cut -d' ' -f1-3), sluice $SLUICE_BIN"
echo "features_bench: $KEYS keys x $EVENTS_PER_KEY events over 24 h, view of 3 aggregates x" \
    "3 ranges (5m, 1h, 24h) on 1-minute buckets; $CLIENTS clients, ~${SECONDS_PER_RUN}s per run"
"$PYTHON" "$work/driver.py" load "$sluice_port" "$KEYS" "$EVENTS_PER_KEY"
"$PYTHON" "$work/driver.py" copy "$sluice_port" "$redis_port" "$KEYS"
check "$sluice_port" FEATURES activity u:000000000001
check "$redis_port" HGETALL u:000000000001
mkeys=()
for _ in $(seq 100); do mkeys+=(u:__rand_int__); done
echo

printf '%-26s %12s %12s %7s %8s %8s %8s %8s %8s %8s\n' case sluice_rps redis_rps ratio \
    s_p50ms s_p99ms r_p50ms r_p99ms s_cpu_us r_cpu_us
# FEATURES against HGETALL: ROUNDS runs of each, alternating, so that both
# see the same moments of a noisy machine; the row gives the median of
# each column and s_p99 the range of sluice's p99 over the rounds.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
features_rows() { # LABEL
    for p in 1 16; do
        sr=() sp50=() sp99=() sc=() rr=() rp50=() rp99=() rc=()
        for _ in $(seq "$ROUNDS"); do
            read -r a b c d <<<"$(bench "$sluice_port" "$p" FEATURES activity u:__rand_int__)"
            sr+=("$a") sp50+=("$b") sp99+=("$c") sc+=("$d")
            read -r a b c d <<<"$(bench "$redis_port" "$p" HGETALL u:__rand_int__)"
            rr+=("$a") rp50+=("$b") rp99+=("$c") rc+=("$d")
        done
        awk -v l="$1 -P $p" -v a="$(median "${sr[@]}")" -v b="$(median "${rr[@]}")" \
            -v c="$(median "${sp50[@]}")" -v d="$(median "${sp99[@]}")" \
            -v e="$(median "${rp50[@]}")" -v f="$(median "${rp99[@]}")" \
            -v g="$(median "${sc[@]}")" -v h="$(median "${rc[@]}")" \
            -v lo="$(printf '%s\n' "${sp99[@]}" | sort -g | head -1)" \
            -v hi="$(printf '%s\n' "${sp99[@]}" | sort -g | tail -1)" 'BEGIN {
                printf "%-26s %12.0f %12.0f %7.2f %8.3f %8.3f %8.3f %8.3f %8.2f %8.2f  (s_p99 %.3f-%.3f)\n",
                    l, a, b, a / b, c, d, e, f, g, h, lo, hi }'
    done
}
features_rows "FEATURES/HGETALL"
# FEATURES while events come in: each commit (every 100 ms) empties the
# vector cache, so most queries compute their vector
ingest_row() { # LABEL
    "$PYTHON" "$work/driver.py" ingest "$sluice_port" "$KEYS" "$INGEST_RATE" &
    local ingest_pid=$!
    read -r a b c d <<<"$(bench "$sluice_port" 1 FEATURES activity u:__rand_int__)"
    kill "$ingest_pid" 2>/dev/null
    wait "$ingest_pid" 2>/dev/null || true
    awk -v l="$1" -v a="$a" -v c="$b" -v d="$c" -v g="$d" 'BEGIN {
        printf "%-26s %12.0f %12s %7s %8.3f %8.3f %8s %8s %8.2f %8s\n",
            l, a, "-", "-", c, d, "-", "-", g, "-" }'
}
ingest_row "FEATURES -P 1, ingesting"
# MFEATURES of 100 keys against Redis answering the same 100 hashes in one
# round trip (HGETALL -P 100: redis-benchmark times each request of a
# pipelined batch from the batch's send, so its latencies are the batch's):
# with CLIENTS connections (latency = queueing behind the other clients'
# batches on one server thread) and with one (a lone model server's view).
for clients in "$CLIENTS" 1; do
    label="MFEATURES x100 -c $clients"
    read -r s_rps s_p50 s_p99 s_cpu <<<"$(CLIENTS=$clients PROBE=1000 bench "$sluice_port" 1 \
        MFEATURES activity "${mkeys[@]}")"
    read -r r_rps r_p50 r_p99 r_cpu <<<"$(CLIENTS=$clients PROBE=20000 bench "$redis_port" 100 \
        HGETALL u:__rand_int__)"
    awk -v l="$label" -v a="$s_rps" -v b="$r_rps" -v c="$s_p50" -v d="$s_p99" -v e="$r_p50" \
        -v f="$r_p99" -v g="$s_cpu" -v h="$r_cpu" 'BEGIN {
            b /= 100; h *= 100 # Redis: batches of 100 keys
            printf "%-26s %12.0f %12.0f %7.2f %8.3f %8.3f %8.3f %8.3f %8.2f %8.2f\n",
                l, a, b, a / b, c, d, e, f, g, h }'
done
read -r _ f50 f99 fmax <<<"$("$PYTHON" "$work/driver.py" freshness "$sluice_port" "$FRESH_SAMPLES")"
kill -TERM "${server_pid[$sluice_port]}"
wait "${server_pid[$sluice_port]}" || true
start_sluice # the same data, with the pipeline's write caches empty
read -r _ g50 g99 gmax <<<"$("$PYTHON" "$work/driver.py" freshness "$sluice_port" "$FRESH_SAMPLES")"
# again with the vector cache off: every FEATURES computes its vector
kill -TERM "${server_pid[$sluice_port]}"
wait "${server_pid[$sluice_port]}" || true
start_sluice --features-cache-mb 0
features_rows "uncached FEATURES"
ingest_row "uncached, ingesting"
echo
echo "freshness (PRODUCE acknowledged -> new value in FEATURES, $FRESH_SAMPLES samples;" \
    "target p99 < 110 ms: 100 ms commits + 10 ms):"
echo "  right after the load (write caches full): p50 ${f50} ms, p99 ${f99} ms, max ${fmax} ms"
echo "  after a restart (caches empty):            p50 ${g50} ms, p99 ${g99} ms, max ${gmax} ms"
echo "ratio = sluice rps / redis rps; latencies are redis-benchmark's p50/p99 in ms;"
echo "FEATURES rows: medians of $ROUNDS alternating runs per side (s_p99: sluice's range);"
echo "nothing is written while they run, so the vector cache holds every key once it was"
echo "asked for (its first rounds fill it); 'uncached': sluice serve --features-cache-mb 0;"
echo "'ingesting': FEATURES -P 1 while $INGEST_RATE events/s are PRODUCEd (commits empty the cache);"
echo "MFEATURES rows: redis_rps and r_cpu_us per batch of 100 HGETALLs (-P 100);"
echo "cpu_us = the server process's CPU time per request in microseconds; nproc = $(nproc)"
