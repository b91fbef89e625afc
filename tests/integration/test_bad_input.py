"""
test_bad_input.py - malformed and hostile requests over raw sockets
(DESIGN §11): every one gets a sensible error (framing errors: `-ERR
Protocol error...` then the connection closes), and a healthy connection
opened before the attack, the node process, and the attacking connection
itself (for non-framing errors) keep working.
"""
import random
import socket
import unittest

from node import (Error, NodeTestCase, encode, fetch_all, parse_replies, wait_until)

MAX_VALUE = 1024


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class BadInputTest(NodeTestCase):
    node_args = ("--max-value-bytes", str(MAX_VALUE))

    def setUp(self):
        super().setUp()
        self.healthy = self.raw()
        self.assertEqual(self.healthy.cmd("PING"), "PONG")

    def tearDown(self):
        # after every attack: the node lives and the earlier connection works
        self.assertNodeHealthy(self.healthy)

    # ---- helpers ---------------------------------------------------------------

    def framing_error(self, payload, *fragments):
        """payload must get exactly one `-ERR Protocol error` reply naming
        the fragments, and the connection must then be closed."""
        c = self.raw()
        c.send(payload)
        replies = parse_replies(c.read_until_closed())
        self.assertEqual(len(replies), 1, "payload %r got %r" % (payload[:60], replies))
        err = replies[0]
        self.assertIsInstance(err, Error)
        self.assertTrue(err.startswith("ERR Protocol error"), err)
        for f in fragments:
            self.assertIn(f, err)
        return err

    def command_error(self, conn, *cmd):
        """cmd must get an ERR error and conn must keep working."""
        reply = conn.cmd(*cmd)
        self.assertIsInstance(reply, Error, "%r got %r" % (cmd[:6], reply))
        self.assertTrue(reply.startswith("ERR "), reply)
        self.assertEqual(conn.cmd("PING"), "PONG")
        return reply

    # ---- random and truncated bytes ------------------------------------------

    def test_random_bytes_get_only_errors_and_never_crash_the_node(self):
        rng = random.Random(20240607)
        for i in range(200):
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
            if i % 2:
                payload = b"*" + payload  # exercise the multibulk path too
            with self.node.raw() as c:
                c.send(payload)
                c.sock.shutdown(socket.SHUT_WR)
                replies = parse_replies(c.read_until_closed())
            for r in replies:
                self.assertIsInstance(r, Error, "payload %d %r got %r" % (i, payload[:40], r))
            self.assertTrue(self.node.alive(), "died on payload %d %r" % (i, payload))

    def test_mutated_valid_frames_get_only_errors_or_replies(self):
        rng = random.Random(7)
        t = self.new_topic(1)
        base = encode("PRODUCE", t, "key", "value", "HEADER", "h", "v") + encode("PING")
        for i in range(300):
            payload = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                payload[rng.randrange(len(payload))] = rng.randrange(256)
            with self.node.raw() as c:
                c.send(bytes(payload))
                c.sock.shutdown(socket.SHUT_WR)
                parse_replies(c.read_until_closed())  # well-formed, whatever it says
            self.assertTrue(self.node.alive(), "died on %r" % bytes(payload))

    def test_truncated_frames_then_close_are_never_executed(self):
        t = self.new_topic(1)
        stream = encode("PRODUCE", t, "key", "value", "HEADER", "h", "v")
        for k in range(1, len(stream)):
            with self.node.raw() as c:
                c.send(stream[:k])
        self.assertEqual(fetch_all(self.r, t, 0), [], "a truncated PRODUCE was executed")

    def test_partial_frame_left_open_does_not_stall_others(self):
        t = self.new_topic(1)
        stream = encode("PRODUCE", t, "key", "value")
        stalled = [self.raw() for _ in range(5)]
        for i, c in enumerate(stalled):
            c.send(stream[: 5 + i * 7])
        self.assertNodeHealthy(self.healthy)
        for i, c in enumerate(stalled):  # completing them works
            c.send(stream[5 + i * 7:])
            self.assertEqual(c.read_reply(), [0, i])

    def test_client_closing_with_produce_replies_pending_leaves_node_healthy(self):
        for policy in ("never", "interval", "always"):
            with self.subTest(fsync=policy):
                t = self.new_topic(2, "FSYNC", policy)
                c = self.node.raw()
                c.send(b"".join(encode("PRODUCE", t, "k%d" % i, "v%d" % i) for i in range(2000)))
                c.close()  # without reading a single reply
                self.assertNodeHealthy(self.healthy)
                for p in range(2):
                    recs = fetch_all(self.r, t, p)
                    self.assertEqual([x[0] for x in recs], list(range(len(recs))))

    # ---- negative, huge and non-numeric lengths --------------------------------

    def test_negative_multibulk_count_is_a_protocol_error(self):
        self.framing_error(b"*-5\r\n", "invalid multibulk length")

    def test_negative_bulk_length_is_a_protocol_error(self):
        self.framing_error(b"*1\r\n$-7\r\n", "invalid bulk length")

    def test_null_bulk_in_a_request_is_a_protocol_error(self):
        self.framing_error(b"*2\r\n$4\r\nECHO\r\n$-1\r\n", "invalid bulk length")

    def test_null_and_empty_multibulk_are_ignored(self):
        c = self.raw()
        c.send(b"*-1\r\n*0\r\n\r\n*1\r\n$4\r\nPING\r\n")
        self.assertEqual(c.read_reply(), "PONG")
        self.assertEqual(c.cmd("ECHO", "still here"), b"still here")

    def test_huge_bulk_length_is_a_protocol_error(self):
        self.framing_error(b"*1\r\n$99999999999\r\n", "bulk length", "exceeds")

    def test_huge_multibulk_count_is_a_protocol_error(self):
        self.framing_error(b"*99999999999\r\n", "too many arguments")

    def test_billion_argument_count_then_nothing_is_refused_at_once(self):
        self.framing_error(b"*1000000000\r\n", "too many arguments")

    def test_overflowing_lengths_are_protocol_errors(self):
        self.framing_error(b"*99999999999999999999\r\n", "invalid multibulk length")
        self.framing_error(b"*1\r\n$99999999999999999999\r\n", "invalid bulk length")

    def test_declared_counts_and_lengths_do_not_allocate_up_front(self):
        pid = self.node.proc.pid
        before = rss_bytes(pid)
        conns = [self.raw() for _ in range(20)]
        for i, c in enumerate(conns):
            # an ECHO first, in the same write: its reply shows the node has
            # read (and parsed as far as it can) the incomplete request after it
            if i % 2:
                c.send(encode("ECHO", "read") + b"*1000000\r\n$4\r\nECHO\r\n")  # 1M args
            else:
                c.send(encode("ECHO", "read") + b"*2\r\n$4\r\nECHO\r\n$536870912\r\nabc")
            self.assertEqual(c.read_reply(), b"read")
        grown = rss_bytes(pid) - before
        self.assertLess(grown, 64 << 20, "RSS grew by %d bytes for 20 tiny requests" % grown)
        for c in conns:
            self.assertFalse(c.pending(), "incomplete request answered")

    def test_non_numeric_multibulk_counts_are_protocol_errors(self):
        for payload in (b"*abc\r\n", b"*+1\r\n", b"*01\r\n", b"* 1\r\n", b"*1.5\r\n", b"*-0\r\n",
                        b"*1\n", b"*\r\n"):
            with self.subTest(payload=payload):
                self.framing_error(payload, "invalid multibulk length")

    def test_non_numeric_bulk_lengths_are_protocol_errors(self):
        for payload in (b"*1\r\n$abc\r\n", b"*1\r\n$+4\r\nPING\r\n", b"*1\r\n$04\r\nPING\r\n",
                        b"*1\r\n$\r\n", b"*1\r\n$4x\r\n"):
            with self.subTest(payload=payload):
                self.framing_error(payload, "invalid bulk length")

    def test_missing_dollar_is_a_protocol_error(self):
        self.framing_error(b"*1\r\nPING\r\n", "expected '$', got 'P'")
        self.framing_error(b"*1\r\n\x01PING\r\n", "expected '$', got '\\x01'")

    def test_bulk_without_crlf_is_a_protocol_error(self):
        self.framing_error(b"*1\r\n$4\r\nPINGXX", "expected CRLF after bulk data")
        self.framing_error(b"*1\r\n$4\r\nPING\n\n", "expected CRLF after bulk data")

    def test_unbalanced_inline_quotes_are_a_protocol_error(self):
        self.framing_error(b'ECHO "abc\r\n', "unbalanced quotes")

    def test_too_big_inline_request_is_a_protocol_error(self):
        self.framing_error(b"ECHO " + b"a" * 70000, "too big inline request")

    def test_protocol_error_after_good_commands_keeps_their_replies(self):
        c = self.raw()
        c.send(encode("ECHO", "one") + encode("ECHO", "two") + b"*-5\r\n")
        replies = parse_replies(c.read_until_closed())
        self.assertEqual(replies[:2], [b"one", b"two"])
        self.assertTrue(replies[2].startswith("ERR Protocol error"))

    def test_protocol_errors_are_counted_in_metrics(self):
        def count():
            body = self.node.http_get("/metrics")[1].decode()
            return int(body.split("\nsluice_protocol_errors_total ")[1].split()[0])
        before = count()
        self.framing_error(b"*-5\r\n")
        self.assertEqual(count(), before + 1)

    # ---- many arguments ----------------------------------------------------------

    def test_producebatch_with_4999_pairs_works(self):
        t = self.new_topic(4)
        args = []
        for i in range(4999):
            args += [b"k%d" % i, b"v%d" % i]
        c = self.raw()
        acks = c.cmd("PRODUCEBATCH", t, *args)  # 10,000 arguments
        self.assertEqual(len(acks), 4999)
        stored = sum(len(fetch_all(self.r, t, p)) for p in range(4))
        self.assertEqual(stored, 4999)
        self.assertEqual(c.cmd("PING"), "PONG")

    def test_unknown_command_with_10000_arguments_is_an_error(self):
        c = self.raw()
        err = self.command_error(c, "NOSUCHCOMMAND", *["arg%d" % i for i in range(9999)])
        self.assertIn("unknown command", err)

    def test_produce_with_too_many_headers_is_an_error(self):
        t = self.new_topic(1)
        args = []
        for i in range(100):
            args += ["HEADER", "h%d" % i, "v"]
        c = self.raw()
        self.assertIn("syntax error", self.command_error(c, "PRODUCE", t, "k", "v", *args))
        self.assertEqual(fetch_all(self.r, t, 0), [])

    def test_arguments_over_max_args_are_refused(self):
        # the default --max-args is 1048576; 1048577 declared is refused at once
        self.framing_error(b"*1048577\r\n", "too many arguments (max 1048576)")

    # ---- oversize values -----------------------------------------------------------

    def test_oversize_value_is_refused_naming_the_limit(self):
        t = self.new_topic(1)
        c = self.raw()
        err = self.command_error(c, "PRODUCE", t, "k", b"x" * (MAX_VALUE + 1))
        self.assertIn(str(MAX_VALUE), err)
        self.assertIn("--max-value-bytes", err)
        self.assertEqual(c.cmd("PRODUCE", t, "k", "small"), [0, 0])

    def test_value_at_the_limit_is_accepted(self):
        t = self.new_topic(1)
        c = self.raw()
        self.assertEqual(c.cmd("PRODUCE", t, "k", b"x" * MAX_VALUE), [0, 0])

    def test_oversize_key_is_refused(self):
        t = self.new_topic(1)
        c = self.raw()
        err = self.command_error(c, "PRODUCE", t, b"k" * (MAX_VALUE + 1), "v")
        self.assertIn(str(MAX_VALUE), err)

    def test_producebatch_with_one_oversize_value_stores_nothing(self):
        t = self.new_topic(1)
        c = self.raw()
        self.command_error(c, "PRODUCEBATCH", t, "a", "1", "b", b"x" * 5000, "c", "3")
        self.assertEqual(fetch_all(self.r, t, 0), [])

    def test_very_large_value_is_refused_and_connection_survives(self):
        t = self.new_topic(1)
        c = self.raw()
        self.command_error(c, "PRODUCE", t, "k", b"x" * (4 << 20))

    # ---- arity and numbers -------------------------------------------------------------

    def test_wrong_arity_is_an_error(self):
        t = self.new_topic(1)
        c = self.raw()
        for cmd in (("PRODUCE", t, "k"), ("FETCH", t, 0), ("SEEK", "g", t, "TIME"),
                    ("QUIT", "now"), ("ECHO",), ("TOPIC",), ("GROUP",),
                    ("PRODUCEBATCH", t, "k"), ("ECHO", "a", "b")):
            with self.subTest(cmd=cmd):
                err = self.command_error(c, *cmd)
                self.assertIn("wrong number of arguments", err)

    def test_ping_with_two_arguments_is_a_wrong_arity_error(self):
        c = self.raw()
        err = self.command_error(c, "PING", "a", "b")
        self.assertIn("wrong number of arguments", err)

    def test_unknown_command_is_an_error_naming_it(self):
        c = self.raw()
        self.assertIn("'FLUSHALL'", self.command_error(c, "FLUSHALL"))
        self.assertIn("unknown command", self.command_error(c, "GET\r\nX", "k"))

    def test_fetch_with_bad_numbers_is_an_error(self):
        t = self.new_topic(2)
        self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 0)
        c = self.raw()
        cases = [
            (t, "abc", 0), (t, -1, 0), (t, "1.5", 0), (t, " 0", 0), (t, "0x1", 0), (t, 2, 0),
            (t, 99999999999, 0), (t, "", 0),
            (t, 0, -1), (t, 0, "abc"), (t, 0, "99999999999999999999"), (t, 0, "1e3"), (t, 0, ""),
            (t, 0, 0, "COUNT", 0), (t, 0, 0, "COUNT", -1), (t, 0, 0, "COUNT", "abc"),
            (t, 0, 0, "COUNT", 100001), (t, 0, 0, "COUNT"),
            (t, 0, 0, "BLOCK", -1), (t, 0, 0, "BLOCK", "abc"), (t, 0, 0, "BLOCK", 99999999999),
            (t, 0, 0, "BLOCK"), (t, 0, 0, "LIMIT", 5),
        ]
        for args in cases:
            with self.subTest(args=args):
                self.command_error(c, "FETCH", *args)

    def test_produce_with_bad_options_is_an_error(self):
        t = self.new_topic(2)
        c = self.raw()
        for opts in (("TS", "abc"), ("TS", -5), ("TS",), ("PARTITION", 2), ("PARTITION", "x"),
                     ("HEADER", "only-name"), ("BOGUS", "1")):
            with self.subTest(opts=opts):
                self.command_error(c, "PRODUCE", t, "k", "v", *opts)
        self.assertEqual(fetch_all(self.r, t, 0) + fetch_all(self.r, t, 1), [])

    def test_group_and_seek_with_bad_numbers_are_errors(self):
        t = self.new_topic(1)
        c = self.raw()
        for cmd in (("GROUP", "COMMIT", "g", t, "x", 0), ("GROUP", "COMMIT", "g", t, 0, -1),
                    ("GROUP", "FETCH", "g", t, "COUNT", 0), ("GROUP", "FETCH", "g", t, "BLOCK", -2),
                    ("SEEK", "g", t, "TIME", -1), ("SEEK", "g", t, "TIME", "noon"),
                    ("SEEK", "g", t, "WHEN", 5), ("GROUP", "FETCH", "", t)):
            with self.subTest(cmd=cmd):
                reply = c.cmd(*cmd)
                self.assertIsInstance(reply, Error, "%r got %r" % (cmd, reply))
                self.assertEqual(c.cmd("PING"), "PONG")

    def test_topic_create_with_bad_numbers_is_an_error(self):
        c = self.raw()
        for opts in (("PARTITIONS", 0), ("PARTITIONS", "many"), ("PARTITIONS", -1),
                     ("RETENTION", "soon"), ("PARTITIONS",)):
            with self.subTest(opts=opts):
                self.command_error(c, "TOPIC", "CREATE", "badnum", *opts)
        self.assertNotIn(b"badnum", self.r.execute_command("TOPIC", "LIST"))

    def test_nul_bytes_in_names_are_refused(self):
        c = self.raw()
        self.assertIsInstance(c.cmd("TOPIC", "CREATE", b"a\x00b"), Error)
        self.assertIsInstance(c.cmd("FETCH", b"a\x00b", 0, 0), Error)
        self.assertEqual(c.cmd("PING"), "PONG")


class ConnectionLimitTest(NodeTestCase):
    node_args = ("--max-clients", "5")

    def test_connections_over_max_clients_get_an_error_and_are_closed(self):
        conns = [self.raw() for _ in range(4)]  # + self.r's once it connects
        for c in conns:
            self.assertEqual(c.cmd("PING"), "PONG")
        self.assertTrue(self.r.ping())
        extra = self.node.raw()
        replies = parse_replies(extra.read_until_closed())
        extra.close()
        self.assertEqual(len(replies), 1)
        self.assertIn("max number of clients", replies[0])
        conns[0].close()
        wait_until(lambda: self.try_ping(), timeout=10, what="a free connection slot")

    def try_ping(self):
        c = self.node.raw()
        try:
            return c.cmd("PING") == "PONG"
        except Exception:
            return False
        finally:
            c.close()


if __name__ == "__main__":
    unittest.main()
