#!/bin/sh
# The `make run` demo of the node: start `sluice serve` on the embedded
# default (a data directory), create a topic, produce a generated
# clickstream through the CLI, consume it as a consumer group, replay it
# from a timestamp, look at it with redis-cli and at /metrics, then stop the
# node with SIGTERM. Usage: node_demo.sh SLUICE [DATA]
set -e
SLUICE=${1:-build/runtime/sluice}
DATA=${2:-demo-data/node}
rm -rf "$DATA"
mkdir -p "$DATA"

"$SLUICE" serve --data "$DATA" --port 0 --http-port 0 2>"$DATA/node.log" &
NODE=$!
trap 'kill $NODE 2>/dev/null || true' EXIT
i=0
until grep -q 'serve: ready' "$DATA/node.log"; do
    i=$((i + 1))
    [ $i -lt 200 ] || { cat "$DATA/node.log"; exit 1; }
    kill -0 $NODE || { cat "$DATA/node.log"; exit 1; }
    sleep 0.05
done
PORT=$(sed -n 's/.*resp=[^:]*:\([0-9]*\).*/\1/p' "$DATA/node.log")
HTTP=$(sed -n 's/.*http=[^:]*:\([0-9]*\).*/\1/p' "$DATA/node.log")
echo "== node ready on port $PORT (HTTP $HTTP), data in $DATA"

echo "== create topic clicks (4 partitions, fsync always)"
"$SLUICE" topics create clicks --partitions 4 --fsync always --port "$PORT"

echo "== produce 50000 click events, keyed by user"
START=$(date +%s%3N)
awk 'BEGIN { srand(2); for (i = 0; i < 50000; i++) {
        u = int(rand() * 500);
        printf "{\"user\":\"user-%d\",\"kind\":\"click\",\"item\":%d,\"price\":%.1f}\n", u, int(rand() * 5000), int(rand() * 500) / 10 } }' |
    "$SLUICE" produce clicks --key-field user --port "$PORT"

echo "== describe the topic"
"$SLUICE" topics describe clicks --port "$PORT"

echo "== consume 3 records as group 'dashboard' (then commit)"
"$SLUICE" consume clicks --group dashboard -n 3 --verbose --port "$PORT"
"$SLUICE" groups --port "$PORT"

echo "== replay: rewind group 'backfill' to the start time and read 2"
"$SLUICE" consume clicks --group backfill --time "$START" -n 2 --port "$PORT"

echo "== any Redis client works: redis-cli FETCH clicks 0 0 COUNT 1"
redis-cli -p "$PORT" FETCH clicks 0 0 COUNT 1

echo "== /metrics (excerpt)"
curl -s "http://127.0.0.1:$HTTP/metrics" | grep -E '^sluice_(partition_records_in_total|group_lag)' | head -6

echo "== stop the node (SIGTERM: finish in-flight requests, fsync, exit 0)"
kill -TERM $NODE
wait $NODE && echo "node exited cleanly"
trap - EXIT
