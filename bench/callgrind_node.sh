#!/usr/bin/env bash
# callgrind_node.sh - instructions per record of a real node's pipeline
# workers, counted by callgrind: the measure to compare builds by on a
# machine whose wall-clock figures move by tens of percent between runs.
#
# Usage: bench/callgrind_node.sh window|join CASE [N]
#
#   window CASE  a window_bench.sh case (field-1, lua-1, ...; one worker),
#                N records (default 200000)
#   join CASE    a join_bench.sh case (q3-1, q8s-1, q8-1), N events of the
#                mix (default 1000000; 8 % of them are read)
#
#   VG_BUILD     the build directory to make for valgrind (default
#                build-vg): RelWithDebInfo, with the LMDB map default at
#                1 GiB (valgrind cannot map sluice's usual 64 GiB)
#   LOADERS      the Release build that holds bench/window_load and
#                bench/nexmark_load (default build)
#   BENCH_TMP    where the data directories go (as for the benches)
#   FLUSH_INTERVAL   the pipelines' flush interval (default 60s, the
#                default's ratio to the commit interval, for the same reason)
#   COMMIT_INTERVAL  the pipelines' commit interval (default 6s: under
#                valgrind a node runs ~50 times slower, so a commit holds
#                about as many records as a 100 ms commit at full speed)
#   CG_OUT       where to keep the callgrind file (default
#                $VG_BUILD/callgrind.<kind>-<case>.out), for callgrind_annotate
#
# The node runs under valgrind --tool=callgrind with collection on inside
# the pipeline worker threads only (worker_main): the figure leaves out the
# node's start, its network threads and the log's flusher. It prints the
# instructions, and per record (window) or per event read (join).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kind=${1:-}
case_name=${2:-}
case "$kind" in
window) N=${3:-200000} ;;
join) N=${3:-1000000} ;;
*) echo "usage: callgrind_node.sh window|join CASE [N]" >&2; exit 2 ;;
esac
[ -n "$case_name" ] || { echo "usage: callgrind_node.sh window|join CASE [N]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind_node: no valgrind" >&2; exit 2; }
VG_BUILD=${VG_BUILD:-$root/build-vg}
LOADERS=${LOADERS:-$root/build}
CG_OUT=${CG_OUT:-$VG_BUILD/callgrind.$kind-$case_name.out}

cmake -S "$root" -B "$VG_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS=-DSL_STATE_MAP_SIZE_DEFAULT=1073741824UL >/dev/null
cmake --build "$VG_BUILD" -j"$(nproc)" --target sluice >/dev/null
loader=$LOADERS/bench/window_load
[ "$kind" = window ] || loader=$LOADERS/bench/nexmark_load
[ -x "$loader" ] || { echo "callgrind_node: no $loader (build bench/ in $LOADERS)" >&2; exit 2; }

work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/callgrind-node.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat >"$work/sluice" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
    --toggle-collect=worker_main "$VG_BUILD/runtime/sluice" "\$@"
EOF
chmod +x "$work/sluice"

export SLUICE_BIN="$work/sluice" BENCH_TMP="$work" RUN_TIMEOUT=3600
export COMMIT_INTERVAL=${COMMIT_INTERVAL:-6s} FLUSH_INTERVAL=${FLUSH_INTERVAL:-60s} RESTORE_COMPACTED=0
if [ "$kind" = window ]; then
    WINDOW_LOAD=$loader CASES=$case_name "$root/bench/window_bench.sh" "$N" >"$work/bench.log" 2>&1 ||
        { tail -20 "$work/bench.log" >&2; exit 1; }
    per=$N what="record"
else
    NEXMARK_LOAD=$loader CASES=$case_name "$root/bench/join_bench.sh" "$N" >"$work/bench.log" 2>&1 ||
        { tail -20 "$work/bench.log" >&2; exit 1; }
    per=$((N * 8 / 100)) what="event read"
fi
# the run's node is the one that collected most (a window case's restore
# starts a second node)
out=$(ls -S "$work"/cg.* | head -1)
cp "$out" "$CG_OUT"
ir=$(awk '/^summary:/ {print $2}' "$CG_OUT")
echo "callgrind_node: $kind $case_name, $N: $ir instructions in the pipeline workers," \
    "$((ir / per)) per $what ($per); callgrind_annotate $CG_OUT"
