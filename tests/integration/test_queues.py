"""
test_queues.py - work queues end to end (DESIGN §9, §10): declarations,
routing through every exchange type, priorities, TTL, max length in both
overflow modes, acks and nacks, redelivery on disconnect and on lease
expiry, max deliveries to dead letters, prefetch, blocked QPOPs woken on
publish in the order they blocked, competing consumers, stats and metrics,
bad input, and what survives a restart.
"""
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import redis

from node import Error, Map, Node, NodeTestCase, sluice_bin, wait_until
from test_metrics import parse_prometheus, sample

_names = itertools.count()


def stats(r, queue):
    """QUEUE STATS as a dict of str -> value."""
    flat = r.execute_command("QUEUE", "STATS", queue)
    return {k.decode(): v for k, v in zip(flat[0::2], flat[1::2])}


def headers_of(delivery):
    h = delivery[4]
    return {h[i]: h[i + 1] for i in range(0, len(h), 2)}


class QueueTestCase(NodeTestCase):
    def name(self, prefix="q"):
        return "%s%d-%s" % (prefix, next(_names), self._testMethodName[5:30].replace("_", "-"))

    def declare(self, *options, client=None):
        q = self.name()
        self.assertEqual((client or self.r).execute_command("QUEUE", "DECLARE", q, *options),
                         b"OK")
        return q

    def exchange(self, kind):
        e = self.name("e")
        self.assertEqual(self.r.execute_command("EXCHANGE", "DECLARE", e, kind), b"OK")
        return e

    def publish(self, exchange, key, payload, *options, client=None):
        return (client or self.r).execute_command("QPUBLISH", exchange, key, payload, *options)

    def pop(self, queue, *options, client=None):
        return (client or self.r).execute_command("QPOP", queue, *options)

    def payloads(self, deliveries):
        return [d[1] for d in deliveries]

    def drain(self, queue, client=None):
        """Pops and acks everything ready; returns the payloads."""
        c = client or self.r
        out = []
        while True:
            got = self.pop(queue, "COUNT", 100, client=c)
            if not got:
                return out
            c.execute_command("ACK", queue, *[d[0] for d in got])
            out += self.payloads(got)


class DeclarationTest(QueueTestCase):
    def test_redeclaring_is_idempotent_and_differences_are_named(self):
        q = self.declare("MAXLEN", 10, "TTL", 5000)
        self.assertEqual(self.r.execute_command("QUEUE", "DECLARE", q, "MAXLEN", 10, "TTL", 5000),
                         b"OK")
        with self.assertRaisesRegex(redis.ResponseError, "BUSY.*MAXLEN 10, not 20"):
            self.r.execute_command("QUEUE", "DECLARE", q, "MAXLEN", 20, "TTL", 5000)
        with self.assertRaisesRegex(redis.ResponseError, "TTL 5000, not none"):
            self.r.execute_command("QUEUE", "DECLARE", q, "MAXLEN", 10)
        e = self.exchange("topic")
        self.assertEqual(self.r.execute_command("EXCHANGE", "DECLARE", e, "TOPIC"), b"OK")
        with self.assertRaisesRegex(redis.ResponseError, "type topic, not fanout"):
            self.r.execute_command("EXCHANGE", "DECLARE", e, "fanout")
        self.assertIn(q.encode(), self.r.execute_command("QUEUE", "LIST"))
        self.assertIn([e.encode(), b"topic"], self.r.execute_command("EXCHANGE", "LIST"))

    def test_delete_queue_and_exchange(self):
        q = self.declare()
        e = self.exchange("fanout")
        self.r.execute_command("BIND", e, q, "")
        self.assertEqual(self.publish(e, "k", "x"), 1)
        self.assertEqual(self.r.execute_command("QUEUE", "DELETE", q), b"OK")
        self.assertEqual(self.publish(e, "k", "x"), 0)
        with self.assertRaisesRegex(redis.ResponseError, "NOTFOUND"):
            self.pop(q)
        with self.assertRaisesRegex(redis.ResponseError, "NOTFOUND"):
            self.r.execute_command("QUEUE", "DELETE", q)
        self.assertEqual(self.r.execute_command("EXCHANGE", "DELETE", e), b"OK")
        with self.assertRaisesRegex(redis.ResponseError, "NOTFOUND"):
            self.publish(e, "k", "x")
        self.assertNotIn(q.encode(), self.r.execute_command("QUEUE", "LIST"))

    def test_bad_input_gets_clear_errors(self):
        c = self.raw()
        q = self.declare()
        cases = [
            (("EXCHANGE", "DECLARE", "e1", "weird"), "direct, topic, fanout or headers"),
            (("EXCHANGE", "DECLARE", "bad name", "topic"), "may only hold"),
            (("QUEUE", "DECLARE", "x" * 201), "too long"),
            (("QUEUE", "DECLARE", "q1", "MAXPRIORITY", 10), "syntax error"),
            (("QUEUE", "DECLARE", "q1", "OVERFLOW", "sometimes"), "syntax error"),
            (("QUEUE", "DECLARE", "q1", "TTL"), "syntax error"),
            (("QUEUE", "DECLARE", "q1", "DEADLETTER", "q1"), "its own dead-letter queue"),
            (("QUEUE", "FROB", q), "syntax error"),
            (("BIND", "nope", q, "k"), "NOTFOUND no exchange"),
            (("BIND", "e", q, "k", "ARG", "x-match"), "syntax error"),
            (("QPUBLISH", "nope", "k", "v"), "NOTFOUND no exchange"),
            (("QPUBLISH", "", "k" * 256, "v"), "routing key"),
            (("QPUBLISH", "", q, "v", "PRIORITY", -1), "syntax error"),
            (("QPUBLISH", "", q, "v", "TTL", "soon"), "syntax error"),
            (("QPOP", q, "COUNT", 0), "syntax error"),
            (("QPOP", q, "BLOCK"), "syntax error"),
            (("QPOP", "nope"), "NOTFOUND"),
            (("ACK", q, "abc"), "not a non-negative integer"),
            (("ACK", q, -5), "not a non-negative integer"),
            (("ACK", "nope", 1), "NOTFOUND"),
            (("NACK", q, 1, "LATER"), "syntax error"),
            (("NACK", q), "wrong number of arguments"),
        ]
        for args, message in cases:
            reply = c.cmd(*args)
            self.assertIsInstance(reply, Error, args)
            self.assertIn(message, reply, args)
        self.assertEqual(c.cmd("ACK", q, 12345), 0)  # well formed, not in flight
        self.assertNodeHealthy(c)


