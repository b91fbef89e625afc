#!/usr/bin/env bash
# window_bench.sh - windowed aggregates on a real node (issue 5, "Benchmark"):
# throughput of a tumbling 1-minute count + sum + avg by key, exactly once
# at 100 ms commits, with the key as the record key and with a Lua key
# function; state restore speed from the changelogs; LMDB size. Prints
# figures only; asserts nothing but that every run finishes.
#
# Usage: bench/window_bench.sh [N]        (N records, default 10000000)
#
#   SLUICE_BIN   sluice binary (default build/runtime/sluice; a Release build)
#   WINDOW_LOAD  the loader (default bench/window_load next to SLUICE_BIN's
#                build, i.e. $(dirname SLUICE_BIN)/../bench/window_load)
#   PARTITIONS   partitions of the input topic (default 2)
#   BENCH_TMP    where the data directories go (default $TMPDIR or /tmp; a
#                disk, not a tmpfs)
#   RUN_TIMEOUT  seconds a run may take before the bench gives up (default 1800)
#   COMMIT_INTERVAL  the pipeline's commit_interval (default 100ms)
#   FLUSH_INTERVAL   the pipeline's flush_interval (default: the pipeline's,
#                1s): how often state goes into LMDB
#   GRACE        if set, the windows' grace (e.g. "2m"; default none). The
#                lua-key cases aggregate what the key_by stage wrote to its
#                repartition topic: the records of both input partitions in
#                the order that stage's commits came, out of event-time
#                order (with 2 workers, far out of it); records whose window
#                has closed by then are dropped as late, which the output
#                counts. A grace as long as that disorder keeps them.
#   SINK         "out" (default): the results go :to("out"); "none": the
#                aggregate ends the pipeline, its store is the only output
#   CASES        the runs to make (default "field-1 field-2 lua-1 lua-2":
#                key kind - workers); the restore follows the last field run
#   PERF_DIR     if set: perf record -g -a (the whole machine) during each run and
#                the restore, into PERF_DIR/<case>.data (restore.data), and the
#                top of its report printed
#                (PERF_ARGS replaces -g, e.g. "--call-graph dwarf")
#   RESTORE_COMPACTED  1 (default): the changelog is compacted before the
#                restore, as a node running longer than its maintenance
#                period compacts it; 0: the restore reads every change the
#                run wrote
#
# Input (bench/window_load.c): N JSON values of 100 bytes,
# {"user":"u<5 digits>","amount":<1..1000>,"ts":...,"pad":"..."}, 100 K
# distinct users in random order, event times spread evenly over 10 minutes
# (so 10 tumbling windows per user), in topic "in" (PARTITIONS partitions).
#
# Runs, each on a freshly loaded data directory and a fresh `sluice serve`
# (free loopback port, --workers W), timed from PIPELINE SUBMIT until the
# pipeline's committed offsets (PIPELINE DESCRIBE) reach the end of every
# input partition (and of the repartition topic, when there is one):
#
#   field key   records keyed by user (in Kafka's partition for the key):
#               s.stream("in"):window(s.tumbling("1m"))
#                 :aggregate{n = s.count(), total = s.sum("amount"), mean = s.avg("amount")}
#                 :to("out", {create = true})
#   lua key     records without a key: :key_by(function(r) return r.value.user end)
#               before the window, so a repartition topic and two stages;
#               records/s counts each input record once (the whole pipeline)
#
# each with --workers 1 and --workers 2. Then, on the data of the last
# field-key run: the node is stopped, restarted to compact the changelog
# (see RESTORE_COMPACTED) and stopped, DATA/state deleted, the node started
# again; it rebuilds the store from its changelog partitions (on parallel
# threads) before the pipeline starts ("restoring <store> partition p: ..."
# log lines), which gives, over the wall time from the first partition's
# start to the last one's end, changelog records/s and MB/s (of the records
# and segment bytes it read) and distinct entries/s. LMDB's
# size (DATA/state/data.mdb, du) is taken after the run and after the restore.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$root/build/runtime/sluice}
WINDOW_LOAD=${WINDOW_LOAD:-$(dirname "$SLUICE_BIN")/../bench/window_load}
PARTITIONS=${PARTITIONS:-2}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
COMMIT_INTERVAL=${COMMIT_INTERVAL:-100ms}
FLUSH_OPTION=""
[ -z "${FLUSH_INTERVAL:-}" ] || FLUSH_OPTION=", flush_interval = \"$FLUSH_INTERVAL\""
PYTHON=${PYTHON:-/usr/bin/python3}
CASES=${CASES:-field-1 field-2 lua-1 lua-2}
N=${1:-10000000}

