"""
test_scale.py - many concurrent connections on one node.
"""
import os
import resource
import threading
import time
import unittest

from node import NodeTestCase, encode, fetch_all, wait_until

CONNECTIONS = 1000


def ensure_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= n


class ScaleTest(NodeTestCase):
    def setUp(self):
        super().setUp()
        if not ensure_fd_limit(CONNECTIONS * 2 + 200):
            self.skipTest("cannot raise RLIMIT_NOFILE to %d" % (CONNECTIONS * 2 + 200))

    def connected(self):
        return int(self.node.info()["connected_clients"])

    def open_all(self):
        conns = []
        try:
            for _ in range(CONNECTIONS):
                conns.append(self.node.raw(timeout=30))
        except Exception:
            for c in conns:
                c.close()
            raise
        for c in conns:
            self.addCleanup(c.close)
        return conns

    def ping_and_produce_everywhere(self, topic, partitions):
        baseline = self.connected()  # self.r and INFO's own connection
        conns = self.open_all()
        # every connection is open at once before any request is sent
        wait_until(lambda: self.connected() >= baseline + CONNECTIONS, timeout=20,
                   what="%d connections to be accepted" % CONNECTIONS)
        for i, c in enumerate(conns):
            c.send(encode("PING") + encode("PRODUCE", topic, "key%d" % i, "value%d" % i))
        acks = {}
        for i, c in enumerate(conns):
            pong, ack = c.read_replies(2, timeout=30)
            self.assertEqual(pong, "PONG", "connection %d" % i)
            self.assertIsInstance(ack, list, "connection %d got %r" % (i, ack))
            acks[tuple(ack)] = b"value%d" % i
        self.assertEqual(len(acks), CONNECTIONS, "two PRODUCEs got the same partition/offset")
        stored = {}
        for p in range(partitions):
            for rec in fetch_all(self.r, topic, p):
                stored[(p, rec[0])] = rec[3]
        self.assertEqual(stored, acks)
        self.assertNodeHealthy()  # leaves one more connection open
        for c in conns:
            c.close()
        wait_until(lambda: self.connected() <= baseline + 1, timeout=20,
                   what="the node to notice the closed connections")

    def test_1000_concurrent_connections_each_ping_and_produce(self):
        t = self.new_topic(4)
        self.ping_and_produce_everywhere(t, 4)

    def test_1000_concurrent_producers_on_an_fsync_always_topic(self):
        t = self.new_topic(4, "FSYNC", "always")
        self.ping_and_produce_everywhere(t, 4)

    def test_1000_threads_with_redis_py_clients_ping_and_produce(self):
        t = self.new_topic(2)
        errors, acks = [], []
        lock = threading.Lock()
        connected = threading.Barrier(CONNECTIONS)

        def worker(n):
            try:
                r = self.node.client(socket_timeout=30)
                pool = r.connection_pool
                pool.release(pool.get_connection("PING"))  # connected, back in the pool
                connected.wait(30)  # all 1000 connected before anyone sends
                self.assertTrue(r.ping())
                ack = r.execute_command("PRODUCE", t, "k%d" % n, "w%d" % n)
                with lock:
                    acks.append(tuple(ack))
                r.close()
            except Exception as e:  # collected, reported below
                with lock:
                    errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(CONNECTIONS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        self.assertFalse(any(th.is_alive() for th in threads), "workers still running")
        self.assertEqual(errors[:5], [])
        self.assertEqual(len(set(acks)), CONNECTIONS)
        self.assertNodeHealthy()

    def test_replies_held_on_many_connections_do_not_slow_other_producers(self):
        # 500 connections each wait for an fsync due in 20 s; meanwhile
        # PRODUCEs to an FSYNC always topic should cost what they cost
        # without them (relative measure, margin 5x + 1 s).
        slow = self.new_topic(1, "FSYNC", "interval", "SET", "fsync.interval.ms", "20000")
        fast = self.new_topic(1, "FSYNC", "always")
        c = self.raw()

        def produces():
            body = self.node.http_get("/metrics")[1].decode()
            return int(body.split('sluice_commands_total{command="PRODUCE"} ')[1].split()[0])

        def hundred():
            start = time.monotonic()
            for _ in range(100):
                self.assertIsInstance(c.cmd("PRODUCE", fast, "k", "v"), list)
            return time.monotonic() - start
        alone = min(hundred(), hundred())
        held = [self.node.raw() for _ in range(500)]
        try:
            before = produces()
            for h in held:
                h.send(encode("PRODUCE", slow, "k", "v"))
            wait_until(lambda: produces() >= before + 500, timeout=30, what="500 held PRODUCEs")
            busy = hundred()
        finally:
            for h in held:
                h.close()
        self.assertLess(busy, 5 * alone + 1.0,
                        "100 PRODUCEs took %.2fs with 500 replies held elsewhere vs %.2fs "
                        "without" % (busy, alone))
        self.assertNodeHealthy()

    def test_connection_churn_leaks_no_descriptors(self):
        pid = self.node.proc.pid
        fds = lambda: len(os.listdir("/proc/%d/fd" % pid))
        before = fds()
        for i in range(2000):
            with self.node.raw() as c:
                self.assertEqual(c.cmd("PING"), "PONG")
        wait_until(lambda: fds() <= before + 2, timeout=20,
                   what="descriptors to return to %d (now %d)" % (before, fds()))
        self.assertNodeHealthy()


if __name__ == "__main__":
    unittest.main()
