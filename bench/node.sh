# node.sh - what the benches that run a real node share (sourced by
# window_bench.sh and join_bench.sh): free ports, starting and stopping the
# node, waiting for its log, and perf around a run. The sourcing script sets
# BENCH (its name, for messages), SLUICE_BIN and PYTHON, and node_pid and
# perf_pid to "".

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_node DIR WORKERS: a node on DIR, logging to DIR.log; sets node_pid,
# port and http_port (for /metrics).
start_node() { # DATA WORKERS [SERVE OPTIONS...]
    local data=$1 workers=$2
    shift 2
    port=$(free_port)
    http_port=$(free_port)
    "$SLUICE_BIN" serve --data "$data" --port "$port" --http-port "$http_port" --workers "$workers" \
        "$@" </dev/null >/dev/null 2>>"$data.log" &
    node_pid=$!
}

# wait_log FILE PATTERN SECONDS: until a line of FILE matches PATTERN.
wait_log() {
    local deadline=$((SECONDS + $3))
    until grep -q "$2" "$1" 2>/dev/null; do
        kill -0 "$node_pid" 2>/dev/null || { echo "$BENCH: the node died:" >&2; tail "$1" >&2; exit 1; }
        [ "$SECONDS" -lt "$deadline" ] || { echo "$BENCH: no '$2' in $1" >&2; exit 1; }
        sleep 0.02
    done
}

stop_node() {
    kill -TERM "$node_pid" && wait "$node_pid" || true
    node_pid=""
}

# perf_start CASE: with PERF_DIR set, perf record of the whole machine (-a:
# -p misses the threads a pipeline starts after perf attached) until
# perf_stop CASE, which prints the top of its report.
perf_start() {
    [ -n "${PERF_DIR:-}" ] || return 0
    perf record ${PERF_ARGS:--g} -o "$PERF_DIR/$1.data" -a >/dev/null 2>&1 &
    perf_pid=$!
}

perf_stop() {
    [ -n "$perf_pid" ] || return 0
    kill -INT "$perf_pid" && wait "$perf_pid" || true
    perf_pid=""
    echo "  perf report --no-children -i $PERF_DIR/$1.data (top):"
    perf report -i "$PERF_DIR/$1.data" --no-children --percent-limit 1.5 --stdio -g none \
        2>/dev/null | grep -E '^ +[0-9]' | head -20 | sed 's/^/   /'
}