case "$N" in '' | *[!0-9]*) echo "usage: window_bench.sh [N]" >&2; exit 2 ;; esac
[ -x "$SLUICE_BIN" ] || { echo "window_bench: no sluice binary at $SLUICE_BIN" >&2; exit 2; }
[ -x "$WINDOW_LOAD" ] || { echo "window_bench: no loader at $WINDOW_LOAD (build bench/)" >&2; exit 2; }
"$PYTHON" -c 'import redis' 2>/dev/null || { echo "window_bench: $PYTHON has no redis module" >&2; exit 2; }
if [ -n "${PERF_DIR:-}" ]; then
    command -v perf >/dev/null || { echo "window_bench: PERF_DIR set but no perf" >&2; exit 2; }
    mkdir -p "$PERF_DIR"
fi

work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/window-bench.XXXXXX")
node_pid=""
perf_pid=""
cleanup() {
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null
    [ -n "$node_pid" ] && kill -TERM "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The driver: submits a pipeline and polls PIPELINE DESCRIBE until its
# committed offsets reach the input's end (N records in each stage's topic).
cat >"$work/drive.py" <<'EOF'
import os, sys, time, urllib.request, redis

port, name, script_file, n, pid, timeout, workers, http_port = sys.argv[1:9]
n, timeout, workers = int(n), float(timeout), int(workers)
r = redis.Redis(port=int(port))
script = open(script_file).read()

def cpu():  # the node's user + system CPU seconds so far
    fields = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0

def threads():  # thread -> (ns on a CPU, ns waiting for one), from schedstat
    out = {}
    for tid in os.listdir("/proc/%s/task" % pid):
        try:
            run, wait = open("/proc/%s/task/%s/schedstat" % (pid, tid)).read().split()[:2]
            out[tid] = (int(run), int(wait))
        except OSError:
            pass
    return out

def written():  # bytes the node has written (write/pwrite/writev calls)
    for line in open("/proc/%s/io" % pid):
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0

s0, w0, c0, t0 = threads(), written(), cpu(), time.monotonic()
r.execute_command("PIPELINE", "SUBMIT", name, script)
stage1 = None
while True:
    desc = r.execute_command("PIPELINE", "DESCRIBE", name)
    d = dict(zip(desc[0::2], desc[1::2]))
    if d[b"state"] != b"running":
        sys.exit("pipeline %s: %s: %s" % (name, d[b"state"].decode(), d[b"error"].decode()))
    committed = {}
    for topic, part, off, end, lag in d[b"tasks"]:
        committed[topic] = committed.get(topic, 0) + max(off, 0)
    now = time.monotonic()
    if stage1 is None and committed.get(b"in", 0) >= n:
        stage1 = now - t0
    if all(v >= n for v in committed.values()):
        break
    if now - t0 > timeout:
        sys.exit("pipeline %s: not done after %.0f s: %s" % (name, timeout, committed))
    time.sleep(0.02)
seconds, cpu_s, s1, wrote = now - t0, cpu() - c0, threads(), written() - w0
# the pipeline's worker threads: the new threads that ran most
busy = sorted(((s1[t][0] - s0.get(t, (0, 0))[0], s1[t][1] - s0.get(t, (0, 0))[1]) for t in s1
               if t not in s0), reverse=True)[:workers]
run = sum(b[0] for b in busy) / 1e9 / max(len(busy), 1)
wait = sum(b[1] for b in busy) / 1e9 / max(len(busy), 1)
try:  # no topic "out" when the results are not sent anywhere (SINK=none)
    out = sum(p[2] - p[1] for p in r.execute_command("TOPIC", "DESCRIBE", "out")[5])
except redis.ResponseError:
    out = 0
metrics = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % http_port).read().decode()
late = sum(int(float(line.split()[-1])) for line in metrics.splitlines()  # dropped as late
           if line.startswith('sluice_pipeline_late_records_total{pipeline="%s"' % name))
print("%.3f %.3f %.2f %d %.2f %.2f %d %d" % (seconds, stage1, cpu_s, out, run, wait, wrote, late))
EOF

BENCH=window_bench
# shellcheck source=bench/node.sh
. "$root/bench/node.sh"

