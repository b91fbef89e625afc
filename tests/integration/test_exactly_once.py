#!/usr/bin/python3
"""
test_exactly_once.py - exactly-once pipelines (issue 5, DESIGN.md section 7)
on a real node: transactional topics, and the crash harness: a deterministic
input of at least 100 K records (fewer under ASan), the node killed with
SIGKILL at seeded random moments at least 20 times while a pipeline
processes it, restarted each time; at the end every output topic must equal
what a reference in Python computes from the same input: no loss, no
duplicate, in input order along every path.

The sizes, and the seed of the input and of the kill moments, come from
SLUICE_CRASH_RECORDS, SLUICE_CRASH_KILLS and SLUICE_CRASH_SEED (crash.py), so
a longer run is

    SLUICE_CRASH_RECORDS=1000000 SLUICE_CRASH_KILLS=200 \\
        SLUICE_BIN=... tests/integration/run.sh test_exactly_once
"""
import collections
import itertools
import json
import string
import struct
import time
import unittest

from crash import (Input, Killer, kills_wanted, paced_feed, read_topic, records_wanted, say, seed,
                   text, wait_caught_up)
from node import Error, Node, NodeTestCase, murmur2_partition

INPUT_PARTITIONS = 4
SINK_PARTITIONS = 3
_serial = itertools.count()

# Stateless: filter -> map -> key_by (a repartition topic) -> map -> to.
# Every output names the input record it came from (src, off) and the
# repartition partition it went through (via), so that the check can tell
# a lost record from a duplicate and follow each path's order.
STATELESS = string.Template("""\
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.stream("$input")
  :filter(function(r) return r.value.kind ~= "view" end)
  :map(function(r)
    local v = r.value
    return {user = v.user, kind = v.kind, cents = v.amount * 100 + v.seq % 7,
            seq = v.seq, src = r.partition, off = r.offset}
  end)
  :key_by("user")
  :map(function(r)
    local v = r.value
    return {key = v.user .. "/" .. v.kind,
            value = {seq = v.seq, src = v.src, off = v.off, cents = v.cents, via = r.partition}}
  end)
  :to("$sink", {create = true, partitions = $sink_partitions})
""")

# Windowed: count and sum per user and 10-second window, every update
# emitted. The grace is a day so that no record is ever late: records of
# the four input partitions meet in the repartition topic in an order that
# depends on timing, and a drop decided by timing would make the result so.
WINDOWED = string.Template("""\
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.stream("$input", {timestamp = function(r) return r.value.ts end})
  :key_by("user")
  :window(s.tumbling("10s", {grace = "1d"}))
  :aggregate{n = s.count(), total = s.sum("amount"), emit = "on_update"}
  :to("$sink", {create = true})
""")

_capabilities = {}


def probe(what, script):
    """Submits script on a node of its own: (accepted, the refusal). A node
    that fails on the way is a failure of the test, not a reason to skip."""
    node = Node().start()
    try:
        r = node.client()
        r.execute_command("TOPIC", "CREATE", "probe-in", "PARTITIONS", 1)
        r.close()
        with node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", "probe",
                          script.substitute(input="probe-in", sink="probe-out", sink_partitions=1))
        node.stop()
        return reply == "OK", "" if reply == "OK" else str(reply)
    except Exception as e:
        raise AssertionError("probing whether the node takes %s pipelines failed: %r\n"
                             "node log:\n%s" % (what, e, node.log()))
    finally:
        node.cleanup()


def capability(what):
    """Whether the node accepts an exactly-once pipeline ("exactly_once")
    or windowed aggregates in one ("windows"), and if not why: asked once
    per run."""
    if what not in _capabilities:
        _capabilities[what] = probe(what, {"exactly_once": STATELESS, "windows": WINDOWED}[what])
    return _capabilities[what]


def require(test, what):
    ok, why = capability(what)
    if not ok:
        test.skipTest("the node refuses %s pipelines yet: %s" % (what, why))


def pipeline_name(test):
    return "eo%d-%s" % (next(_serial), test._testMethodName[5:30].replace("_", "-"))


# ---- transactional topics --------------------------------------------------------


