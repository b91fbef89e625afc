#!/usr/bin/python3
"""
test_joins.py - tables and joins (issue 6, docs/lua.md "Tables and joins")
on a real node: s.table (latest value per key, tombstones, :to, :stream,
GET, keyless records), stream-table, stream-stream and table-table joins
against reference models written here, co-partitioning checks, broken
scripts, a clean restart, and the SIGKILL harness of crash.py over a
stream-table and a stream-stream join.

Determinism. A task reads partition p of every input of a join together
and takes records in event-time order across them (smallest timestamp
first, ties to the input declared first), so the inputs are loaded with
explicit timestamps (PRODUCE ... TS) before the pipeline is submitted, and
the references replay exactly that merge, per partition, over what the
input topics really hold (read back with FETCH). Timestamps of the two
sides of a join never tie (one side even, the other odd, or one sequence
for both), except in the test about ties.

Tombstones. PRODUCE cannot write a null value, so a table topic with
deletes is written by a small "prep" pipeline that turns records marked
{"__delete": true} into tombstones, keeping key, timestamp and order.

Waits are bounded polls (crash.wait_caught_up, node.wait_until); the only
sleeps choose the moments of the SIGKILLs. Sizes of the crash runs come from
SLUICE_CRASH_RECORDS, SLUICE_CRASH_KILLS and SLUICE_CRASH_SEED (crash.py).

    SLUICE_BIN=/path/to/sluice tests/integration/run.sh test_joins
"""
import collections
import itertools
import json
import os
import random
import shutil
import string
import time
import unittest

from crash import (Killer, describe, kills_wanted, progress, read_topic,
                   records_wanted, say, seed, text, wait_caught_up)
from node import Error, Node, NodeTestCase, murmur2_partition, partition_ends, wait_until

WAIT = 30.0
SETTLE = 10.0  # after catching up, how long outputs may still take to show
BASE_TS = 1700000000000
_serial = itertools.count()

Rec = collections.namedtuple("Rec", "offset ts key value")


# ---- input ---------------------------------------------------------------------------


def canonical(value):
    return json.dumps(value, sort_keys=True)


def produce_timed(client, topic, records, chunk=1000):
    """Appends records (key or None, JSON value, ts ms) in order with
    pipelined PRODUCE ... TS; returns [(partition, offset)]."""
    acks = []
    for start in range(0, len(records), chunk):
        pipe = client.pipeline(transaction=False)
        for key, value, ts in records[start:start + chunk]:
            pipe.execute_command("PRODUCE", topic, "" if key is None else key, json.dumps(value),
                                 "TS", ts)
        acks.extend(tuple(a) for a in pipe.execute())
    return acks


def decoded(topic_records):
    """read_topic's {p: [(offset, ts, key, value)]} with keys as str and
    values decoded from JSON (None for a tombstone)."""
    return {p: [Rec(o, ts, None if k is None else k.decode(), None if v is None else json.loads(v))
                for o, ts, k, v in recs]
            for p, recs in topic_records.items()}


def topic_records(client, topic):
    return decoded(read_topic(client, topic))


PREP = string.Template("""\
local s = require("sluice")
s.pipeline{name = "$name"}
s.stream("$raw")
  :map(function(r)
    if r.value.__delete then return {key = r.key} end
    return r
  end)
  :to("$topic", {create = true, partitions = $partitions})
""")


class TableLoader:
    """Writes (key, value or None for a tombstone, ts) records to a table
    topic, in order, through the prep pipeline <topic>-prep reading
    <topic>-raw. load() returns once they are all in the topic; the prep
    pipeline is stopped in between (a later load resumes it). With
    settings (say "COMPACT"), the topic is created first with them (and
    TRANSACTIONAL, as the prep pipeline writes it); else the prep pipeline
    creates it."""

    def __init__(self, node, topic, partitions, *settings):
        self.node, self.topic, self.partitions = node, topic, partitions
        self.raw, self.name = topic + "-raw", topic + "-prep"
        self.loaded = 0
        client = node.client()
        try:
            client.execute_command("TOPIC", "CREATE", self.raw, "PARTITIONS", partitions)
            if settings:
                client.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", partitions,
                                       "TRANSACTIONAL", *settings)
        finally:
            client.close()

    def load(self, records):
        client = self.node.client()
        try:
            produce_timed(client, self.raw, [(k, {"__delete": True} if v is None else v, ts)
                                             for k, v, ts in records])
            script = PREP.substitute(name=self.name, raw=self.raw, topic=self.topic,
                                     partitions=self.partitions)
            reply = client.execute_command("PIPELINE", "SUBMIT", self.name, script)
            if reply != b"OK":
                raise AssertionError("prep pipeline %s: %r" % (self.name, reply))
            wait_caught_up(self.node, self.name, WAIT + len(records) / 1000)
            client.execute_command("PIPELINE", "STOP", self.name)
            self.loaded += len(records)
            held = topic_records(client, self.topic)
        finally:
            client.close()
        count = sum(len(v) for v in held.values())
        if count != self.loaded:
            raise AssertionError("table topic %s holds %d records, %d loaded"
                                 % (self.topic, count, self.loaded))
        return held


def key_in_partition(prefix, partition, partitions):
    """A key starting with prefix that PRODUCE puts in the given partition."""
    for i in itertools.count():
        key = "%s%d" % (prefix, i)
        if murmur2_partition(key.encode(), partitions) == partition:
            return key


def stream_table_input(rng_seed, n_table, n_stream, table_keys, stream_keys, keyless=0.0,
                       first_ts=BASE_TS, head_start=20):
    """Table records (updates and ~20% deletes of present keys) and stream
    records (duplicate keys, some never in the table, some keyless) on one
    strictly increasing timeline of even ms, so no two ever tie. The first
    head_start events are table records."""
    rng = random.Random(rng_seed)
    sides = ["s"] * n_stream + ["t"] * (n_table - head_start)
    rng.shuffle(sides)
    sides = ["t"] * head_start + sides
    present, table, stream = set(), [], []
    for i, side in enumerate(sides):
        ts = first_ts + 2 * i
        if side == "t":
            key = "u%d" % rng.randrange(table_keys)
            if key in present and rng.random() < 0.2:
                present.discard(key)
                table.append((key, None, ts))
            else:
                present.add(key)
                table.append((key, {"n": i, "name": "name%d" % rng.randrange(1000)}, ts))
        else:
            key = None if rng.random() < keyless else "u%d" % rng.randrange(stream_keys)
            stream.append((key, {"id": i, "page": "/p/%d" % rng.randrange(100)}, ts))
    return table, stream


def stream_stream_input(rng_seed, n, keys, step, late_frac, late_by, first_ts=BASE_TS,
                        key_prefix="k"):
    """Left and right records: a clock advancing by 0..step-1 per event,
    a late_frac share of the events behind it by up to late_by ms; left
    timestamps are even, right ones odd, so the sides never tie."""
    assert first_ts % 2 == 0
    rng = random.Random(rng_seed)
    left, right, clock = [], [], 0
    for i in range(n):
        side = rng.randrange(2)
        clock += rng.randrange(step)
        t = clock - (rng.randrange(late_by) if rng.random() < late_frac else 0)
        rec = ("%s%d" % (key_prefix, rng.randrange(keys)), {"id": i}, first_ts + 2 * t + side)
        (left if side == 0 else right).append(rec)
    return left, right


def clock_records(after_ts, partitions, prefix="clock"):
    """One right-side (odd ms) record per partition at after_ts or later,
    on keys nothing else has: it moves each task's stream time."""
    ts = after_ts | 1
    return [(key_in_partition(prefix, p, partitions), {"id": -2}, ts) for p in range(partitions)]


# ---- references -----------------------------------------------------------------------


def merge(*inputs):
    """The order a task takes records of several inputs (each in offset
    order): the input whose next record has the smallest timestamp, ties to
    the input given first. Yields (input index, record)."""
    heads = [0] * len(inputs)
    while True:
        best = None
        for i, seq in enumerate(inputs):
            if heads[i] < len(seq) and (best is None or
                                        seq[heads[i]].ts < inputs[best][heads[best]].ts):
                best = i
        if best is None:
            return
        yield best, inputs[best][heads[best]]
        heads[best] += 1


def partitions_of(*topics):
    return sorted(set(p for t in topics for p in t))


def st_fn(r, u):
    """The stream-table join function of the scripts below."""
    return {"id": r.value["id"], "n": u["n"] if u is not None else -1}


ST_FN = "function(r, u) return {id = r.value.id, n = u and u.n or -1} end"


def stream_table_reference(table, stream, join_type, table_first=True):
    """Outputs of stream:join(table, ST_FN, {type}) as a Counter of
    (key, canonical value, ts), over the topics' contents {p: [Rec]}."""
    out = collections.Counter()
    for p in partitions_of(table, stream):
        inputs = [table.get(p, []), stream.get(p, [])]
        if not table_first:
            inputs.reverse()
        values = {}
        for i, rec in merge(*inputs):
            if (i == 0) == table_first:
                if rec.value is None:
                    values.pop(rec.key, None)
                else:
                    values[rec.key] = rec.value
                continue
            u = values.get(rec.key) if rec.key is not None else None
            if u is None and join_type == "inner":
                continue
            out[(rec.key, canonical(st_fn(rec, u)), rec.ts)] += 1
    return out


def ss_fn(left, right):
    """The stream-stream join function of the scripts below."""
    return {"l": left.value["id"] if left else -1, "lt": left.ts if left else -1,
            "lk": left.key if left else "-",
            "r": right.value["id"] if right else -1, "rt": right.ts if right else -1,
            "rk": right.key if right else "-"}


SS_FN = """function(l, r)
    return {l = l and l.value.id or -1, lt = l and l.ts or -1, lk = l and l.key or "-",
            r = r and r.value.id or -1, rt = r and r.ts or -1, rk = r and r.key or "-"}
  end"""


def ss_entry(key, value, ts):
    """A stream-stream output as compared: a pair's timestamp is not
    specified, an unjoined record's is its own."""
    paired = value["l"] != -1 and value["r"] != -1
    return (key, canonical(value), None if paired else ts)


def late_records(left, right, grace):
    """How many records of the inputs {p: [Rec]} a join with this grace
    drops as late."""
    late = 0
    for p in partitions_of(left, right):
        now = None
        for _, rec in merge(left.get(p, []), right.get(p, [])):
            if now is not None and rec.ts < now - grace:
                late += 1
            else:
                now = rec.ts if now is None else max(now, rec.ts)
    return late


def pairs_of(outputs):
    return collections.Counter({e: n for e, n in outputs.items() if e[2] is None})