class RoutingTest(QueueTestCase):
    def test_direct_exchange_routes_by_equal_key(self):
        e, a, b = self.exchange("direct"), self.declare(), self.declare()
        self.r.execute_command("BIND", e, a, "red")
        self.r.execute_command("BIND", e, b, "blue")
        self.r.execute_command("BIND", e, b, "red")
        self.assertEqual(self.publish(e, "red", "1"), 2)
        self.assertEqual(self.publish(e, "blue", "2"), 1)
        self.assertEqual(self.publish(e, "Red", "3"), 0)
        self.assertEqual(self.drain(a), [b"1"])
        self.assertEqual(self.drain(b), [b"1", b"2"])

    def test_topic_exchange_follows_rabbitmq_patterns(self):
        e = self.exchange("topic")
        patterns = ["a.*", "a.#", "#.b", "a.#.b", "*", "#", "a..b"]
        queues = {}
        for p in patterns:
            queues[p] = self.declare()
            self.r.execute_command("BIND", e, queues[p], p)
        keys = ["a", "a.x", "a.b", "a.x.y.b", "b", "", "a..b", "x.a.b"]
        for k in keys:
            self.publish(e, k, k)
        expected = {
            "a.*": ["a.x", "a.b"],
            "a.#": ["a", "a.x", "a.b", "a.x.y.b", "a..b"],
            "#.b": ["a.b", "a.x.y.b", "b", "a..b", "x.a.b"],
            "a.#.b": ["a.b", "a.x.y.b", "a..b"],
            "*": ["a", "b"],
            "#": keys,
            "a..b": ["a..b"],
        }
        for p in patterns:
            got = [x.decode() for x in self.drain(queues[p])]
            self.assertEqual(got, expected[p], "pattern %r" % p)

    def test_fanout_stores_once_per_queue(self):
        e, a, b = self.exchange("fanout"), self.declare(), self.declare()
        self.r.execute_command("BIND", e, a, "x")
        self.r.execute_command("BIND", e, a, "y")  # a second binding to a
        self.r.execute_command("BIND", e, b, "")
        self.assertEqual(self.publish(e, "anything", "m"), 2)
        self.assertEqual(stats(self.r, a)["ready"], 1)
        self.assertEqual(self.drain(b), [b"m"])

    def test_headers_exchange_matches_all_or_any(self):
        e, all_q, any_q = self.exchange("headers"), self.declare(), self.declare()
        self.r.execute_command("BIND", e, all_q, "", "ARG", "format", "pdf", "ARG", "type",
                               "report")
        self.r.execute_command("BIND", e, any_q, "", "ARG", "x-match", "any", "ARG", "format",
                               "pdf", "ARG", "type", "report")
        self.assertEqual(self.publish(e, "", "both", "HEADER", "format", "pdf", "HEADER", "type",
                                      "report"), 2)
        self.assertEqual(self.publish(e, "", "one", "HEADER", "format", "pdf"), 1)
        self.assertEqual(self.publish(e, "", "none", "HEADER", "format", "zip"), 0)
        self.assertEqual(self.drain(all_q), [b"both"])
        self.assertEqual(self.drain(any_q), [b"both", b"one"])
        with self.assertRaisesRegex(redis.ResponseError, "x-match"):
            self.r.execute_command("BIND", e, all_q, "", "ARG", "x-match", "most")

    def test_unroutable_is_counted_and_mandatory_is_refused(self):
        e = self.exchange("direct")
        self.assertEqual(self.publish(e, "nowhere", "m"), 0)
        with self.assertRaisesRegex(redis.ResponseError, "unroutable.*MANDATORY"):
            self.publish(e, "nowhere", "m", "MANDATORY")
        fams = parse_prometheus(self.node.http_get("/metrics")[1].decode())
        self.assertEqual(sample(fams, "sluice_exchange_unroutable_total", exchange=e,
                                type="direct"), 2)

    def test_default_exchange_routes_by_queue_name(self):
        q = self.declare()
        self.assertEqual(self.publish("", q, "direct to q"), 1)
        self.assertEqual(self.publish("", "no-such-queue", "x"), 0)
        self.assertEqual(self.drain(q), [b"direct to q"])

    def test_unbind_stops_routing(self):
        e, q = self.exchange("direct"), self.declare()
        self.r.execute_command("BIND", e, q, "k")
        self.assertEqual(self.r.execute_command("UNBIND", e, q, "k"), b"OK")
        self.assertEqual(self.publish(e, "k", "m"), 0)
        with self.assertRaisesRegex(redis.ResponseError, "NOTFOUND"):
            self.r.execute_command("UNBIND", e, q, "k")


