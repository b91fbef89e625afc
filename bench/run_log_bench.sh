#!/usr/bin/env bash
# run_log_bench.sh - builds log_bench (Release) if needed and runs it.
#
# Usage: bench/run_log_bench.sh [DATA_DIR] [log_bench options...]
#
# The benchmark writes to a fresh directory created inside DATA_DIR (removed
# afterwards), so the figures are those of the filesystem DATA_DIR is on.
# Without DATA_DIR it uses the build directory, never /tmp: /tmp is often a
# tmpfs, which would measure memory instead of a disk. BUILD_DIR overrides
# the build directory (default: build/ at the top of the tree; if that tree
# is not a plain Release build, build-release/ is used instead, so that a
# debug or sanitizer tree is left as it is).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}

cache_value() {
    sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"
}

if [ -f "$build/CMakeCache.txt" ] &&
    { [ "$(cache_value CMAKE_BUILD_TYPE)" != Release ] ||
        [ "$(cache_value SLUICE_SANITIZE)" = ON ]; }; then
    echo "run_log_bench: $build is not a plain Release build; using $root/build-release" >&2
    build=$root/build-release
fi
release=()
[ -f "$build/CMakeCache.txt" ] || release=(-DCMAKE_BUILD_TYPE=Release)
# Configuring every time is cheap and picks up a bench/ added after the
# tree was first configured.
if ! out=$(cmake -S "$root" -B "$build" ${release[@]+"${release[@]}"} 2>&1 &&
    cmake --build "$build" --target log_bench -j"$(nproc)" 2>&1); then
    printf '%s\n' "$out" >&2
    exit 1
fi

parent=${1:-$build}
shift || true
mkdir -p "$parent"
parent=$(cd "$parent" && pwd)
fs=$(stat -f -c %T "$parent")
case $fs in
tmpfs | ramfs)
    echo "run_log_bench: WARNING: $parent is on $fs (memory); pass a directory on a disk" >&2
    ;;
esac
data=$(mktemp -d "$parent/log-bench-data.XXXXXX")
trap 'rm -rf "$data"' EXIT

"$build/bench/log_bench" "$@" "$data"
