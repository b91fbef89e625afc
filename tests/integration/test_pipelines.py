#!/usr/bin/python3
"""
test_pipelines.py - Lua pipelines on a real node (issue 4, DESIGN.md §5):
PIPELINE SUBMIT / LIST / DESCRIBE / STOP, the operators end to end, the
on_error policies, compile errors, hot replace, restart, and the CLI
(`sluice submit`, `sluice pipelines`, `sluice run`).

The scripts are in pipelines/*.lua. They are templates: `$in`, `$out`,
`$name`, ... are replaced (string.Template) by the unique topic and pipeline
names of the test before the script is submitted; nothing else changes, so
line numbers in error messages are the file's.

Synchronisation: every wait is wait_until with a deadline (WAIT seconds),
polling FETCH on the sink or PIPELINE DESCRIBE; never a sleep. To show that
a pipeline did NOT process a record (after on_error = stop, PIPELINE STOP),
a second "canary" pipeline reading the same input is waited for: once it has
processed the record, the first one had every chance to.

    SLUICE_BIN=/path/to/sluice /usr/bin/python3 -m unittest -v test_pipelines
"""
import itertools
import json
import os
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import unittest

import redis

from node import (READY_RE, Error, Node, NodeTestCase, fetch_all, partition_ends, sluice_bin,
                  wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "pipelines")
WAIT = 20.0
_serial = itertools.count()


def fixture(_file, **subs):
    """The text of pipelines/<_file>.lua with $placeholders filled in."""
    with open(os.path.join(FIXTURES, _file + ".lua")) as f:
        return string.Template(f.read()).substitute(**subs)


def fields(reply):
    """A flat [name, value, ...] reply as a dict keyed by str."""
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in zip(reply[0::2], reply[1::2])}


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


class PipelineTestCase(NodeTestCase):
    """Helpers over one node per class."""

    def pipeline_name(self):
        return "p%d-%s" % (next(_serial), self._testMethodName[5:30].replace("_", "-"))

    # ---- commands --------------------------------------------------------

    def pcmd(self, *args, node=None):
        with (node or self.node).raw() as c:
            return c.cmd("PIPELINE", *args)

    def submit(self, name, source, node=None):
        return self.pcmd("SUBMIT", name, source, node=node)

    def submit_ok(self, name, source, node=None):
        reply = self.submit(name, source, node=node)
        self.assertEqual(reply, "OK", "PIPELINE SUBMIT %s: %r\n--- script:\n%s" %
                         (name, reply, source))
        self.addCleanup(self._stop_quietly, name, node or self.node)
        return reply

    def _stop_quietly(self, name, node):
        if node.alive():
            try:
                self.pcmd("STOP", name, node=node)
            except Exception:
                pass

    def listing(self, node=None):
        """{name: (state, error)} from PIPELINE LIST."""
        reply = self.pcmd("LIST", node=node)
        self.assertIsInstance(reply, list, "PIPELINE LIST: %r" % (reply,))
        out = {}
        for entry in reply:
            self.assertEqual(len(entry), 3, "LIST entry %r should be [name, state, error]" % entry)
            out[text(entry[0])] = (text(entry[1]), text(entry[2]))
        return out

    def describe(self, name, node=None):
        reply = self.pcmd("DESCRIBE", name, node=node)
        self.assertIsInstance(reply, list, "PIPELINE DESCRIBE %s: %r" % (name, reply))
        return fields(reply)

    def wait_state(self, name, state, node=None):
        def check():
            entry = self.listing(node).get(name)
            return entry if entry and entry[0] == state else None
        return wait_until(check, WAIT, 0.05, "pipeline %s to be %s (LIST: %r)"
                          % (name, state, self.listing(node)))

    def wait_caught_up(self, name, node=None):
        """Waits until every task of the pipeline has committed its end
        offset (lag 0): everything produced so far is processed and its
        output written."""
        def check():
            d = self.describe(name, node)
            tasks = d["tasks"]
            return tasks and all(t[2] == t[3] and t[4] == 0 for t in tasks)
        try:
            wait_until(check, WAIT, 0.05, "pipeline %s to catch up" % name)
        except AssertionError as e:
            raise AssertionError("%s; DESCRIBE: %r" % (e, self.describe(name, node)))

    # ---- records ---------------------------------------------------------

    def produce(self, topic, value, key="", client=None, **kw):
        if not isinstance(value, (bytes, str)):
            value = json.dumps(value)
        args = []
        for h, v in kw.get("headers", {}).items():
            args += ["HEADER", h, v]
        return (client or self.r).execute_command("PRODUCE", topic, key, value, *args)

    def records(self, topic, client=None):
        """Every record of every partition: [(partition, offset, key, value, headers)]."""
        c = client or self.r
        out = []
        for p in sorted(partition_ends(c, topic)):
            for rec in fetch_all(c, topic, p):
                out.append((p, rec[0], rec[2], rec[3], rec[4]))
        return out

    def wait_records(self, topic, n, client=None):
        """Waits until topic holds at least n records; returns them all."""
        got = []

        def check():
            got[:] = self.records(topic, client)
            return len(got) >= n
        try:
            wait_until(check, WAIT, 0.05, "%d records in %s" % (n, topic))
        except AssertionError as e:
            raise AssertionError("%s; got %r\nnode log tail:\n%s"
                                 % (e, got, "\n".join(self.node.log().splitlines()[-20:])))
        return got

    def values(self, recs):
        return [json.loads(r[3]) for r in recs]

    def assertRunning(self, name, node=None):
        entry = self.listing(node).get(name)
        self.assertIsNotNone(entry, "%s not in PIPELINE LIST" % name)
        self.assertEqual(entry, ("running", ""))