class DeliveryTest(QueueTestCase):
    def test_qpop_reply_shape_and_headers(self):
        q = self.declare("MAXPRIORITY", 5)
        self.publish("", q, b"\x00payload\r\n", "PRIORITY", 3, "HEADER", "trace", "t1")
        got = self.pop(q)
        self.assertEqual(len(got), 1)
        tag, payload, count, priority, headers = got[0]
        self.assertIsInstance(tag, int)
        self.assertEqual((payload, count, priority, headers),
                         (b"\x00payload\r\n", 1, 3, [b"trace", b"t1"]))
        self.assertEqual(self.pop(q), [])  # nothing ready: an empty array
        c = self.raw()
        c.cmd("HELLO", 3)
        self.publish("", q, "again")
        self.assertEqual(c.cmd("QPOP", q)[0][1:], [b"again", 1, 0, []])  # the same under RESP3
        self.assertIsInstance(c.cmd("QUEUE", "STATS", q), Map)

    def test_highest_priority_first_then_fifo(self):
        q = self.declare("MAXPRIORITY", 9)
        for payload, prio in [("a", 0), ("b", 5), ("c", 9), ("d", 5), ("e", 0), ("f", 200)]:
            self.publish("", q, payload, "PRIORITY", prio)
        got = self.pop(q, "COUNT", 10)
        self.assertEqual(self.payloads(got), [b"c", b"f", b"b", b"d", b"a", b"e"])
        self.assertEqual([d[3] for d in got], [9, 9, 5, 5, 0, 0])

    def test_ack_is_final_and_counts(self):
        q = self.declare()
        for i in range(3):
            self.publish("", q, "m%d" % i)
        got = self.pop(q, "COUNT", 3)
        tags = [d[0] for d in got]
        self.assertEqual(self.r.execute_command("ACK", q, *tags), 3)
        self.assertEqual(self.r.execute_command("ACK", q, *tags), 0)
        self.assertEqual(self.pop(q), [])
        st = stats(self.r, q)
        self.assertEqual((st["ready"], st["in_flight"], st["acked"]), (0, 0, 3))

    def test_nack_requeue_redelivers_and_nack_dead_letters(self):
        dlq = self.declare()
        q = self.declare("DEADLETTER", dlq)
        self.publish("", q, "job", "HEADER", "trace", "t7")
        first = self.pop(q)[0]
        self.assertEqual(self.r.execute_command("NACK", q, first[0], "REQUEUE"), 1)
        again = self.pop(q)[0]
        self.assertEqual((again[1], again[2]), (b"job", 2))
        self.assertEqual(self.r.execute_command("NACK", q, first[0]), 0)  # stale tag
        self.assertEqual(self.r.execute_command("NACK", q, again[0]), 1)
        self.assertEqual(self.pop(q), [])
        dead = self.pop(dlq)[0]
        self.assertEqual(dead[1], b"job")
        self.assertEqual(headers_of(dead), {b"trace": b"t7", b"x-death-reason": b"rejected",
                                            b"x-original-queue": q.encode(),
                                            b"x-delivery-count": b"2"})

    def test_max_deliveries_go_to_the_dead_letter_queue(self):
        dlq = self.declare()
        q = self.declare("MAXDELIVERIES", 3, "DEADLETTER", dlq)
        self.publish("", q, "poison")
        for i in range(3):
            d = self.pop(q)[0]
            self.assertEqual(d[2], i + 1)
            self.r.execute_command("NACK", q, d[0], "REQUEUE")
        self.assertEqual(self.pop(q), [])
        dead = self.pop(dlq, "BLOCK", 5000)[0]
        self.assertEqual(headers_of(dead)[b"x-death-reason"], b"maxdeliveries")
        self.assertEqual(stats(self.r, q)["dead_lettered"], 1)

    def test_prefetch_limits_deliveries_per_connection(self):
        q = self.declare()
        for i in range(5):
            self.publish("", q, "m%d" % i)
        c = self.node.client()
        self.addCleanup(c.close)
        self.assertEqual(c.execute_command("QUEUE", "PREFETCH", 2), b"OK")
        got = self.pop(q, "COUNT", 10, client=c)
        self.assertEqual(len(got), 2)
        self.assertEqual(self.pop(q, "COUNT", 10, client=c), [])
        c.execute_command("ACK", q, got[0][0])
        self.assertEqual(len(self.pop(q, "COUNT", 10, client=c)), 1)
        self.assertEqual(len(self.pop(q, "COUNT", 10)), 2)  # other connections are not limited


