#!/bin/sh
# queue_bench.sh - work queues, sluice against Debian's rabbitmq-server, in
# one run on this machine, with the same C client program (queue_bench.c:
# hiredis for sluice, librabbitmq for RabbitMQ) and the same workload:
# persistent 1 KiB messages published with confirms through a topic
# exchange with 10 bindings to 4 durable queues, consumed by 4 competing
# consumers with acks (prefetch 100). Prints messages/s end to end and the
# publish-to-ack latency of each, and their ratio.
#
#   bench/queue_bench.sh [SLUICE_BIN]     (default build/runtime/sluice)
#
# Environment: MESSAGES (default 200000), PUBLISHERS (4), WINDOW (256
# publishes in flight per publisher). Installs rabbitmq-server,
# librabbitmq-dev and libhiredis-dev if missing (needs root and apt).
# Both servers run on free loopback ports with their data in a temporary
# directory, and are stopped at the end.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
SLUICE=${1:-$here/../build/runtime/sluice}
MESSAGES=${MESSAGES:-200000}
PUBLISHERS=${PUBLISHERS:-4}
WINDOW=${WINDOW:-256}
[ -x "$SLUICE" ] || { echo "queue_bench.sh: no sluice binary at $SLUICE" >&2; exit 2; }

missing=""
for p in rabbitmq-server librabbitmq-dev libhiredis-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "queue_bench.sh: installing$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

tmp=$(mktemp -d /tmp/queue-bench-XXXXXX)
sluice_pid="" rabbit_pid_file="$tmp/rabbit/pid" epmd_port=""
cleanup() {
    [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null && wait "$sluice_pid" 2>/dev/null
    [ -f "$rabbit_pid_file" ] && kill "$(cat "$rabbit_pid_file")" 2>/dev/null
    [ -n "$epmd_port" ] && ERL_EPMD_PORT=$epmd_port epmd -kill >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to $2 seconds for a TCP listener on 127.0.0.1:$1.
wait_port() {
    i=0
    while ! python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le "$(($2 * 5))" ] || { echo "queue_bench.sh: nothing listens on $1" >&2; exit 1; }
        sleep 0.2
    done
}

cc -O2 -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE -o "$tmp/queue_bench" "$here/queue_bench.c" \
    $(pkg-config --cflags --libs hiredis librabbitmq) -lpthread
run() {
    system=$1 port=$2
    shift 2
    "$tmp/queue_bench" "$system" "$port" -n "$MESSAGES" -p "$PUBLISHERS" -w "$WINDOW" -c 4 -q 100 \
        -s 1024 "$@"
}

# Runs the workload against a fresh sluice node; extra arguments go to
# queue_bench.
run_sluice() {
    port=$(free_port)
    rm -rf "$tmp/sluice"
    "$SLUICE" serve --data "$tmp/sluice" --port "$port" --http-port -1 --log-level warn \
        2>"$tmp/sluice.log" &
    sluice_pid=$!
    wait_port "$port" 20
    run sluice "$port" "$@"
    kill "$sluice_pid" && wait "$sluice_pid" || true
    sluice_pid=""
}

echo "queue_bench: $MESSAGES persistent 1 KiB messages, $PUBLISHERS publishers with $WINDOW in" \
     "flight (confirmed), topic exchange, 10 bindings, 4 queues, 4 consumers with acks," \
     "prefetch 100; $(nproc) cores"

sluice_line=$(run_sluice)
echo "$sluice_line"

mkdir -p "$tmp/rabbit"
echo '[].' >"$tmp/rabbit/enabled_plugins"
port=$(free_port)
epmd_port=$(free_port)
(
    export HOME="$tmp/rabbit" RABBITMQ_NODENAME="bench$$@localhost" RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT="$(free_port)" RABBITMQ_MNESIA_BASE="$tmp/rabbit/mnesia" \
        RABBITMQ_LOG_BASE="$tmp/rabbit/log" RABBITMQ_PID_FILE="$rabbit_pid_file" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$tmp/rabbit/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$tmp/rabbit/rabbitmq" ERL_EPMD_PORT="$epmd_port"
    exec /usr/lib/rabbitmq/bin/rabbitmq-server >"$tmp/rabbit/out.log" 2>&1
) &
wait_port "$port" 90
rabbit_line=$(run rabbitmq "$port")
echo "$rabbit_line"

rate() { echo "$1" | sed -n 's/.*: \([0-9]*\) msg\/s.*/\1/p'; }
awk -v s="$(rate "$sluice_line")" -v r="$(rate "$rabbit_line")" \
    'BEGIN { if (r > 0) printf "sluice / rabbitmq: %.2fx messages/s end to end\n", s / r }'
# Unpaced, sluice's publishers run ahead of its consumers, so its latency is
# mostly time spent waiting in the queue; at RabbitMQ's rate it is not.
echo "sluice again, its publishers paced to RabbitMQ's rate, to compare latencies:"
run_sluice -r "$(rate "$rabbit_line")"
echo "(RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server), classic durable queues," \
     "persistent messages, publisher confirms; its consumers ack with basic.ack every 50" \
     "messages (multiple), which has no reply, so its latency ends when the ack is sent;" \
     "sluice's ends when the ACK reply says the ack is durable)"