class TransactionalTopicTest(NodeTestCase):
    def test_produce_refuses_a_transactional_topic_naming_it(self):
        self.assertEqual(self.r.execute_command("TOPIC", "CREATE", "txn-only", "PARTITIONS", 2,
                                                "TRANSACTIONAL"), b"OK")
        c = self.raw()
        for cmd in (("PRODUCE", "txn-only", "k", "v"),
                    ("PRODUCEBATCH", "txn-only", "k", "v", "k2", "v2")):
            reply = c.cmd(*cmd)
            self.assertIsInstance(reply, Error, "%s: %r" % (cmd[0], reply))
            self.assertIn("'txn-only'", reply, cmd[0])
            self.assertIn("transactional", reply, cmd[0])
        desc = self.r.execute_command("TOPIC", "DESCRIBE", "txn-only")
        ends = {p[0]: p[2] for p in dict(zip(desc[0::2], desc[1::2]))[b"partitions"]}
        self.assertEqual(ends, {0: 0, 1: 0}, "nothing was appended")
        self.assertEqual(c.cmd("FETCH", "txn-only", 0, 0), [])
        # an ordinary topic next to it still takes records
        self.assertEqual(self.r.execute_command("TOPIC", "CREATE", "not-txn"), b"OK")
        self.assertEqual(self.r.execute_command("PRODUCE", "not-txn", "k", "v"), [0, 0])
        self.assertNodeHealthy(c)

    def test_exactly_once_pipeline_refuses_a_topic_producers_write(self):
        require(self, "exactly_once")
        t_in = self.new_topic(INPUT_PARTITIONS)
        sink = self.new_topic(SINK_PARTITIONS)  # an ordinary topic: producers write it
        name = pipeline_name(self)
        script = STATELESS.substitute(input=t_in, sink=sink, sink_partitions=SINK_PARTITIONS)
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, script)
            self.assertIsInstance(reply, Error, reply)
            self.assertIn("'%s' is not transactional" % sink, reply)
            self.assertIn(".lua:16", reply, "names the script line of the :to()")
            self.assertIn("TOPIC CREATE %s TRANSACTIONAL" % sink, reply, "says how to fix it")
            self.assertIn('processing = "at_least_once"', reply)
            self.assertErrorCode(c.cmd("PIPELINE", "DESCRIBE", name), "NOTFOUND")
        # a sink created TRANSACTIONAL is accepted, and its outputs show up
        good = self.new_topic(SINK_PARTITIONS, "TRANSACTIONAL")
        script = STATELESS.substitute(input=t_in, sink=good, sink_partitions=SINK_PARTITIONS)
        with self.node.raw() as c:
            self.assertEqual(c.cmd("PIPELINE", "SUBMIT", name, script), "OK")
        self.addCleanup(self.r.execute_command, "PIPELINE", "STOP", name)
        data = Input(200, seed())
        data.produce(self.r, t_in, len(data))
        wait_caught_up(self.node, name, 60)
        got = read_topic(self.r, good)
        self.assertEqual(sum(len(v) for v in got.values()),
                         sum(1 for _, v in data.records if v["kind"] != "view"))


    def test_at_least_once_pipeline_refuses_a_transactional_topic_and_creates_nothing(self):
        t_in = self.new_topic(INPUT_PARTITIONS)
        sink = self.new_topic(SINK_PARTITIONS, "TRANSACTIONAL")
        name = pipeline_name(self)
        script = STATELESS.substitute(input=t_in, sink=sink, sink_partitions=SINK_PARTITIONS)
        script = script.replace('"exactly_once"', '"at_least_once"')
        before = set(self.r.execute_command("TOPIC", "LIST"))
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, script)
            self.assertIsInstance(reply, Error, reply)
            self.assertIn("'%s' is transactional" % sink, reply)
            self.assertIn('processing = "exactly_once"', reply)
        # refused before anything was created (no repartition topic left behind)
        self.assertEqual(set(self.r.execute_command("TOPIC", "LIST")), before)


# ---- the crash harness ------------------------------------------------------------------


def canonical(value):
    return json.dumps(value, sort_keys=True)


