#!/usr/bin/env bash
# join_bench.sh - joins on a real node (issue 6, "Joins", "Benchmark"): a
# Nexmark-style workload, q3-like stream-table and q8-like windowed
# stream-stream, in events/s and events per CPU-second of the node, against
# the targets of 500 K events/s per core (q3) and 300 K (q8). Prints figures
# only; asserts nothing but that every run finishes (and says when an
# output count differs from what the loader computed).
#
# Usage: bench/join_bench.sh [N]          (N events of the mix, default 10000000)
#
#   SLUICE_BIN    sluice binary (default build/runtime/sluice; a Release build)
#   NEXMARK_LOAD  the loader (default $(dirname SLUICE_BIN)/../bench/nexmark_load)
#   PARTITIONS    partitions of each input topic (default 2)
#   BENCH_TMP     where the data directories go (default $TMPDIR or /tmp; a
#                 disk, not a tmpfs)
#   RUN_TIMEOUT   seconds a run may take before the bench gives up (default 1800)
#   COMMIT_INTERVAL  the pipelines' commit_interval (default 100ms)
#   FLUSH_INTERVAL   the pipelines' flush_interval (default: the pipeline's,
#                1s): how often state goes into LMDB
#   GRACE         if set, the q8 join's grace (e.g. "60s"; default: none, 0).
#                 The auctions reach the join through the key_by's
#                 repartition topic, at that stage's commits, while the
#                 people are read from their topic directly: a join whose
#                 stream time runs ahead on the people drops the auctions as
#                 late, which the output's late count and q8_out's shortfall
#                 show; a grace as long as that lead keeps them
#   CASES         the runs to make (default "q3-1 q3-2 q8s-1 q8s-2 q8-1 q8-2":
#                 query - workers)
#   PERF_DIR      if set: perf record -g -a (the whole machine) during each run, into
#                 PERF_DIR/<case>.data, and the top of its report printed
#
# Input (bench/nexmark_load.c): N events in Nexmark's proportions, 1 person
# : 3 auctions : 46 bids, of 200 / 500 / 100 bytes, 10,000 events per second
# of event time (a 10-second window holds 2,000 people and 6,000 auctions),
# in topics "person" and "auction" keyed by id and "bid" keyed by auction,
# PARTITIONS partitions each. Sellers are mostly the newest people, as
# Nexmark draws them. N = 10 M gives 200 K people and 600 K auctions (the
# records the joins read) and 9.2 M bids (1.4 GB of log).
#
# The two queries (Nexmark's q3 and q8, in sluice's DSL):
#
#   q3  stream-table: auctions of category 10, re-keyed by seller, enriched
#       with the seller from the person table; those whose seller lives in
#       OR, ID or CA:
#         local people = s.table("person")
#         s.stream("auction"):filter(category == 10):key_by("seller")
#           :join(people, fn(a, p) -> {name, city, state, id}, {type = "inner"})
#           :filter(state in OR, ID, CA):to("q3_out", {create = true})
#   q8  windowed stream-stream: new people who opened an auction within the
#       same 10-second tumbling window:
#         local auctions = s.stream("auction"):key_by("seller")
#         s.stream("person"):join(auctions, fn(p, a) -> {id, name, reserve,
#             person_ts, auction_ts}, {within = "10s", type = "inner"})
#           :filter(person_ts // 10000 == auction_ts // 10000)
#           :to("q8_out", {create = true})
#   q8s the same join with the auctions loaded keyed by seller (nexmark_load
#       ... by-seller: a producer keying them for this join), so no key_by:
#       both inputs are read directly, in event-time order, and no auction is
#       late with no grace. This measures the join itself; q8 adds a
#       repartition, whose topic interleaves the two auction partitions'
#       records at their commits, out of event-time order (hence GRACE).
#
# Both read only "person" and "auction": the events counted are those
# records (8 % of N); the bids stay in their topic, unread (in Nexmark all
# events share one stream and every query reads the bids to drop them; the
# "whole mix" figure, N / seconds, is what that would be if skipping them
# were free, and is not the measure).
#
# Runs, each on a freshly loaded data directory and a fresh `sluice serve`
# (free loopback port, --workers W), timed from PIPELINE SUBMIT until the
# pipeline's committed offsets (PIPELINE DESCRIBE) reach the end of
# "person" and "auction", and then of the repartition topic. CPU: the node's
# user + system time (/proc/PID/stat) over the run, and the run time of
# each worker thread (schedstat), with the time it waited for a core. Late
# records: sluice_pipeline_late_records_total of the node's /metrics.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$root/build/runtime/sluice}
NEXMARK_LOAD=${NEXMARK_LOAD:-$(dirname "$SLUICE_BIN")/../bench/nexmark_load}
PARTITIONS=${PARTITIONS:-2}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
COMMIT_INTERVAL=${COMMIT_INTERVAL:-100ms}
FLUSH_OPTION=""
[ -z "${FLUSH_INTERVAL:-}" ] || FLUSH_OPTION=", flush_interval = \"$FLUSH_INTERVAL\""
PYTHON=${PYTHON:-/usr/bin/python3}
CASES=${CASES:-q3-1 q3-2 q8s-1 q8s-2 q8-1 q8-2}
N=${1:-10000000}

