#!/bin/sh
# The `make run` demo of the log: create a topic, append a generated
# clickstream, reopen and read it back by offset and by time, then show
# that a crash-torn tail is cut on the next open. Usage: log_demo.sh SLUICE
set -e
SLUICE=${1:-build/runtime/sluice}
DATA=${DATA:-demo-data}
rm -rf "$DATA"

echo "== create a topic of 4 partitions, zstd-compressed"
"$SLUICE" log --data "$DATA" create clicks partitions=4 compression=zstd fsync=interval

echo "== append 200000 generated click events (key = user, Kafka's partitioner)"
awk 'BEGIN { srand(1); for (i = 0; i < 200000; i++) {
        u = int(rand() * 1000); p = int(rand() * 500) / 10;
        printf "user-%d\t{\"user\":\"user-%d\",\"kind\":\"click\",\"item\":%d,\"price\":%.1f}\n", u, u, int(rand() * 5000), p } }' |
    "$SLUICE" log --data "$DATA" append clicks --keyed

echo "== reopen: topics, offsets and sizes"
"$SLUICE" log --data "$DATA" topics

echo "== read back: partition 0 from offset 1000, 3 records"
"$SLUICE" log --data "$DATA" read clicks --partition 0 --offset 1000 -n 3

echo "== read by time: the first record at or after the epoch (the first one)"
"$SLUICE" log --data "$DATA" read clicks --partition 1 --time 0 -n 1

echo "== simulate a torn write: cut 7 bytes off partition 0's last segment"
seg=$(ls "$DATA"/topics/clicks/0/*.log | tail -1)
truncate -s -7 "$seg"
rm -f "$DATA"/topics/.clean-shutdown
"$SLUICE" log --data "$DATA" topics 2>&1 | sed -n '1,3p'
echo "(the torn batch was cut; everything acknowledged before it is intact)"
