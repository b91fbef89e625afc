#!/bin/sh
# The `make run` main job: `sluice run examples/clickstream.lua` starts a node
# on the embedded default (a data directory) running the example pipeline;
# a generated clickstream goes in through the CLI, the pipeline's outputs are
# read back (as a consumer group, by replay from a timestamp, with redis-cli),
# then /metrics, and SIGTERM stops the node. Usage: node_demo.sh SLUICE [DATA]
set -e
SLUICE=${1:-build/runtime/sluice}
DATA=${2:-demo-data/node}
rm -rf "$DATA"
mkdir -p "$DATA"

HERE=$(cd "$(dirname "$0")" && pwd)
"$SLUICE" run "$HERE/clickstream.lua" --data "$DATA" --port 0 --http-port 0 2>"$DATA/node.log" &
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
echo "== node ready on port $PORT (HTTP $HTTP), data in $DATA, running:"
"$SLUICE" pipelines --port "$PORT"

echo "== produce 400 user profiles (the table 'users') keyed by user"
awk 'BEGIN { split("fr de es it pl", cs, " ");
        for (u = 0; u < 400; u++) printf "{\"user\":\"user-%d\",\"country\":\"%s\"}\n", u, cs[1 + u % 5] }' |
    "$SLUICE" produce users --key-field user --port "$PORT"

echo "== produce 50000 events (purchases, views, clicks; one bad line) keyed by user"
START=$(date +%s%3N)
awk 'BEGIN { srand(2); split("purchase view click", kinds, " ");
        for (i = 0; i < 50000; i++) {
        u = int(rand() * 500); k = kinds[1 + int(rand() * 3)];
        printf "{\"user\":\"user-%d\",\"kind\":\"%s\",\"item\":\"item-%d\",\"price\":%.2f}\n", u, k, int(rand() * 50), int(rand() * 5000) / 100 }
        print "{\"user\":\"user-1\",\"kind\":\"purchase\",\"item\":\"item-1\"}" }' |
    "$SLUICE" produce clicks --key-field user --port "$PORT"

echo "== the pipeline's outputs: 3 purchases as group 'dashboard' (then commit)"
"$SLUICE" consume purchases_by_item --group dashboard --follow -n 3 --verbose --port "$PORT"
"$SLUICE" groups --group dashboard --port "$PORT"

echo "== purchases enriched with the buyer's country (stream-table join): 3"
"$SLUICE" consume purchases_enriched --group dashboard --follow -n 3 --port "$PORT"
echo "== the table itself, queried: GET clickstream.users user-7"
redis-cli -p "$PORT" GET clickstream.users user-7

echo "== the bad record is in the dead-letter topic, with the error in its headers"
until [ "$(redis-cli -p "$PORT" FETCH clickstream.dlq 0 0 COUNT 1 | head -1)" = 0 ]; do sleep 0.1; done
redis-cli -p "$PORT" FETCH clickstream.dlq 0 0 COUNT 1

echo "== per-user spend per minute (the windowed aggregate user_spend): 3 results"
"$SLUICE" consume user_spend --group dashboard --follow -n 3 --port "$PORT"
echo "== the same state, queried (SCAN the store, then WINDOWS of user-1)"
redis-cli -p "$PORT" SCAN clickstream.user_spend 0 COUNT 2
redis-cli -p "$PORT" WINDOWS clickstream.user_spend user-1 0 99999999999999
echo "== live feature vectors of the view user_activity (FEATURES, sluice features, MFEATURES)"
redis-cli -p "$PORT" FEATURES user_activity user-1
"$SLUICE" features user_activity user-2 --format f32 --port "$PORT"
redis-cli -p "$PORT" MFEATURES user_activity user-3 nobody

echo "== replay: rewind group 'backfill' on views to the start time and read 2"
"$SLUICE" consume views --group backfill --time "$START" -n 2 --port "$PORT"

echo "== PIPELINE DESCRIBE: records in/out per operator"
redis-cli -p "$PORT" PIPELINE DESCRIBE clickstream | head -40 | paste -sd' ' | cut -c1-400

echo "== /metrics (excerpt)"
curl -s "http://127.0.0.1:$HTTP/metrics" | grep -E '^sluice_(partition_records_in_total|group_lag)' | head -8

echo "== stop the node (SIGTERM: finish in-flight requests, fsync, exit 0)"
kill -TERM $NODE
wait $NODE && echo "node exited cleanly"
trap - EXIT