case "$N" in '' | *[!0-9]*) echo "usage: join_bench.sh [N]" >&2; exit 2 ;; esac
[ -x "$SLUICE_BIN" ] || { echo "join_bench: no sluice binary at $SLUICE_BIN" >&2; exit 2; }
[ -x "$NEXMARK_LOAD" ] || { echo "join_bench: no loader at $NEXMARK_LOAD (build bench/)" >&2; exit 2; }
"$PYTHON" -c 'import redis' 2>/dev/null || { echo "join_bench: $PYTHON has no redis module" >&2; exit 2; }
for c in $CASES; do
    case "$c" in
    q3-[1-9] | q8-[1-9] | q8s-[1-9] | q3-[1-9][0-9] | q8-[1-9][0-9] | q8s-[1-9][0-9]) ;;
    *) echo "join_bench: unknown case '$c' (q3-W, q8-W or q8s-W)" >&2; exit 2 ;;
    esac
done
if [ -n "${PERF_DIR:-}" ]; then
    command -v perf >/dev/null || { echo "join_bench: PERF_DIR set but no perf" >&2; exit 2; }
    mkdir -p "$PERF_DIR"
fi

work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/join-bench.XXXXXX")
node_pid=""
perf_pid=""
cleanup() {
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null
    [ -n "$node_pid" ] && kill -TERM "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The driver: submits a pipeline, polls PIPELINE DESCRIBE until it is done
# (see the top), prints the figures; its first line is the case's summary.
cat >"$work/drive.py" <<'EOF'
import os, sys, time, redis, urllib.request

(port, http_port, name, script_file, pid, timeout, workers, query, persons, auctions, n,
 expected) = sys.argv[1:13]
timeout, workers, n, expected = float(timeout), int(workers), int(n), int(expected)
inputs = {b"person": int(persons), b"auction": int(auctions)}
events = sum(inputs.values())
r = redis.Redis(port=int(port))
script = open(script_file).read()
tick = os.sysconf("SC_CLK_TCK")

def cpu():  # the node's user + system CPU seconds so far
    fields = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick

def threads():  # thread -> (ns on a CPU, ns waiting for one), from schedstat
    out = {}
    for tid in os.listdir("/proc/%s/task" % pid):
        try:
            run, wait = open("/proc/%s/task/%s/schedstat" % (pid, tid)).read().split()[:2]
            out[tid] = (int(run), int(wait))
        except OSError:
            pass
    return out

def describe():
    desc = r.execute_command("PIPELINE", "DESCRIBE", name)
    d = dict(zip(desc[0::2], desc[1::2]))
    if d[b"state"] != b"running":
        sys.exit("pipeline %s: %s: %s" % (name, d[b"state"].decode(), d[b"error"].decode()))
    return d

def late():  # records the pipeline's ops dropped as late, from /metrics
    text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % http_port).read().decode()
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith('sluice_pipeline_late_records_total{pipeline="%s"' % name))

def sources_done(tasks):
    committed = {}
    for topic, part, off, end, lag in tasks:
        committed[topic] = committed.get(topic, 0) + max(off, 0)
    return all(committed.get(t, 0) >= c for t, c in inputs.items())

s0, c0, t0 = threads(), cpu(), time.monotonic()
r.execute_command("PIPELINE", "SUBMIT", name, script)
# Done: the sources are committed to their ends and, in a later DESCRIBE
# (so that the last commit of the first stage is in the ends it reports),
# every other input too.
sources_at = None
while True:
    d = describe()
    now = time.monotonic()
    if sources_at is not None and all(lag == 0 for _, _, _, _, lag in d[b"tasks"]):
        break
    if sources_at is None and sources_done(d[b"tasks"]):
        sources_at = now - t0
    if now - t0 > timeout:
        sys.exit("pipeline %s: not done after %.0f s: %s" % (name, timeout, d[b"tasks"]))
    time.sleep(0.01)
seconds, cpu_s, s1 = now - t0, cpu() - c0, threads()
busy = sorted(((s1[t][0] - s0.get(t, (0, 0))[0], s1[t][1] - s0.get(t, (0, 0))[1]) for t in s1
               if t not in s0), reverse=True)[:workers]
run = sum(b[0] for b in busy) / 1e9 / max(len(busy), 1)
wait = sum(b[1] for b in busy) / 1e9 / max(len(busy), 1)
out_topic = query.rstrip("s") + "_out"
out = sum(p[2] - p[1] for p in r.execute_command("TOPIC", "DESCRIBE", out_topic)[5])
kind = "stream-table" if query == "q3" else "windowed stream-stream"
print("%s (%s) %d worker(s): %9.0f events/s, %8.0f per node cpu-second, %8.0f per worker "
      "cpu-second; %d outputs" % (query, kind, workers, events / seconds, events / cpu_s,
                                  events / run / workers, out))