class RedeliveryTest(QueueTestCase):
    def test_disconnect_redelivers_to_another_consumer(self):
        q = self.declare()
        self.publish("", q, "a")
        self.publish("", q, "b")
        gone = self.node.client()
        got = self.pop(q, "COUNT", 2, client=gone)
        gone.execute_command("ACK", q, got[1][0])  # b is done, a is not
        gone.connection_pool.disconnect()  # close() alone keeps the socket in the pool
        again = self.pop(q, "BLOCK", 5000)
        self.assertEqual([(d[1], d[2]) for d in again], [(b"a", 2)])
        self.assertEqual(stats(self.r, q)["redelivered"], 1)

    def test_expired_lease_redelivers_to_a_blocked_consumer(self):
        q = self.declare()
        self.publish("", q, "slow work")
        slow = self.node.client()
        self.addCleanup(slow.close)
        first = self.pop(q, "LEASE", 300, client=slow)[0]
        started = time.monotonic()
        again = self.pop(q, "BLOCK", 10000)[0]  # woken when the lease runs out
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertEqual((again[1], again[2]), (b"slow work", 2))
        self.assertEqual(slow.execute_command("ACK", q, first[0]), 0)  # too late
        self.assertEqual(self.r.execute_command("ACK", q, again[0]), 1)

    def test_default_lease_comes_from_the_queue(self):
        q = self.declare("LEASE", 200)
        self.publish("", q, "m")
        c = self.node.client()
        self.addCleanup(c.close)
        self.pop(q, client=c)
        self.assertEqual(self.pop(q, "BLOCK", 10000)[0][2], 2)


class ExpiryAndLengthTest(QueueTestCase):
    def test_ttl_dead_letters_expired_messages(self):
        dlq = self.declare()
        q = self.declare("TTL", 200, "DEADLETTER", dlq)
        self.publish("", q, "stale", "HEADER", "k", "v")
        self.publish("", q, "staler", "TTL", 50)
        dead = self.pop(dlq, "COUNT", 2, "BLOCK", 10000)
        if len(dead) < 2:
            dead += self.pop(dlq, "COUNT", 2, "BLOCK", 10000)
        self.assertEqual(sorted(self.payloads(dead)), [b"stale", b"staler"])
        h = headers_of([d for d in dead if d[1] == b"stale"][0])
        self.assertEqual((h[b"x-death-reason"], h[b"x-original-queue"], h[b"k"]),
                         (b"expired", q.encode(), b"v"))
        self.assertEqual(self.pop(q), [])
        self.assertEqual(stats(self.r, q)["expired"], 2)

    def test_max_length_drop_head_keeps_the_newest(self):
        dlq = self.declare()
        q = self.declare("MAXLEN", 3, "DEADLETTER", dlq)
        for i in range(5):
            self.publish("", q, "m%d" % i)
        self.assertEqual(self.drain(q), [b"m2", b"m3", b"m4"])
        dead = self.pop(dlq, "COUNT", 10)
        self.assertEqual(self.payloads(dead), [b"m0", b"m1"])
        self.assertEqual(headers_of(dead[0])[b"x-death-reason"], b"maxlen")

    def test_max_length_reject_publish_refuses_the_publisher(self):
        q = self.declare("MAXLEN", 2, "OVERFLOW", "reject-publish")
        self.assertEqual(self.publish("", q, "1"), 1)
        self.assertEqual(self.publish("", q, "2"), 1)
        with self.assertRaisesRegex(redis.ResponseError, "is full.*reject-publish"):
            self.publish("", q, "3")
        got = self.pop(q)
        self.assertEqual(self.publish("", q, "4"), 1)  # in-flight messages do not count
        self.r.execute_command("ACK", q, got[0][0])
        self.assertEqual(self.drain(q), [b"2", b"4"])
        self.assertEqual(stats(self.r, q)["rejected"], 1)