def stream_stream_reference(left, right, within, grace, join_type):
    """Outputs of left:join(right, SS_FN, {within, grace, type}) as a Counter
    of ss_entry, over the topics' contents {p: [Rec]}: per task, records
    older than its stream time minus grace are late (dropped); every pair of
    accepted records with one key and |t1 - t2| <= within joins once; for
    left/outer, accepted records that joined nothing come out with nil once
    stream time is past t + within + grace."""
    out = collections.Counter()
    for p in partitions_of(left, right):
        now, sides = None, collections.defaultdict(lambda: ([], []))
        for i, rec in merge(left.get(p, []), right.get(p, [])):
            if now is not None and rec.ts < now - grace:
                continue
            now = rec.ts if now is None else max(now, rec.ts)
            sides[rec.key][i].append(rec)
        for key, (ls, rs) in sides.items():
            joined = set()
            for l in ls:
                for r in rs:
                    if abs(l.ts - r.ts) <= within:
                        out[ss_entry(key, ss_fn(l, r), None)] += 1
                        joined.update((("l", l.offset), ("r", r.offset)))
            unjoined = []
            if join_type in ("left", "outer"):
                unjoined += [(l, None) for l in ls if ("l", l.offset) not in joined]
            if join_type == "outer":
                unjoined += [(None, r) for r in rs if ("r", r.offset) not in joined]
            for l, r in unjoined:
                rec = l or r
                if now > rec.ts + within + grace:
                    out[ss_entry(key, ss_fn(l, r), rec.ts)] += 1
    return out


def tt_fn(user, score):
    if user.get("drop"):
        return None
    return {"name": user["name"], "score": score["score"] if score is not None else -1}


TT_FN = """function(u, sc)
    if u.drop then return nil end
    return {name = u.name, score = sc and sc.score or -1}
  end"""


def final_table(recs):
    """{key: value} after every record of a table topic {p: [Rec]}."""
    values = {}
    for p in sorted(recs):
        for rec in recs[p]:
            if rec.value is None:
                values.pop(rec.key, None)
            else:
                values[rec.key] = rec.value
    return values


def table_table_reference(left, right, join_type):
    """The final table of left:join(right, TT_FN, {type})."""
    lv, rv = final_table(left), final_table(right)
    out = {}
    for key, user in lv.items():
        if join_type == "inner" and key not in rv:
            continue
        value = tt_fn(user, rv.get(key))
        if value is not None:
            out[key] = value
    return out


# ---- scripts ----------------------------------------------------------------------------

STREAM_TABLE = string.Template("""\
local s = require("sluice")
s.pipeline{name = "$name"}
local users = s.table("$table", {store = "users"})
s.stream("$stream")
  :join(users, $fn, {type = "$type"})
  :to("$out", {create = true, partitions = $partitions})
""")

STREAM_STREAM = string.Template("""\
local s = require("sluice")
s.pipeline{name = "$name"}
local clicks = s.stream("$left")
local views = s.stream("$right")
clicks:join(views, $fn, {within = "$within", grace = "$grace", type = "$type"})
  :to("$out", {create = true, partitions = $partitions})
""")

TABLE_TABLE = string.Template("""\
local s = require("sluice")
s.pipeline{name = "$name"}
local users = s.table("$left")
local scores = s.table("$right")
users:join(scores, $fn, {type = "$type", store = "risk"})
  :to("$out", {create = true, partitions = $partitions})
""")


def with_commit_interval(script, interval):
    """script committing every interval instead of every 100 ms: more
    commits, so that restarts and kills fall between more of them."""
    head = 's.pipeline{name = "'
    assert script.count(head) == 1
    return script.replace(head, 's.pipeline{commit_interval = "%s", name = "' % interval)


def line_of(script, marker="-- @@"):
    """The 1-based line of the script holding marker."""
    for i, line in enumerate(script.splitlines(), 1):
        if marker in line:
            return i
    raise AssertionError("no %r in the script" % marker)


# ---- test bases ---------------------------------------------------------------------------


class JoinAssertions:
    """Reading outputs and comparing them with a reference; needs self.node."""

    def outputs(self, client, topic):
        """[(partition, Rec, headers)] of the whole topic, checking that each
        keyed record is in the partition its key picks."""
        out = []
        recs = read_topic(client, topic)
        for p, rows in decoded(recs).items():
            for rec in rows:
                if rec.key is not None:
                    self.assertEqual(p, murmur2_partition(rec.key.encode(), len(recs)),
                                     "%s: key %r in partition %d" % (topic, rec.key, p))
                out.append((p, rec))
        return out

    def assertCounterEqual(self, what, got, want):
        if got == want:
            return
        missing = list((want - got).elements())
        extra = list((got - want).elements())
        self.fail("%s: %d records (want %d): %d missing, %d extra or duplicated\n"
                  "missing e.g. %s\nextra e.g. %s\nnode log tail:\n%s"
                  % (what, sum(got.values()), sum(want.values()), len(missing), len(extra),
                     sorted(missing, key=repr)[:6], sorted(extra, key=repr)[:6],
                     "\n".join(self.node.log().splitlines()[-15:])))

    def settle(self, name, topic, want, entry, timeout=WAIT):
        """Waits until the pipeline caught up and topic's outputs, as a
        Counter of entry(Rec), equal want (bounded); fails with the
        difference."""
        wait_caught_up(self.node, name, timeout)
        client = self.node.client()
        got = []
        try:
            def same():
                got[:] = [collections.Counter(entry(rec) for _, rec in
                                              self.outputs(client, topic))]
                return got[0] == want
            try:
                wait_until(same, SETTLE, 0.05, "outputs of %s" % name)
            except AssertionError:
                pass
            self.assertCounterEqual(topic, got[0], want)
        finally:
            client.close()
        return got[0]

    def latest_per_key(self, client, topic):
        """{key: value} of the newest record per key (tombstones remove)."""
        last = {}
        for _, rec in sorted(self.outputs(client, topic), key=lambda x: (x[0], x[1].offset)):
            last[rec.key] = rec.value
        return {k: v for k, v in last.items() if v is not None}

    def get(self, client, store, key):
        value = client.execute_command("GET", store, key)
        return None if value is None else json.loads(value)


def st_entry(rec):
    return (rec.key, canonical(rec.value), rec.ts)


def ss_output(rec):
    return ss_entry(rec.key, rec.value, rec.ts)


class JoinTestCase(NodeTestCase, JoinAssertions):
    def names(self, *what):
        n = next(_serial)
        return ["j%d-%s" % (n, w) for w in ("p",) + what]

    def submit(self, name, script):
        with self.node.raw() as c:
            return c.cmd("PIPELINE", "SUBMIT", name, script)

    def submit_ok(self, name, script):
        """Submits a script that must be accepted (and stops it at the end)."""
        reply = self.submit(name, script)
        self.assertEqual(reply, "OK", "PIPELINE SUBMIT %s: %r\n--- script:\n%s"
                         % (name, reply, script))
        self.addCleanup(self._stop_quietly, name)

    def _stop_quietly(self, name):
        if self.node.alive():
            try:
                self.r.execute_command("PIPELINE", "STOP", name)
            except Exception:
                pass

    def create(self, topic, partitions):
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", partitions)

    def state(self, name):
        d = describe(self.r, name)
        return text(d["state"]), text(d["error"])


# ---- tables ------------------------------------------------------------------------------


def table_changes_input(rng_seed, n, keys):
    """Upserts and deletes (only of present keys, so each record is a
    change) on strictly increasing timestamps."""
    rng = random.Random(rng_seed)
    present, out = set(), []
    for i in range(n):
        key = "k%d" % rng.randrange(keys)
        if key in present and rng.random() < 0.25:
            present.discard(key)
            out.append((key, None, BASE_TS + i))
        else:
            present.add(key)
            out.append((key, {"n": i, "name": "v%d" % rng.randrange(100)}, BASE_TS + i))
    return out