print("  %d events read (%d person + %d auction; the %d bids are not read) in %.2f s "
      "(sources committed at %.2f s); whole mix %.0f events/s" %
      (events, inputs[b"person"], inputs[b"auction"], n - events, seconds, sources_at,
       n / seconds))
print("  node cpu %.2f s (%.2f cores busy); each worker thread %.2f s on a cpu, %.2f s waiting "
      "for one (other load)" % (cpu_s, cpu_s / seconds, run, wait))
print("  %d records in %s, %s; %d records dropped as late" %
      (out, out_topic, "as the loader expects" if out == expected else
       "the loader expects %d: DIFFERENT" % expected, late()))
print("  ops (id kind in -> out, errors): " + "; ".join(
    "%d %s %d -> %d%s" % (op[0], op[1].decode(), op[3], op[4], ", %d errors" % op[5] if op[5] else "")
    for op in d[b"ops"]))
EOF

BENCH=join_bench
# shellcheck source=bench/node.sh
. "$root/bench/node.sh"

script() { # QUERY: the pipeline of a case
    echo 'local s = require("sluice")'
    echo "s.pipeline{processing = \"exactly_once\", commit_interval = \"$COMMIT_INTERVAL\"$FLUSH_OPTION}"
    if [ "$1" = q3 ]; then
        cat <<'EOF'
local people = s.table("person")
s.stream("auction")
  :filter(function(r) return r.value.category == 10 end)
  :key_by("seller")
  :join(people, function(a, p)
    return {name = p.name, city = p.city, state = p.state, id = a.value.id}
  end, {type = "inner"})
  :filter(function(r)
    local state = r.value.state
    return state == "OR" or state == "ID" or state == "CA"
  end)
  :to("q3_out", {create = true})
EOF
    else
        local grace=""
        [ -z "${GRACE:-}" ] || grace=", grace = \"$GRACE\""
        local auctions='s.stream("auction"):key_by("seller")'
        [ "$1" = q8 ] || auctions='s.stream("auction")'
        cat <<EOF
local auctions = $auctions
s.stream("person")
  :join(auctions, function(p, a)
    return {id = p.value.id, name = p.value.name, reserve = a.value.reserve,
            person_ts = p.ts, auction_ts = a.ts}
  end, {within = "10s", type = "inner"$grace})
  :filter(function(r) return r.value.person_ts // 10000 == r.value.auction_ts // 10000 end)
  :to("q8_out", {create = true})
EOF
    fi
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

echo "join_bench: $N events, $PARTITIONS partitions, $(nproc) cores" \
    "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load $(load_avg)"
echo "join_bench: sluice $SLUICE_BIN, data in $work ($(stat -f -c %T "$work"))"
echo "join_bench: targets (issue 6): >= 500 K events/s per core for the stream-table join (q3)," \
    "300 K for the windowed stream-stream join (q8); events = person + auction records"
echo

results=()
run_case() { # QUERY WORKERS
    local query=$1 workers=$2 case="$1-$2" data="$work/$1-$2"
    rm -rf "$work"/q3-* "$work"/q8-* "$work"/q8s-* # the previous run's data
    local loaded persons auctions expected
    local by=""
    [ "$query" != q8s ] || by=by-seller
    loaded=$("$NEXMARK_LOAD" "$data" "$N" "$PARTITIONS" $by)
    sed 's/^/  /' <<<"$loaded"
    persons=$(sed -n 's/^nexmark_load: person *\([0-9]*\) records.*/\1/p' <<<"$loaded")
    auctions=$(sed -n 's/^nexmark_load: auction *\([0-9]*\) records.*/\1/p' <<<"$loaded")
    expected=$(sed -n "s/^nexmark_load: ${query%s} expects \([0-9]*\) outputs.*/\1/p" <<<"$loaded")
    script "$query" >"$work/$case.lua"
    start_node "$data" "$workers"
    wait_log "$data.log" 'serve: ready' 30
    perf_start "$case"
    local out
    out=$("$PYTHON" "$work/drive.py" "$port" "$http_port" jb "$work/$case.lua" "$node_pid" "$RUN_TIMEOUT" \
        "$workers" "$query" "$persons" "$auctions" "$N" "$expected")
    perf_stop "$case"
    echo "$out"
    echo "  load average after the run: $(load_avg)"
    results+=("$(head -1 <<<"$out")")
    stop_node
}

for c in $CASES; do
    run_case "${c%-*}" "${c#*-}"
done

echo
echo "summary ($N events, $(nproc) cores, load at the end $(load_avg), bench took" \
    "$((SECONDS / 60)) min $((SECONDS % 60)) s):"
for line in "${results[@]}"; do
    echo "  $line"
done