class WaitingTest(QueueTestCase):
    def test_blocked_qpop_is_woken_by_a_publish(self):
        q = self.declare()
        c = self.raw()
        c.send(b"*4\r\n$4\r\nQPOP\r\n$%d\r\n%s\r\n$5\r\nBLOCK\r\n$5\r\n10000\r\n"
               % (len(q), q.encode()))
        wait_until(lambda: stats(self.r, q)["waiting"] == 1, what="QPOP to block")
        self.publish("", q, "wake up")
        got = c.read_reply()
        self.assertEqual(got[0][1], b"wake up")
        self.assertEqual(stats(self.r, q)["waiting"], 0)

    def test_blocked_qpop_times_out_with_an_empty_array(self):
        q = self.declare()
        started = time.monotonic()
        self.assertEqual(self.pop(q, "BLOCK", 200), [])
        self.assertGreaterEqual(time.monotonic() - started, 0.15)

    def test_waiters_are_served_in_the_order_they_blocked(self):
        q = self.declare()
        conns = []
        for i in range(3):
            c = self.raw()
            c.send(b"*6\r\n$4\r\nQPOP\r\n$%d\r\n%s\r\n$5\r\nBLOCK\r\n$5\r\n20000\r\n"
                   b"$5\r\nCOUNT\r\n$1\r\n5\r\n" % (len(q), q.encode()))
            wait_until(lambda: stats(self.r, q)["waiting"] == i + 1, what="QPOP %d to block" % i)
            conns.append(c)
        for i in range(3):
            self.publish("", q, "m%d" % i)
            got = conns[i].read_reply()
            self.assertEqual(self.payloads(got), [b"m%d" % i], "waiter %d" % i)
            for later in conns[i + 1:]:
                self.assertFalse(later.pending(), "a later waiter was served first")

    def test_competing_consumers_each_message_once_at_a_time(self):
        q = self.declare()
        total, consumers = 600, 4
        lock = threading.Lock()
        in_flight, acked, errors = {}, [], []
        done = threading.Event()

        def consume(n):
            c = self.node.client(socket_timeout=30)
            try:
                while not done.is_set():
                    got = c.execute_command("QPOP", q, "COUNT", 7, "BLOCK", 100)
                    with lock:
                        for d in got:
                            if d[1] in in_flight:
                                errors.append("%r delivered to %d while %d holds it"
                                              % (d[1], n, in_flight[d[1]]))
                            in_flight[d[1]] = n
                    for i, d in enumerate(got):
                        requeue = (i + n) % 3 == 0 and d[2] == 1  # some go round again
                        with lock:
                            del in_flight[d[1]]
                        if requeue:
                            c.execute_command("NACK", q, d[0], "REQUEUE")
                        else:
                            self.assertEqual(c.execute_command("ACK", q, d[0]), 1)
                            with lock:
                                acked.append(d[1])
            except Exception as e:  # reported by the main thread
                errors.append(repr(e))
            finally:
                c.close()

        threads = [threading.Thread(target=consume, args=(n,), daemon=True)
                   for n in range(consumers)]
        for t in threads:
            t.start()
        pipe = self.r.pipeline(transaction=False)
        for i in range(total):
            pipe.execute_command("QPUBLISH", "", q, "m%d" % i)
        self.assertEqual(pipe.execute(), [1] * total)
        wait_until(lambda: len(acked) >= total or errors, timeout=60, what="every ack")
        done.set()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(acked), sorted(b"m%d" % i for i in range(total)))
        st = stats(self.r, q)
        self.assertEqual((st["ready"], st["in_flight"], st["acked"]), (0, 0, total))
        self.assertGreater(st["redelivered"], 0)


