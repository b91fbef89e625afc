"""
test_node.py - the RESP commands of a running node, end to end (DESIGN §10).
"""
import os
import subprocess
import time
import unittest

import redis

from node import (Error, Map, Node, NodeTestCase, Simple, encode, fetch_all,
                  murmur2_partition, partition_ends, wait_until)


def now_ms():
    return int(time.time() * 1000)


class ProduceFetchTest(NodeTestCase):
    def test_produce_returns_partition_and_offset(self):
        t = self.new_topic(1)
        self.assertEqual(self.r.execute_command("PRODUCE", t, "k", "v0"), [0, 0])
        self.assertEqual(self.r.execute_command("PRODUCE", t, "k", "v1"), [0, 1])

    def test_fetch_returns_values_keys_and_offsets(self):
        t = self.new_topic(1)
        for i in range(5):
            self.r.execute_command("PRODUCE", t, "key%d" % i, "value%d" % i)
        recs = self.r.execute_command("FETCH", t, 0, 0)
        self.assertEqual([r[0] for r in recs], [0, 1, 2, 3, 4])
        self.assertEqual([r[2] for r in recs], [b"key%d" % i for i in range(5)])
        self.assertEqual([r[3] for r in recs], [b"value%d" % i for i in range(5)])

    def test_fetch_from_middle_offset_with_count(self):
        t = self.new_topic(1)
        for i in range(10):
            self.r.execute_command("PRODUCE", t, "k", "v%d" % i)
        recs = self.r.execute_command("FETCH", t, 0, 4, "COUNT", 3)
        self.assertEqual([(r[0], r[3]) for r in recs], [(4, b"v4"), (5, b"v5"), (6, b"v6")])

    def test_values_are_binary_safe(self):
        t = self.new_topic(1)
        values = [b"", b"\x00", b"a\r\nb", b"\r\n*1\r\n$4\r\nPING\r\n", bytes(range(256)),
                  os.urandom(100000)]
        for v in values:
            self.r.execute_command("PRODUCE", t, b"k\x00\xff", v)
        recs = self.r.execute_command("FETCH", t, 0, 0)
        self.assertEqual([r[3] for r in recs], values)
        self.assertTrue(all(r[2] == b"k\x00\xff" for r in recs))

    def test_empty_key_is_a_null_key(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "", "v")
        rec = self.r.execute_command("FETCH", t, 0, 0)[0]
        self.assertIsNone(rec[2])

    def test_headers_round_trip_in_order(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v", "HEADER", "trace", "abc",
                               "HEADER", "empty", "", "HEADER", "bin", b"\x00\r\n")
        rec = self.r.execute_command("FETCH", t, 0, 0)[0]
        self.assertEqual(rec[4], [b"trace", b"abc", b"empty", b"", b"bin", b"\x00\r\n"])

    def test_record_without_headers_has_empty_header_array(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v")
        self.assertEqual(self.r.execute_command("FETCH", t, 0, 0)[0][4], [])

    def test_ts_option_sets_the_timestamp(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v", "TS", 1234567890123)
        self.assertEqual(self.r.execute_command("FETCH", t, 0, 0)[0][1], 1234567890123)

    def test_timestamp_defaults_to_wall_clock_ms(self):
        t = self.new_topic(1)
        before = now_ms()
        self.r.execute_command("PRODUCE", t, "k", "v")
        after = now_ms()
        ts = self.r.execute_command("FETCH", t, 0, 0)[0][1]
        self.assertGreaterEqual(ts, before - 1000)
        self.assertLessEqual(ts, after + 1000)

    def test_partition_option_targets_a_partition(self):
        t = self.new_topic(4)
        self.assertEqual(self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 3), [3, 0])
        self.assertEqual(self.r.execute_command("FETCH", t, 3, 0)[0][3], b"v")

    def test_fetch_at_end_returns_empty_array(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v")
        self.assertEqual(self.r.execute_command("FETCH", t, 0, 1), [])

    def test_fetch_past_end_is_an_error(self):
        t = self.new_topic(1)
        with self.assertRaisesRegex(redis.ResponseError, "past the end"):
            self.r.execute_command("FETCH", t, 0, 5)


class ReplyShapeTest(NodeTestCase):
    """Reply shapes per DESIGN §10, identical under RESP2 and RESP3."""

    def resp3(self):
        c = self.raw()
        hello = c.cmd("HELLO", "3")
        self.assertIsInstance(hello, Map)
        return c

    def test_hello_3_replies_a_map(self):
        c = self.raw()
        hello = c.cmd("HELLO", "3")
        self.assertIsInstance(hello, Map, "HELLO 3 must reply a RESP3 map (%%), got %r" % (hello,))
        fields = dict(hello)
        self.assertEqual(fields[b"server"], b"sluice")
        self.assertEqual(fields[b"proto"], 3)
        for k in (b"version", b"id", b"mode", b"role", b"modules"):
            self.assertIn(k, fields)

    def test_hello_2_replies_a_flat_array(self):
        c = self.raw()
        hello = c.cmd("HELLO", "2")
        self.assertIsInstance(hello, list)
        self.assertNotIsInstance(hello, Map)
        fields = dict(zip(hello[0::2], hello[1::2]))
        self.assertEqual(fields[b"proto"], 2)
        self.assertEqual(fields[b"server"], b"sluice")

    def test_hello_without_version_keeps_the_protocol(self):
        c = self.raw()
        self.assertEqual(dict(zip(*[iter(c.cmd("HELLO"))] * 2))[b"proto"], 2)
        self.assertIsInstance(c.cmd("HELLO", "3"), Map)
        self.assertEqual(dict(c.cmd("HELLO"))[b"proto"], 3)

    def test_hello_with_unsupported_version_is_noproto(self):
        c = self.raw()
        self.assertErrorCode(c.cmd("HELLO", "4"), "NOPROTO")
        self.assertEqual(c.cmd("PING"), "PONG")

    def test_produce_shape_is_the_same_under_resp2_and_resp3(self):
        t = self.new_topic(2)
        c2, c3 = self.raw(), self.resp3()
        for c in (c2, c3):
            reply = c.cmd("PRODUCE", t, "samekey", "v")
            self.assertIs(type(reply), list)
            self.assertEqual(len(reply), 2)
            self.assertTrue(all(type(x) is int for x in reply))
        self.assertEqual(c2.cmd("PRODUCE", t, "samekey", "v")[0], c3.cmd("PRODUCE", t, "samekey", "v")[0])

    def test_producebatch_shape_is_the_same_under_resp2_and_resp3(self):
        t = self.new_topic(3)
        c2, c3 = self.raw(), self.resp3()
        r2 = c2.cmd("PRODUCEBATCH", t, "a", "1", "b", "2", "c", "3")
        r3 = c3.cmd("PRODUCEBATCH", t, "a", "1", "b", "2", "c", "3")
        for reply in (r2, r3):
            self.assertIs(type(reply), list)
            self.assertEqual(len(reply), 3)
            for pair in reply:
                self.assertIs(type(pair), list)
                self.assertEqual(len(pair), 2)
        self.assertEqual([p for p, _ in r2], [p for p, _ in r3])

    def test_fetch_shape_is_the_same_under_resp2_and_resp3(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v", "TS", 42, "HEADER", "h", "x")
        self.r.execute_command("PRODUCE", t, "", "nullkey", "TS", 43)
        c2, c3 = self.raw(), self.resp3()
        r2, r3 = c2.cmd("FETCH", t, 0, 0), c3.cmd("FETCH", t, 0, 0)
        expected = [[0, 42, b"k", b"v", [b"h", b"x"]], [1, 43, None, b"nullkey", []]]
        self.assertEqual(r2, expected)
        self.assertEqual(r3, expected)
        for reply in (r2, r3):
            self.assertIs(type(reply), list)
            for rec in reply:
                self.assertIs(type(rec), list)
                self.assertIs(type(rec[4]), list)

    def test_group_fetch_shape_is_the_same_under_resp2_and_resp3(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v", "TS", 7)
        c2, c3 = self.raw(), self.resp3()
        r2 = c2.cmd("GROUP", "FETCH", "g2", t)
        r3 = c3.cmd("GROUP", "FETCH", "g3", t)
        expected = [[t.encode(), 0, 0, 7, b"k", b"v", []]]
        self.assertEqual(r2, expected)
        self.assertEqual(r3, expected)

    def test_errors_are_plain_errors_under_resp3(self):
        c3 = self.resp3()
        reply = c3.cmd("FETCH", "no-such-topic", 0, 0)
        self.assertIsInstance(reply, Error)
        self.assertTrue(reply.startswith("NOTFOUND"))

    def test_block_timeout_is_an_empty_array_under_resp3(self):
        t = self.new_topic(1)
        c3 = self.resp3()
        reply = c3.cmd("FETCH", t, 0, 0, "BLOCK", 50)
        self.assertIs(type(reply), list)
        self.assertEqual(reply, [])

    def test_ping_is_a_simple_string_under_both_protocols(self):
        c2, c3 = self.raw(), self.resp3()
        for c in (c2, c3):
            reply = c.cmd("PING")
            self.assertIsInstance(reply, Simple)
            self.assertEqual(reply, "PONG")
            self.assertEqual(c.cmd("PING", "hi"), b"hi")


class PartitioningTest(NodeTestCase):
    def test_producebatch_puts_equal_keys_in_one_partition(self):
        t = self.new_topic(8)
        keys = [b"user-%d" % (i % 25) for i in range(200)]
        args = []
        for i, k in enumerate(keys):
            args += [k, b"v%d" % i]
        acks = self.r.execute_command("PRODUCEBATCH", t, *args)
        self.assertEqual(len(acks), 200)
        by_key = {}
        for k, (p, _) in zip(keys, acks):
            by_key.setdefault(k, set()).add(p)
        self.assertTrue(all(len(ps) == 1 for ps in by_key.values()), by_key)
        self.assertGreater(len({next(iter(ps)) for ps in by_key.values()}), 1,
                           "25 keys over 8 partitions should use several partitions")

    def test_key_partition_matches_kafka_murmur2(self):
        t = self.new_topic(8)
        keys = [b"user-%d" % i for i in range(50)] + [b"\x00\xff", b"a", b"ab", b"abc", b"abcd"]
        args = []
        for k in keys:
            args += [k, b"x"]
        acks = self.r.execute_command("PRODUCEBATCH", t, *args)
        self.assertEqual([p for p, _ in acks], [murmur2_partition(k, 8) for k in keys])

    def test_produce_and_producebatch_agree_on_a_keys_partition(self):
        t = self.new_topic(6)
        keys = [b"k%d" % i for i in range(30)]
        args = []
        for k in keys:
            args += [k, b"batch"]
        batch = self.r.execute_command("PRODUCEBATCH", t, *args)
        for k, (p, _) in zip(keys, batch):
            self.assertEqual(self.r.execute_command("PRODUCE", t, k, b"single")[0], p)

    def test_producebatch_offsets_are_contiguous_in_input_order(self):
        t = self.new_topic(4)
        keys = [b"k%d" % (i % 9) for i in range(120)]
        args = []
        for i, k in enumerate(keys):
            args += [k, b"%d" % i]
        acks = self.r.execute_command("PRODUCEBATCH", t, *args)
        per_partition = {}
        for i, (p, o) in enumerate(acks):
            per_partition.setdefault(p, []).append((o, i))
        for p, entries in per_partition.items():
            offsets = [o for o, _ in entries]
            self.assertEqual(offsets, list(range(len(offsets))), "partition %d" % p)
            recs = fetch_all(self.r, t, p)
            self.assertEqual([int(r[3]) for r in recs], [i for _, i in entries])

    def test_null_keys_of_one_batch_share_a_partition(self):
        t = self.new_topic(4)
        acks = self.r.execute_command("PRODUCEBATCH", t, "", "a", "", "b", "", "c")
        self.assertEqual(len({p for p, _ in acks}), 1)


class PipeliningTest(NodeTestCase):
    def test_redis_py_pipeline_of_1000_produces(self):
        t = self.new_topic(4)
        pipe = self.r.pipeline(transaction=False)
        for i in range(1000):
            pipe.execute_command("PRODUCE", t, "key%d" % (i % 37), "value%d" % i)
        acks = pipe.execute()
        self.assertEqual(len(acks), 1000)
        seen = {}
        for i, (p, o) in enumerate(acks):
            seen.setdefault(p, []).append((o, i))
        self.assertEqual(sum(len(v) for v in seen.values()), 1000)
        for p, entries in seen.items():
            self.assertEqual([o for o, _ in entries], list(range(len(entries))))
            recs = fetch_all(self.r, t, p)
            self.assertEqual([r[3] for r in recs], [b"value%d" % i for _, i in entries])

    def test_100_commands_in_one_write_reply_in_order(self):
        t = self.new_topic(1)
        c = self.raw()
        data = b""
        expected = []
        for i in range(100):
            kind = i % 3
            if kind == 0:
                data += encode("ECHO", "msg%d" % i)
                expected.append(b"msg%d" % i)
            elif kind == 1:
                data += encode("PRODUCE", t, "k", "v%d" % i)
                expected.append([0, i // 3])
            else:
                data += b"PING\r\n"  # inline form mixed in
                expected.append("PONG")
        c.send(data)
        self.assertEqual(c.read_replies(100), expected)
        self.assertFalse(c.pending())

    def test_commands_split_at_every_byte_boundary(self):
        t = self.new_topic(1)
        c = self.raw()
        stream = (encode("PRODUCE", t, "key", "val\r\nue", "HEADER", "h", "v")
                  + b"ECHO inline\r\n" + encode("PING"))
        for k in range(1, len(stream)):
            c.send(stream[:k])
            c.send(stream[k:])
        n = len(stream) - 1
        replies = c.read_replies(3 * n)
        for j in range(n):
            self.assertEqual(replies[3 * j], [0, j], "split at byte %d" % (j + 1))
            self.assertEqual(replies[3 * j + 1], b"inline")
            self.assertEqual(replies[3 * j + 2], "PONG")
        recs = fetch_all(self.r, t, 0)
        self.assertEqual(len(recs), n)
        self.assertTrue(all(r[3] == b"val\r\nue" and r[4] == [b"h", b"v"] for r in recs))

    def test_commands_sent_one_byte_per_write(self):
        t = self.new_topic(1)
        c = self.raw()
        stream = encode("PRODUCE", t, "k", "v" * 300) + b"PING\r\n" + encode("ECHO", "")
        for i in range(len(stream)):
            c.send(stream[i:i + 1])
        self.assertEqual(c.read_replies(3), [[0, 0], "PONG", b""])

    def pipelined_cost(self, command):
        """Seconds for 20000 pipelined `command topic k v` on an FSYNC never
        topic (best of two) and on an FSYNC interval topic."""
        never = self.new_topic(1, "FSYNC", "never")
        interval = self.new_topic(1, "FSYNC", "interval")
        c = self.raw()
        n = 20000

        def burst(topic):
            payload = b"".join(encode(command, topic, "k", "v" * 20) for _ in range(n))
            start = time.monotonic()
            c.send(payload)
            replies = c.read_replies(n, timeout=120)
            elapsed = time.monotonic() - start
            self.assertFalse([x for x in replies if isinstance(x, Error)][:1])
            return elapsed
        base = min(burst(never), burst(never))
        held = burst(interval)
        if os.environ.get("SLUICE_IT_VERBOSE"):
            print("\n  %d pipelined %s: never %.3fs, interval %.3fs" % (n, command, base, held))
        return n, base, held

    # A command whose reply waits for an fsync should cost the event loop
    # about what one that does not wait costs: the loop only queues the
    # wait. Measured relative to FSYNC never on the same node, with a wide
    # margin (3x + 0.5 s), so machine speed does not matter.

    def test_pipelined_produces_awaiting_fsync_cost_about_as_much_as_unsynced_ones(self):
        n, base, held = self.pipelined_cost("PRODUCE")
        self.assertLess(held, 3 * base + 0.5,
                        "%d pipelined PRODUCEs took %.2fs on an FSYNC interval topic vs %.2fs "
                        "on FSYNC never: the loop stalls per held reply" % (n, held, base))

    def test_pipelined_producebatches_awaiting_fsync_cost_about_as_much_as_unsynced_ones(self):
        n, base, held = self.pipelined_cost("PRODUCEBATCH")
        self.assertLess(held, 3 * base + 0.5,
                        "%d pipelined PRODUCEBATCHes took %.2fs on an FSYNC interval topic vs "
                        "%.2fs on FSYNC never: the loop stalls per held reply" % (n, held, base))

    def test_pipelined_replies_stay_in_order_across_topics_with_different_fsync(self):
        slow = self.new_topic(1, "FSYNC", "always")
        fast = self.new_topic(1, "FSYNC", "never")
        c = self.raw()
        data = b""
        for i in range(50):
            data += encode("PRODUCE", slow if i % 2 else fast, "k", "v%d" % i)
            data += encode("ECHO", "e%d" % i)
        c.send(data)
        replies = c.read_replies(100)
        for i in range(50):
            self.assertEqual(replies[2 * i], [0, i // 2])
            self.assertEqual(replies[2 * i + 1], b"e%d" % i)


class BlockingFetchTest(NodeTestCase):
    def block(self, conn, *cmd):
        """Sends ECHO then the blocking command in one write; once ECHO's
        reply is back the node has run the command (same read, in order),
        so it is blocked, not merely on its way."""
        conn.send(encode("ECHO", "barrier") + encode(*cmd))
        self.assertEqual(conn.read_reply(), b"barrier")
        self.assertFalse(conn.pending(), "%s answered before anything was produced" % (cmd,))

    def test_blocked_fetch_is_woken_by_produce_from_another_connection(self):
        t = self.new_topic(1)
        blocker = self.raw()
        start = time.monotonic()
        self.block(blocker, "FETCH", t, 0, 0, "BLOCK", 10000)
        self.r.execute_command("PRODUCE", t, "k", "wake")
        reply = blocker.read_reply(timeout=15)
        elapsed = time.monotonic() - start
        self.assertEqual(len(reply), 1)
        self.assertEqual(reply[0][3], b"wake")
        self.assertLess(elapsed, 5.0, "blocked FETCH should return promptly after PRODUCE")

    def test_blocked_fetch_is_woken_on_an_fsync_always_topic(self):
        t = self.new_topic(1, "FSYNC", "always")
        blocker = self.raw()
        start = time.monotonic()
        self.block(blocker, "FETCH", t, 0, 0, "BLOCK", 10000)
        self.r.execute_command("PRODUCE", t, "k", "wake")
        reply = blocker.read_reply(timeout=15)
        self.assertEqual(reply[0][3], b"wake")
        self.assertLess(time.monotonic() - start, 5.0)

    def test_blocked_fetch_forever_is_woken(self):
        t = self.new_topic(1)
        blocker = self.raw()
        self.block(blocker, "FETCH", t, 0, 0, "BLOCK", 0)
        self.r.execute_command("PRODUCE", t, "k", "wake")
        self.assertEqual(blocker.read_reply(timeout=15)[0][3], b"wake")

    def test_block_timeout_returns_empty_array(self):
        t = self.new_topic(1)
        c = self.raw()
        start = time.monotonic()
        reply = c.cmd("FETCH", t, 0, 0, "BLOCK", 200)
        elapsed = time.monotonic() - start
        self.assertEqual(reply, [])
        self.assertGreaterEqual(elapsed, 0.15)
        self.assertLess(elapsed, 5.0)

    def test_group_fetch_block_timeout_returns_empty_array(self):
        t = self.new_topic(2)
        c = self.raw()
        self.assertEqual(c.cmd("GROUP", "FETCH", "idle", t, "BLOCK", 100), [])

    def test_produce_to_another_partition_does_not_answer_the_block(self):
        t = self.new_topic(2)
        c = self.raw()
        self.block(c, "FETCH", t, 0, 0, "BLOCK", 300)
        self.r.execute_command("PRODUCE", t, "k", "elsewhere", "PARTITION", 1)
        self.assertEqual(c.read_reply(timeout=10), [])

    def test_commands_pipelined_after_a_blocked_fetch_run_after_it(self):
        t = self.new_topic(1)
        c = self.raw()
        c.send(encode("ECHO", "barrier") + encode("FETCH", t, 0, 0, "BLOCK", 10000)
               + encode("ECHO", "after"))
        self.assertEqual(c.read_reply(), b"barrier")
        self.assertFalse(c.pending())
        self.r.execute_command("PRODUCE", t, "k", "v")
        first, second = c.read_replies(2, timeout=15)
        self.assertEqual(first[0][3], b"v")
        self.assertEqual(second, b"after")

    def test_blocked_group_fetch_is_woken_by_produce(self):
        t = self.new_topic(2)
        c = self.raw()
        start = time.monotonic()
        self.block(c, "GROUP", "FETCH", "blockers", t, "BLOCK", 10000)
        self.r.execute_command("PRODUCE", t, "k", "wake", "PARTITION", 1)
        reply = c.read_reply(timeout=15)
        self.assertEqual(reply[0][0], t.encode())
        self.assertEqual(reply[0][5], b"wake")
        self.assertLess(time.monotonic() - start, 5.0)

    def test_many_blocked_fetches_are_all_woken(self):
        t = self.new_topic(1)
        conns = [self.raw() for _ in range(20)]
        for c in conns:
            self.block(c, "FETCH", t, 0, 0, "BLOCK", 10000)
        self.r.execute_command("PRODUCE", t, "k", "all")
        for c in conns:
            self.assertEqual(c.read_reply(timeout=15)[0][3], b"all")

    def test_client_closing_while_blocked_leaves_the_node_healthy(self):
        t = self.new_topic(1)
        c = self.node.raw()
        self.block(c, "FETCH", t, 0, 0, "BLOCK", 0)
        c.close()
        self.r.execute_command("PRODUCE", t, "k", "v")
        self.assertNodeHealthy()


class GroupTest(NodeTestCase):
    def produce(self, t, n, partitions):
        for i in range(n):
            self.r.execute_command("PRODUCE", t, "k", "v%d" % i, "PARTITION", i % partitions)

    def drain(self, group, t, count=7):
        got = []
        for _ in range(1000):
            page = self.r.execute_command("GROUP", "FETCH", group, t, "COUNT", count)
            if not page:
                return got
            self.assertLessEqual(len(page), count)
            got.extend(page)
        self.fail("GROUP FETCH never ran dry")

    def test_group_fetch_hands_out_every_record_once(self):
        t = self.new_topic(3)
        self.produce(t, 30, 3)
        got = self.drain("g", t)
        keys = [(r[1], r[2]) for r in got]
        self.assertEqual(len(keys), 30)
        self.assertEqual(set(keys), {(i % 3, i // 3) for i in range(30)})
        for r in got:
            self.assertEqual(r[0], t.encode())
            self.assertEqual(r[5], b"v%d" % (r[2] * 3 + r[1]))

    def test_group_fetch_returns_records_of_a_partition_in_offset_order(self):
        t = self.new_topic(2)
        self.produce(t, 20, 2)
        got = self.drain("order", t, count=3)
        for p in (0, 1):
            offsets = [r[2] for r in got if r[1] == p]
            self.assertEqual(offsets, list(range(10)))

    def test_groups_are_independent(self):
        t = self.new_topic(2)
        self.produce(t, 10, 2)
        self.assertEqual(len(self.drain("a", t)), 10)
        self.assertEqual(len(self.drain("b", t)), 10)

    def test_group_fetch_on_drained_group_without_block_is_empty(self):
        t = self.new_topic(1)
        self.produce(t, 3, 1)
        self.drain("d", t)
        self.assertEqual(self.r.execute_command("GROUP", "FETCH", "d", t), [])

    def test_offsets_before_any_commit_show_minus_one_and_full_lag(self):
        t = self.new_topic(2)
        self.produce(t, 5, 2)
        self.assertEqual(self.r.execute_command("GROUP", "OFFSETS", "fresh", t),
                         [[0, -1, 3, 3], [1, -1, 2, 2]])

    def test_commit_shows_in_offsets_with_lag(self):
        t = self.new_topic(2)
        self.produce(t, 10, 2)
        self.assertEqual(self.r.execute_command("GROUP", "COMMIT", "c", t, 0, 2), b"OK")
        self.assertEqual(self.r.execute_command("GROUP", "OFFSETS", "c", t),
                         [[0, 2, 5, 3], [1, -1, 5, 5]])
        self.r.execute_command("GROUP", "COMMIT", "c", t, 1, 5)
        self.assertEqual(self.r.execute_command("GROUP", "OFFSETS", "c", t)[1], [1, 5, 5, 0])

    def test_commit_moves_a_new_groups_fetch_position(self):
        t = self.new_topic(1)
        self.produce(t, 10, 1)
        self.r.execute_command("GROUP", "COMMIT", "jump", t, 0, 6)
        got = self.drain("jump", t)
        self.assertEqual([r[2] for r in got], [6, 7, 8, 9])

    def test_group_list_shows_groups_with_commits(self):
        t = self.new_topic(1)
        self.produce(t, 2, 1)
        self.r.execute_command("GROUP", "COMMIT", "listed", t, 0, 1)
        self.drain("unlisted", t)
        pairs = [tuple(x) for x in self.r.execute_command("GROUP", "LIST")]
        self.assertIn((b"listed", t.encode()), pairs)
        self.assertNotIn((b"unlisted", t.encode()), pairs)
        self.assertEqual(len(pairs), len(set(pairs)))

    def test_group_commands_on_unknown_topic_are_notfound(self):
        for args in (("FETCH", "g", "nope"), ("COMMIT", "g", "nope", 0, 0), ("OFFSETS", "g", "nope")):
            with self.assertRaisesRegex(redis.ResponseError, "^NOTFOUND"):
                self.r.execute_command("GROUP", *args)

    def test_group_commit_of_bad_partition_is_an_error(self):
        t = self.new_topic(2)
        with self.assertRaisesRegex(redis.ResponseError, "partition must be 0 to 1"):
            self.r.execute_command("GROUP", "COMMIT", "g", t, 2, 0)

    def test_seek_to_a_timestamp_then_group_fetch_starts_there(self):
        t = self.new_topic(1)
        for i in range(10):
            self.r.execute_command("PRODUCE", t, "k", "v%d" % i, "TS", 1000 * (i + 1))
        self.drain("replay", t)
        self.assertEqual(self.r.execute_command("SEEK", "replay", t, "TIME", 4500), [[0, 4]])
        got = self.drain("replay", t)
        self.assertEqual([r[2] for r in got], [4, 5, 6, 7, 8, 9])
        self.assertEqual(got[0][3], 5000)
        self.assertEqual(self.r.execute_command("GROUP", "OFFSETS", "replay", t), [[0, 4, 10, 6]])

    def test_seek_to_an_exact_timestamp_includes_that_record(self):
        t = self.new_topic(1)
        for i in range(5):
            self.r.execute_command("PRODUCE", t, "k", "v%d" % i, "TS", 100 * (i + 1))
        self.assertEqual(self.r.execute_command("SEEK", "exact", t, "TIME", 300), [[0, 2]])
        self.assertEqual(self.drain("exact", t)[0][5], b"v2")

    def test_seek_past_the_last_timestamp_goes_to_the_end(self):
        t = self.new_topic(2)
        self.produce(t, 6, 2)  # wall-clock timestamps
        self.assertEqual(self.r.execute_command("SEEK", "late", t, "TIME", now_ms() + 3600000),
                         [[0, 3], [1, 3]])
        self.assertEqual(self.drain("late", t), [])

    def test_seek_over_several_partitions(self):
        t = self.new_topic(2)
        for i in range(10):
            self.r.execute_command("PRODUCE", t, "k", "v", "TS", 1000 + i, "PARTITION", i % 2)
        # partition 0 has ts 1000,1002,...; partition 1 has 1001,1003,...
        self.assertEqual(self.r.execute_command("SEEK", "multi", t, "TIME", 1005), [[0, 3], [1, 2]])


class GroupRestartTest(unittest.TestCase):
    def test_group_offsets_survive_a_restart(self):
        with Node() as node:
            r = node.client()
            r.execute_command("TOPIC", "CREATE", "orders", "PARTITIONS", 2)
            for i in range(10):
                r.execute_command("PRODUCE", "orders", "k", "v%d" % i, "PARTITION", i % 2)
            r.execute_command("GROUP", "COMMIT", "billing", "orders", 0, 3)
            r.execute_command("GROUP", "COMMIT", "billing", "orders", 1, 5)
            before = r.execute_command("GROUP", "OFFSETS", "billing", "orders")
            r.close()
            node.restart()
            r = node.client()
            self.assertEqual(r.execute_command("GROUP", "OFFSETS", "billing", "orders"), before)
            self.assertEqual(before, [[0, 3, 5, 2], [1, 5, 5, 0]])
            self.assertIn([b"billing", b"orders"], r.execute_command("GROUP", "LIST"))
            got = r.execute_command("GROUP", "FETCH", "billing", "orders", "COUNT", 100)
            self.assertEqual(sorted((x[1], x[2]) for x in got), [(0, 3), (0, 4)])
            r.close()

    def test_fetched_but_uncommitted_records_are_handed_out_again_after_restart(self):
        with Node() as node:
            r = node.client()
            r.execute_command("TOPIC", "CREATE", "jobs")
            for i in range(5):
                r.execute_command("PRODUCE", "jobs", "k", "v%d" % i)
            self.assertEqual(len(r.execute_command("GROUP", "FETCH", "w", "jobs")), 5)
            r.execute_command("GROUP", "COMMIT", "w", "jobs", 0, 2)
            r.close()
            node.restart()
            r = node.client()
            got = r.execute_command("GROUP", "FETCH", "w", "jobs")
            self.assertEqual([x[2] for x in got], [2, 3, 4])
            r.close()

    def test_seek_survives_a_restart(self):
        with Node() as node:
            r = node.client()
            r.execute_command("TOPIC", "CREATE", "s")
            for i in range(5):
                r.execute_command("PRODUCE", "s", "k", "v", "TS", 10 * (i + 1))
            r.execute_command("SEEK", "g", "s", "TIME", 30)
            r.close()
            node.restart()
            r = node.client()
            self.assertEqual([x[2] for x in r.execute_command("GROUP", "FETCH", "g", "s")], [2, 3, 4])
            r.close()


class TopicTest(NodeTestCase):
    def test_topic_create_list_describe(self):
        t = self.new_topic(3, "RETENTION", 60000)
        self.assertIn(t.encode(), self.r.execute_command("TOPIC", "LIST"))
        desc = self.r.execute_command("TOPIC", "DESCRIBE", t)
        fields = dict(zip(desc[0::2], desc[1::2]))
        self.assertEqual(fields[b"name"], t.encode())
        settings = dict(zip(fields[b"settings"][0::2], fields[b"settings"][1::2]))
        self.assertEqual(settings[b"partitions"], b"3")
        self.assertEqual(settings[b"retention.ms"], b"60000")
        self.assertEqual([p[0] for p in fields[b"partitions"]], [0, 1, 2])

    def test_describe_shows_end_offsets(self):
        t = self.new_topic(2)
        for i in range(3):
            self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 1)
        self.assertEqual(partition_ends(self.r, t), {0: 0, 1: 3})

    def test_topic_create_existing_is_busy(self):
        t = self.new_topic(1)
        with self.assertRaisesRegex(redis.ResponseError, "^BUSY"):
            self.r.execute_command("TOPIC", "CREATE", t)

    def test_topic_create_with_bad_option_is_an_error(self):
        with self.assertRaisesRegex(redis.ResponseError, "syntax error"):
            self.r.execute_command("TOPIC", "CREATE", "badopt", "COLOUR", "red")
        with self.assertRaises(redis.ResponseError):
            self.r.execute_command("TOPIC", "CREATE", "badfsync", "FSYNC", "sometimes")
        self.assertNotIn(b"badopt", self.r.execute_command("TOPIC", "LIST"))

    def test_topic_create_with_invalid_name_is_an_error(self):
        with self.assertRaisesRegex(redis.ResponseError, "topic name"):
            self.r.execute_command("TOPIC", "CREATE", "no/slash")
        with self.assertRaises(redis.ResponseError):
            self.r.execute_command("TOPIC", "CREATE", "..")

    def test_describe_unknown_topic_is_notfound(self):
        with self.assertRaisesRegex(redis.ResponseError, "^NOTFOUND"):
            self.r.execute_command("TOPIC", "DESCRIBE", "missing")

    def test_delete_unknown_topic_is_notfound(self):
        with self.assertRaisesRegex(redis.ResponseError, "^NOTFOUND"):
            self.r.execute_command("TOPIC", "DELETE", "missing")

    def test_fetch_unknown_topic_is_notfound(self):
        with self.assertRaisesRegex(redis.ResponseError, "^NOTFOUND"):
            self.r.execute_command("FETCH", "missing", 0, 0)

    def test_produce_to_missing_topic_is_notfound_without_auto_create(self):
        with self.assertRaisesRegex(redis.ResponseError, "^NOTFOUND"):
            self.r.execute_command("PRODUCE", "missing", "k", "v")
        with self.assertRaisesRegex(redis.ResponseError, "^NOTFOUND"):
            self.r.execute_command("PRODUCEBATCH", "missing", "k", "v")
        self.assertNotIn(b"missing", self.r.execute_command("TOPIC", "LIST"))

    def test_delete_removes_the_topic_and_its_group_offsets(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v")
        self.r.execute_command("GROUP", "COMMIT", "gone", t, 0, 1)
        self.assertEqual(self.r.execute_command("TOPIC", "DELETE", t), b"OK")
        self.assertNotIn(t.encode(), self.r.execute_command("TOPIC", "LIST"))
        self.assertNotIn([b"gone", t.encode()], self.r.execute_command("GROUP", "LIST"))
        # recreated empty, no stale offsets
        self.r.execute_command("TOPIC", "CREATE", t)
        self.assertEqual(self.r.execute_command("GROUP", "OFFSETS", "gone", t), [[0, -1, 0, 0]])

    def test_delete_answers_a_produce_still_waiting_for_its_fsync(self):
        # an interval topic holds PRODUCE's reply until its fsync (1 s here);
        # deleting the topic meanwhile must still answer it (ack or error),
        # not leave the connection waiting for a durability that never comes
        t = self.new_topic(1, "FSYNC", "interval", "SET", "fsync.interval.ms", "1000")

        def produces():
            body = self.node.http_get("/metrics")[1].decode()
            return int(body.split('sluice_commands_total{command="PRODUCE"} ')[1].split()[0])
        before = produces()
        c = self.raw()
        c.send(encode("PRODUCE", t, "k", "v") + encode("ECHO", "after"))
        wait_until(lambda: produces() == before + 1, timeout=10, what="the PRODUCE to run")
        self.assertEqual(self.r.execute_command("TOPIC", "DELETE", t), b"OK")
        reply, after = c.read_replies(2, timeout=5)
        self.assertTrue(reply == [0, 0] or isinstance(reply, Error), reply)
        self.assertEqual(after, b"after")

    def test_delete_pipelined_right_after_produce_answers_both(self):
        for policy in ("never", "interval", "always"):
            with self.subTest(fsync=policy):
                t = self.new_topic(1, "FSYNC", policy)
                c = self.raw()
                c.send(encode("PRODUCE", t, "k", "v") + encode("TOPIC", "DELETE", t)
                       + encode("PRODUCE", t, "k", "v2") + encode("PING"))
                produced, deleted, again, pong = c.read_replies(4, timeout=10)
                self.assertTrue(produced == [0, 0] or isinstance(produced, Error), produced)
                self.assertEqual(deleted, "OK")
                self.assertTrue(isinstance(again, Error) and again.startswith("NOTFOUND"), again)
                self.assertEqual(pong, "PONG")
        self.assertNodeHealthy()

    def test_fetch_of_bad_partition_is_an_error(self):
        t = self.new_topic(2)
        with self.assertRaisesRegex(redis.ResponseError, "partition must be 0 to 1"):
            self.r.execute_command("FETCH", t, 2, 0)


class AutoCreateTest(NodeTestCase):
    node_args = ("--auto-create-topics",)

    def test_produce_to_missing_topic_creates_it(self):
        self.assertEqual(self.r.execute_command("PRODUCE", "autotopic", "k", "v"), [0, 0])
        self.assertIn(b"autotopic", self.r.execute_command("TOPIC", "LIST"))
        self.assertEqual(self.r.execute_command("FETCH", "autotopic", 0, 0)[0][3], b"v")

    def test_producebatch_to_missing_topic_creates_it(self):
        acks = self.r.execute_command("PRODUCEBATCH", "autobatch", "a", "1", "b", "2")
        self.assertEqual(len(acks), 2)
        self.assertIn(b"autobatch", self.r.execute_command("TOPIC", "LIST"))

    def test_auto_create_rejects_invalid_names(self):
        with self.assertRaisesRegex(redis.ResponseError, "topic name"):
            self.r.execute_command("PRODUCE", "bad name", "k", "v")


class InfoTest(NodeTestCase):
    def test_info_has_version_uptime_topics_connections_memory(self):
        self.new_topic(1)
        self.new_topic(1)
        info = self.node.info()
        self.assertRegex(info["sluice_version"], r"^\d+\.\d+\.\d+")
        self.assertGreaterEqual(int(info["uptime_in_seconds"]), 0)
        self.assertEqual(int(info["topics"]), 2)
        self.assertGreaterEqual(int(info["connected_clients"]), 1)
        self.assertGreater(int(info["used_memory_rss"]), 0)
        self.assertEqual(int(info["tcp_port"]), self.node.port)
        self.assertEqual(int(info["http_port"]), self.node.http_port)

    def test_info_counts_connections(self):
        base = int(self.node.info()["connected_clients"])
        extra = [self.raw() for _ in range(5)]
        for c in extra:
            self.assertEqual(c.cmd("PING"), "PONG")
        # INFO's own connection is counted in both readings; poll, since the
        # node learns of closed connections asynchronously
        wait_until(lambda: int(self.node.info()["connected_clients"]) == base + 5, timeout=10,
                   what="connected_clients to be %d" % (base + 5))


class RedisCliTest(NodeTestCase):
    def cli(self, *args, stdin=None):
        return subprocess.run(["redis-cli", "-p", str(self.node.port)] + list(args), input=stdin,
                              capture_output=True, timeout=30)

    def test_redis_cli_reads_commands_from_stdin(self):
        t = self.new_topic(1)
        out = self.cli(stdin=b"PING\nTOPIC LIST\nPRODUCE %s k hello\nFETCH %s 0 0\n"
                       % (t.encode(), t.encode()))
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.decode().splitlines()
        self.assertEqual(lines[0], "PONG")
        self.assertIn(t, lines)
        self.assertIn("hello", lines)
        self.assertNotIn("ERR", out.stdout.decode())

    def test_redis_cli_command_docs_does_not_error(self):
        out = self.cli("COMMAND", "DOCS")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn(b"ERR", out.stdout + out.stderr)

    def test_redis_cli_one_shot_command(self):
        t = self.new_topic(1)
        out = self.cli("PRODUCE", t, "k", "v")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.decode().split(), ["0", "0"])

    def test_redis_cli_shows_errors(self):
        out = self.cli("FETCH", "nope", "0", "0")
        self.assertIn(b"NOTFOUND", out.stdout + out.stderr)


class ErrorReplyTest(NodeTestCase):
    """Every error reply starts with ERR or one of the documented codes
    (DESIGN §10: `-ERR <what was wrong>` or NOAUTH/WRONGTYPE/NOTFOUND/BUSY),
    never with some other upper-case word that clients would take for a
    code."""

    def check(self, *cmd):
        c = self.raw()
        reply = c.cmd(*cmd)
        self.assertErrorCode(reply, "ERR", "NOTFOUND", "BUSY", "NOAUTH", "WRONGTYPE", "WRONGPASS",
                             "NOPROTO")
        self.assertEqual(c.cmd("PING"), "PONG")

    def test_producebatch_odd_arguments_error_starts_with_err(self):
        t = self.new_topic(1)
        self.check("PRODUCEBATCH", t, "k1", "v1", "k2")

    def test_group_commit_arity_error_starts_with_err(self):
        self.check("GROUP", "COMMIT", "g")

    def test_group_offsets_arity_error_starts_with_err(self):
        self.check("GROUP", "OFFSETS", "g")

    def test_group_fetch_arity_error_starts_with_err(self):
        self.check("GROUP", "FETCH", "g")

    def test_auth_without_password_configured_error_starts_with_err(self):
        self.check("AUTH", "whatever")

    def test_seek_bad_time_error_starts_with_err(self):
        t = self.new_topic(1)
        self.check("SEEK", "g", t, "TIME", "yesterday")

    def test_config_set_error_starts_with_err(self):
        self.check("CONFIG", "SET", "maxmemory", "1")

    def test_client_bad_subcommand_error_starts_with_err(self):
        self.check("CLIENT", "KILL")


if __name__ == "__main__":
    unittest.main()