# ---- the operators --------------------------------------------------------------


class OperatorsTest(PipelineTestCase):
    def test_filter_and_map_to_sinks(self):
        t_in, by_value, by_user = self.new_topic(1), self.new_sink(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("filter_map", **{"in": t_in, "by_value": by_value,
                                                      "by_user": by_user}))
        self.assertRunning(name)
        orders = [("k1", {"id": 1, "user": "ann", "amount": 150}),
                  ("k2", {"id": 2, "user": "bob", "amount": 50}),
                  ("", {"id": 3, "user": "cid", "amount": 101}),
                  ("k4", {"id": 4, "user": "dee", "amount": 100}),
                  ("k5", {"id": 5, "user": "eve", "amount": 1000.5})]
        for key, value in orders:
            self.produce(t_in, value, key)
        got = self.wait_records(by_value, 3)
        # a returned value keeps the input's key; integers stay integers
        self.assertEqual([(r[2], json.loads(r[3])) for r in got],
                         [(b"k1", {"user": "ann", "double": 300, "label": "user:1"}),
                          (None, {"user": "cid", "double": 202, "label": "user:3"}),
                          (b"k5", {"user": "eve", "double": 2001, "label": "user:5"})])
        self.assertIn(b'"label":"user:1"', got[0][3], "an integer id reads 1, not 1.0")
        got = self.wait_records(by_user, 3)
        # a record table sets the key; {value = obj} wraps an object of record shape
        self.assertEqual([(r[2], json.loads(r[3])) for r in got],
                         [(b"ann", {"key": "k", "value": 150}),
                          (b"cid", {"key": "k", "value": 101}),
                          (b"eve", {"key": "k", "value": 1000.5})])
        self.wait_caught_up(name)
        self.assertEqual(len(self.records(by_value)), 3)
        self.assertEqual(len(self.records(by_user)), 3)

    def test_at_least_once_writes_an_ordinary_topic_and_restarts_from_its_offsets(self):
        t_in, out = self.new_topic(1), self.new_topic(1)  # an ordinary sink
        name = self.pipeline_name()
        script = ('local s = require("sluice")\n'
                  's.pipeline{processing = "at_least_once"}\n'
                  's.stream("%s"):map(function(r) return {n = r.value.n + 1} end):to("%s")\n'
                  % (t_in, out))
        self.submit_ok(name, script)
        for i in range(5):
            self.produce(t_in, {"n": i})
        got = self.wait_records(out, 5)
        self.assertEqual(sorted(v["n"] for v in self.values(got)), [1, 2, 3, 4, 5])
        self.wait_caught_up(name)
        # an ordinary topic also takes producers' records
        self.produce(out, {"n": 100})
        self.assertEqual(len(self.records(out)), 6)

    def test_flat_map(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("flat_map", **{"in": t_in, "out": out}))
        self.produce(t_in, {"text": "to be"}, "line1")
        self.produce(t_in, {"text": ""}, "empty")
        self.produce(t_in, {"text": "x"}, "line3")
        got = self.wait_records(out, 6)
        self.assertEqual([(r[2], r[3]) for r in got],
                         [(b"line1", b"to"), (b"to", b'{"len":2}'),
                          (b"line1", b"be"), (b"be", b'{"len":2}'),
                          (b"line3", b"x"), (b"x", b'{"len":1}')])
        self.wait_caught_up(name)
        self.assertEqual(len(self.records(out)), 6)

    def test_branch_goes_to_the_first_name_in_byte_order(self):
        t_in, big, eu = self.new_topic(1), self.new_sink(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("branch", **{"in": t_in, "big": big, "eu": eu}))
        self.produce(t_in, {"id": 1, "region": "eu", "amount": 500})  # both: big wins
        self.produce(t_in, {"id": 2, "region": "eu", "amount": 5})
        self.produce(t_in, {"id": 3, "region": "us", "amount": 500})
        self.produce(t_in, {"id": 4, "region": "us", "amount": 5})    # neither: dropped
        self.produce(t_in, {"id": 5, "region": "eu", "amount": 7})
        self.wait_records(eu, 2)
        self.wait_records(big, 2)
        self.wait_caught_up(name)
        self.assertEqual([v["id"] for v in self.values(self.records(big))], [1, 3])
        self.assertEqual([v["id"] for v in self.values(self.records(eu))], [2, 5])

    def test_unchanged_records_keep_their_bytes_and_headers(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("copy", **{"in": t_in, "out": out}))
        raw = '{ "b" : 1,  "a":[1, 2.50] }'
        self.produce(t_in, raw, "k", headers={"trace": "abc"})
        got = self.wait_records(out, 1)
        self.assertEqual(got[0][2:4], (b"k", raw.encode()))
        self.assertEqual(got[0][4], [b"trace", b"abc"])

    def test_merge_and_peek(self):
        a, b, out = self.new_topic(1), self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("merge", a=a, b=b, out=out))
        self.produce(a, {"n": 1})
        self.produce(b, {"n": 2})
        self.produce(a, {"n": 3})
        got = self.wait_records(out, 3)
        self.assertEqual(sorted((v["from"], v["n"]) for v in self.values(got)),
                         [("a", 1), ("a", 3), ("b", 2)])

    def test_key_by_repartitions_like_produce(self):
        t_in, out, probe = self.new_topic(2), self.new_sink(4), self.new_topic(4)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("key_by", **{"in": t_in, "out": out, "name": name}))
        users = ["ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal", "ivy", "jon"]
        for i in range(40):
            self.produce(t_in, {"user": users[i % len(users)], "n": i}, "in%d" % i)
        got = self.wait_records(out, 40)
        self.wait_caught_up(name)
        got = self.records(out)
        self.assertEqual(len(got), 40)
        where = {}
        for p, _, key, value, _ in got:
            v = json.loads(value)
            self.assertEqual(key, v["user"].encode(), "the key is the field's value")
            where.setdefault(key, set()).add(p)
        self.assertEqual(sorted(where), sorted(u.encode() for u in users))
        for key, parts in where.items():
            self.assertEqual(len(parts), 1, "key %r in several partitions %r" % (key, parts))
            expected = self.produce(probe, "x", key)[0]
            self.assertEqual(parts, {expected}, "key %r: partition of a plain PRODUCE" % key)
        # per key, records keep their input order (one task per key)
        for u in users:
            ns = [json.loads(r[3])["n"] for r in got if r[2] == u.encode()]
            self.assertEqual(len(ns), 4)
        topics = [text(t) for t in self.r.execute_command("TOPIC", "LIST")]
        self.assertIn("%s.repartition.2" % name, topics)

    def test_key_by_function_and_created_sink(self):
        t_in, out = self.new_topic(1), "created-%d" % next(_serial)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("key_by_fn", **{"in": t_in, "out": out}))
        desc = fields(self.r.execute_command("TOPIC", "DESCRIBE", out))
        self.assertEqual(len(desc["partitions"]), 3, "to{create = true, partitions = 3}")
        for i in range(6):
            self.produce(t_in, {"id": i})
        got = self.wait_records(out, 6)
        probe = self.new_topic(3)
        for p, _, key, _, _ in got:
            self.assertEqual(p, self.produce(probe, "x", key)[0])
        self.assertEqual(sorted(r[2] for r in got), [b"user-%d" % i for i in range(6)])