class StatsTest(QueueTestCase):
    def test_stats_and_metrics_follow_traffic(self):
        q = self.declare("MAXPRIORITY", 2)
        for i in range(4):
            self.publish("", q, "m%d" % i)
        got = self.pop(q, "COUNT", 3)
        self.r.execute_command("ACK", q, got[0][0])
        st = stats(self.r, q)
        self.assertEqual((st["ready"], st["in_flight"], st["published"], st["delivered"],
                          st["acked"], st["priorities"]), (1, 2, 4, 3, 1, 3))
        self.assertGreaterEqual(st["oldest_ready_age_ms"], 0)
        self.assertGreater(st["bytes"], 0)
        for k in ("publish_rate", "deliver_rate", "ack_rate", "redeliver_rate",
                  "dead_letter_rate"):
            float(st[k])
        fams = parse_prometheus(self.node.http_get("/metrics")[1].decode())
        self.assertEqual(sample(fams, "sluice_queue_ready", queue=q), 1)
        self.assertEqual(sample(fams, "sluice_queue_in_flight", queue=q), 2)
        self.assertEqual(sample(fams, "sluice_queue_published_total", queue=q), 4)
        self.assertEqual(sample(fams, "sluice_queue_delivered_total", queue=q), 3)
        self.assertEqual(sample(fams, "sluice_queue_acked_total", queue=q), 1)
        self.assertGreaterEqual(sample(fams, "sluice_queue_oldest_ready_age_seconds", queue=q), 0)
        self.assertEqual(sample(fams, "sluice_commands_total", command="QPUBLISH") >= 4, True)

    def test_rates_rise_with_traffic(self):
        q = self.declare()
        for i in range(50):
            self.publish("", q, "m")
        wait_until(lambda: float(stats(self.r, q)["publish_rate"]) > 0, timeout=10,
                   what="the publish rate to move")


class RestartTest(unittest.TestCase):
    def test_declarations_bindings_and_messages_survive_a_restart(self):
        node = Node().start()
        try:
            r = node.client()
            r.execute_command("EXCHANGE", "DECLARE", "jobs", "topic")
            r.execute_command("QUEUE", "DECLARE", "work", "MAXPRIORITY", 1, "MAXLEN", 100)
            r.execute_command("BIND", "jobs", "work", "job.#")
            for i in range(5):
                r.execute_command("QPUBLISH", "jobs", "job.x", "m%d" % i, "PRIORITY", i % 2)
            got = r.execute_command("QPOP", "work", "COUNT", 2)
            r.execute_command("ACK", "work", got[0][0])  # m1 acked; m3 in flight
            r.close()
            node.restart()
            r = node.client()
            with self.assertRaisesRegex(redis.ResponseError, "MAXLEN 100, not 5"):
                r.execute_command("QUEUE", "DECLARE", "work", "MAXPRIORITY", 1, "MAXLEN", 5)
            self.assertEqual(r.execute_command("QPUBLISH", "jobs", "job.y", "m5"), 1)
            got = r.execute_command("QPOP", "work", "COUNT", 10)
            self.assertEqual([(d[1], d[2]) for d in got],
                             [(b"m3", 2), (b"m0", 1), (b"m2", 1), (b"m4", 1), (b"m5", 1)])
            r.close()
            node.stop()
        finally:
            node.cleanup()


class Publishers:
    """Threads that QPUBLISH through a fanout exchange to two queues, one
    in flight each, and record every confirmed message until the node goes
    away."""

    def __init__(self, node, exchange, threads=6):
        self.node, self.exchange = node, exchange
        self.lock = threading.Lock()
        self.sent, self.confirmed, self.errors = set(), [], []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def run(self, n):
        r = self.node.client(socket_timeout=30)
        for i in itertools.count():
            payload = b"p%d-%d" % (n, i)
            with self.lock:
                self.sent.add(payload)
            try:
                stored = r.execute_command("QPUBLISH", self.exchange, "k", payload,
                                           "PRIORITY", i % 3)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            except Exception as e:  # an error reply is a failure
                with self.lock:
                    self.errors.append(repr(e))
                return
            with self.lock:
                if stored != 2:
                    self.errors.append("%r stored in %r queues" % (payload, stored))
                self.confirmed.append(payload)

    def count(self):
        with self.lock:
            return len(self.confirmed)


class Consumers:
    """Threads that pop and ack, recording the acks the node confirmed and
    the ones sent without an answer, until the node goes away."""

    def __init__(self, node, queue, threads=4):
        self.node, self.queue = node, queue
        self.lock = threading.Lock()
        self.acked, self.unanswered, self.errors = set(), set(), []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        r = self.node.client(socket_timeout=30)
        while True:
            try:
                got = r.execute_command("QPOP", self.queue, "COUNT", 20, "BLOCK", 1000)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            if not got:
                continue
            payloads = {d[1] for d in got}
            with self.lock:
                self.unanswered |= payloads
            try:
                n = r.execute_command("ACK", self.queue, *[d[0] for d in got])
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            with self.lock:
                if n != len(got):
                    self.errors.append("ACK of %d acked %r" % (len(got), n))
                self.acked |= payloads
                self.unanswered -= payloads

    def count(self):
        with self.lock:
            return len(self.acked)


def start_all(workers):
    for t in workers.threads:
        t.start()


def join_all(workers, timeout=30):
    deadline = time.monotonic() + timeout
    for t in workers.threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in workers.threads), "threads still running after the kill"


