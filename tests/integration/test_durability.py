"""
test_durability.py - what a node promises about acknowledged records when it
is killed (SIGKILL) or stopped (SIGTERM/SIGINT).
"""
import signal
import threading
import time
import unittest

import redis

from node import Node, encode, fetch_all, partition_ends, wait_until

PARTITIONS = 4


class Burst:
    """Producer threads that record every acknowledged record until the
    node goes away: single PRODUCEs (one in flight per thread) and
    PRODUCEBATCHes of 10."""

    def __init__(self, node, topic, single_threads=6, batch_threads=2):
        self.node = node
        self.topic = topic
        self.lock = threading.Lock()
        self.acked = []  # (partition, offset, value)
        self.sent = set()  # every value ever sent
        self.errors = []
        self.threads = [threading.Thread(target=self.single, args=(i,), daemon=True)
                        for i in range(single_threads)]
        self.threads += [threading.Thread(target=self.batch, args=(i,), daemon=True)
                         for i in range(batch_threads)]
        self.in_flight_bound = single_threads + 10 * batch_threads

    def ack_count(self):
        with self.lock:
            return len(self.acked)

    def single(self, n):
        r = self.node.client(socket_timeout=30)
        i = 0
        while True:
            value = b"s%d-%d-" % (n, i) + b"x" * (i % 50)
            key = b"key-%d" % (i % 13)
            with self.lock:
                self.sent.add(value)
            try:
                p, o = r.execute_command("PRODUCE", self.topic, key, value)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            except Exception as e:  # a reply error is a test failure
                with self.lock:
                    self.errors.append(repr(e))
                return
            with self.lock:
                self.acked.append((p, o, value))
            i += 1

    def batch(self, n):
        r = self.node.client(socket_timeout=30)
        i = 0
        while True:
            values = [b"b%d-%d-%d" % (n, i, j) for j in range(10)]
            args = []
            for j, v in enumerate(values):
                args += [b"bk-%d" % j, v]
            with self.lock:
                self.sent.update(values)
            try:
                acks = r.execute_command("PRODUCEBATCH", self.topic, *args)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            except Exception as e:
                with self.lock:
                    self.errors.append(repr(e))
                return
            with self.lock:
                self.acked.extend((p, o, v) for (p, o), v in zip(acks, values))
            i += 1

    def start(self):
        for t in self.threads:
            t.start()

    def join(self, timeout=30):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t for t in self.threads if t.is_alive()]
        if alive:
            raise AssertionError("%d producer threads still running after the kill" % len(alive))

    def running(self):
        return sum(t.is_alive() for t in self.threads)