class WorkersTest(PipelineTestCase):
    """The same keyed pipeline with explicit worker counts, so the one- and
    the many-worker paths both run whatever the machine's core count."""

    def run_keyed(self):
        t_in, out = self.new_topic(3), self.new_sink(4)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("key_by", **{"in": t_in, "out": out, "name": name}))
        users = ["ann", "bob", "cid", "dee", "eve", "fay", "gus"]
        for i in range(70):
            self.produce(t_in, {"user": users[i % len(users)], "n": i}, "in%d" % i)
        self.wait_records(out, 70)
        self.wait_caught_up(name)
        got = self.records(out)
        self.assertEqual(sorted(json.loads(r[3])["n"] for r in got), list(range(70)))
        where = {}
        for p, _, key, _, _ in got:
            where.setdefault(key, set()).add(p)
        for key, parts in where.items():
            self.assertEqual(len(parts), 1, "key %r in several partitions %r" % (key, parts))


class OneWorkerTest(WorkersTest):
    node_args = ("--workers", "1")

    def test_one_worker_runs_every_task(self):
        self.run_keyed()


class ThreeWorkersTest(WorkersTest):
    node_args = ("--workers", "3")

    def test_three_workers_share_the_tasks(self):
        self.run_keyed()


class RecordsTest(PipelineTestCase):
    def test_timestamp_headers_and_number_keys(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("records", **{"in": t_in, "out": out}))
        self.produce(t_in, {"id": 7, "at": 1700000000123}, headers={"trace": "abc"})
        self.produce(t_in, {"id": 8, "at": 1600000000000})
        self.wait_records(out, 2)
        recs = fetch_all(self.r, out, 0)
        self.assertEqual([(r[1], r[2]) for r in recs],
                         [(1700000000123, b"7"), (1600000000000, b"8")],
                         "the timestamp function's result is written; 7 is written as 7")
        self.assertEqual([json.loads(r[3]) for r in recs],
                         [{"id": 7, "was": "abc"}, {"id": 8, "was": None}])
        self.assertEqual(recs[0][4], [b"alpha", b"1", b"trace", b"abc", b"zeta", b"z"],
                         "headers written in name order, numbers as digits")
        self.assertEqual(recs[1][4], [b"alpha", b"1", b"zeta", b"z"])

    def test_raw_format_and_string_values(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("raw", **{"in": t_in, "out": out}))
        self.produce(t_in, "not json at all", "k")
        self.produce(t_in, '{"a": "b"}', "k2")
        got = self.wait_records(out, 2)
        self.assertEqual([(r[2], r[3]) for r in got],
                         [(b"k", b"NOT JSON AT ALL"), (b"k2", b'{"A": "B"}')])


# ---- on_error ------------------------------------------------------------------