def drain_all(r, queue):
    """Every message left in queue (popped and acked), as a list."""
    out = []
    while True:
        got = r.execute_command("QPOP", queue, "COUNT", 1000)
        if not got:
            return out
        r.execute_command("ACK", queue, *[d[0] for d in got])
        out += [d[1] for d in got]


class KillTest(unittest.TestCase):
    """kill -9 during publishing and during consuming, then a restart."""

    def setUp(self):
        self.node = Node()
        self.addCleanup(self.node.cleanup)
        self.node.start()

    def test_every_confirmed_publish_survives_sigkill(self):
        r = self.node.client()
        r.execute_command("EXCHANGE", "DECLARE", "all", "fanout")
        for q in ("left", "right"):
            r.execute_command("QUEUE", "DECLARE", q, "MAXPRIORITY", 2)
            r.execute_command("BIND", "all", q, "")
        r.close()
        pubs = Publishers(self.node, "all")
        start_all(pubs)
        wait_until(lambda: pubs.count() >= 1500 or pubs.errors, timeout=60,
                   what="1500 confirmed publishes")
        self.node.kill()
        join_all(pubs)
        self.assertEqual(pubs.errors, [])
        self.node.start()
        r = self.node.client()
        for q in ("left", "right"):
            stored = drain_all(r, q)
            self.assertEqual(len(stored), len(set(stored)), "a message is stored twice in " + q)
            missing = set(pubs.confirmed) - set(stored)
            self.assertEqual(sorted(missing)[:5], [], "%d confirmed messages lost from %s"
                             % (len(missing), q))
            self.assertEqual(set(stored) - pubs.sent, set(), "messages nobody sent")
            self.assertLessEqual(len(stored) - len(pubs.confirmed), len(pubs.threads))
        self.assertEqual(r.execute_command("QPUBLISH", "all", "k", "after"), 2)
        r.close()
        self.node.stop()

    def test_no_acked_message_comes_back_and_none_is_lost_after_sigkill(self):
        r = self.node.client()
        r.execute_command("QUEUE", "DECLARE", "work", "LEASE", 60000)
        total = 4000
        pipe = r.pipeline(transaction=False)
        for i in range(total):
            pipe.execute_command("QPUBLISH", "", "work", b"m%d" % i)
        self.assertEqual(pipe.execute(), [1] * total)
        held = r.execute_command("QPOP", "work", "COUNT", 5)  # never acked: the floor stays at 0
        cons = Consumers(self.node, "work")
        start_all(cons)
        wait_until(lambda: cons.count() >= 1000 or cons.errors, timeout=60,
                   what="1000 acknowledged messages")
        self.node.kill()
        join_all(cons)
        self.assertEqual(cons.errors, [])
        self.assertLess(len(cons.acked), total, "everything was consumed before the kill")
        r.close()
        self.node.start()
        r = self.node.client()
        left = drain_all(r, "work")
        everything = {b"m%d" % i for i in range(total)}
        self.assertEqual(set(left) & cons.acked, set(), "acked messages came back")
        lost = everything - cons.acked - cons.unanswered - set(left)
        self.assertEqual(sorted(lost)[:5], [], "%d unacked messages lost" % len(lost))
        self.assertEqual(len(left), len(set(left)))
        self.assertLessEqual({d[1] for d in held}, set(left))
        r.close()
        self.node.stop()


