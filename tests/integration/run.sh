#!/bin/sh
# run.sh - sluice's integration tests against a real node.
#
#   SLUICE_BIN=/path/to/sluice tests/integration/run.sh [unittest args...]
#
# SLUICE_BIN defaults to /work/main/build/runtime/sluice. Uses Debian's
# /usr/bin/python3 (it has the redis module). Exits non-zero on any failure.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${SLUICE_BIN:=/work/main/build/runtime/sluice}"
export SLUICE_BIN
PYTHON=${PYTHON:-/usr/bin/python3}
if [ ! -x "$SLUICE_BIN" ]; then
    echo "run.sh: no sluice binary at $SLUICE_BIN (build it or set SLUICE_BIN)" >&2
    exit 2
fi
if ! "$SLUICE_BIN" serve --help 2>/dev/null | grep -q -- --requirepass; then
    echo "run.sh: $SLUICE_BIN has no 'serve' command (stale build? set SLUICE_BIN)" >&2
    exit 2
fi
"$PYTHON" -c 'import redis' 2>/dev/null || {
    echo "run.sh: $PYTHON has no redis module (apt-get install python3-redis)" >&2
    exit 2
}
command -v redis-cli >/dev/null || echo "run.sh: warning: redis-cli not found; its tests will fail" >&2
echo "run.sh: SLUICE_BIN=$SLUICE_BIN"
cd "$here"
if [ $# -eq 0 ]; then # every test_*.py here
    for f in test_*.py; do
        set -- "$@" "${f%.py}"
    done
fi
exec "$PYTHON" -m unittest -v "$@"