class OnErrorTest(PipelineTestCase):
    def start(self, policy):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("on_error", policy=policy, **{"in": t_in, "out": out}))
        return name, t_in, out

    def test_skip_drops_bad_json_and_lua_errors(self):
        name, t_in, out = self.start("skip")
        self.produce(t_in, {"n": 1, "d": 2})
        self.produce(t_in, "{not json")
        self.produce(t_in, {"n": 2, "d": 0})       # integer division by zero
        self.produce(t_in, {"n": 3, "nothing": True})  # map returned nil
        self.produce(t_in, {"n": 4, "d": 5})
        self.wait_records(out, 2)
        self.wait_caught_up(name)
        self.assertEqual(self.values(self.records(out)), [{"n": 1, "inv": 5}, {"n": 4, "inv": 2}])
        self.assertRunning(name)
        ops = self.describe(name)["ops"]
        map_op = [op for op in ops if text(op[1]) == "map"][0]
        self.assertEqual(map_op[5], 2, "map errors counted: %r" % (ops,))
        source = [op for op in ops if text(op[1]) == "stream"][0]
        self.assertEqual(source[5], 1, "bad JSON counted at the source: %r" % (ops,))

    def test_runaway_function_is_stopped_and_skipped(self):
        name, t_in, out = self.start("skip")
        self.produce(t_in, {"n": 1, "d": 1})
        self.produce(t_in, {"n": 2, "spin": True})
        self.produce(t_in, {"n": 3, "huge": True})
        self.produce(t_in, {"n": 4, "d": 1})
        got = self.wait_records(out, 2)
        self.assertEqual(self.values(got), [{"n": 1, "inv": 10}, {"n": 4, "inv": 10}])
        self.wait_caught_up(name)
        self.assertNodeHealthy()
        self.assertRunning(name)
        self.assertEqual(len(self.records(out)), 2)
        self.assertIn("instruction limit", self.node.log())

    def test_dead_letter(self):
        name, t_in, out = self.start("dead_letter")
        self.produce(t_in, {"n": 1, "d": 1})
        bad_at = self.produce(t_in, {"n": 2, "d": 0}, "badkey")
        self.produce(t_in, "{oops", "badjson")
        self.produce(t_in, {"n": 3, "d": 1})
        got = self.wait_records(out, 2)
        self.assertEqual(self.values(got), [{"n": 1, "inv": 10}, {"n": 3, "inv": 10}])
        dead = self.wait_records(name + ".dlq", 2)
        self.wait_caught_up(name)
        dead = self.records(name + ".dlq")
        self.assertEqual(len(dead), 2, dead)
        by_key = {r[2]: r for r in dead}
        self.assertEqual(set(by_key), {b"badkey", b"badjson"})
        first = by_key[b"badkey"]
        self.assertEqual(json.loads(first[3]), {"n": 2, "d": 0}, "the input record as it came")
        h = {text(k): text(v) for k, v in zip(first[4][0::2], first[4][1::2])}
        self.assertEqual(h.get("source.topic"), t_in)
        self.assertEqual(h.get("source.partition"), str(bad_at[0]))
        self.assertEqual(h.get("source.offset"), str(bad_at[1]))
        self.assertIn("map", h.get("error", ""))
        self.assertRegex(h.get("error", ""), r":8\b", "the error names the script line")
        second = by_key[b"badjson"]
        self.assertEqual(second[3], b"{oops")
        h = {text(k): text(v) for k, v in zip(second[4][0::2], second[4][1::2])}
        self.assertEqual(h.get("source.offset"), "2")
        self.assertIn("JSON", h.get("error", ""))

    def test_stop_fails_the_pipeline(self):
        name, t_in, out = self.start("stop")
        canary_out = self.new_sink(1)
        canary = self.pipeline_name()
        self.submit_ok(canary, fixture("copy", **{"in": t_in, "out": canary_out}))
        self.produce(t_in, {"n": 1, "d": 1})
        self.wait_records(out, 1)
        self.produce(t_in, {"n": 2, "d": 0})
        state, error = self.wait_state(name, "failed")
        self.assertIn("map", error)
        self.assertRegex(error, r":8\b")
        d = self.describe(name)
        self.assertEqual(text(d["state"]), "failed")
        self.assertEqual(text(d["error"]), error)
        self.assertEqual(d["stores"], [])  # stateless: no store to flush or restore
        self.produce(t_in, {"n": 3, "d": 1})
        self.wait_records(canary_out, 3)
        self.assertEqual(self.values(self.records(out)), [{"n": 1, "inv": 10}])
        self.assertEqual(self.listing()[name][0], "failed")
        self.assertNodeHealthy()

    def test_resubmitting_a_failed_pipeline_resumes_at_the_failed_record(self):
        name, t_in, out = self.start("stop")
        self.produce(t_in, {"n": 1, "d": 1})
        self.produce(t_in, {"n": 2, "d": 0})
        self.produce(t_in, {"n": 3, "d": 2})
        self.wait_state(name, "failed")
        self.assertEqual(self.values(self.records(out)), [{"n": 1, "inv": 10}])
        self.submit_ok(name, fixture("fixed", **{"in": t_in, "out": out}))
        self.assertRunning(name)
        self.wait_records(out, 3)
        self.wait_caught_up(name)
        self.assertEqual(self.values(self.records(out)),
                         [{"n": 1, "inv": 10}, {"n": 2, "inv": "none"}, {"n": 3, "inv": 5}])

    def test_default_policy_is_stop(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("unnamed", **{"in": t_in, "out": out}))
        self.produce(t_in, "[1, 2")
        _, error = self.wait_state(name, "failed")
        self.assertIn("JSON", error)