class TableTest(JoinTestCase):
    def test_table_keeps_the_latest_value_per_key_and_tombstones_delete(self):
        name, tbl, changes = self.names("users", "changes")
        records = table_changes_input(11, 300, 25)
        held = TableLoader(self.node, tbl, 2).load(records)
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
local users = s.table("%s", {store = "users"})
users:to("%s", {create = true, partitions = 2})
""" % (name, tbl, changes))
        # every change, tombstones included, in order per key, with its timestamp
        want = collections.Counter((r.key, canonical(r.value), r.ts)
                                   for recs in held.values() for r in recs)
        self.settle(name, changes, want, st_entry)
        per_key = collections.defaultdict(list)
        for _, rec in sorted(self.outputs(self.r, changes), key=lambda x: (x[0], x[1].offset)):
            per_key[rec.key].append((rec.value, rec.ts))
        want_per_key = collections.defaultdict(list)
        for key, value, ts in records:
            want_per_key[key].append((value, ts))
        self.assertEqual(dict(per_key), dict(want_per_key))
        final = final_table(held)
        self.assertLess(len(final), 25, "some keys end deleted")
        for key in sorted(want_per_key):
            self.assertEqual(self.get(self.r, name + ".users", key), final.get(key), key)

    def test_table_stream_gives_its_changes_to_stream_operators(self):
        name, tbl, out = self.names("users", "out")
        records = table_changes_input(12, 200, 15)
        held = TableLoader(self.node, tbl, 2).load(records)
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
s.table("%s", {store = "users"})
  :stream()
  :filter(function(r) return r.value == nil or r.value.n %% 2 == 0 end)
  :map(function(r)
    return {key = r.key, value = {k = r.key, n = r.value and r.value.n or -1,
                                  gone = r.value == nil}}
  end)
  :to("%s", {create = true, partitions = 2})
""" % (name, tbl, out))
        want = collections.Counter(
            (r.key, canonical({"k": r.key, "n": r.value["n"] if r.value else -1,
                               "gone": r.value is None}), r.ts)
            for recs in held.values() for r in recs if r.value is None or r.value["n"] % 2 == 0)
        self.assertTrue(any(json.loads(v)["gone"] for _, v, _ in want), "the input deletes")
        self.settle(name, out, want, st_entry)

    def test_a_table_nothing_reads_is_materialized_under_its_default_store_name(self):
        name, tbl, other, out = self.names("users", "other", "out")
        self.create(tbl, 1)
        self.create(other, 1)
        produce_timed(self.r, tbl, [("a", {"n": 1}, 10), ("b", {"n": 2}, 20), ("a", {"n": 3}, 30)])
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
s.stream("%s"):to("%s", {create = true})
local unread = s.table("%s")
""" % (name, other, out, tbl))
        produce_timed(self.r, other, [("x", {"n": 0}, 5)])
        wait_caught_up(self.node, name, WAIT)
        ops = describe(self.r, name)["ops"]
        table_ops = [op for op in ops if text(op[2]).endswith(":4")]
        self.assertEqual(len(table_ops), 1, "one op on the s.table line: %r" % (ops,))
        store = "%s.table%d" % (name, table_ops[0][0])
        self.assertEqual(self.get(self.r, store, "a"), {"n": 3})
        self.assertEqual(self.get(self.r, store, "b"), {"n": 2})
        self.assertIsNone(self.get(self.r, store, "c"))

    def test_a_lone_table_is_a_pipeline_and_creates_its_topic_compacted(self):
        name, tbl = self.names("users")
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
s.table("%s", {partitions = 2, store = "users"})
""" % (name, tbl))
        desc = self.r.execute_command("TOPIC", "DESCRIBE", tbl)
        fields = dict(zip(desc[0::2], desc[1::2]))
        settings = {text(k): text(v) for k, v in zip(fields[b"settings"][0::2],
                                                     fields[b"settings"][1::2])}
        self.assertEqual(settings.get("cleanup.policy"), "compact", settings)
        self.assertEqual(len(fields[b"partitions"]), 2)
        produce_timed(self.r, tbl, [("a", {"n": 1}, 10), ("b", {"n": 2}, 20), ("a", {"n": 3}, 30),
                                    ("c", {"n": 4}, 40), ("d", {"n": 5}, 50)])
        wait_caught_up(self.node, name, WAIT)
        self.assertEqual({k: self.get(self.r, name + ".users", k) for k in "abcde"},
                         {"a": {"n": 3}, "b": {"n": 2}, "c": {"n": 4}, "d": {"n": 5}, "e": None})

    def test_a_table_record_without_a_key_fails_per_on_error(self):
        _, dead, stop, tbl, dead_out, stop_out = self.names("dead", "stop", "users", "d-out",
                                                          "s-out")
        self.create(tbl, 1)
        acks = produce_timed(self.r, tbl, [("a", {"n": 1}, 10), (None, {"n": 2}, 20),
                                           ("b", {"n": 3}, 30)])
        script = """\
local s = require("sluice")
s.pipeline{name = "%s", on_error = "%s"}
s.table("%s", {store = "users"}):to("%s", {create = true})
"""
        self.submit_ok(dead, script % (dead, "dead_letter", tbl, dead_out))
        wait_caught_up(self.node, dead, WAIT)
        self.submit_ok(stop, script % (stop, "stop", tbl, stop_out))
        letters = self.r.execute_command("FETCH", dead + ".dlq", 0, 0, "COUNT", 100)
        self.assertEqual([(rec[2], json.loads(rec[3])) for rec in letters], [(None, {"n": 2})])
        h = {text(k): text(v) for k, v in zip(letters[0][4][0::2], letters[0][4][1::2])}
        self.assertEqual((h.get("source.topic"), h.get("source.offset")), (tbl, str(acks[1][1])))
        self.assertTrue(h.get("error"), "the dead letter says why: %r" % (h,))
        self.assertEqual(self.get(self.r, dead + ".users", "a"), {"n": 1})
        self.assertEqual(self.get(self.r, dead + ".users", "b"), {"n": 3})
        self.assertEqual([(r.key, r.value) for _, r in self.outputs(self.r, dead_out)],
                         [("a", {"n": 1}), ("b", {"n": 3})])
        wait_until(lambda: self.state(stop)[0] == "failed", WAIT, 0.05,
                   "pipeline %s to fail on the keyless record" % stop)
        self.assertIn("key", self.state(stop)[1].lower())
        self.assertEqual([(r.key, r.value) for _, r in self.outputs(self.r, stop_out)],
                         [("a", {"n": 1})], "output up to the failed record, not after")


# ---- stream-table ------------------------------------------------------------------------


class StreamTableJoinTest(JoinTestCase):
    def test_the_join_function_returns_a_value_or_a_record_table_as_map_does(self):
        name, tbl, stream, out = self.names("users", "clicks", "out")
        TableLoader(self.node, tbl, 1).load([("a", {"name": "ann"}, 10),
                                             ("b", {"name": "bob"}, 20)])
        self.create(stream, 1)
        produce_timed(self.r, stream, [("a", {"id": 1}, 100), ("b", {"id": 2}, 200),
                                       ("c", {"id": 3}, 300), ("a", {"id": 4}, 400)])
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
local users = s.table("%s")
s.stream("%s")
  :join(users, function(r, u)
    if r.value.id == 4 then return "plain text" end
    return {key = u.name, value = {id = r.value.id}, ts = r.ts + 1}
  end)
  :to("%s", {create = true})
""" % (name, tbl, stream, out))
        want = [("ann", {"id": 1}, 101), ("bob", {"id": 2}, 201)]
        wait_caught_up(self.node, name, WAIT)
        wait_until(lambda: len(self.r.execute_command("FETCH", out, 0, 0, "COUNT", 100)) >= 3,
                   SETTLE, 0.05, "3 outputs")
        got = self.r.execute_command("FETCH", out, 0, 0, "COUNT", 100)
        self.assertEqual([(f[2].decode(), json.loads(f[3]), f[1]) for f in got[:2]], want)
        self.assertEqual((got[2][2], got[2][3], got[2][1]), (b"a", b"plain text", 400),
                         "a value keeps r's key and timestamp; a string is written as it is")
        self.assertEqual(len(got), 3, "c has no user: the inner join (the default) drops it")

    def test_a_replaced_pipeline_keeps_its_table_and_joins_each_record_once(self):
        # The stream side goes through key_by (a repartition, drained when a
        # version is replaced); the table's store and committed offsets carry
        # over, so clicks after a replace still find their users.
        name, tbl, stream, out = self.names("users", "clicks", "out")
        self.create(tbl, 2)
        self.create(stream, 2)
        produce_timed(self.r, tbl, [("u%d" % u, {"country": "c%d" % u}, 10 + u)
                                    for u in range(40)])
        script = """\
local s = require("sluice")
s.pipeline{name = "%s", commit_interval = "5ms"}
local users = s.table("%s")
s.stream("%s")
  :key_by("user")
  :join(users, function(r, u)
    return {id = r.value.id, country = u and u.country, version = "%%s"}
  end, {type = "left"})
  :to("%s", {create = true})
""" % (name, tbl, stream, out)
        self.submit_ok(name, script % "v1")
        wait_caught_up(self.node, name, WAIT)
        total = 0
        for version in ("v2", "v3", "v4"):
            produce_timed(self.r, stream, [("k%d" % i, {"id": i, "user": "u%d" % (i % 40)},
                                            1000 + i) for i in range(total, total + 2000)])
            total += 2000
            if version == "v2":  # v1 joins the first 2000 for sure; the rest under load
                wait_until(lambda: len(self.outputs(self.r, out)) >= 2000, SETTLE, 0.05,
                           "v1's outputs")
            self.assertEqual(self.submit(name, script % version), "OK")
        wait_caught_up(self.node, name, WAIT)
        wait_until(lambda: len(self.outputs(self.r, out)) >= total, SETTLE, 0.05, "outputs")
        got = [rec.value for _, rec in self.outputs(self.r, out)]
        self.assertEqual(sorted(v["id"] for v in got), list(range(total)), "each click once")
        wrong = [v for v in got if v.get("country") != "c%d" % (v["id"] % 40)]
        self.assertEqual(wrong, [], "every click found its user, before and after replaces")
        self.assertIn("v1", {v["version"] for v in got})

    def run_random(self, join_type, rng_seed):
        name, tbl, stream, out = self.names("users", "clicks", "out")
        partitions = 3
        table_in, stream_in = stream_table_input(rng_seed, 400, 700, table_keys=30,
                                                 stream_keys=36, keyless=0.02)
        table = TableLoader(self.node, tbl, partitions).load(table_in)
        self.create(stream, partitions)
        produce_timed(self.r, stream, stream_in)
        clicks = topic_records(self.r, stream)
        self.submit_ok(name, STREAM_TABLE.substitute(name=name, table=tbl, stream=stream, fn=ST_FN,
                                                     type=join_type, out=out,
                                                     partitions=partitions))
        want = stream_table_reference(table, clicks, join_type)
        misses = sum(n for (k, v, _), n in want.items() if json.loads(v)["n"] == -1)
        if join_type == "left":
            self.assertGreater(misses, 20, "the input has stream records without a match")
            self.assertTrue(any(k is None for k, _, _ in want), "and keyless ones")
        self.assertGreater(sum(want.values()) - misses, 200, "and many with one")
        self.settle(name, out, want, st_entry)
        final = final_table(table)
        for key in sorted({k for k, _, _ in table_in}):
            self.assertEqual(self.get(self.r, name + ".users", key), final.get(key), key)

    def test_inner_join_matches_the_reference_on_random_input(self):
        self.run_random("inner", 21)

    def test_left_join_matches_the_reference_on_random_input(self):
        self.run_random("left", 22)

    def test_a_table_waits_for_a_stream_on_its_way_through_a_key_by(self):
        # The clicks reach the join through key_by's repartition topic, at
        # that stage's commits; the table is read directly. The table must
        # not run ahead meanwhile: each click sees the value of its time.
        name, tbl, stream, out = self.names("users", "clicks", "out")
        self.create(tbl, 1)
        self.create(stream, 1)
        produce_timed(self.r, tbl, [("a", {"n": 1}, 100), ("a", {"n": 2}, 300)])
        produce_timed(self.r, stream, [(None, {"id": 1, "user": "a"}, 200),
                                       (None, {"id": 2, "user": "a"}, 400)])
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
local users = s.table("%s")
s.stream("%s"):key_by("user")
  :join(users, function(r, u) return {id = r.value.id, n = u and u.n or -1} end, {type = "left"})
  :to("%s", {create = true})
""" % (name, tbl, stream, out))
        self.settle(name, out, collections.Counter([(1, 1), (2, 2)]),
                    lambda rec: (rec.value["id"], rec.value["n"]))

    def test_the_table_value_at_the_stream_records_time_ties_to_the_input_declared_first(self):
        _, name_left, name_inner, tbl, stream, out_left, out_inner = self.names(
            "left", "inner", "users", "clicks", "out-l", "out-i")
        TableLoader(self.node, tbl, 1).load([
            ("a", {"n": 1}, 100), ("b", {"n": 7}, 150), ("a", {"n": 2}, 300), ("a", None, 500)])
        self.create(stream, 1)
        produce_timed(self.r, stream, [
            ("b", {"id": 1}, 50),    # before b's first value
            ("a", {"id": 2}, 100),   # ties with a=1: the stream is declared first
            ("a", {"id": 3}, 200),   # a=1
        ])
        self.r.execute_command("PRODUCE", stream, "a", json.dumps({"id": 4}), "TS", 300,
                               "HEADER", "trace", "t4")  # ties with a=2: still a=1
        produce_timed(self.r, stream, [
            ("a", {"id": 5}, 400),   # a=2
            ("a", {"id": 6}, 600),   # a deleted at 500
            ("c", {"id": 7}, 700),   # never in the table
            (None, {"id": 8}, 800),  # no key
            ("b", {"id": 9}, 900),   # b=7
        ])
        script = """\
local s = require("sluice")
s.pipeline{name = "%s"}
local clicks = s.stream("%s")
local users = s.table("%s", {store = "users"})
clicks:join(users, function(r, u)
    return {id = r.value.id, n = u and u.n or -1, trace = r.headers.trace}
  end, {type = "%s"})
  :to("%s", {create = true})
"""
        self.submit_ok(name_left, script % (name_left, stream, tbl, "left", out_left))
        wait_caught_up(self.node, name_left, WAIT)
        self.submit_ok(name_inner, script % (name_inner, stream, tbl, "inner", out_inner))
        want_left = [("b", 1, -1, 50), ("a", 2, -1, 100), ("a", 3, 1, 200), ("a", 4, 1, 300),
                     ("a", 5, 2, 400), ("a", 6, -1, 600), ("c", 7, -1, 700), (None, 8, -1, 800),
                     ("b", 9, 7, 900)]
        want_inner = [w for w in want_left if w[2] != -1]
        for name, out, want in ((name_left, out_left, want_left),
                                (name_inner, out_inner, want_inner)):
            def entry(rec):
                return (rec.key, rec.value["id"], rec.value["n"], rec.ts)
            self.settle(name, out, collections.Counter(want), entry)
            got = self.outputs(self.r, out)
            self.assertEqual([entry(r) for _, r in got], want, "in input order")
            traced = [r.value.get("trace") for _, r in got]
            self.assertEqual([t for t in traced if t], ["t4"])
            fetched = self.r.execute_command("FETCH", out, 0, 0, "COUNT", 100)
            headers = {json.loads(f[3])["id"]: f[4] for f in fetched}
            self.assertEqual(headers[4], [b"trace", b"t4"], "the output keeps r's headers")