class CliTest(QueueTestCase):
    """`sluice queue ...` and `sluice worker` against the node."""

    def cli(self, *args, stdin=None, check=True):
        cmd = [sluice_bin(), *args[:2], "--port", str(self.node.port), *args[2:]]
        if args[0] == "worker":
            split = args.index("--")
            cmd = [sluice_bin(), *args[:split], "--port", str(self.node.port), *args[split:]]
        p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60)
        if check:
            self.assertEqual(p.returncode, 0, "%s: %s" % (cmd, p.stderr.decode()))
        return p

    def test_declare_bind_publish_pop_stats(self):
        q, e = self.name(), self.name("e")
        self.assertEqual(self.cli("queue", "declare", q, "--max-priority", "2", "--max-length",
                                  "100").stdout, b"declared queue %s\n" % q.encode())
        self.cli("queue", "bind", e, q, "orders.#", "--type", "topic")
        self.assertEqual(self.cli("queue", "publish", e, "orders.eu", "first", "--priority", "2",
                                  "--header", "trace=t1").stdout, b"stored in 1 queue\n")
        self.cli("queue", "publish", e, "orders.us", stdin=b"second\nthird\n")
        self.assertEqual(self.cli("queue", "publish", e, "nowhere", "x").stdout,
                         b"stored in 0 queues\n")
        self.assertEqual(stats(self.r, q)["ready"], 3)
        out = self.cli("queue", "pop", q, "-n", "2", "--verbose").stdout.decode().splitlines()
        self.assertEqual([line.split("\t")[1:] for line in out],
                         [["1", "2", "first"], ["1", "0", "second"]])
        self.assertEqual(self.cli("queue", "pop", q).stdout, b"third\n")
        st = stats(self.r, q)
        self.assertEqual((st["ready"], st["in_flight"], st["acked"]), (0, 0, 3))
        self.assertIn(b"acked 3\n", self.cli("queue", "stats", q).stdout)
        table = self.cli("queue", "stats").stdout.decode()
        self.assertRegex(table, r"(?m)^%s +0 +0 +3 +3 " % q)
        with self.assertRaises(redis.ResponseError):
            self.r.execute_command("QUEUE", "DECLARE", q, "MAXLEN", 5)

    def test_pop_no_ack_leaves_the_message_in_the_queue(self):
        q = self.declare()
        self.publish("", q, "keep me")
        self.assertEqual(self.cli("queue", "pop", q, "--no-ack").stdout, b"keep me\n")
        got = self.pop(q, "BLOCK", 5000)
        self.assertEqual((got[0][1], got[0][2]), (b"keep me", 2))

    def test_errors_and_usage(self):
        p = self.cli("queue", "declare", "bad name", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"may only hold", p.stderr)
        self.assertEqual(self.cli("queue", "frob", "x", check=False).returncode, 2)
        self.assertEqual(self.cli("queue", "bind", "e", check=False).returncode, 2)
        self.assertEqual(self.cli("queue", "publish", "", "k", "v", "--header", "novalue",
                                  check=False).returncode, 2)
        for args in (["queue", "--help"], ["worker", "--help"]):
            p = subprocess.run([sluice_bin(), *args], capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 0)
            self.assertIn(b"usage: sluice " + args[0].encode(), p.stdout)
        p = subprocess.run([sluice_bin(), "worker", "q"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"which command", p.stderr)

    def test_worker_acks_on_success_and_retries_then_dead_letters_failures(self):
        dlq = self.declare()
        q = self.declare("MAXDELIVERIES", 2, "DEADLETTER", dlq)
        out = tempfile.mkdtemp(prefix="sluice-worker-")
        self.addCleanup(shutil.rmtree, out, True)
        for payload in ("a", "b", "fail", "c"):
            self.publish("", q, payload)
        script = 'read x; echo "$x $SLUICE_DELIVERY_COUNT" >> "%s/log"; test "$x" != fail' % out
        p = self.cli("worker", q, "--exit-when-empty", "--", "sh", "-c", script)
        self.assertIn(b"3 acked, 2 rejected", p.stderr)
        with open(os.path.join(out, "log")) as f:
            lines = f.read().splitlines()
        self.assertEqual(sorted(lines), ["a 1", "b 1", "c 1", "fail 1", "fail 2"])
        st = stats(self.r, q)
        self.assertEqual((st["ready"], st["in_flight"], st["acked"], st["dead_lettered"]),
                         (0, 0, 3, 1))
        self.assertEqual(self.payloads(self.pop(dlq)), [b"fail"])

    def test_worker_fleet_handles_each_message_once(self):
        q = self.declare()
        out = tempfile.mkdtemp(prefix="sluice-worker-")
        self.addCleanup(shutil.rmtree, out, True)
        pipe = self.r.pipeline(transaction=False)
        for i in range(40):
            pipe.execute_command("QPUBLISH", "", q, "m%d" % i)
        pipe.execute()
        script = 'cat >> "%s/$$"; echo >> "%s/$$"' % (out, out)
        p = self.cli("worker", q, "--concurrency", "3", "--exit-when-empty", "--quiet", "--",
                     "sh", "-c", script)
        self.assertEqual(p.stderr, b"")
        seen = []
        for name in os.listdir(out):
            with open(os.path.join(out, name)) as f:
                seen += f.read().split()
        self.assertEqual(sorted(seen), sorted("m%d" % i for i in range(40)))
        self.assertEqual(stats(self.r, q)["acked"], 40)

    def test_worker_without_requeue_dead_letters_at_once(self):
        dlq = self.declare()
        q = self.declare("DEADLETTER", dlq)
        self.publish("", q, "bad")
        p = self.cli("worker", q, "--exit-when-empty", "--no-requeue", "--", "false")
        self.assertIn(b"dead-lettered", p.stderr)
        dead = self.pop(dlq)
        self.assertEqual(headers_of(dead[0])[b"x-death-reason"], b"rejected")

    def test_worker_stops_on_sigterm(self):
        q = self.declare()
        proc = subprocess.Popen([sluice_bin(), "worker", q, "--port", str(self.node.port), "--",
                                 "true"], stderr=subprocess.PIPE)
        wait_until(lambda: stats(self.r, q)["waiting"] == 1, what="the worker to wait")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0)
        proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