class OutputSizeTest(PipelineTestCase):
    """What a pipeline writes is cut into batches its topic takes; a record
    larger than the topic's max.batch.bytes is that record's error."""

    def check(self, processing):
        t_in = self.new_topic(1)
        options = ("SET", "max.batch.bytes", 8192)
        out = (self.new_sink(1, *options) if processing == "exactly_once"
               else self.new_topic(1, *options))
        name = self.pipeline_name()
        self.submit_ok(name, fixture("sizes", processing=processing, **{"in": t_in, "out": out}))
        self.produce(t_in, {"many": 3})
        bad = self.produce(t_in, {"big": 9000}, "big")
        self.produce(t_in, {"many": 2000})  # ~450 KB from one record
        self.wait_caught_up(name)
        self.assertRunning(name)
        got = self.values(self.records(out))
        self.assertEqual([v["i"] for v in got], [1, 2, 3] + list(range(1, 2001)))
        dead = self.records(name + ".dlq")
        self.assertEqual(len(dead), 1, dead)
        self.assertEqual(dead[0][2], b"big")
        h = {text(k): text(v) for k, v in zip(dead[0][4][0::2], dead[0][4][1::2])}
        self.assertEqual(h["source.offset"], str(bad[1]))
        self.assertRegex(h["error"], r"\.lua:10: a record of \d+ bytes is over topic %s's "
                         r"max\.batch\.bytes 8192$" % out)
        ops = self.describe(name)["ops"]
        sink = [op for op in ops if text(op[1]) == "to"][0]
        self.assertEqual(sink[5], 1, "the record counted as the sink's error: %r" % (ops,))

    def test_exactly_once(self):
        self.check("exactly_once")

    def test_at_least_once(self):
        self.check("at_least_once")


# ---- submitting, replacing, stopping -------------------------------------------------


class SinkGoneTest(PipelineTestCase):
    def test_deleting_the_sink_topic_fails_the_pipeline(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("copy", **{"in": t_in, "out": out}))
        self.produce(t_in, {"n": 1})
        self.wait_records(out, 1)
        self.assertEqual(self.r.execute_command("TOPIC", "DELETE", out), b"OK")
        self.produce(t_in, {"n": 2})
        state, error = self.wait_state(name, "failed")
        self.assertIn("topic %s is gone" % out, error)