class KillDuringBurstTest(unittest.TestCase):
    def check_log(self, r, topic, burst):
        """Every acknowledged record is at its offset with its value;
        partitions are contiguous from 0; nothing unknown appears."""
        stored = {}
        for p in range(PARTITIONS):
            recs = fetch_all(r, topic, p)
            self.assertEqual([x[0] for x in recs], list(range(len(recs))),
                             "partition %d offsets not contiguous from 0" % p)
            for x in recs:
                stored[(p, x[0])] = x[3]
        missing = [(p, o, v) for p, o, v in burst.acked if stored.get((p, o)) != v]
        self.assertEqual(missing[:10], [], "%d acknowledged records lost or changed"
                         % len(missing))
        values = list(stored.values())
        self.assertEqual(len(values), len(set(values)), "a record is stored twice")
        unknown = [v for v in values if v not in burst.sent]
        self.assertEqual(unknown, [], "records nobody sent")
        self.assertLessEqual(len(values) - len(burst.acked), burst.in_flight_bound,
                             "more unacknowledged records than could have been in flight")
        return stored

    def test_acknowledged_records_survive_sigkill_with_fsync_always(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        r.execute_command("TOPIC", "CREATE", "durable", "PARTITIONS", PARTITIONS, "FSYNC", "always")
        r.close()
        burst = Burst(node, "durable")
        burst.start()
        wait_until(lambda: burst.ack_count() >= 1500 or burst.running() < len(burst.threads),
                   timeout=60, what="1500 acknowledged records")
        self.assertEqual(burst.running(), len(burst.threads),
                         "a producer stopped before the kill: %s" % burst.errors)
        node.kill()
        burst.join()
        self.assertEqual(burst.errors, [])
        self.assertGreaterEqual(len(burst.acked), 1500)
        node.start()
        r = node.client()
        self.check_log(r, "durable", burst)
        # the node takes new records after recovery, right after the old ones
        ends = partition_ends(r, "durable")
        p, o = r.execute_command("PRODUCE", "durable", "k", "after", "PARTITION", 0)
        self.assertEqual((p, o), (0, ends[0]))
        r.close()
        node.stop()

    def test_node_recovers_a_contiguous_log_after_sigkill_with_fsync_never(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        r.execute_command("TOPIC", "CREATE", "fast", "PARTITIONS", PARTITIONS, "FSYNC", "never")
        r.close()
        burst = Burst(node, "fast", single_threads=4, batch_threads=2)
        burst.start()
        wait_until(lambda: burst.ack_count() >= 2000 or burst.running() < len(burst.threads),
                   timeout=60, what="2000 acknowledged records")
        node.kill()
        burst.join()
        self.assertEqual(burst.errors, [])
        node.start()
        r = node.client()
        for p in range(PARTITIONS):
            recs = fetch_all(r, "fast", p)
            self.assertEqual([x[0] for x in recs], list(range(len(recs))))
            self.assertTrue(all(x[3] in burst.sent for x in recs))
        r.close()
        node.stop()


class CleanStopTest(unittest.TestCase):
    def produce_some(self, r, topic, n=1000):
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.execute_command("PRODUCE", topic, "k%d" % (i % 7), "v%d" % i)
        return [(p, o, b"v%d" % i) for i, (p, o) in enumerate(pipe.execute())]

    def check_present(self, r, topic, acks):
        for p in {p for p, _, _ in acks}:
            recs = fetch_all(r, topic, p)
            want = [(o, v) for q, o, v in acks if q == p]
            self.assertEqual([(x[0], x[3]) for x in recs], want)

    def test_sigterm_exits_0_and_data_survives(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        acks = {}
        for policy in ("never", "interval", "always"):
            r.execute_command("TOPIC", "CREATE", policy, "PARTITIONS", 3, "FSYNC", policy)
            acks[policy] = self.produce_some(r, policy, 300 if policy == "always" else 1000)
        r.execute_command("GROUP", "COMMIT", "g", "never", 0, 5)
        r.close()
        self.assertEqual(node.stop(), 0)
        node.start()
        r = node.client()
        for policy, a in acks.items():
            self.check_present(r, policy, a)
        self.assertEqual(r.execute_command("GROUP", "OFFSETS", "g", "never")[0][1], 5)
        r.close()
        node.stop()

    def test_sigterm_right_after_the_ready_line_exits_0(self):
        # The ready line comes once the signals are handled: a script that
        # stops the node as soon as it reads it gets a clean stop, every time.
        node = Node()
        self.addCleanup(node.cleanup)
        for _ in range(10):
            node.start()
            self.assertEqual(node.stop(), 0, node.log())

    def test_sigint_exits_0(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        r.execute_command("TOPIC", "CREATE", "t")
        r.execute_command("PRODUCE", "t", "k", "v")
        r.close()
        node.signal(signal.SIGINT)
        self.assertEqual(node.wait_exit(), 0, node.log())
        node.start()
        self.assertEqual(node.client().execute_command("FETCH", "t", 0, 0)[0][3], b"v")
        node.stop()

    def test_sigterm_answers_a_blocked_fetch_and_exits_0(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        r.execute_command("TOPIC", "CREATE", "t")
        with node.raw() as blocked:
            # ECHO and FETCH arrive in one read: once ECHO's reply is here,
            # the FETCH has run and is blocked.
            blocked.send(encode("ECHO", "barrier") + encode("FETCH", "t", 0, 0, "BLOCK", 0))
            self.assertEqual(blocked.read_reply(), b"barrier")
            node.signal(signal.SIGTERM)
            self.assertEqual(blocked.read_reply(timeout=15), [],
                             "a blocked FETCH must get its timeout reply (empty array) on SIGTERM")
        self.assertEqual(node.wait_exit(), 0, node.log())

    def test_sigterm_delivers_a_held_produce_reply(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        # an interval topic holds the PRODUCE reply ~1 s, until its fsync
        r.execute_command("TOPIC", "CREATE", "slow", "FSYNC", "interval",
                          "SET", "fsync.interval.ms", "1000")
        with node.raw() as c:
            c.send(encode("PRODUCE", "slow", "k", "held"))
            wait_until(lambda: b'sluice_commands_total{command="PRODUCE"} 1\n'
                       in node.http_get("/metrics")[1], timeout=10, what="the PRODUCE to run")
            node.signal(signal.SIGTERM)
            self.assertEqual(c.read_reply(timeout=15), [0, 0],
                             "SIGTERM must let a held reply finish, not drop it")
        self.assertEqual(node.wait_exit(), 0, node.log())
        node.start()
        self.assertEqual(node.client().execute_command("FETCH", "slow", 0, 0)[0][3], b"held")
        node.stop()

    def test_sigterm_with_idle_and_pipelining_clients_exits_0(self):
        node = Node()
        self.addCleanup(node.cleanup)
        node.start()
        r = node.client()
        r.execute_command("TOPIC", "CREATE", "t", "FSYNC", "always")
        idle = [node.raw() for _ in range(10)]
        busy = node.raw()
        busy.send(b"".join(encode("PRODUCE", "t", "k", "v%d" % i) for i in range(200)))
        busy.read_reply()  # at least one answered: the node is working on them
        node.signal(signal.SIGTERM)
        self.assertEqual(node.wait_exit(), 0, node.log())
        for c in idle + [busy]:
            c.close()
        node.start()
        recs = fetch_all(node.client(), "t", 0)
        self.assertEqual([x[0] for x in recs], list(range(len(recs))))
        self.assertGreaterEqual(len(recs), 1)
        node.stop()


if __name__ == "__main__":
    unittest.main()