# ---- stream-stream ---------------------------------------------------------------------------


class StreamStreamJoinTest(JoinTestCase):
    def test_many_records_with_one_key_and_time_pair_and_stay_matched(self):
        """3000 left records share key and time (over 300 KB: the buffer entry
        spills into chunks); two right records 500 ms later pair with each of
        them, so none is unjoined; a later left record is, once a clock
        record closes its window; the chunks expire with their entry. Then
        the same after a restart."""
        name, left, right, out = self.names("clicks", "views", "out")
        self.create(left, 1)
        self.create(right, 1)
        pad = "x" * 80
        produce_timed(self.r, left, [("hot", {"id": i, "pad": pad}, BASE_TS) for i in range(3000)])
        produce_timed(self.r, right, [("hot", {"id": 10000 + i}, BASE_TS + 500) for i in range(2)])
        # the function reads the pad, so the buffer keeps it (and spills)
        fn = SS_FN.replace("return {",
                            "return {pad = l and l.value.pad and #l.value.pad or 0, ")
        script = STREAM_STREAM.substitute(name=name, left=left, right=right, fn=fn,
                                          within="1s", grace="0ms", type="outer", out=out,
                                          partitions=1)
        self.submit_ok(name, script)

        def entry(rec):
            return (rec.key, rec.value["l"], rec.value["r"])

        def buffered():  # the join store's keys: side byte ('l': a left chunk) + key
            keys, cursor = set(), "0"
            while True:
                cursor, items = self.r.execute_command("SCAN", name + ".join2", cursor, "COUNT",
                                                       1000)
                keys |= {bytes(k) for k in items[0::3]}
                if int(cursor) == 0:
                    return keys
        want = collections.Counter(("hot", i, 10000 + k) for i in range(3000) for k in range(2))
        self.settle(name, out, want, entry)
        chunks = {k for k in buffered() if k.startswith(b"lhot")}
        self.assertGreaterEqual(len(chunks), 4, "300 KB in chunks of at most 64 KB")
        produce_timed(self.r, left, [("hot", {"id": 5000}, BASE_TS + 10000),
                                     ("clock", {"id": 6000}, BASE_TS + 60000)])
        want[("hot", 5000, -1)] = 1  # closed by the clock; the clock's own window is still open
        self.settle(name, out, want, entry)
        wait_until(lambda: buffered() == {b"Lclock"}, SETTLE, 0.05, "expired buffers")
        self.node.restart()
        self.r = self.node.client()
        produce_timed(self.r, right, [("hot", {"id": 10002}, BASE_TS + 800),  # late: dropped
                                      ("clock", {"id": 10003}, BASE_TS + 120000)])
        want[("clock", 6000, -1)] = 1  # closed by the right side's clock now
        self.settle(name, out, want, entry)

    def test_pairs_late_records_and_unjoined_ones_on_a_crafted_input(self):
        """within 100 ms, grace 50 ms, one partition. Taken in event-time
        order across the inputs: d@900 a@1000 A@1050 A@1960 [A@1560 late:
        stream time 1960] a@2000 a@1990 (10 ms out of order: in grace)
        [a@1500 late] b@2050 A@2100 C@2080 (left lower case, right capital)."""
        names = self.names("inner", "left", "outer", "clicks", "views", "o-i", "o-l", "o-o")
        pipelines, (left, right), outs = names[1:4], names[4:6], names[6:]
        self.create(left, 1)
        self.create(right, 1)
        produce_timed(self.r, left, [("d", {"id": 0}, 900), ("a", {"id": 1}, 1000),
                                     ("a", {"id": 2}, 2000), ("a", {"id": 3}, 1990),
                                     ("a", {"id": 4}, 1500), ("b", {"id": 5}, 2050)])
        produce_timed(self.r, right, [("a", {"id": 11}, 1050), ("a", {"id": 12}, 1960),
                                      ("a", {"id": 13}, 1560), ("a", {"id": 14}, 2100),
                                      ("c", {"id": 15}, 2080)])
        for name, join_type, out in zip(pipelines, ("inner", "left", "outer"), outs):
            script = STREAM_STREAM.substitute(
                name=name, left=left, right=right, fn=SS_FN, within="100ms", grace="50ms",
                type=join_type, out=out, partitions=1)
            self.submit_ok(name, script.replace(', type = "inner"', ""))  # the default
            wait_caught_up(self.node, name, WAIT)

        def pair(key, lid, lts, rid, rts):
            return ss_entry(key, {"l": lid, "lt": lts, "lk": key, "r": rid, "rt": rts,
                                  "rk": key}, None)

        def alone(key, lid, rid, ts):
            return ss_entry(key, {"l": lid, "lt": ts if lid != -1 else -1,
                                  "lk": key if lid != -1 else "-", "r": rid,
                                  "rt": ts if rid != -1 else -1, "rk": key if rid != -1 else "-"},
                            ts)

        pairs = [pair("a", 1, 1000, 11, 1050), pair("a", 2, 2000, 12, 1960),
                 pair("a", 3, 1990, 12, 1960), pair("a", 2, 2000, 14, 2100)]  # |100| <= within
        # stream time is 2100: d@900 has closed (900 + 150 < 2100), b@2050 and C@2080 not yet
        phase1 = {"inner": pairs, "left": pairs + [alone("d", 0, -1, 900)],
                  "outer": pairs + [alone("d", 0, -1, 900)]}
        phase2 = {"inner": pairs, "left": phase1["left"] + [alone("b", 5, -1, 2050)],
                  "outer": phase1["outer"] + [alone("b", 5, -1, 2050), alone("c", -1, 15, 2080)]}
        inputs = [topic_records(self.r, t) for t in (left, right)]
        for join_type, want in phase1.items():
            self.assertEqual(stream_stream_reference(*inputs, 100, 50, join_type),
                             collections.Counter(want), "the reference model, " + join_type)
        for name, join_type, out in zip(pipelines, ("inner", "left", "outer"), outs):
            self.settle(name, out, collections.Counter(phase1[join_type]), ss_output)
        metrics = self.node.http_get("/metrics")[1].decode()
        for name in pipelines:
            late = [int(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if
                    line.startswith('sluice_pipeline_late_records_total{pipeline="%s",' % name)]
            self.assertEqual(sum(late), 2, "%s counts A@1560 and a@1500 late: %r" % (name, late))
        produce_timed(self.r, right, clock_records(10000, 1))
        inputs = [topic_records(self.r, t) for t in (left, right)]
        for name, join_type, out in zip(pipelines, ("inner", "left", "outer"), outs):
            want = collections.Counter(phase2[join_type])
            self.assertEqual(stream_stream_reference(*inputs, 100, 50, join_type), want)
            self.settle(name, out, want, ss_output)

    def run_random(self, join_type, rng_seed):
        name, left, right, out = self.names("clicks", "views", "out")
        partitions, within, grace = 2, 150, 200
        left_in, right_in = stream_stream_input(rng_seed, 700, keys=10, step=12, late_frac=0.15,
                                                late_by=300)
        last = max(ts for _, _, ts in left_in + right_in)
        right_in += clock_records(last + within + grace + 1000, partitions)
        self.create(left, partitions)
        self.create(right, partitions)
        produce_timed(self.r, left, left_in)
        produce_timed(self.r, right, right_in)
        inputs = [topic_records(self.r, t) for t in (left, right)]
        want = stream_stream_reference(*inputs, within, grace, join_type)
        self.assertGreater(late_records(*inputs, grace), 10, "the input has late records")
        self.assertLess(sum(pairs_of(want).values()),
                        sum(pairs_of(stream_stream_reference(*inputs, within, 10 ** 9,
                                                             join_type)).values()),
                        "that would have joined")
        paired = sum(n for (_, _, ts), n in want.items() if ts is None)
        self.assertGreater(paired, 100)
        if join_type != "inner":
            self.assertGreater(sum(want.values()) - paired, 20, "and records that join nothing")
        self.submit_ok(name, STREAM_STREAM.substitute(
            name=name, left=left, right=right, fn=SS_FN, within="%dms" % within,
            grace="%dms" % grace, type=join_type, out=out, partitions=partitions))
        self.settle(name, out, want, ss_output)

    def test_an_aggregate_after_an_outer_join_counts_its_unjoined_records(self):
        """An outer join's unjoined records, emitted when their window
        closes (at the flush before a commit), reach an aggregate of the
        same stage, whose results come out without more input (that they
        leave in that same flush is test_ops.c's
        test_a_join_flushes_before_the_aggregate_it_feeds)."""
        name, left, right, out = self.names("clicks", "views", "out")
        self.create(left, 1)
        self.create(right, 1)
        produce_timed(self.r, left, [("d", {"id": 2}, 900), ("a", {"id": 1}, 1000)])
        produce_timed(self.r, right, [("a", {"id": 11}, 1050), ("c", {"id": 12}, 1200)]
                      + clock_records(10000, 1))
        self.submit_ok(name, """
local s = require("sluice")
s.pipeline{name = "%s"}
s.stream("%s"):join(s.stream("%s"), function(l, r)
    return {both = (l and r) and 1 or 0}
  end, {within = "100ms", grace = "50ms", type = "outer"})
  :aggregate{n = s.count(), paired = s.sum("both")}
  :to("%s", {create = true})
""" % (name, left, right, out))
        # a: one pair; d, c: unjoined; the clock record: unjoined, but its
        # window is still open (nothing later closes it)
        want = {"a": {"n": 1, "paired": 1}, "c": {"n": 1, "paired": 0},
                "d": {"n": 1, "paired": 0}}
        wait_caught_up(self.node, name, WAIT)
        client = self.node.client()
        try:
            got = {}

            def latest():
                got.clear()
                got.update({k: v["values"] for k, v in self.latest_per_key(client, out).items()})
                return got == want
            wait_until(latest, SETTLE, 0.05, "aggregate results of the join")
        except AssertionError:
            self.assertEqual(got, want)
        finally:
            client.close()

    def test_inner_join_matches_the_reference_on_random_input(self):
        self.run_random("inner", 31)

    def test_left_join_matches_the_reference_on_random_input(self):
        self.run_random("left", 32)

    def test_outer_join_matches_the_reference_on_random_input(self):
        self.run_random("outer", 33)


# ---- table-table ------------------------------------------------------------------------------


def table_table_input(rng_seed, n, keys):
    """Upserts and deletes on both sides, one timeline; some users are
    marked drop (the join function returns nil for them)."""
    rng = random.Random(rng_seed)
    left, right = [], []
    for i in range(n):
        key = "k%d" % rng.randrange(keys)
        ts = BASE_TS + i
        if rng.random() < 0.2:
            value = None
        elif i % 2 == 0:
            value = {"name": "n%d" % i, "drop": rng.random() < 0.15}
        else:
            value = {"score": i}
        (left if i % 2 == 0 else right).append((key, value, ts))
    return left, right


PROJECTED = string.Template("""\
local s = require("sluice")
s.pipeline{name = "$name", on_error = "stop"}
local auctions = s.stream("$auctions"):key_by("seller")
s.stream("$people"):join(auctions, function(p, a)
    return {name = p.value.name, $reads}
  end, {within = "10s", store = "pairs"})
  :to("$out", {create = true})
""")


class ProjectionTest(JoinTestCase):
    """A key_by whose records only a join reads writes to its repartition
    topic only the fields the join function reads (docs/lua.md, "Functions
    run without Lua")."""

    def people_and_auctions(self, people, auctions):
        self.create(people, 2)
        self.create(auctions, 2)
        produce_timed(self.r, people, [("p%d" % i, {"id": i, "name": "n%d" % i, "city": "c"},
                                        BASE_TS + 1000 * i) for i in range(5)])
        return [("a%d" % i, {"id": i, "seller": "p%d" % (i % 5), "reserve": 10 * i,
                             "item": "i%d" % i, "description": "d" * 200}, BASE_TS + 1000 * (i % 5))
                for i in range(40)]

    def test_a_key_by_before_a_join_writes_only_what_the_join_reads(self):
        name, people, auctions, out = self.names("people", "auctions", "out")
        rows = self.people_and_auctions(people, auctions)
        produce_timed(self.r, auctions, rows)
        self.submit_ok(name, PROJECTED.substitute(
            name=name, auctions=auctions, people=people, out=out,
            reads="reserve = a.value.reserve, item = a.value.item"))
        want = collections.Counter((v["seller"], v["reserve"], v["item"], "n" + v["seller"][1:])
                                   for _, v, _ in rows)
        self.settle(name, out, want,
                    lambda rec: (rec.key, rec.value["reserve"], rec.value["item"],
                                 rec.value["name"]))
        kept = [rec.value for recs in topic_records(self.r, name + ".repartition.1").values()
                for rec in recs if rec.value is not None]
        self.assertEqual(len(kept), len(rows))
        self.assertEqual(sorted((v[""], v["reserve"], v["item"]) for v in kept),
                         sorted(("\x00item,reserve,", v["reserve"], v["item"]) for _, v, _ in rows))
        self.assertEqual({tuple(sorted(v)) for v in kept}, {("", "item", "reserve")})
        # the join buffers the people (left, 'L') with the one field it reads
        people_buffered = [v for k, v in self.scan(name + ".pairs") if k.startswith(b"L")]
        self.assertEqual(len(people_buffered), 5)
        for v in people_buffered:
            self.assertIn(b'{"":"\\u0000name,","name":"n', v)
            self.assertNotIn(b"city", v)

    def scan(self, store):
        out, cursor = [], "0"
        while True:
            cursor, items = self.r.execute_command("SCAN", store, cursor, "COUNT", 1000)
            out.extend(zip(items[0::3], items[2::3]))
            if int(cursor) == 0:
                return out

    def test_a_buffered_record_without_a_field_the_function_reads_fails_naming_both(self):
        """Records buffered by a version that read fewer fields, joined by a
        version submitted after a stop that reads more: the join fails the
        record, naming what the buffer keeps and what the function reads."""
        name, people, auctions, out = self.names("people", "auctions", "out")
        rows = self.people_and_auctions(people, auctions)
        produce_timed(self.r, auctions, [(k, v, ts + 60000) for k, v, ts in rows])
        self.submit_ok(name, PROJECTED.substitute(
            name=name, auctions=auctions, people=people, out=out,
            reads="reserve = a.value.reserve"))
        wait_caught_up(self.node, name, WAIT)  # the auctions wait in the buffer: no one yet
        self.assertEqual(self.r.execute_command("PIPELINE", "STOP", name), b"OK")
        self.submit_ok(name, PROJECTED.substitute(
            name=name, auctions=auctions, people=people, out=out,
            reads="reserve = a.value.reserve, item = a.value.item"))
        # at the join's stream time (the newest auction's): not late
        produce_timed(self.r, people, [("p4", {"id": 4, "name": "n4"}, BASE_TS + 64000)])
        wait_until(lambda: self.state(name)[0] == "failed", WAIT, 0.05,
                   "pipeline %s to fail on the buffered record" % name)
        error = self.state(name)[1]
        self.assertIn("keeps only the fields 'reserve,'", error)
        self.assertIn("reads 'item,reserve,'", error)
        self.assertIn("new store", error)

    def test_replacing_a_join_that_reads_more_than_its_buffer_keeps_is_refused(self):
        name, people, auctions, out = self.names("people", "auctions", "out")
        rows = self.people_and_auctions(people, auctions)
        produce_timed(self.r, auctions, rows)
        fewer = PROJECTED.substitute(name=name, auctions=auctions, people=people, out=out,
                                     reads="reserve = a.value.reserve")
        more = PROJECTED.substitute(name=name, auctions=auctions, people=people, out=out,
                                    reads="reserve = a.value.reserve, item = a.value.item")
        self.submit_ok(name, fewer)
        wait_caught_up(self.node, name, WAIT)
        reply = self.submit(name, more)
        self.assertIn("store 'pairs' holds right records", reply)
        self.assertIn("only the fields 'reserve,'", reply)
        self.assertIn("reads 'item,reserve,'", reply)
        self.assertEqual(self.state(name), ("running", ""), "the running version stays")
        self.assertEqual(self.submit(name, fewer.replace('"10s"', '"20s"')), "OK",
                         "reading the same fields is no change")
        reply = self.submit(name, fewer.replace("name = p.value.name", "city = p.value.city"))
        self.assertIn("store 'pairs' holds left records", reply)
        self.assertIn("only the fields 'name,'", reply)
        self.assertEqual(self.submit(name, more.replace('"pairs"', '"pairs2"')), "OK",
                         "a new store starts empty")


class TableTableJoinTest(JoinTestCase):
    def run_random(self, join_type, rng_seed):
        name, users, scores, out = self.names("users", "scores", "out")
        partitions = 2
        left_in, right_in = table_table_input(rng_seed, 600, 40)
        left = TableLoader(self.node, users, partitions).load(left_in)
        right = TableLoader(self.node, scores, partitions).load(right_in)
        want = table_table_reference(left, right, join_type)
        lv, rv = final_table(left), final_table(right)
        self.assertTrue(set(lv) - set(rv) and set(rv) - set(lv), "keys on one side only")
        self.assertTrue(any(v.get("drop") for v in lv.values()), "a value the function drops")
        self.assertGreater(len(want), 5)
        self.submit_ok(name, TABLE_TABLE.substitute(name=name, left=users, right=scores,
                                                    fn=TT_FN, type=join_type, out=out,
                                                    partitions=partitions))
        wait_caught_up(self.node, name, WAIT)
        got = []

        def same():
            got[:] = [self.latest_per_key(self.r, out)]
            return got[0] == want
        try:
            wait_until(same, SETTLE, 0.05, "the joined table in %s" % out)
        except AssertionError:
            pass
        self.assertEqual(got[0], want, "the newest value per key of the output topic")
        keys = sorted({k for k, _, _ in left_in + right_in})
        stored = {k: self.get(self.r, name + ".risk", k) for k in keys}
        self.assertEqual({k: v for k, v in stored.items() if v is not None}, want,
                         "GET on the join's store")

    def test_a_result_that_is_not_json_fails_the_record_and_names_the_join(self):
        # A table-table join keeps JSON (joins over it read it back): a plain
        # string result is refused where it is made, through on_error.
        name, users, scores, out = self.names("users", "scores", "out")
        self.create(users, 1)
        self.create(scores, 1)
        produce_timed(self.r, users, [("a", {"n": 1}, 10), ("b", {"n": 2}, 20)])
        produce_timed(self.r, scores, [("a", {"s": 5}, 30), ("b", {"s": 6}, 40)])
        script = TABLE_TABLE.substitute(
            name=name, left=users, right=scores, type="left", out=out, partitions=1,
            fn='function(u, s) if s and s.s == 6 then return "plain text" end return u end')
        self.submit_ok(name, script.replace('s.pipeline{name = "%s"}' % name,
                                            's.pipeline{name = "%s", on_error = "skip"}' % name))
        wait_caught_up(self.node, name, WAIT)
        wait_until(lambda: len(self.outputs(self.r, out)) == 3, SETTLE, 0.05, "outputs")
        got = [(rec.key, rec.value) for _, rec in self.outputs(self.r, out)]
        self.assertEqual(got, [("a", {"n": 1}), ("b", {"n": 2}), ("a", {"n": 1})])
        self.assertEqual(self.get(self.r, name + ".risk", "b"), {"n": 2}, "b kept its value")
        errors = [op[5] for op in describe(self.r, name)["ops"] if text(op[1]) == "join"]
        self.assertEqual(errors, [1])
        self.assertIn("returned a value that is not JSON", self.node.log())

    def test_inner_join_final_table_matches_the_reference(self):
        self.run_random("inner", 41)

    def test_left_join_final_table_matches_the_reference(self):
        self.run_random("left", 42)

    def test_a_key_leaves_the_join_when_a_side_it_needs_deletes_it(self):
        name, users, scores, out = self.names("users", "scores", "out")
        left, right = TableLoader(self.node, users, 1), TableLoader(self.node, scores, 1)
        left.load([("a", {"name": "ann"}, 10), ("b", {"name": "bob"}, 20),
                   ("c", {"name": "cy", "drop": True}, 25)])
        right.load([("a", {"score": 5}, 30), ("b", {"score": 6}, 40), ("c", {"score": 7}, 45)])
        self.submit_ok(name, TABLE_TABLE.substitute(name=name, left=users, right=scores,
                                                    fn=TT_FN, type="inner", out=out,
                                                    partitions=1))
        want = {"a": {"name": "ann", "score": 5}, "b": {"name": "bob", "score": 6}}
        wait_caught_up(self.node, name, WAIT)
        wait_until(lambda: self.latest_per_key(self.r, out) == want, SETTLE, 0.05,
                   "a and b joined (c dropped by the function): %r"
                   % (self.latest_per_key(self.r, out),))
        right.load([("a", None, 50)])              # the right side deletes a
        left.load([("b", {"name": "bo"}, 60)])     # the left side updates b
        want = {"b": {"name": "bo", "score": 6}}
        wait_caught_up(self.node, name, WAIT)
        wait_until(lambda: self.latest_per_key(self.r, out) == want, SETTLE, 0.05,
                   "a deleted, b updated: %r" % (self.latest_per_key(self.r, out),))
        last_a = [r for _, r in self.outputs(self.r, out) if r.key == "a"][-1]
        self.assertIsNone(last_a.value, "a tombstone for a")
        self.assertIsNone(self.get(self.r, name + ".risk", "a"))
        self.assertIsNone(self.get(self.r, name + ".risk", "c"))
        self.assertEqual(self.get(self.r, name + ".risk", "b"), {"name": "bo", "score": 6})


# ---- co-partitioning ---------------------------------------------------------------------------


class CoPartitioningTest(JoinTestCase):
    def test_an_aggregate_over_merged_sources_counts_each_key_once(self):
        # Both sources' partition p meet in one task, so a key's count lives
        # in one state (two tasks with a cache each would lose updates).
        name, a, b, out = self.names("a", "b", "out")
        self.create(a, 2)
        self.create(b, 2)
        keys = ["k%d" % i for i in range(20)]
        for topic in (a, b):
            produce_timed(self.r, topic, [(k, {"i": i}, 1000 + i) for i in range(200) for k in keys])
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s", commit_interval = "1s"}
s.merge(s.stream("%s"), s.stream("%s")):aggregate{n = s.count(), store = "n"}
  :to("%s", {create = true})
""" % (name, a, b, out))
        wait_caught_up(self.node, name, WAIT)
        for k in keys:
            wait_until(lambda: self.get(self.r, name + ".n", k) == {"n": 400}, SETTLE, 0.05,
                       "the count of %s" % k)

    def refused(self, name, script, what):
        reply = self.submit(name, script)
        self.assertIsInstance(reply, Error, "%s: %r" % (what, reply))
        self.assertIn("%s.lua:%d:" % (name, line_of(script)), reply, what)
        self.assertIn("key_by", reply, what)
        with self.node.raw() as c:
            self.assertErrorCode(c.cmd("PIPELINE", "DESCRIBE", name), "NOTFOUND")
        return reply

    def test_inputs_with_different_partition_counts_are_refused_naming_key_by(self):
        name, two, three, t_two, t_three, out = self.names("s2", "s3", "t2", "t3", "out")
        for topic, n in ((two, 2), (three, 3), (t_two, 2), (t_three, 3)):
            self.create(topic, n)
        head = 'local s = require("sluice")\ns.pipeline{name = "%s"}\n' % name
        fn = "function(a, b) return {x = 1} end"
        self.refused(name, head + """\
local users = s.table("%s")
s.stream("%s")
  :join(users, %s) -- @@
  :to("%s", {create = true})
""" % (t_three, two, fn, out), "stream-table")
        self.refused(name, head + """\
local views = s.stream("%s")
s.stream("%s"):join(views, %s, {within = "1s"}) -- @@
  :to("%s", {create = true})
""" % (three, two, fn, out), "stream-stream")
        self.refused(name, head + """\
local users = s.table("%s")
local scores = s.table("%s")
users:join(scores, %s) -- @@
  :to("%s", {create = true})
""" % (t_two, t_three, fn, out), "table-table")

    def test_a_map_between_the_source_and_the_join_is_refused_naming_key_by(self):
        name, a, b, tbl, out = self.names("a", "b", "users", "out")
        for topic in (a, b, tbl):
            self.create(topic, 2)
        head = 'local s = require("sluice")\ns.pipeline{name = "%s"}\n' % name
        fn = "function(x, y) return {x = 1} end"
        self.refused(name, head + """\
local users = s.table("%s")
s.stream("%s")
  :map(function(r) return r end)
  :join(users, %s) -- @@
  :to("%s", {create = true})
""" % (tbl, a, fn, out), "map before a stream-table join")
        self.refused(name, head + """\
local views = s.stream("%s")
  :flat_map(function(r) return {r} end)
s.stream("%s"):join(views, %s, {within = "1s"}) -- @@
  :to("%s", {create = true})
""" % (b, a, fn, out), "flat_map on the right of a stream-stream join")
        self.refused(name, head + """\
local users = s.table("%s")
s.stream("%s")
  :key_by("user")
  :map(function(r) return r end)
  :join(users, %s) -- @@
  :to("%s", {create = true})
""" % (tbl, a, fn, out), "map after the last key_by")
        # a filter cannot change keys: accepted
        self.submit_ok(name, head + """\
local users = s.table("%s")
s.stream("%s")
  :filter(function(r) return r.value ~= nil end)
  :join(users, %s)
  :to("%s", {create = true})
""" % (tbl, a, fn, out))

    def run_key_by_join(self, stream_partitions, table_partitions, with_map):
        name, orders, users, out = self.names("orders", "users", "out")
        self.create(orders, stream_partitions)
        self.create(users, table_partitions)
        table_in = [("u%d" % (i % 9), {"n": i}, BASE_TS + i) for i in range(30)]
        produce_timed(self.r, users, table_in)
        rng = random.Random(stream_partitions * 10 + table_partitions)
        orders_in = [(None if i % 3 else "o%d" % i, {"id": i, "user": "u%d" % rng.randrange(12)},
                      BASE_TS + 1000 + i) for i in range(200)]
        produce_timed(self.r, orders, orders_in)
        self.submit_ok(name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
local users = s.table("%s")
s.stream("%s")
  %s
  :key_by("user")
  :join(users, function(r, u)
    return {id = r.value.id, n = u and u.n or -1}
  end, {type = "left"})
  :to("%s", {create = true, partitions = 3})
""" % (name, users, orders,
            ':map(function(r) return {id = r.value.id, user = r.value.user} end)'
            if with_map else "", out))
        final = {k: v["n"] for k, v, _ in table_in}  # every table record is older than the orders
        want = collections.Counter(
            (v["user"], canonical({"id": v["id"], "n": final.get(v["user"], -1)}), ts)
            for _, v, ts in orders_in)
        self.settle(name, out, want, st_entry)

    def test_key_by_after_a_map_makes_the_join_work(self):
        self.run_key_by_join(3, 3, with_map=True)

    def test_key_by_joins_a_stream_with_a_table_of_more_partitions(self):
        # the repartition topic has as many partitions as the widest source
        self.run_key_by_join(2, 3, with_map=False)