class SubmitTest(PipelineTestCase):
    def test_compile_errors_name_the_line_and_keep_the_running_version(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("tagged", name=name, version="v1", **{"in": t_in, "out": out}))
        self.produce(t_in, {"n": 1})
        self.wait_records(out, 1)
        reply = self.submit(name, fixture("syntax_error", **{"in": t_in, "out": out}))
        self.assertIsInstance(reply, Error, reply)
        self.assertRegex(reply, r"^ERR \S+:3: ")
        self.assertIn("near '='", reply)
        reply = self.submit(name, fixture("unknown_option", **{"in": t_in, "out": out}))
        self.assertIsInstance(reply, Error, reply)
        self.assertRegex(reply, r"^ERR \S+:3: unknown option 'partitons' for to")
        self.assertRunning(name)
        self.produce(t_in, {"n": 2})
        got = self.wait_records(out, 2)
        self.assertEqual(self.values(got), [{"n": 1, "version": "v1"}, {"n": 2, "version": "v1"}])

    def test_compile_error_of_a_new_pipeline_leaves_nothing(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        reply = self.submit(name, fixture("syntax_error", **{"in": t_in, "out": out}))
        self.assertRegex(reply, r"^ERR \S+:3: ")
        self.assertNotIn(name, self.listing())
        self.assertErrorCode(self.pcmd("DESCRIBE", name), "NOTFOUND")

    def test_name_in_script_must_match(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        reply = self.submit(self.pipeline_name(), fixture("wrong_name", **{"in": t_in, "out": out}))
        self.assertIsInstance(reply, Error, reply)
        self.assertIn("some-other-name", reply)

    def test_missing_topics(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        reply = self.submit(self.pipeline_name(),
                            fixture("copy", **{"in": "no-such-input", "out": out}))
        self.assertIsInstance(reply, Error, reply)
        self.assertIn("no-such-input", reply)
        reply = self.submit(self.pipeline_name(),
                            fixture("copy", **{"in": t_in, "out": "no-such-sink"}))
        self.assertIsInstance(reply, Error, reply)
        self.assertIn("no-such-sink", reply)
        self.assertNotIn(b"no-such-sink", self.r.execute_command("TOPIC", "LIST"))
        reply = self.submit(self.pipeline_name(),
                            fixture("expects_partitions", **{"in": t_in, "out": out}))
        self.assertIsInstance(reply, Error, reply)
        self.assertRegex(reply, r"^ERR \S+:2: .*1 partition.*expects 3")
        created = "made-%d" % next(_serial)
        self.submit_ok(self.pipeline_name(), fixture("create_sink", **{"in": t_in, "out": created}))
        desc = fields(self.r.execute_command("TOPIC", "DESCRIBE", created))
        self.assertEqual(len(desc["partitions"]), 2)

    def test_stream_with_partitions_creates_a_missing_source(self):
        t_in, out = "src-%d" % next(_serial), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("expects_partitions", **{"in": t_in, "out": out}))
        desc = fields(self.r.execute_command("TOPIC", "DESCRIBE", t_in))
        self.assertEqual(len(desc["partitions"]), 3)
        self.produce(t_in, {"n": 1})
        self.assertEqual(self.values(self.wait_records(out, 1)), [{"n": 1}])

    def test_resubmit_replaces_and_continues_from_committed_offsets(self):
        t_in, out = self.new_topic(2), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("tagged", name=name, version="v1", **{"in": t_in, "out": out}))
        for i in range(6):
            self.produce(t_in, {"n": i}, "k%d" % i)
        self.wait_records(out, 6)
        self.wait_caught_up(name)
        self.submit_ok(name, fixture("tagged", name=name, version="v2", **{"in": t_in, "out": out}))
        self.assertRunning(name)
        names = [text(e[0]) for e in self.pcmd("LIST")]
        self.assertEqual(names.count(name), 1, names)
        for i in range(6, 10):
            self.produce(t_in, {"n": i}, "k%d" % i)
        self.wait_records(out, 10)
        self.wait_caught_up(name)
        got = sorted((v["n"], v["version"]) for v in self.values(self.records(out)))
        self.assertEqual(got, [(i, "v1") for i in range(6)] + [(i, "v2") for i in range(6, 10)])

    def test_resubmit_under_load_processes_each_record_once(self):
        t_in, out = self.new_topic(2), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("tagged", name=name, version="v1", **{"in": t_in, "out": out}))
        total = 0
        for version in ("v2", "v3", "v4"):
            self.r.execute_command("PRODUCEBATCH", t_in, *[
                x for i in range(total, total + 3000) for x in ("k%d" % i, json.dumps({"n": i}))])
            total += 3000
            self.submit_ok(name, fixture("tagged", name=name, version=version,
                                         **{"in": t_in, "out": out}))
        self.wait_records(out, total)
        self.wait_caught_up(name)
        got = [v["n"] for v in self.values(self.records(out))]
        self.assertEqual(len(got), total, "no record twice")
        self.assertEqual(set(got), set(range(total)))

    def test_replacing_a_keyed_pipeline_with_another_shape_loses_nothing(self):
        # v1 repartitions through <name>.repartition.1, v2 through .2: the
        # records v1 left in .1 (read from the source and committed there,
        # not yet through its key_by stage) must still reach the sink.
        t_in, out = self.new_topic(2), self.new_sink(2)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("keyed_v1", name=name, **{"in": t_in, "out": out}))
        total = 20000
        self.r.execute_command("PRODUCEBATCH", t_in, *[
            x for i in range(total) for x in ("k%d" % i, json.dumps({"u": "u%d" % (i % 7), "n": i}))])

        def in_flight():
            tasks = self.describe(name)["tasks"]
            return sum(t[4] for t in tasks if text(t[0]).endswith(".repartition.1"))
        wait_until(in_flight, WAIT, 0.01, "records waiting in the repartition topic")
        self.submit_ok(name, fixture("keyed_v2", name=name, **{"in": t_in, "out": out}))
        self.wait_caught_up(name)
        got = self.records(out)
        ns = set(json.loads(r[3])["n"] for r in got)
        self.assertEqual(len(ns), total, "records lost in the old repartition topic: %d"
                         % (total - len(ns)))

    def test_bad_names_and_usage(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        for bad in ("has.dot", "has space", "x" * 129, "ünï"):
            reply = self.submit(bad, fixture("copy", **{"in": t_in, "out": out}))
            self.assertErrorCode(reply, "ERR")
        self.assertErrorCode(self.pcmd("SUBMIT", "onlyname"), "ERR")
        self.assertErrorCode(self.pcmd("FROB", "x"), "ERR")
        self.assertNotIn("has.dot", self.listing())

    def test_stop(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("copy", **{"in": t_in, "out": out}))
        self.produce(t_in, {"n": 1})
        self.wait_records(out, 1)
        self.wait_caught_up(name)
        self.assertEqual(self.pcmd("STOP", name), "OK")
        self.assertNotIn(name, self.listing())
        self.assertErrorCode(self.pcmd("DESCRIBE", name), "NOTFOUND")
        self.assertFalse(os.path.exists(os.path.join(self.node.data_dir, "pipelines",
                                                     name + ".lua")))
        # offsets stay committed
        offsets = self.r.execute_command("GROUP", "OFFSETS", "pipeline." + name, t_in)
        self.assertEqual(offsets[0][:2], [0, 1])
        canary_out = self.new_sink(1)
        self.submit_ok(self.pipeline_name(), fixture("copy", **{"in": t_in, "out": canary_out}))
        self.produce(t_in, {"n": 2})
        self.wait_records(canary_out, 2)
        self.assertEqual(self.values(self.records(out)), [{"n": 1}])

    def test_stop_unknown(self):
        self.assertErrorCode(self.pcmd("STOP", "never-submitted"), "NOTFOUND")
        self.assertErrorCode(self.pcmd("DESCRIBE", "never-submitted"), "NOTFOUND")

    def test_describe_counts(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("describe", **{"in": t_in, "out": out}))
        for n in range(1, 11):                     # evens: 2 4 6 8 10; 4 fails in map
            self.produce(t_in, {"n": n})
        self.wait_records(out, 4)
        self.wait_caught_up(name)
        d = self.describe(name)
        self.assertEqual(text(d["name"]), name)
        self.assertEqual(text(d["state"]), "running")
        self.assertEqual(text(d["error"]), "")
        ops = [[op[0], text(op[1]), text(op[2])] + list(op[3:]) for op in d["ops"]]
        self.assertEqual([op[:2] for op in ops], [[0, "stream"], [1, "filter"], [2, "map"],
                                                  [3, "to"]])
        self.assertEqual([op[2].rsplit(":", 1)[1] for op in ops], ["3", "4", "5", "9"])
        self.assertEqual([op[3:] for op in ops], [[10, 10, 0], [10, 5, 0], [5, 4, 1], [4, 4, 0]])
        self.assertEqual([list(t) for t in d["tasks"]],
                         [[t_in.encode(), 0, 10, 10, 0]])
        self.assertEqual(sorted(v["half"] for v in self.values(self.records(out))), [1, 3, 4, 5])


class SandboxTest(PipelineTestCase):
    def test_forbidden_at_compile_time(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        base = 's = require("sluice")\ns.stream("%s"):to("%s")\n' % (t_in, out)
        for line, message in [('io.open("/etc/passwd")', "io"),
                              ('os.execute("true")', "execute"),
                              ('require("os")', "not available"),
                              ('load(string.dump(print))', "dump")]:
            reply = self.submit(self.pipeline_name(), base + line + "\n")
            self.assertIsInstance(reply, Error, "%s: %r" % (line, reply))
            self.assertRegex(reply, r"^ERR \S+:3: ", line)
            self.assertIn(message, reply, line)
        reply = self.submit(self.pipeline_name(), base + "while true do end\n")
        self.assertRegex(reply, r"^ERR \S+:3: instruction limit exceeded")
        self.assertNodeHealthy()


# ---- restart -----------------------------------------------------------------------


class RestartTest(PipelineTestCase):
    @classmethod
    def setUpClass(cls):
        pass  # each test starts its own node: restarts need their own data

    @classmethod
    def tearDownClass(cls):
        pass

    def setUp(self):
        self.node = Node().start()
        self.addCleanup(self.node.cleanup)
        self.r = self.node.client()
        self.addCleanup(lambda: self.r.close())

    def restart(self):
        self.r.close()
        self.node.restart()
        self.r = self.node.client()

    def append_offline(self, topic, values):
        """Appends records to a stopped node's data directory."""
        res = subprocess.run([sluice_bin(), "log", "append", topic, "--data", self.node.data_dir],
                             input="".join(json.dumps(v) + "\n" for v in values).encode(),
                             capture_output=True, timeout=60)
        self.assertEqual(res.returncode, 0, res.stderr.decode())

    def test_pipeline_resumes_after_restart(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("tagged", name=name, version="v1", **{"in": t_in, "out": out}))
        for i in range(5):
            self.produce(t_in, {"n": i})
        self.wait_records(out, 5)
        self.wait_caught_up(name)
        path = os.path.join(self.node.data_dir, "pipelines", name + ".lua")
        self.assertTrue(os.path.exists(path), "the script persists in DATA/pipelines/")
        self.node.stop()
        self.append_offline(t_in, [{"n": i} for i in range(5, 9)])
        self.node.start()
        self.r = self.node.client()
        self.assertIn(name, self.listing())
        self.produce(t_in, {"n": 9})
        self.wait_records(out, 10)
        self.wait_caught_up(name)
        got = [v["n"] for v in self.values(self.records(out))]
        self.assertEqual(got, list(range(10)), "each record exactly once, in order")
        self.assertRunning(name)

    def test_crash_loses_nothing(self):
        t_in, out = self.new_topic(2), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("tagged", name=name, version="v1", **{"in": t_in, "out": out}))
        self.r.execute_command("PRODUCEBATCH", t_in,
                               *[x for i in range(500) for x in ("k%d" % i, json.dumps({"n": i}))])
        self.node.kill()
        self.node.start()
        self.r = self.node.client()
        self.produce(t_in, {"n": 500}, "last")
        self.wait_records(out, 501)
        self.wait_caught_up(name)
        got = [v["n"] for v in self.values(self.records(out))]
        self.assertEqual(set(got), set(range(501)), "at-least-once: nothing lost")

    def test_sigterm_under_load_then_restart_processes_each_record_once(self):
        t_in, out = self.new_topic(2), self.new_sink(2)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("keyed_v1", name=name, **{"in": t_in, "out": out}))
        total = 10000
        self.r.execute_command("PRODUCEBATCH", t_in, *[
            x for i in range(total) for x in ("k%d" % i, json.dumps({"u": "u%d" % (i % 7), "n": i}))])
        wait_until(lambda: self.records(out), WAIT, 0.01, "first outputs")
        self.restart()
        self.wait_records(out, total)
        self.wait_caught_up(name)
        got = [json.loads(r[3])["n"] for r in self.records(out)]
        self.assertEqual(set(got), set(range(total)))
        self.assertEqual(len(got), total, "a clean stop commits what it wrote: no duplicates")

    def test_stopped_pipeline_does_not_come_back(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("copy", **{"in": t_in, "out": out}))
        self.produce(t_in, {"n": 1})
        self.wait_records(out, 1)
        self.assertEqual(self.pcmd("STOP", name), "OK")
        self.restart()
        self.assertNotIn(name, self.listing())
        self.assertErrorCode(self.pcmd("DESCRIBE", name), "NOTFOUND")

    def test_replaced_version_is_the_one_restarted(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        self.submit_ok(name, fixture("tagged", name=name, version="v1", **{"in": t_in, "out": out}))
        self.submit_ok(name, fixture("tagged", name=name, version="v2", **{"in": t_in, "out": out}))
        self.restart()
        self.produce(t_in, {"n": 1})
        got = self.wait_records(out, 1)
        self.assertEqual(self.values(got), [{"n": 1, "version": "v2"}])


# ---- the CLI -----------------------------------------------------------------------------


class CliTest(PipelineTestCase):
    def sluice(self, *args, timeout=60):
        res = subprocess.run([sluice_bin(), *args], capture_output=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        return res.returncode, res.stdout.decode(), res.stderr.decode()

    def script_file(self, filename, source):
        d = tempfile.mkdtemp(prefix="sluice-lua-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, filename)
        with open(path, "w") as f:
            f.write(source)
        return path

    def test_submit_and_pipelines(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        path = self.script_file("whatever.lua", fixture("unnamed", **{"in": t_in, "out": out}))
        rc, stdout, stderr = self.sluice("submit", path, "--name", name, "--port", str(self.node.port))
        self.assertEqual(rc, 0, stderr)
        self.addCleanup(self._stop_quietly, name, self.node)
        self.assertRunning(name)
        self.produce(t_in, {"n": 7})
        self.assertEqual(self.values(self.wait_records(out, 1)), [{"n": 7}])
        rc, stdout, stderr = self.sluice("pipelines", "--port", str(self.node.port))
        self.assertEqual(rc, 0, stderr)
        line = [l for l in stdout.splitlines() if name in l]
        self.assertEqual(len(line), 1, stdout)
        self.assertIn("running", line[0])

    def test_submit_names_the_pipeline_after_the_file(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        name = self.pipeline_name()
        path = self.script_file(name + ".lua", fixture("unnamed", **{"in": t_in, "out": out}))
        rc, _, stderr = self.sluice("submit", path, "--port", str(self.node.port))
        self.assertEqual(rc, 0, stderr)
        self.addCleanup(self._stop_quietly, name, self.node)
        self.assertRunning(name)

    def test_submit_compile_error_exits_1_with_file_and_line(self):
        t_in, out = self.new_topic(1), self.new_sink(1)
        path = self.script_file("broken.lua", fixture("unknown_option", **{"in": t_in, "out": out}))
        rc, stdout, stderr = self.sluice("submit", path, "--name", self.pipeline_name(),
                                         "--port", str(self.node.port))
        self.assertEqual(rc, 1, stdout + stderr)
        # the chunk is named after the file or after the pipeline
        self.assertRegex(stderr, r"\S+\.lua:3: ")
        self.assertIn("partitons", stderr)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)


class RunTest(unittest.TestCase):
    """`sluice run FILE.lua [serve options]`: a node plus the script."""

    def setUp(self):
        self.data = tempfile.mkdtemp(prefix="sluice-run-")
        self.addCleanup(shutil.rmtree, self.data, True)
        self.lines = []
        self.proc = None

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc:
            self.proc.stderr.close()

    def offline(self, *args, stdin=b""):
        res = subprocess.run([sluice_bin(), "log", *args, "--data", self.data], input=stdin,
                             capture_output=True, timeout=60)
        self.assertEqual(res.returncode, 0, res.stderr.decode())

    def start_run(self, script):
        """Starts `sluice run script` on self.data; returns (ready port or
        None if it exited first, stderr lines so far)."""
        self.proc = subprocess.Popen([sluice_bin(), "run", script, "--port", "0", "--http-port",
                                      "0", "--data", self.data], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = threading.Event()
        port = []

        def read():
            for raw in iter(self.proc.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                m = READY_RE.search(line)
                if m and not ready.is_set():
                    port.append(int(m.group(2)))
                    ready.set()
            ready.set()
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        self.assertTrue(ready.wait(20), "neither ready nor exited:\n" + "\n".join(self.lines))
        return port[0] if port else None

    def test_run_reads_the_whole_script(self):
        # a script over 1 MiB whose last line fails must be refused
        self.offline("create", "events")
        scripts = tempfile.mkdtemp(prefix="sluice-run-lua-")
        self.addCleanup(shutil.rmtree, scripts, True)
        script = os.path.join(scripts, "big.lua")
        with open(script, "w") as f:
            f.write('local s = require("sluice")\ns.stream("events"):to("out", {create = true})\n'
                    "-- " + "x" * (1 << 20) + "\n"
                    'error("the end of the script was read")\n')
        port = self.start_run(script)
        self.assertIsNone(port, "sluice run started a node with a truncated script:\n"
                          + "\n".join(self.lines))
        self.assertEqual(self.proc.wait(20), 1)
        self.reader.join(5)
        self.assertIn("big.lua:4: the end of the script was read", "\n".join(self.lines))

    def test_run_starts_a_node_with_the_pipeline(self):
        self.offline("create", "events")
        self.offline("append", "events", stdin=b'{"id": 1, "ok": true}\n{"id": 2, "ok": false}\n'
                     b'{"id": 3, "ok": true}\n')
        scripts = tempfile.mkdtemp(prefix="sluice-run-lua-")
        self.addCleanup(shutil.rmtree, scripts, True)
        script = os.path.join(scripts, "app.lua")
        with open(script, "w") as f:
            f.write(fixture("run_app", name="app", **{"in": "events", "out": "seen"}))
        port = self.start_run(script)
        self.assertIsNotNone(port, "sluice run exited:\n" + "\n".join(self.lines))
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=15)
        self.addCleanup(r.close)

        def listing():
            return {text(e[0]): text(e[1]) for e in r.execute_command("PIPELINE", "LIST")}
        wait_until(lambda: listing().get("app") == "running", WAIT, 0.05,
                   "pipeline app running (log:\n%s)" % "\n".join(self.lines))

        def seen():
            try:
                return [json.loads(rec[3]) for rec in fetch_all(r, "seen", 0)]
            except redis.ResponseError:
                return []
        got = wait_until(lambda: len(seen()) >= 2 and seen(), WAIT, 0.05, "2 records in seen")
        self.assertEqual(got, [{"id": 1, "seen": True}, {"id": 3, "seen": True}])
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(20), 0, "\n".join(self.lines))
        self.reader.join(5)
        self.assertTrue(os.path.exists(os.path.join(self.data, "pipelines", "app.lua")))


if __name__ == "__main__":
    unittest.main()