GRACE_OPTION=""
[ -z "${GRACE:-}" ] || GRACE_OPTION=", {grace = \"$GRACE\"}"
AGGREGATE="window(s.tumbling(\"1m\"$GRACE_OPTION)):aggregate{n = s.count(), total = s.sum(\"amount\"), mean = s.avg(\"amount\")}"
SINK_CALL=':to("out", {create = true})'
[ "${SINK:-out}" = out ] || SINK_CALL=""
script() { # KIND: the pipeline of a case
    echo 'local s = require("sluice")'
    echo "s.pipeline{processing = \"exactly_once\", commit_interval = \"$COMMIT_INTERVAL\"$FLUSH_OPTION}"
    if [ "$1" = field ]; then
        echo "s.stream(\"in\"):$AGGREGATE$SINK_CALL"
    else
        echo "s.stream(\"in\"):key_by(function(r) return r.value.user end):$AGGREGATE"
        echo "  $SINK_CALL"
    fi
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

echo "window_bench: $N records, $PARTITIONS partitions, $(nproc) cores" \
    "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load $(load_avg)"
echo "window_bench: sluice $SLUICE_BIN, data in $work ($(stat -f -c %T "$work"))"
echo "window_bench: targets (issue 5): >= 1 M records/s per core with the key as a field name," \
    "500 K with a Lua key function; restore >= 1 M entries/s"
echo

results=()
run_case() { # KIND WORKERS
    local kind=$1 workers=$2 case="$1-$2" data="$work/$1-$2"
    local keying=keyed
    [ "$kind" = lua ] && keying=unkeyed
    rm -rf "$work"/field-* "$work"/lua-* # the previous run's data
    local loaded
    loaded=$("$WINDOW_LOAD" "$data" "$N" "$keying" "$PARTITIONS")
    echo "  $loaded"
    pairs=$(sed -n 's/.*; \([0-9]*\) distinct .*/\1/p' <<<"$loaded")
    script "$kind" >"$work/$case.lua"
    start_node "$data" "$workers"
    wait_log "$data.log" 'serve: ready' 30
    perf_start "$case"
    local out
    out=$("$PYTHON" "$work/drive.py" "$port" wb "$work/$case.lua" "$N" "$node_pid" "$RUN_TIMEOUT" \
        "$workers" "$http_port")
    perf_stop "$case"
    read -r seconds stage1 cpu results_out run wait wrote late <<<"$out"
    local line
    line=$(awk -v n="$N" -v s="$seconds" -v w="$workers" -v k="$kind" -v c="$cpu" -v run="$run" \
        'BEGIN { printf "%-9s %d worker(s): %9.0f records/s, %8.0f per worker; %7.0f per worker " \
            "cpu-second (node %.0f per cpu-second)", k " key", w, n / s, n / s / w, n / run / w,
            n / c }')
    awk -v n="$N" -v s="$seconds" -v s1="$stage1" -v c="$cpu" -v k="$kind" -v o="$results_out" \
        -v run="$run" -v wait="$wait" -v l="$line" -v b="$wrote" -v late="$late" 'BEGIN {
        printf "%s\n  %d records in %.1f s; node cpu %.1f s; each worker thread %.1f s on a cpu, " \
            "%.1f s waiting for one (other load), %.1f s blocked (fsync, locks, idle)\n" \
            "  %d result records out; the node wrote %.0f MB (%.0f bytes per input record, " \
            "%.0f MB/s)", l, n, s, c, run, wait, s - run - wait, o, b / 1048576, b / n,
            b / 1048576 / s
        if (k == "lua") printf "; stage 1 (in -> key_by -> repartition) done at %.1f s", s1
        printf "\n  %d records dropped as late (every window they belong to had closed)\n", late }'
    results+=("$line")
    if [ "$case" = "$last_field" ]; then
        restore "$data" "$workers"
    else
        stop_node
    fi
}