# ---- broken scripts ------------------------------------------------------------------------------

BAD_JOINS = [
    # (what, script body: $a $b streams, $t $t2 tables, $out, $fn; "-- @@" marks the line, words)
    ("unknown stream-table type", """\
local t = s.table("$t")
s.stream("$a"):join(t, $fn, {type = "cross"}):to("$out", {create = true}) -- @@
""", ["cross"]),
    ("unknown stream-stream type", """\
local b = s.stream("$b")
s.stream("$a"):join(b, $fn, {within = "1s", type = "sideways"}):to("$out", {create = true}) -- @@
""", ["sideways"]),
    ("unknown table-table type", """\
local t2 = s.table("$t2")
s.table("$t"):join(t2, $fn, {type = "cross"}):to("$out", {create = true}) -- @@
""", ["cross"]),
    ("stream-stream without within", """\
local b = s.stream("$b")
s.stream("$a"):join(b, $fn, {type = "inner", grace = "1s"}):to("$out", {create = true}) -- @@
""", ["within"]),
    ("stream-stream without options", """\
local b = s.stream("$b")
s.stream("$a"):join(b, $fn):to("$out", {create = true}) -- @@
""", ["within"]),
    ("a bad within", """\
local b = s.stream("$b")
s.stream("$a"):join(b, $fn, {within = "5 minutes"}):to("$out", {create = true}) -- @@
""", []),
    ("a bad grace", """\
local b = s.stream("$b")
s.stream("$a"):join(b, $fn, {within = "5s", grace = "-1s"}):to("$out", {create = true}) -- @@
""", []),
    ("an unknown option", """\
local t = s.table("$t")
s.stream("$a"):join(t, $fn, {type = "left", windw = "1s"}):to("$out", {create = true}) -- @@
""", ["windw"]),
    ("a function that is not one", """\
local t = s.table("$t")
s.stream("$a"):join(t, "enrich"):to("$out", {create = true}) -- @@
""", []),
    ("joining a stream with a sink", """\
local sunk = s.stream("$b"):to("$out", {create = true})
s.stream("$a"):join(sunk, $fn, {within = "1s"}):to("$out2", {create = true}) -- @@
""", []),
    ("joining a table with a stream", """\
local b = s.stream("$b")
s.table("$t"):join(b, $fn):to("$out", {create = true}) -- @@
""", []),
    ("map on a table", """\
s.table("$t"):map(function(r) return r.value end):to("$out", {create = true}) -- @@
""", [":stream()"]),
    ("filter on a table", """\
s.table("$t"):filter(function(r) return true end):to("$out", {create = true}) -- @@
""", [":stream()"]),
    ("key_by on a table", """\
s.table("$t"):key_by("user"):to("$out", {create = true}) -- @@
""", [":stream()"]),
    ("a topic read as a stream and as a table", """\
local a = s.stream("$a")
local t = s.table("$a") -- @@
a:join(t, $fn):to("$out", {create = true})
""", []),
]


