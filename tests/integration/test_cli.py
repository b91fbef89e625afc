#!/usr/bin/python3
"""
test_cli.py - the client side of the sluice CLI (topics, produce, consume,
groups) against a real node.

Every test starts its own `sluice serve` on a fresh temporary directory and
a free loopback port (--port 0), learns the port from the node's ready line
on stderr (a bounded wait, no sleeps), runs the CLI as a subprocess and
checks its output and exit status against what the node itself reports
through the redis module. tearDown stops the node with SIGTERM (bounded
wait) and removes the directory.

The binary is $SLUICE_BIN (default /work/main/build/runtime/sluice). Run
with /usr/bin/python3 (it has the redis module):
    /usr/bin/python3 -m unittest -v tests/integration/test_cli.py
"""
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import unittest

import redis

SLUICE = os.environ.get("SLUICE_BIN", "/work/main/build/runtime/sluice")
READY = re.compile(r"serve: ready resp=127\.0\.0\.1:(\d+) ")
START_TIMEOUT = 20
STOP_TIMEOUT = 20
RUN_TIMEOUT = 60


class Node:
    """One `sluice serve` process on a temporary data directory."""

    def __init__(self, *extra):
        self.data = tempfile.mkdtemp(prefix="sluice-cli-")
        self.log = []
        self.port = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [SLUICE, "serve", "--data", self.data, "--port", "0", "--http-port", "-1", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop()
            raise AssertionError("node not ready within %ds:\n%s"
                                 % (START_TIMEOUT, "\n".join(self.log)))

    def _read_log(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            m = READY.search(line)
            if m and not self._ready.is_set():
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()  # exited: stop waiting (port stays None)

    def stop(self):
        """SIGTERM, then a bounded wait (SIGKILL if it does not exit)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT)
                    raise AssertionError("node ignored SIGTERM")
            return self.proc.returncode
        finally:
            self._reader.join(STOP_TIMEOUT)
            self.proc.stderr.close()
            shutil.rmtree(self.data, ignore_errors=True)


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliTestCase(unittest.TestCase):
    node_args = ()

    def setUp(self):
        self.node = Node(*self.node_args)
        self.addCleanup(self._stop_node)
        self.r = redis.Redis(host="127.0.0.1", port=self.node.port, socket_timeout=15)
        self.addCleanup(self.r.close)

    def _stop_node(self):
        self.assertEqual(self.node.stop(), 0, "node exit status after SIGTERM")

    def sluice(self, *args, stdin=b"", port=None):
        """Runs `sluice ARGS --port PORT`; returns the CompletedProcess with
        stdout and stderr decoded."""
        port = self.node.port if port is None else port
        res = subprocess.run([SLUICE, *args, "--port", str(port)], input=stdin,
                             capture_output=True, timeout=RUN_TIMEOUT)
        res.stdout = res.stdout.decode("utf-8")
        res.stderr = res.stderr.decode("utf-8")
        return res

    def ok(self, *args, **kw):
        res = self.sluice(*args, **kw)
        self.assertEqual(res.returncode, 0, "sluice %s: %s" % (" ".join(args), res.stderr))
        return res

    def create(self, topic, partitions):
        self.ok("topics", "create", topic, "--partitions", str(partitions))

    def produce(self, topic, values, *args):
        lines = "".join(json.dumps(v) + "\n" for v in values).encode()
        return self.ok("produce", topic, *args, stdin=lines)

    def fetch(self, topic, partition):
        """[(offset, key, value), ...] of one partition, from the node."""
        recs = self.r.execute_command("FETCH", topic, partition, 0, "COUNT", 100000)
        return [(rec[0], rec[2], rec[3]) for rec in recs]

    def assert_one_line(self, text):
        self.assertEqual(text.count("\n"), 1, "expected one line: %r" % text)


class TopicsTest(CliTestCase):
    def test_create_list_describe_delete(self):
        res = self.ok("topics", "create", "orders", "--partitions", "3", "--compression",
                      "zstd", "--fsync", "always", "--retention", "60000",
                      "--set", "segment.bytes=1048576")
        self.assertEqual(res.stdout, "created topic orders\n")
        self.ok("topics", "create", "audit", "--compact")
        self.assertEqual(sorted(self.ok("topics", "list").stdout.split()), ["audit", "orders"])
        self.produce("orders", [{"n": 1}], "--partition", "2")

        out = self.ok("topics", "describe", "orders").stdout
        settings = dict(re.findall(r"^  (\S+) +(\S+)$", out, re.M))
        self.assertEqual(settings["partitions"], "3")
        self.assertEqual(settings["compression"], "zstd")
        self.assertEqual(settings["fsync"], "always")
        self.assertEqual(settings["retention.ms"], "60000")
        self.assertEqual(settings["segment.bytes"], "1048576")
        rows = re.findall(r"^ +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)$", out, re.M)
        self.assertEqual([(p, start, end) for p, start, end, _, _ in rows],
                         [("0", "0", "0"), ("1", "0", "0"), ("2", "0", "1")])
        self.assertIn("cleanup.policy         compact",
                      self.ok("topics", "describe", "audit").stdout)

        self.assertEqual(self.ok("topics", "delete", "orders").stdout, "deleted topic orders\n")
        self.assertEqual(self.ok("topics", "list").stdout, "audit\n")

    def test_server_errors_exit_1_with_the_servers_text(self):
        self.create("t", 1)
        res = self.sluice("topics", "create", "t")
        self.assertEqual(res.returncode, 1)
        self.assertEqual(res.stderr, "sluice: topics create: BUSY topic t already exists\n")
        res = self.sluice("topics", "describe", "missing")
        self.assertEqual(res.returncode, 1)
        self.assertIn("NOTFOUND", res.stderr)
        self.assert_one_line(res.stderr)


class ProduceTest(CliTestCase):
    def test_key_field_puts_records_where_the_node_puts_their_keys(self):
        self.create("t", 4)
        self.create("ref", 4)
        records = [{"id": "user-%d" % i, "n": i} for i in range(40)]
        records += [{"n": 40, "id": 12345}, {"id": "caf\u00e9 \"q\"", "nested": {"id": "x"}},
                    {"nested": {"id": "inner"}, "id": "outer"}]
        res = self.produce("t", records, "--key-field", "id", "--batch", "7")
        self.assertRegex(res.stderr, r"^produced 43 records to t in [0-9.]+ s \(\d+ records/s\)\n$")

        landed = {}
        for p in range(4):
            for offset, key, value in self.fetch("t", p):
                landed[key] = (p, value)
        self.assertEqual(len(landed), len(records))
        for rec in records:
            key = str(rec["id"]).encode()
            where = self.r.execute_command("PRODUCE", "ref", key, "probe")[0]
            self.assertEqual(landed[key], (where, json.dumps(rec).encode()), key)

    def test_values_are_sent_verbatim_and_blank_lines_skipped(self):
        self.create("t", 1)
        lines = [b'{"a" : 1,  "b":[true, null]}', b"", b"   ", b'"just a string"',
                 b'  42  ', b'{"u":"\\u00e9\xc3\xa9"}']
        self.ok("produce", "t", stdin=b"\n".join(lines) + b"\r\n")
        self.assertEqual([v for _, _, v in self.fetch("t", 0)],
                         [lines[0], lines[3], lines[4], lines[5]])

    def test_invalid_json_names_the_line_and_keeps_what_came_before(self):
        self.create("t", 2)
        stdin = b'{"id":"a"}\n{"id":"b"}\n{"id": oops}\n{"id":"c"}\n'
        res = self.sluice("produce", "t", "--key-field", "id", stdin=stdin)
        self.assertEqual(res.returncode, 1)
        self.assert_one_line(res.stderr)
        self.assertIn("line 3", res.stderr)
        self.assertIn("producing 2 records", res.stderr)
        keys = sorted(k for p in range(2) for _, k, _ in self.fetch("t", p))
        self.assertEqual(keys, [b"a", b"b"])

    def test_missing_key_field_names_the_line(self):
        self.create("t", 1)
        res = self.sluice("produce", "t", "--key-field", "id",
                          stdin=b'{"id":1}\n{"name":"x"}\n')
        self.assertEqual(res.returncode, 1)
        self.assertIn("line 2: no top-level field 'id'", res.stderr)
        self.assertEqual(len(self.fetch("t", 0)), 1)

    def test_partition_option_pipelines_into_one_partition_in_order(self):
        self.create("t", 3)
        self.produce("t", [{"i": i} for i in range(10)], "--partition", "1", "--batch", "3")
        self.assertEqual(self.fetch("t", 0) + self.fetch("t", 2), [])
        self.assertEqual([(o, v) for o, _, v in self.fetch("t", 1)],
                         [(i, json.dumps({"i": i}).encode()) for i in range(10)])

    def test_missing_topic_is_a_failed_operation(self):
        res = self.sluice("produce", "nope", stdin=b"{}\n")
        self.assertEqual(res.returncode, 1)
        self.assertIn("NOTFOUND", res.stderr)
        self.assert_one_line(res.stderr)


class ConsumeTest(CliTestCase):
    def test_from_beginning_with_count(self):
        self.create("t", 1)
        self.produce("t", [{"i": i} for i in range(10)])
        out = self.ok("consume", "t", "--from-beginning", "-n", "4").stdout
        self.assertEqual(out.splitlines(), [json.dumps({"i": i}) for i in range(4)])

    def test_default_starts_at_the_end(self):
        self.create("t", 2)
        self.produce("t", [{"i": i} for i in range(5)])
        self.assertEqual(self.ok("consume", "t").stdout, "")

    def test_print_key_and_verbose(self):
        self.create("t", 1)
        self.produce("t", [{"k": "a\tb", "v": 1}], "--key-field", "k")
        self.produce("t", [{"v": 2}])
        keyed = self.ok("consume", "t", "--from-beginning", "--print-key").stdout
        self.assertEqual(keyed, 'a\\tb\t{"k": "a\\tb", "v": 1}\n(null)\t{"v": 2}\n')
        verbose = self.ok("consume", "t", "--offset", "1", "--verbose").stdout
        timestamp = self.r.execute_command("FETCH", "t", 0, 1)[0][1]
        self.assertEqual(verbose, '0\t1\t%d\t(null)\t{"v": 2}\n' % timestamp)

    def test_partition_and_offset_without_group(self):
        self.create("t", 2)
        self.produce("t", [{"i": i} for i in range(4)], "--partition", "1")
        self.produce("t", [{"i": 9}], "--partition", "0")
        out = self.ok("consume", "t", "--partition", "1", "--offset", "2").stdout
        self.assertEqual(out.splitlines(), [json.dumps({"i": i}) for i in (2, 3)])

    def test_group_commits_so_the_next_run_gets_only_new_records(self):
        self.create("t", 3)
        self.produce("t", [{"i": i} for i in range(6)], "--batch", "1")
        first = self.ok("consume", "t", "--group", "g").stdout.splitlines()
        self.assertEqual(sorted(first), sorted(json.dumps({"i": i}) for i in range(6)))
        self.produce("t", [{"i": i} for i in range(6, 9)], "--batch", "1")
        second = self.ok("consume", "t", "--group", "g").stdout.splitlines()
        self.assertEqual(sorted(second), sorted(json.dumps({"i": i}) for i in range(6, 9)))
        self.assertEqual(self.ok("consume", "t", "--group", "g").stdout, "")
        offsets = self.r.execute_command("GROUP", "OFFSETS", "g", "t")
        self.assertEqual([(p, committed) for p, committed, end, lag in offsets],
                         [(p, end) for p, _, end, _ in offsets])

    def test_group_with_count_commits_only_what_it_printed(self):
        self.create("t", 1)
        self.produce("t", [{"i": i} for i in range(5)])
        self.assertEqual(len(self.ok("consume", "t", "--group", "g", "-n", "2").stdout
                             .splitlines()), 2)
        rest = self.ok("consume", "t", "--group", "g").stdout.splitlines()
        self.assertEqual(rest, [json.dumps({"i": i}) for i in range(2, 5)])

    def test_group_from_beginning_rewinds(self):
        self.create("t", 1)
        self.produce("t", [{"i": i} for i in range(3)])
        self.ok("consume", "t", "--group", "g")
        again = self.ok("consume", "t", "--group", "g", "--from-beginning").stdout
        self.assertEqual(len(again.splitlines()), 3)

    def test_follow_waits_for_new_records_until_count(self):
        self.create("t", 2)
        proc = subprocess.Popen([SLUICE, "consume", "t", "--group", "f", "--follow", "-n", "3",
                                 "--port", str(self.node.port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        self.produce("t", [{"i": i} for i in range(3)], "--batch", "1")
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(sorted(out.decode().splitlines()),
                         sorted(json.dumps({"i": i}) for i in range(3)))

    def test_follow_stops_cleanly_on_sigint(self):
        self.create("t", 1)
        self.produce("t", [{"i": 0}])
        proc = subprocess.Popen([SLUICE, "consume", "t", "--group", "s", "--follow",
                                 "--port", str(self.node.port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        ready, _, _ = select.select([proc.stdout], [], [], RUN_TIMEOUT)
        self.assertTrue(ready, "no record printed")
        self.assertEqual(proc.stdout.readline(), b'{"i": 0}\n')
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(self.r.execute_command("GROUP", "OFFSETS", "s", "t")[0][1], 1)


class GroupsTest(CliTestCase):
    def test_table_of_committed_end_and_lag(self):
        self.create("t", 2)
        self.produce("t", [{"i": i} for i in range(4)], "--partition", "0")
        self.ok("consume", "t", "--group", "g")
        self.produce("t", [{"i": i} for i in range(3)], "--partition", "1")
        self.produce("t", [{"i": 9}], "--partition", "0")
        out = self.ok("groups").stdout.splitlines()
        self.assertEqual(out[0].split(), ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END",
                                          "LAG"])
        self.assertEqual([line.split() for line in out[1:]],
                         [["g", "t", "0", "4", "5", "1"], ["g", "t", "1", "-", "3", "3"]])
        one = self.ok("groups", "--group", "g", "--topic", "t").stdout
        self.assertEqual(one.splitlines(), out)
        self.assertEqual(len(self.ok("groups", "--group", "other").stdout.splitlines()), 1)


class ErrorsTest(CliTestCase):
    def test_connection_refused(self):
        port = free_port()
        for args in (["topics", "list"], ["produce", "t"], ["consume", "t"], ["groups"]):
            res = self.sluice(*args, port=port)
            self.assertEqual(res.returncode, 1, args)
            self.assertEqual(res.stderr,
                             "sluice: cannot connect to 127.0.0.1:%d: Connection refused\n" % port)

    def test_bad_usage_exits_2_with_one_line(self):
        for args in (["topics"], ["topics", "frobnicate"], ["topics", "create"],
                     ["topics", "create", "t", "--partitions", "many"],
                     ["topics", "create", "t", "--compression", "lz4"],
                     ["topics", "list", "--partitions", "2"],
                     ["produce"], ["produce", "t", "--batch", "0"], ["produce", "t", "--nope"],
                     ["consume", "t", "--time", "5"], ["consume", "t", "-n"],
                     ["consume", "t", "--group", "g", "--offset", "3"],
                     ["consume", "t", "--from-beginning", "--offset", "3"],
                     ["groups", "extra"]):
            res = self.sluice(*args)
            self.assertEqual(res.returncode, 2, args)
            self.assert_one_line(res.stderr)
            self.assertTrue(res.stderr.startswith("sluice: "), res.stderr)
        res = self.sluice("topics", "list", port="notaport")
        self.assertEqual(res.returncode, 2)

    def test_help_lists_the_commands_and_each_usage(self):
        top = subprocess.run([SLUICE, "--help"], capture_output=True, timeout=RUN_TIMEOUT)
        self.assertEqual(top.returncode, 0)
        for command in (b"topics", b"produce", b"consume", b"groups"):
            self.assertRegex(top.stdout, rb"\n  " + command + rb" ")
            res = subprocess.run([SLUICE, command, "--help"], capture_output=True,
                                 timeout=RUN_TIMEOUT)
            self.assertEqual(res.returncode, 0)
            self.assertTrue(res.stdout.startswith(b"usage: sluice " + command), res.stdout)
            self.assertIn(b"--port", res.stdout)


class PasswordTest(CliTestCase):
    node_args = ("--requirepass", "sekret")

    def setUp(self):
        super().setUp()
        self.r = redis.Redis(host="127.0.0.1", port=self.node.port, password="sekret")
        self.addCleanup(self.r.close)

    def test_password_is_sent_with_auth(self):
        res = self.sluice("topics", "list")
        self.assertEqual(res.returncode, 1)
        self.assertIn("NOAUTH", res.stderr)
        res = self.sluice("topics", "list", "--password", "wrong")
        self.assertEqual(res.returncode, 1)
        self.assertTrue(res.stderr.startswith("sluice: authentication failed: "), res.stderr)
        self.ok("topics", "create", "t", "--password", "sekret")
        self.assertEqual(self.ok("topics", "list", "--password", "sekret").stdout, "t\n")


if __name__ == "__main__":
    unittest.main()