# Unless RESTORE_COMPACTED=0: restarts the node of DATA (its state intact:
# nothing to restore) with a short maintenance period until every partition
# of CHANGELOG reports its compaction (what a node that has run longer than
# its maintenance period, 30 s by default, has done on its own), and stops
# it: the restore then reads the compacted changelog.
compact_changelog() { # DATA WORKERS CHANGELOG
    [ "${RESTORE_COMPACTED:-1}" = 1 ] || return 0
    local log="$1.log" deadline=$((SECONDS + 300)) closed=0 part
    for part in "$1/topics/$3"/*/; do # partitions with a closed segment
        [ "$(find "$part" -name '*.log' | wc -l)" -lt 2 ] || closed=$((closed + 1))
    done
    [ "$closed" -gt 0 ] || return 0
    : >"$log"
    start_node "$1" "$2" --maintenance-ms 200
    until [ "$(grep -c "$3/[0-9]*: compaction rewrote" "$log")" -ge "$closed" ]; do
        kill -0 "$node_pid" 2>/dev/null || { echo "$BENCH: the node died:" >&2; tail "$log" >&2; exit 1; }
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$BENCH: $3 not compacted in 300 s: restoring it as it is" >&2
            break
        fi
        sleep 0.1
    done
    grep "$3/[0-9]*: compaction rewrote" "$log" | sed 's/^/  /'
    stop_node
}

# Stops the node of DATA, deletes DATA/state and times the restore.
restore() { # DATA WORKERS
    local data=$1 log="$1.log"
    local du_run apparent_run
    du_run=$(du -sb --apparent-size "$data/state/data.mdb" | cut -f1)
    apparent_run=$du_run
    du_run=$(($(du -sk "$data/state/data.mdb" | cut -f1) * 1024))
    local changelog
    changelog=$(redis-cli -p "$port" TOPIC LIST | grep '^wb\..*\.changelog$' | head -1)
    # [[partition, start, end, bytes, segments], ...] of the changelog
    read -r cl_records cl_bytes < <("$PYTHON" -c '
import sys, redis
d = redis.Redis(port=int(sys.argv[1])).execute_command("TOPIC", "DESCRIBE", sys.argv[2])
print(sum(p[2] - p[1] for p in d[5]), sum(p[3] for p in d[5]))' "$port" "$changelog")
    stop_node
    compact_changelog "$data" "$2" "$changelog"
    local read_bytes
    read_bytes=$(find "$data/topics/$changelog" -name '*.log' -printf '%s\n' | awk '{ b += $1 } END { print b + 0 }')
    rm -rf "$data/state"
    : >"$log"
    local t0 t1
    perf_start restore
    t0=$(date +%s.%N)
    start_node "$data" "$2"
    wait_log "$log" 'pipeline: wb started' 600
    t1=$(date +%s.%N)
    perf_stop restore
    # per partition: "restored store S partition P: R records, E entries in T s";
    # the partitions restore on parallel threads, so the time is the wall
    # clock from the first "restoring store" line to the last "restored store"
    read -r entries parts read_records < <(grep 'restored store' "$log" |
        sed -n 's/.* partition \([0-9]*\): \([0-9]*\) records, \([0-9]*\) entries in [0-9.]* s$/\1 \3 \2/p' |
        awk '{ E += $2; R += $3; n++ } END { printf "%d %d %d\n", E, n, R }')
    seconds=$(grep -E 'restoring store|restored store' "$log" | cut -d' ' -f1 | "$PYTHON" -c '
import sys, datetime
t = [datetime.datetime.strptime(l.strip(), "%Y-%m-%dT%H:%M:%S.%fZ") for l in sys.stdin if l.strip()]
print("%.3f" % (max(t) - min(t)).total_seconds() if t else 0)')
    local du_after
    du_after=$(($(du -sk "$data/state/data.mdb" | cut -f1) * 1024))
    stop_node
    local line
    line=$(awk -v e="$entries" -v d="$pairs" -v s="$seconds" -v p="$parts" -v r="$read_records" \
        -v b="$read_bytes" -v wr="$cl_records" -v wb="$cl_bytes" \
        -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v c="$changelog" 'BEGIN {
        if (s <= 0) s = 1e-9
        printf "restore of %s (%d partitions; %d records, %.1f MB read of the %d records, " \
            "%.1f MB written) in %.2f s (wall, first partition started to last done): %.0f " \
            "changelog records/s, %.1f MB/s, %.0f distinct entries/s (%d distinct entries; " \
            "%d puts, the last change per key per batch); node start to pipeline started " \
            "%.2f s", c, p, r, b / 1048576, wr, wb / 1048576, s, r / s, b / 1048576 / s,
            d / s, d, e, w }')
    echo "$line"
    results+=("$line")
    line="LMDB DATA/state/data.mdb: $(mb "$du_run") MB (du) / $(mb "$apparent_run") MB (file size)"
    line="$line after the run; $(mb "$du_after") MB (du) after the restore"
    echo "$line"
    results+=("$line")
}

last_field=""
for c in $CASES; do
    case "$c" in
    field-[1-9] | field-[1-9][0-9]) last_field=$c ;;
    lua-[1-9] | lua-[1-9][0-9]) ;;
    *) echo "window_bench: unknown case '$c' (field-W or lua-W)" >&2; exit 2 ;;
    esac
done
for c in $CASES; do
    run_case "${c%-*}" "${c#*-}"
done

echo
echo "summary ($N records, $(nproc) cores, load at the end $(load_avg), bench took" \
    "$((SECONDS / 60)) min $((SECONDS % 60)) s):"
for line in "${results[@]}"; do
    echo "  $line"
done