class BadJoinScriptTest(JoinTestCase):
    def test_broken_joins_are_refused_with_the_line(self):
        name, a, b, t, t2, out, out2 = self.names("a", "b", "t", "t2", "out", "out2")
        for topic in (a, b, t, t2):
            self.create(topic, 1)
        for what, body, words in BAD_JOINS:
            with self.subTest(what):
                script = ('local s = require("sluice")\ns.pipeline{name = "%s"}\n' % name +
                          string.Template(body).substitute(
                              a=a, b=b, t=t, t2=t2, out=out, out2=out2,
                              fn="function(x, y) return {x = 1} end"))
                reply = self.submit(name, script)
                self.assertIsInstance(reply, Error, "%s: %r" % (what, reply))
                self.assertIn("%s.lua:%d:" % (name, line_of(script)), reply)
                for word in words:
                    self.assertIn(word, reply)
        with self.node.raw() as c:
            self.assertErrorCode(c.cmd("PIPELINE", "DESCRIBE", name), "NOTFOUND")
        topics = set(text(x) for x in self.r.execute_command("TOPIC", "LIST"))
        self.assertNotIn(out, topics, "a refused script creates nothing")

    def test_joins_and_tables_need_exactly_once(self):
        name, a, t, out = self.names("a", "t", "out")
        self.create(a, 1)
        self.create(t, 1)
        self.create(out, 1)  # an ordinary topic, as at-least-once pipelines write
        for body in ('local t = s.table("%s")\ns.stream("%s"):join(t, function(r, u) return 1 end)'
                     ':to("%s")\n' % (t, a, out),
                     's.table("%s"):to("%s")\n' % (t, out)):
            with self.subTest(body):
                script = ('local s = require("sluice")\n'
                          's.pipeline{name = "%s", processing = "at_least_once"}\n' % name + body)
                reply = self.submit(name, script)
                self.assertIsInstance(reply, Error, reply)
                self.assertRegex(reply, r"%s\.lua:\d+: " % name)
                self.assertIn("exactly_once", reply)