class CrashTestCase(unittest.TestCase):
    """One node per test on its own data directory, killed and restarted."""

    def setUp(self):
        self.node = Node().start()
        self.addCleanup(self.node.cleanup)
        self.started = time.monotonic()

    def submit(self, name, script):
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, script)
        self.assertEqual(reply, "OK", "PIPELINE SUBMIT %s: %r" % (name, reply))

    def run_with_kills(self, name, script, t_in, data, max_delay):
        """Half the input before the pipeline starts, the rest spread over
        the rounds between kills (crash.paced_feed); then the last restart
        and a bounded wait until everything is processed."""
        kills = kills_wanted()
        r = self.node.client()
        r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", INPUT_PARTITIONS)
        data.produce(r, t_in, len(data) // 2)
        r.close()
        self.submit(name, script)
        killer = Killer(self.node, name, t_in, kills, max_delay, seed() + 1)
        killer.run(paced_feed(data, t_in, kills))
        self.assertEqual(data.produced, len(data))
        desc = wait_caught_up(self.node, name, 120 + len(data) / 1000)
        say("\n%s: %d records, %d kills (%d while input was uncommitted), %.1f s:\n%s"
            % (self.id().rsplit(".", 1)[-1], len(data), len(killer.log), killer.busy_kills(),
               time.monotonic() - self.started, killer.summary()))
        return desc

    def assertTopicEquals(self, topic, got, expected, describe_record):
        """got {partition: [(key, value)]} equals expected as multisets per
        partition, with the first differences described."""
        for p in sorted(set(got) | set(expected)):
            have = collections.Counter(got.get(p, []))
            want = collections.Counter(expected.get(p, []))
            if have == want:
                continue
            missing = list((want - have).elements())
            extra = list((have - want).elements())
            self.fail("%s/%d: %d records (want %d): %d missing, %d extra or duplicated\n"
                      "missing e.g. %s\nextra e.g. %s"
                      % (topic, p, sum(have.values()), sum(want.values()), len(missing),
                         len(extra), [describe_record(x) for x in missing[:5]],
                         [describe_record(x) for x in extra[:5]]))


class StatelessCrashTest(CrashTestCase):
    def reference(self, data):
        """What the pipeline must write: {sink partition: [(key, value)]}
        and {repartition partition: [(key, value)]}, each in input order."""
        sink, repartition = {}, {}
        for p, o, _, v in data.in_order():
            if v["kind"] == "view":
                continue
            user = v["user"]
            cents = v["amount"] * 100 + v["seq"] % 7
            via = murmur2_partition(user.encode(), INPUT_PARTITIONS)
            repartition.setdefault(via, []).append(
                (user, canonical({"user": user, "kind": v["kind"], "cents": cents,
                                  "seq": v["seq"], "src": p, "off": o})))
            key = "%s/%s" % (user, v["kind"])
            sink.setdefault(murmur2_partition(key.encode(), SINK_PARTITIONS), []).append(
                (key, canonical({"seq": v["seq"], "src": p, "off": o, "cents": cents,
                                 "via": via})))
        return sink, repartition

    def written(self, r, topic):
        """The records of topic, without the frontier markers its writers
        add to a repartition topic (no key, no value: docs/lua.md)."""
        return {p: [(text(rec[2]), canonical(json.loads(rec[3]))) for rec in recs
                    if rec[2] is not None or rec[3] is not None]
                for p, recs in read_topic(r, topic).items()}

    def assertPathOrder(self, topic, got, expected, path):
        """Along each path (the partition read, the partitions gone through)
        the records keep their input order: per output partition, the
        subsequence of each path is the reference's."""
        for p, recs in expected.items():
            want, have = {}, {}
            for key, value in recs:
                want.setdefault(path(json.loads(value)), []).append((key, value))
            for key, value in got.get(p, []):
                have.setdefault(path(json.loads(value)), []).append((key, value))
            for k in want:
                if have.get(k) != want[k]:
                    self.fail("%s/%d: records of path %r out of input order" % (topic, p, k))

    def test_sigkill_during_processing_loses_and_duplicates_nothing(self):
        require(self, "exactly_once")
        name = pipeline_name(self)
        t_in, sink = "in-" + name, "out-" + name
        data = Input(records_wanted(), seed())
        script = STATELESS.substitute(input=t_in, sink=sink, sink_partitions=SINK_PARTITIONS)
        self.run_with_kills(name, script, t_in, data, max_delay=0.3)
        r = self.node.client()
        want_sink, want_repartition = self.reference(data)
        got_sink = self.written(r, sink)
        got_repartition = self.written(r, "%s.repartition.3" % name)
        r.close()
        show = lambda kv: "%s %s" % kv  # noqa: E731
        self.assertTopicEquals(sink, got_sink, want_sink, show)
        self.assertTopicEquals("repartition", got_repartition, want_repartition, show)
        self.assertPathOrder(sink, got_sink, want_sink, lambda v: (v["src"], v["via"]))
        self.assertPathOrder("repartition", got_repartition, want_repartition,
                             lambda v: v["src"])
        self.assertEqual(sum(map(len, got_sink.values())),
                         sum(1 for _, v in data.records if v["kind"] != "view"))
        self.node.stop()


def read_varint(state, at):
    """An unsigned LEB128 varint at `at`: (value, the offset after it)."""
    value, shift = 0, 0
    while True:
        byte = state[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def decode_count_sum(state):
    """{"n":, "total":} from an aggregate state holding a count and an
    integer sum, in the encoding of ops/aggregate.h: version 2, member
    count, 4-byte fingerprint, then per member a kind byte (1 count: a
    varint; 2 sum: tag 0 and a zigzag varint)."""
    if state[0] != 2 or state[1] != 2:
        raise AssertionError("not a count + sum state: %r" % state)
    out, at = {}, 6
    for _ in range(2):
        kind = state[at]
        if kind == 1:
            out["n"], at = read_varint(state, at + 1)
        elif kind == 2 and state[at + 1] == 0:
            zigzag, at = read_varint(state, at + 2)
            out["total"] = (zigzag >> 1) ^ -(zigzag & 1)
        else:
            raise AssertionError("unexpected member kind %d in %r" % (kind, state))
    if at != len(state):
        raise AssertionError("trailing bytes in %r" % state)
    return out


class WindowedCrashTest(CrashTestCase):
    def reference(self, data):
        """{(user, window start): {"n":, "total":}} over every input record."""
        out = {}
        for _, v in data.records:
            start = v["ts"] // 10000 * 10000
            agg = out.setdefault((v["user"], start), {"n": 0, "total": 0})
            agg["n"] += 1
            agg["total"] += v["amount"]
        return out

    def assertWindowsEqual(self, what, got, want):
        wrong = [(k, got.get(k), want[k]) for k in sorted(want) if got.get(k) != want[k]]
        unknown = sorted(set(got) - set(want))
        self.assertEqual((len(wrong), unknown[:5]), (0, []),
                         "%s: %d of %d windows wrong, e.g. (window, got, reference) %s"
                         % (what, len(wrong), len(want), wrong[:5]))

    def last_emitted(self, r, sink):
        """(user, window start) -> the values of the last result written."""
        last = {}
        for p, recs in sorted(read_topic(r, sink).items()):
            for _, _, key, value in recs:
                v = json.loads(value)
                self.assertEqual(v["window_end"] - v["window_start"], 10000, v)
                self.assertEqual(text(key), v["key"], "the record key is the aggregate's key")
                last[(v["key"], v["window_start"])] = v["values"]
        return last

    def stored(self, r, changelog):
        """(user, window start) -> the store's entry, as the newest record
        per key of its changelog says (a commit writes both together),
        checking each is in its task's partition."""
        entries = {}
        for p, recs in read_topic(r, changelog).items():
            for _, _, key, value in recs:
                user = key[:-8].decode()
                start = struct.unpack(">Q", key[-8:])[0] ^ (1 << 63)
                self.assertEqual(p, murmur2_partition(user.encode(), INPUT_PARTITIONS),
                                 "%s: %s's windows in its task's partition" % (changelog, user))
                entries[(user, start)] = None if value is None else decode_count_sum(value)
        return {k: v for k, v in entries.items() if v is not None}

    def test_sigkill_during_windowed_aggregation_keeps_every_window_exact(self):
        require(self, "windows")
        name = pipeline_name(self)
        t_in, sink = "in-" + name, "out-" + name
        data = Input(records_wanted(), seed() + 2)
        script = WINDOWED.substitute(input=t_in, sink=sink)
        self.run_with_kills(name, script, t_in, data, max_delay=0.3)
        want = self.reference(data)
        r = self.node.client()
        self.assertWindowsEqual(sink, self.last_emitted(r, sink), want)
        changelog = "%s.aggregate2.changelog" % name
        self.assertWindowsEqual(changelog, self.stored(r, changelog), want)
        r.close()
        self.node.stop()


if __name__ == "__main__":
    unittest.main()