# ---- restarts and crashes ------------------------------------------------------------------------


class OwnNodeTestCase(unittest.TestCase, JoinAssertions):
    """A node of its own per test, restarted or killed."""

    def setUp(self):
        self.node = Node().start()
        self.addCleanup(self.node.cleanup)
        self.started = time.monotonic()

    def client(self):
        c = self.node.client()
        self.addCleanup(c.close)
        return c

    def submit(self, name, script):
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, script)
        self.assertEqual(reply, "OK", "PIPELINE SUBMIT %s: %r" % (name, reply))


class JoinRestartTest(OwnNodeTestCase):
    def test_stream_table_join_continues_after_a_clean_restart(self):
        partitions = 2
        r = self.client()
        r.execute_command("TOPIC", "CREATE", "clicks", "PARTITIONS", partitions)
        loader = TableLoader(self.node, "users", partitions)
        table_in, stream_in = stream_table_input(51, 200, 300, 20, 24, keyless=0.02)
        loader.load(table_in)
        produce_timed(r, "clicks", stream_in)
        self.submit("p", STREAM_TABLE.substitute(name="p", table="users", stream="clicks",
                                                 fn=ST_FN, type="left", out="out",
                                                 partitions=partitions))
        want = stream_table_reference(topic_records(r, "users"), topic_records(r, "clicks"),
                                      "left")
        self.settle("p", "out", want, st_entry)
        self.node.restart()
        r = self.client()
        # each round: table records, then (once the join has them) later stream records, so
        # that the order the join sees them in is their event-time order again
        next_ts = max(ts for _, _, ts in table_in + stream_in) + 2
        for round_no in range(3):
            more_table, _ = stream_table_input(52 + round_no, 60, 0, 20, 24, first_ts=next_ts,
                                               head_start=60)
            _, more_stream = stream_table_input(62 + round_no, 0, 100, 20, 24, keyless=0.02,
                                                first_ts=next_ts + 200, head_start=0)
            next_ts += 600
            loader.load(more_table)
            wait_caught_up(self.node, "p", WAIT)
            produce_timed(r, "clicks", more_stream)
            wait_caught_up(self.node, "p", WAIT)
        want = stream_table_reference(topic_records(r, "users"), topic_records(r, "clicks"),
                                      "left")
        self.assertEqual(sum(want.values()), 600)
        self.settle("p", "out", want, st_entry)
        self.node.stop()

    def test_stream_stream_join_keeps_its_buffered_records_across_a_clean_restart(self):
        partitions, within, grace = 2, 300, 3600000  # no record is ever late
        r = self.client()
        for topic in ("clicks", "views"):
            r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", partitions)
        left_in, right_in = stream_stream_input(53, 400, keys=12, step=12, late_frac=0.1,
                                                late_by=200)
        produce_timed(r, "clicks", left_in)
        produce_timed(r, "views", right_in)
        self.submit("p", STREAM_STREAM.substitute(
            name="p", left="clicks", right="views", fn=SS_FN, within="%dms" % within,
            grace="%dms" % grace, type="outer", out="out", partitions=partitions))
        inputs = [topic_records(r, t) for t in ("clicks", "views")]
        want = stream_stream_reference(*inputs, within, grace, "outer")
        self.assertTrue(want and all(ts is None for _, _, ts in want), "pairs only so far")
        self.settle("p", "out", want, ss_output)
        self.node.restart()
        r = self.client()
        # records that pair with the ones buffered before the restart, then the clocks
        last = max(ts for _, _, ts in left_in + right_in)
        more_left, more_right = stream_stream_input(54, 300, keys=12, step=12, late_frac=0.1,
                                                    late_by=200,
                                                    first_ts=(last - 2 * within) & ~1)
        produce_timed(r, "clicks", more_left)
        produce_timed(r, "views", more_right + clock_records(
            max(ts for _, _, ts in more_left + more_right) + within + grace + 1000, partitions))
        inputs = [topic_records(r, t) for t in ("clicks", "views")]
        want = stream_stream_reference(*inputs, within, grace, "outer")
        self.assertTrue(any(ts is not None for _, _, ts in want), "and now unjoined ones")
        self.settle("p", "out", want, ss_output)
        self.node.stop()


RESTORED = """\
local s = require("sluice")
s.pipeline{name = "p"}
local users = s.table("users", {store = "users"})
local accounts = s.table("accounts", {store = "accounts"})
s.stream("clicks")
  :join(users, %s, {type = "left"})
  :to("enriched", {create = true, partitions = 2})
users:join(accounts, function(u, a)
    return {n = u.n, bal = a and a.bal or -1}
  end, {type = "left", store = "risk"})
  :to("risk", {create = true, partitions = 2})
s.stream("taps")
  :join(s.stream("views"), %s, {within = "300ms", grace = "1h", type = "outer", store = "buf"})
  :to("pairs", {create = true, partitions = 2})
""" % (ST_FN, SS_FN)


def topic_settings(client, topic):
    desc = client.execute_command("TOPIC", "DESCRIBE", topic)
    fields = dict(zip(desc[0::2], desc[1::2]))
    settings = fields[b"settings"]
    return {text(k): text(v) for k, v in zip(settings[0::2], settings[1::2])}


class JoinRestoreTest(OwnNodeTestCase):
    """DATA/state deleted while the node is stopped: tables, table-table
    and stream-stream join stores come back from their changelogs (a
    compacted table topic being its own), answer GET as before, and the
    joins go on as if nothing happened."""

    def scan(self, client, store):
        """Every [key, window start?, value, ...] item of a store (SCAN)."""
        items, cursor = [], b"0"
        while True:
            cursor, page = client.execute_command("SCAN", store, cursor, "COUNT", 1000)
            items.extend(page)
            if cursor in (b"0", 0, "0"):
                return items

    def answers(self, client, stores_keys):
        return {(store, key): client.execute_command("GET", store, key)
                for store, keys in stores_keys for key in keys}

    def test_join_state_is_restored_after_deleting_the_state_directory(self):
        partitions, within, grace = 2, 300, 3600000  # as in RESTORED
        r = self.client()
        for topic in ("clicks", "taps", "views"):
            r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", partitions)
        users = TableLoader(self.node, "users", partitions)
        accounts = TableLoader(self.node, "accounts", partitions, "COMPACT")
        table_in, stream_in = stream_table_input(81, 300, 300, 40, 50, keyless=0.02)
        rng = random.Random(82)
        accounts_in = [("u%d" % rng.randrange(50), None if rng.random() < 0.2 else {"bal": i},
                        BASE_TS + 2 * i + 1) for i in range(200)]
        users.load(table_in)
        accounts.load(accounts_in)
        produce_timed(r, "clicks", stream_in)
        left_in, right_in = stream_stream_input(83, 300, keys=12, step=12, late_frac=0.1,
                                                late_by=200)
        produce_timed(r, "taps", left_in)
        produce_timed(r, "views", right_in)
        self.submit("p", RESTORED)
        wait_caught_up(self.node, "p", WAIT)
        keys = sorted({k for k, _, _ in table_in + accounts_in})
        stores = [("p.users", keys), ("p.accounts", keys), ("p.risk", keys)]
        before = self.answers(r, stores)
        buffered = self.scan(r, "p.buf")
        self.assertTrue(buffered, "the stream-stream join buffers records")
        self.assertTrue(any(v is not None for v in before.values()))
        self.assertEqual(topic_settings(r, "accounts").get("cleanup.policy"), "compact")
        topics = {text(t) for t in r.execute_command("TOPIC", "LIST")}
        self.assertIn("p.users.changelog", topics, "a table over a plain topic has a changelog")
        self.assertNotIn("p.accounts.changelog", topics,
                         "a table over a compacted topic is its own changelog")
        rows = [[text(v) if isinstance(v, bytes) else v for v in row]
                for row in describe(r, "p")["stores"]]
        changelogs = {(row[0], row[1]) for row in rows}
        for store, changelog in (("p.users", "p.users.changelog"), ("p.accounts", "accounts"),
                                 ("p.buf", "p.buf.changelog")):
            self.assertIn((store, changelog), changelogs, rows)
        accounts_ends = partition_ends(r, "accounts")  # read up to its end: committed
        self.assertEqual({row[2]: row[4] for row in rows if row[0] == "p.accounts"},
                         accounts_ends, rows)
        self.assertTrue(all(row[3] <= row[4] and row[5] == row[4] - row[3] for row in rows), rows)
        self.node.stop()
        shutil.rmtree(os.path.join(self.node.data_dir, "state"))
        self.node.start()
        r = self.client()
        self.assertIn("restor", self.node.log())
        self.assertEqual(self.answers(r, stores), before)
        self.assertEqual(self.scan(r, "p.buf"), buffered)
        # (PIPELINE DESCRIBE shows committed offsets of -1 until the next commit after a
        # restore, aggregates' too: every input gets more records, so that each task commits)
        # more table records, updating and deleting restored values; then clicks after them;
        # records that pair with the taps and views buffered before; the clocks that close
        # every window
        last = (max(ts for _, _, ts in table_in + accounts_in + stream_in) + 2) & ~1
        final_users = final_table(topic_records(r, "users"))
        more_users = [(k, None, last + 2 * i) for i, k in enumerate(sorted(final_users)[:3])]
        more_users += [("u%d" % i, {"n": 10 ** 6 + i, "name": "new"}, last + 10 + 2 * i)
                       for i in range(0, 50, 4)]
        users.load(more_users)
        accounts.load([("u%d" % i, None if i % 3 == 0 else {"bal": 10 ** 6 + i},
                        last + 1 + 2 * i) for i in range(0, 50, 5)])
        _, more_clicks = stream_table_input(84, 0, 200, 40, 50, keyless=0.02,
                                            first_ts=last + 1000, head_start=0)
        produce_timed(r, "clicks", more_clicks)
        last = max(ts for _, _, ts in left_in + right_in)
        more_left, more_right = stream_stream_input(85, 200, keys=12, step=12, late_frac=0.1,
                                                    late_by=200,
                                                    first_ts=(last - 2 * within) & ~1)
        produce_timed(r, "taps", more_left)
        produce_timed(r, "views", more_right + clock_records(
            max(ts for _, _, ts in more_left + more_right) + within + grace + 1000, partitions))
        tables = [topic_records(r, t) for t in ("users", "accounts")]
        want = stream_table_reference(tables[0], topic_records(r, "clicks"), "left")
        self.assertEqual(sum(want.values()), 500)
        self.settle("p", "enriched", want, st_entry)
        users_now, accounts_now = final_table(tables[0]), final_table(tables[1])
        want_risk = {k: {"n": u["n"], "bal": accounts_now[k]["bal"] if k in accounts_now else -1}
                     for k, u in users_now.items()}
        self.assertEqual(self.latest_per_key(r, "risk"), want_risk)
        inputs = [topic_records(r, t) for t in ("taps", "views")]
        self.settle("p", "pairs", stream_stream_reference(*inputs, within, grace, "outer"),
                    ss_output)
        self.node.stop()


class SubmitWhileBusyTest(OwnNodeTestCase):
    def test_pipelines_with_stores_are_submitted_while_a_join_commits(self):
        """Submitting a pipeline opens its stores while another pipeline
        may be committing: each submission is answered, and every pipeline
        runs (a node that deadlocks here answers nothing, SIGTERM
        included)."""
        partitions = 2
        r = self.client()
        r.execute_command("TOPIC", "CREATE", "clicks", "PARTITIONS", partitions)
        table_in, stream_in = stream_table_input(91, 2000, 40000, 500, 600)
        TableLoader(self.node, "users", partitions).load(table_in)
        produce_timed(r, "clicks", stream_in)
        self.submit("p", with_commit_interval(STREAM_TABLE.substitute(
            name="p", table="users", stream="clicks", fn=ST_FN, type="left", out="out",
            partitions=partitions), "5ms"))
        for n in range(4):
            name = "q%d" % n
            with self.node.raw(timeout=10) as c:
                try:
                    reply = c.cmd("PIPELINE", "SUBMIT", name, """\
local s = require("sluice")
s.pipeline{name = "%s"}
s.table("users", {store = "u%d"})
""" % (name, n))
                except OSError as e:
                    self.fail("PIPELINE SUBMIT %s while p commits: no answer (%r)" % (name, e))
            self.assertEqual(reply, "OK", name)
        for name in ("p", "q0", "q1", "q2", "q3"):
            wait_caught_up(self.node, name, WAIT)
        self.assertEqual(sum(len(v) for v in read_topic(r, "out").values()), len(stream_in))
        self.node.stop()


class BusyRestartTest(OwnNodeTestCase):
    """A clean stop (SIGTERM) while the join still has input to take: the
    pipeline finishes its batch and commits, and after the restart it goes
    on from there; the outputs are exactly the reference's."""

    def restart_when_busy(self, name, source, total):
        """Restarts the node once the pipeline has committed a third of
        source's total records, and checks that the stop came while input
        was left (else the test would show nothing)."""
        client = self.node.client()
        try:
            wait_until(lambda: progress(describe(client, name), source)[0] >= total // 3,
                       WAIT, 0.005, "%s to commit a third of %s" % (name, source))
        finally:
            client.close()
        self.node.restart()
        client = self.client()
        committed, end = progress(describe(client, name), source)
        self.assertLess(committed, end, "the stop came before the input was all taken")
        return committed

    def test_a_clean_stop_while_a_stream_table_join_is_busy_loses_nothing(self):
        partitions = 4
        r = self.client()
        r.execute_command("TOPIC", "CREATE", "clicks", "PARTITIONS", partitions)
        table_in, stream_in = stream_table_input(71, 10000, 40000, table_keys=2000,
                                                 stream_keys=2500, keyless=0.01)
        table = TableLoader(self.node, "users", partitions).load(table_in)
        produce_timed(r, "clicks", stream_in)
        want = stream_table_reference(table, topic_records(r, "clicks"), "left")
        # the loop makes each record cost some microseconds, so that the join is still busy
        # when the stop comes
        slow = ST_FN.replace("function(r, u) ", "function(r, u) for i = 1, 300 do end ")
        self.submit("p", with_commit_interval(STREAM_TABLE.substitute(
            name="p", table="users", stream="clicks", fn=slow, type="left", out="out",
            partitions=partitions), "10ms"))
        self.restart_when_busy("p", "clicks", len(stream_in))
        self.settle("p", "out", want, st_entry, timeout=60)
        self.node.stop()

    def test_a_clean_stop_while_a_stream_stream_join_is_busy_loses_nothing(self):
        partitions, within, grace = 4, 20000, 10000
        r = self.client()
        for topic in ("clicks", "views"):
            r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", partitions)
        left_in, right_in = stream_stream_input(72, 40000, keys=1200, step=10, late_frac=0.1,
                                                late_by=1000)
        last = max(ts for _, _, ts in left_in + right_in)
        right_in += clock_records(last + within + grace + 1000, partitions)
        produce_timed(r, "clicks", left_in)
        produce_timed(r, "views", right_in)
        inputs = [topic_records(r, t) for t in ("clicks", "views")]
        self.assertEqual(late_records(*inputs, grace), 0)
        want = stream_stream_reference(*inputs, within, grace, "outer")
        self.submit("p", with_commit_interval(STREAM_STREAM.substitute(
            name="p", left="clicks", right="views", fn=SS_FN, within="%dms" % within,
            grace="%dms" % grace, type="outer", out="out", partitions=partitions), "10ms"))
        self.restart_when_busy("p", "clicks", len(left_in))
        self.settle("p", "out", want, ss_output, timeout=60)
        self.node.stop()


def progress_feed(name, source, total, kills, rng_seed):
    """A feed for crash.Killer that adds no input (everything was loaded
    before the pipeline started, so the order the join takes it in is the
    same whatever the kills do) and spreads the kills over the processing:
    round i waits (bounded) until the pipeline has committed a seeded random
    share of source, then the round's random time more, so that the kill
    lands somewhere in a commit interval and not only on idle nodes."""
    rng = random.Random(rng_seed)
    targets = sorted(rng.randrange(total * 9 // 10) for _ in range(kills))

    def feed(i, client, seconds):
        wait_until(lambda: progress(describe(client, name), source)[0] >= targets[i],
                   WAIT + total / 1000, 0.01, "%s to commit %d records of %s"
                   % (name, targets[i], source))
        time.sleep(seconds)  # a random moment after it, not a synchronisation
    return feed


class JoinCrashTest(OwnNodeTestCase):
    PARTITIONS = 4
    COMMIT_INTERVAL = "10ms"  # a join takes 100 K records in a few 100 ms commits

    def run_with_kills(self, name, script, source, n, source_records):
        kills = kills_wanted()
        self.submit(name, script)
        # a kill comes up to one commit interval after its target: later, a
        # join that got through the rest of its input would often be idle
        killer = Killer(self.node, name, source, kills, 0.01, seed() + 7)
        killer.run(progress_feed(name, source, source_records, kills, seed() + 8))
        wait_caught_up(self.node, name, 120 + n / 1000)
        say("\n%s: %d records, %d kills (%d while input was uncommitted), %.1f s:\n%s"
            % (self.id().rsplit(".", 1)[-1], n, len(killer.log), killer.busy_kills(),
               time.monotonic() - self.started, killer.summary()))
        self.assertGreaterEqual(len(killer.log), 20)
        self.assertGreaterEqual(killer.busy_kills(), kills // 2, "kills while the join was busy")

    def test_sigkill_during_a_stream_table_join_loses_and_duplicates_nothing(self):
        n = records_wanted()
        r = self.client()
        r.execute_command("TOPIC", "CREATE", "clicks", "PARTITIONS", self.PARTITIONS)
        table_in, stream_in = stream_table_input(seed(), n // 4, n - n // 4, table_keys=3000,
                                                 stream_keys=4000, keyless=0.01)
        table = TableLoader(self.node, "users", self.PARTITIONS).load(table_in)
        produce_timed(r, "clicks", stream_in)
        clicks = topic_records(r, "clicks")
        want = stream_table_reference(table, clicks, "left")
        self.run_with_kills("p", with_commit_interval(STREAM_TABLE.substitute(
            name="p", table="users", stream="clicks", fn=ST_FN, type="left", out="out",
            partitions=self.PARTITIONS), self.COMMIT_INTERVAL), "clicks", n, len(stream_in))
        r = self.client()
        self.assertCounterEqual("out", collections.Counter(
            st_entry(rec) for _, rec in self.outputs(r, "out")), want)
        final = final_table(table)
        for key in sorted({k for k, _, _ in table_in})[:300]:
            self.assertEqual(self.get(r, "p.users", key), final.get(key), key)
        self.node.stop()

    def test_sigkill_during_a_stream_stream_join_loses_and_duplicates_nothing(self):
        n = records_wanted()
        within, grace = 20000, 10000  # the input is at most 2 s out of order: none is late
        r = self.client()
        for topic in ("clicks", "views"):
            r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", self.PARTITIONS)
        left_in, right_in = stream_stream_input(seed() + 3, n, keys=3000, step=10,
                                                late_frac=0.1, late_by=1000)
        last = max(ts for _, _, ts in left_in + right_in)
        right_in += clock_records(last + within + grace + 1000, self.PARTITIONS)
        produce_timed(r, "clicks", left_in)
        produce_timed(r, "views", right_in)
        inputs = [topic_records(r, t) for t in ("clicks", "views")]
        want = stream_stream_reference(*inputs, within, grace, "outer")
        self.assertEqual(late_records(*inputs, grace), 0)
        self.run_with_kills("p", with_commit_interval(STREAM_STREAM.substitute(
            name="p", left="clicks", right="views", fn=SS_FN, within="%dms" % within,
            grace="%dms" % grace, type="outer", out="out", partitions=self.PARTITIONS),
            self.COMMIT_INTERVAL), "clicks", n, len(left_in))
        r = self.client()
        self.assertCounterEqual("out", collections.Counter(
            ss_output(rec) for _, rec in self.outputs(r, "out")), want)
        self.node.stop()


if __name__ == "__main__":
    unittest.main()
