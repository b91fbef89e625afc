#!/usr/bin/python3
"""
test_features.py - feature views on a real node (issue 7; docs/lua.md,
"Feature views"; docs/commands.md, "Feature views").

A pipeline turns clicks into a view over 1-minute buckets; its vectors are
compared with a reference computed here, independently, from the produced
events: several ranges and aggregates, many keys (some without events in a
range, one never seen), AS OF at bucket boundaries and inside buckets
(which counts the buckets complete at that time, docs/commands.md), the
float32 format against the JSON values, MFEATURES with missing keys and its
KEYS and POINTS forms, the schema, the retention error, the feature-vector
topic, colliding views, restarts. A test queries while a producer
keeps the pipeline busy and checks that no vector mixes two commits; a last
one replays the input topic into a fresh node (a backfill) and checks that
it answers byte for byte as the node that served online.

Waits are bounded polls (wait_caught_up), never sleeps.

    SLUICE_BIN=/path/to/sluice /usr/bin/python3 -m unittest -v test_features
"""
import csv
import itertools
import json
import math
import os
import random
import string
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import redis

from crash import check_running, describe
from node import (Error, Node, NodeTestCase, fetch_all, murmur2_partition, partition_ends,
                  sluice_bin)

WAIT = 60.0
B = 60000  # the buckets: s.tumbling("1m")
RANGES = [("5m", 5 * B), ("1h", 60 * B), ("15m", 15 * B)]
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (60 * B)  # an hour boundary
_serial = itertools.count()

VIEW = string.Template("""\
local s = require("sluice")
s.pipeline{name = "$name"}
s.stream("$input", {timestamp = function(r) return r.value.ts end})
  :key_by("user")
  :window(s.tumbling("1m", {grace = "1d"}))
  :aggregate{clicks = s.count(), spend = s.sum("price"), top = s.max("price"),
             mean = s.avg("price"), latest = s.last("price"), store = "activity"}
  :features("$view", {ranges = {"5m", "1h", "15m"}$defaults})
""")

MEMBERS = ["clicks", "latest", "mean", "spend", "top"]  # by name: the schema's order
NAMES = ["%s_%s" % (m, r) for m in MEMBERS for r, _ in RANGES]


def events(seed, count, users=12):
    """(user, ts, price): ~3 hours from T0, unique timestamps, some users
    only in the first half hour (so later queries find their short ranges
    empty)."""
    rnd = random.Random(seed)
    out, used = [], set()
    for i in range(count):
        user = "u%02d" % rnd.randrange(users)
        span = 30 * B if user in ("u00", "u01") else 180 * B
        ts = T0 + rnd.randrange(span)
        while (user, ts) in used:
            ts += 1
        used.add((user, ts))
        out.append((user, ts, rnd.randrange(1, 500)))
    return out


def end_of(t, as_of=True):
    """The end of the buckets a query at t sees (ops/features.h)."""
    return t - t % B + (0 if as_of else B)


EMPTY = {n: 0 if n.split("_")[0] in ("clicks", "spend") else None for n in NAMES}


def reference(evs, user, end, empty=None):
    """{name: value} of user's vector for buckets ending at end, or empty
    if the user has no event in any range."""
    out, found = {}, False
    for member in MEMBERS:
        for rname, r in RANGES:
            mine = [(ts, p) for u, ts, p in evs if u == user and end - r <= ts < end]
            found = found or bool(mine)
            prices = [p for _, p in mine]
            out["%s_%s" % (member, rname)] = {
                "clicks": len(prices),
                "spend": sum(prices),
                "top": max(prices) if prices else None,
                "mean": sum(prices) / len(prices) if prices else None,
                "latest": max(mine)[1] if mine else None,
            }[member]
    return out if found else empty


def produce(client, topic, evs, batch=500):
    for i in range(0, len(evs), batch):
        args = []
        for user, ts, price in evs[i:i + batch]:
            args += [user, json.dumps({"user": user, "ts": ts, "price": price})]
        client.execute_command("PRODUCEBATCH", topic, *args)


def f32(values):
    """The float32 vector FORMAT f32 should give for JSON values."""
    return [float("nan") if v is None else struct.unpack("<f", struct.pack("<f", v))[0]
            for v in values]


def wait_caught_up(node, name, timeout=WAIT):
    """Waits (bounded) until every task of the pipeline has committed its
    input's end (a task whose partition never had a record counts as done),
    in two DESCRIBEs in a row that agree (crash.wait_caught_up's rule)."""
    deadline = time.monotonic() + timeout
    client = node.client()
    previous = None
    try:
        while True:
            desc = describe(client, name)
            check_running(desc, name, node)
            tasks = [tuple(t) for t in desc["tasks"]]
            done = tasks and all(t[2] == t[3] or (t[2] == -1 and t[3] == 0) for t in tasks)
            if done and tasks == previous:
                return
            previous = tasks if done else None
            if time.monotonic() >= deadline:
                raise AssertionError("pipeline %s did not catch up within %.0f s: %r\n%s"
                                     % (name, timeout, tasks, node.log()[-3000:]))
            time.sleep(0.02)
    finally:
        client.close()


def submit(node, name, script):
    with node.raw() as c:
        reply = c.cmd("PIPELINE", "SUBMIT", name, script)
    if reply != "OK":
        raise AssertionError("PIPELINE SUBMIT %s: %r" % (name, reply))


def view_pipeline(node, client, evs, defaults=""):
    """A fresh input topic with evs and a view pipeline over it, caught up;
    returns (pipeline, view)."""
    n = next(_serial)
    name, view, topic = "fp%d" % n, "view%d" % n, "clicks%d" % n
    client.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
    submit(node, name, VIEW.substitute(name=name, input=topic, view=view, defaults=defaults))
    produce(client, topic, evs)
    wait_caught_up(node, name, WAIT)
    return name, view


class FeatureTestCase(NodeTestCase):

    def submit(self, name, script):
        submit(self.node, name, script)

    def view_pipeline(self, evs, defaults=""):
        return view_pipeline(self.node, self.r, evs, defaults)

    def features(self, view, key, t=None, fmt=None):
        args = ["FEATURES", view, key]
        if t is not None:
            args += ["AS", "OF", t]
        if fmt:
            args += ["FORMAT", fmt]
        return self.r.execute_command(*args)

    def assertVector(self, got, want, where):
        if want is None:
            self.assertIsNone(got, where)
            return
        self.assertIsNotNone(got, where)
        vec = json.loads(got)
        self.assertEqual(list(vec), NAMES, where)  # schema order
        for name in NAMES:
            if isinstance(want[name], float):
                self.assertAlmostEqual(vec[name], want[name], places=9, msg="%s %s" % (where, name))
            else:
                self.assertEqual(vec[name], want[name], "%s %s" % (where, name))


class FeatureValueTest(FeatureTestCase):
    """Vectors of one view against the reference."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.evs = events(7, 3000)
        r = cls.node.client()
        cls.name, cls.view = view_pipeline(cls.node, r, cls.evs)
        r.close()

    def test_vectors_match_the_reference(self):
        users = sorted({u for u, _, _ in self.evs}) + ["nobody"]
        times = [T0 + k * B for k in (3, 10, 31, 60, 95, 180, 181, 200, 260)]
        times += [T0 + 47 * B + 12345, T0 + 120 * B + 59999]  # inside buckets
        for t in times:
            for user in users:
                want = reference(self.evs, user, end_of(t))
                self.assertVector(self.features(self.view, user, t), want, (user, t))
        # the short-lived users have empty short ranges late on, not a nil
        late = reference(self.evs, "u00", end_of(T0 + 70 * B))
        self.assertEqual(late["clicks_5m"], 0)
        self.assertIsNone(late["top_5m"])
        self.assertGreater(late["clicks_1h"], 0)

    def test_as_of_counts_the_buckets_complete_at_that_time(self):
        user = "u05"
        stamps = sorted(ts for u, ts, _ in self.evs if u == user and ts > T0 + 40 * B)
        ts = stamps[0]
        start = ts - ts % B  # the bucket holding the event
        before = json.loads(self.features(self.view, user, start))
        inside = json.loads(self.features(self.view, user, ts))
        after = json.loads(self.features(self.view, user, start + B))
        self.assertEqual(inside, before)  # its own bucket is not complete at ts
        self.assertEqual(json.loads(self.features(self.view, user, start + B - 1)), before)
        self.assertEqual(after["clicks_5m"],
                         before["clicks_5m"] + sum(1 for s in stamps if start <= s < start + B)
                         - sum(1 for u, s, _ in self.evs
                               if u == user and start - 5 * B <= s < start - 4 * B))
        self.assertVector(self.features(self.view, user, start + B),
                          reference(self.evs, user, start + B), "boundary")

    def test_live_vectors_count_the_bucket_of_now(self):
        # the data is years old: live ranges are empty, so nil without defaults
        self.assertIsNone(self.features(self.view, "u03"))
        self.assertIsNone(self.features(self.view, "nobody"))

    def test_f32_decodes_to_the_json_values(self):
        for user in ("u02", "u07", "u00"):
            t = T0 + 65 * B
            vec = json.loads(self.features(self.view, user, t))
            raw = self.features(self.view, user, t, "f32")
            self.assertEqual(len(raw), 4 * len(NAMES))
            got = list(struct.unpack("<%df" % len(NAMES), raw))
            want = f32([vec[n] for n in NAMES])
            for name, g, w in zip(NAMES, got, want):
                if math.isnan(w):
                    self.assertTrue(math.isnan(g), (user, name, g))
                else:
                    self.assertEqual(g, w, (user, name))
        self.assertEqual(self.features(self.view, "u02", T0 + 65 * B, "JSON"),
                         self.features(self.view, "u02", T0 + 65 * B))

    def test_mfeatures_answers_each_key_and_nil_for_missing_ones(self):
        t = T0 + 100 * B
        keys = ["u04", "nobody", "u09", "u00"]
        with self.node.raw() as c:
            got = c.cmd("MFEATURES", self.view, "AS", "OF", t, "KEYS", *keys)
            self.assertEqual(len(got), 4)
            for key, g in zip(keys, got):
                self.assertVector(g, reference(self.evs, key, end_of(t)), key)
            self.assertIsNone(got[1])
            # the short form: live, so nil for these old keys
            self.assertEqual(c.cmd("MFEATURES", self.view, "u04", "nobody"), [None, None])
            # POINTS: a time per key, as training rows have
            points = [("u04", T0 + 20 * B), ("u04", T0 + 90 * B + 1), ("nobody", T0),
                      ("u11", T0 + 150 * B)]
            args = [x for p in points for x in p]
            got = c.cmd("MFEATURES", self.view, "FORMAT", "json", "POINTS", *args)
            for (key, pt), g in zip(points, got):
                self.assertVector(g, reference(self.evs, key, end_of(pt)), (key, pt))
            raw = c.cmd("MFEATURES", self.view, "FORMAT", "f32", "KEYS", "u04")
            self.assertEqual(raw, [None])
            raw = c.cmd("MFEATURES", self.view, "AS", "OF", t, "FORMAT", "f32", "KEYS", "u04")
            self.assertEqual(raw[0], self.features(self.view, "u04", t, "f32"))

    def test_schema_lists_the_features_in_order(self):
        schema = self.r.execute_command("FEATURES.SCHEMA", self.view)
        self.assertEqual([row[0].decode() for row in schema], NAMES)
        rows = {row[0].decode(): row for row in schema}
        self.assertEqual(rows["clicks_5m"][1:7], [b"integer", b"count", b"clicks", 300000, 60000,
                                                  None])
        self.assertEqual(rows["mean_1h"][1:6], [b"float", b"avg", b"mean", 3600000, 60000])
        self.assertEqual(rows["top_15m"][1:4], [b"number", b"max", b"top"])
        self.assertEqual(rows["latest_5m"][2], b"last")
        self.assertEqual(rows["spend_1h"][7].decode(), self.name)

    def sluice(self, *args, stdin=None):
        return subprocess.run([sluice_bin(), *args, "--port", str(self.node.port)], input=stdin,
                              capture_output=True, timeout=60)

    def test_features_at_writes_point_in_time_rows(self):
        rnd = random.Random(3)
        rows = [("u%02d" % rnd.randrange(12), T0 + rnd.randrange(200 * B), rnd.randrange(2))
                for _ in range(700)]
        rows += [("nobody", T0 + 50 * B, 1), ('we"ird,key', T0 + 5 * B, 0),
                 ("u03", T0 + 60 * B, 1)]  # at a boundary
        with tempfile.TemporaryDirectory() as tmp:
            labels, out = os.path.join(tmp, "labels.csv"), os.path.join(tmp, "features.csv")
            with open(labels, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\r\n")
                w.writerow(["user", "ts", "label"])
                w.writerows(rows)
            done = self.sluice("features-at", self.view, "--input", labels, "--output", out,
                               "--batch", "64")
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stderr, b"")  # no terminal: no progress bar
            with open(out, newline="") as f:
                table = list(csv.reader(f))
        self.assertEqual(table[0], ["user", "ts", "label"] + NAMES)
        self.assertEqual(len(table), len(rows) + 1)
        for (user, ts, label), line in zip(rows, table[1:]):
            self.assertEqual(line[:3], [user, str(ts), str(label)])
            want = reference(self.evs, user, end_of(ts))
            for name, cell in zip(NAMES, line[3:]):
                value = None if want is None else want[name]
                if value is None:
                    self.assertEqual(cell, "", (user, ts, name))
                elif isinstance(value, float):
                    self.assertAlmostEqual(float(cell), value, places=9)
                else:
                    self.assertEqual(cell, str(value), (user, ts, name))

    def test_features_at_stops_at_a_row_the_node_refuses(self):
        data = "u01,%d\nu02,%d\n" % (T0 + 5 * B, T0 - 3 * 24 * 60 * B)  # beyond retention
        done = self.sluice("features-at", self.view, "--input", "-", "--output", "-",
                           stdin=data.encode())
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"line 2 (key 'u02' at %d)" % (T0 - 3 * 24 * 60 * B), done.stderr)
        self.assertIn(b"retention", done.stderr)
        bad = self.sluice("features-at", self.view, "--input", "-", "--output", "-",
                          stdin=b"u01,1\nu02,soon\n")
        self.assertEqual(bad.returncode, 1)
        self.assertIn(b"line 2: the timestamp is not a time in ms", bad.stderr)
        usage = self.sluice("features-at", self.view, "--input", "-")
        self.assertEqual(usage.returncode, 2)
        self.assertIn(b"--input and --output are required", usage.stderr)
        missing = self.sluice("features-at", "nope", "--input", "-", "--output", "-", stdin=b"")
        self.assertEqual(missing.returncode, 1)
        self.assertIn(b"NOTFOUND", missing.stderr)
        self.assertEqual(subprocess.run([sluice_bin(), "features-at", "--help"],
                                        capture_output=True).returncode, 0)

    def test_features_command_prints_a_vector(self):
        t = T0 + 80 * B
        done = self.sluice("features", self.view, "u04", "--as-of", str(t))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, self.features(self.view, "u04", t) + b"\n")
        done = self.sluice("features", self.view, "u04", "--as-of", str(t), "--format", "f32")
        printed = f32([float(x) for x in done.stdout.split()])  # %.9g: float32 exactly
        raw = struct.unpack("<%df" % len(NAMES), self.features(self.view, "u04", t, "f32"))
        self.assertEqual(len(printed), len(raw))
        for p, r in zip(printed, raw):
            self.assertTrue(p == r or (math.isnan(p) and math.isnan(r)), (p, r))
        self.assertEqual(self.sluice("features", self.view, "nobody").stdout, b"null\n")

    def test_bad_queries_are_errors(self):
        c = self.raw()
        for cmd, words in [
            (("FEATURES", "nope", "u1"), ["NOTFOUND", "no feature view 'nope'"]),
            (("FEATURES.SCHEMA", "nope"), ["NOTFOUND"]),
            (("MFEATURES", "nope", "u1"), ["NOTFOUND"]),
            (("FEATURES", self.view, "u1", "AS", "OF", "soon"), ["AS OF takes a time"]),
            (("FEATURES", self.view, "u1", "AS", "OF"), ["AS OF takes a time"]),
            (("FEATURES", self.view, "u1", "AS", "IF", 5), ["AS OF takes a time"]),
            (("FEATURES", self.view, "u1", "AS", "OF", 1 << 63), ["AS OF takes a time"]),
            (("FEATURES", self.view, "u1", "FORMAT", "xml"), ["FORMAT takes json or f32"]),
            (("FEATURES", self.view, "u1", "FORMAT"), ["FORMAT takes json or f32"]),
            (("FEATURES", self.view, "u1", "extra"), ["syntax error"]),
            (("FEATURES", self.view, "u1", "FORMAT", "json", "FORMAT", "json"), ["syntax error"]),
            (("FEATURES", self.view, ""), ["a key is 1 to 503 bytes"]),
            (("FEATURES", self.view, "k" * 504), ["a key is 1 to 503 bytes"]),
            (("FEATURES", self.view), ["wrong number of arguments"]),
            (("MFEATURES", self.view, "KEYS"), ["syntax error"]),
            (("MFEATURES", self.view, "AS", "OF", 5), ["syntax error"]),
            (("MFEATURES", self.view, "POINTS", "u1"), ["POINTS takes pairs"]),
            (("MFEATURES", self.view, "POINTS", "u1", "x"), ["the time after key 1"]),
            (("MFEATURES", self.view, "AS", "OF", 5, "POINTS", "u1", 5), ["syntax error"]),
            (("FEATURES", "v" * 300, "u1"), ["NOTFOUND"]),
        ]:
            reply = c.cmd(*cmd)
            self.assertIsInstance(reply, Error, cmd)
            for w in words:
                self.assertIn(w, reply, cmd)
        # a key spelled like an option is asked for with KEYS
        self.assertEqual(c.cmd("MFEATURES", self.view, "KEYS", "AS", "FORMAT"), [None, None])
        self.assertNodeHealthy(c)


class FeatureViewTest(FeatureTestCase):
    """Defaults, retention, the vector topic, several pipelines, restarts."""

    def test_defaults_fill_empty_ranges_and_unknown_keys(self):
        evs = [("a", T0 + 5, 10), ("a", T0 + B + 5, 30)]
        _, view = self.view_pipeline(evs, ", defaults = {top = -1, clicks_1h = 99, mean = 0.5}")
        got = json.loads(self.features(view, "nobody", T0 + 10 * B))
        self.assertEqual(got["top_5m"], -1)
        self.assertEqual(got["clicks_1h"], 99)  # the feature's own default
        self.assertEqual(got["clicks_5m"], 0)  # no default: the empty count
        self.assertEqual(got["mean_15m"], 0.5)
        self.assertIsNone(got["latest_5m"])
        got = json.loads(self.features(view, "a", T0 + 10 * B))
        self.assertEqual((got["top_5m"], got["top_15m"], got["clicks_1h"]), (-1, 30, 2))
        self.assertEqual(got["mean_15m"], 20)
        schema = {row[0]: row for row in self.r.execute_command("FEATURES.SCHEMA", view)}
        self.assertEqual(schema[b"top_1h"][6], b"-1")
        self.assertEqual(schema[b"mean_5m"][6], b"0.5")
        self.assertIsNone(schema[b"spend_5m"][6])
        self.assertEqual(self.r.execute_command("MFEATURES", view, "nobody"),
                         [self.features(view, "nobody")])

    def test_times_beyond_retention_are_errors(self):
        n = next(_serial)
        name, view, topic = "fr%d" % n, "rview%d" % n, "rin%d" % n
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 1)
        self.submit(name, """
local s = require("sluice")
s.stream("%s", {timestamp = function(r) return r.value.ts end})
  :window(s.tumbling("1m")):aggregate{n = s.count(), retention = "1h"}
  :features("%s", {ranges = {"30m"}})
""" % (topic, view))
        evs = [("k", T0 + i * B, 1) for i in range(0, 200, 5)]
        produce(self.r, topic, evs)
        wait_caught_up(self.node, name, WAIT)
        # stream time T0 + 195m: windows from 195m - 60m - 1m + 1 on are kept
        got = json.loads(self.features(view, "k", T0 + 200 * B))
        self.assertEqual(got, {"n_30m": 6})
        with self.assertRaises(redis.ResponseError) as e:
            self.features(view, "k", T0 + 100 * B)
        self.assertIn("retention", str(e.exception))
        self.assertIn("ask for a later time", str(e.exception))
        reply = self.r.execute_command("MFEATURES", view, "POINTS", "k", T0 + 100 * B, "k",
                                       T0 + 200 * B)
        self.assertIsInstance(reply[0], redis.ResponseError)
        self.assertEqual(json.loads(reply[1]), {"n_30m": 6})

    def test_changed_vectors_go_to_the_view_topic(self):
        evs = events(11, 800, users=6)
        _, view = self.view_pipeline(evs)
        last = {}
        for p in (0, 1):
            for offset, ts, key, value, _ in fetch_all(self.r, view, p):
                if value is None:  # no vector at ts: a tombstone
                    last[key.decode()] = {"ts": ts, "features": None}
                    continue
                v = json.loads(value)
                self.assertEqual(v["key"], key.decode())
                self.assertEqual(v["ts"], ts)
                self.assertEqual(list(v["features"]), NAMES)
                last[key.decode()] = v
        self.assertEqual(set(last), {u for u, _, _ in evs})
        for user, v in last.items():  # each key's last vector: at its task's stream time
            end = end_of(v["ts"], as_of=False)
            # (a late event in an old bucket may leave nothing in range now:
            # then a tombstone, and FEATURES answers nil)
            want = reference(evs, user, end)
            got = self.features(view, user, end)
            if v["features"] is None:
                self.assertIsNone(want, user)
                self.assertIsNone(got, user)
                continue
            self.assertVector(json.dumps(v["features"]).encode(), want, user)
            self.assertEqual(json.loads(got), v["features"])

    def test_a_key_left_without_a_vector_is_a_tombstone_in_the_view_topic(self):
        # "old"'s only event is older than the widest range (1h) at the
        # stream time "new" set, but within grace: its vector is empty.
        same = murmur2_partition(b"old", 2)  # one task sees both, "new" first
        new = next(k for k in ("new%d" % i for i in range(100))
                   if murmur2_partition(k.encode(), 2) == same)
        evs = [(new, T0 + 200 * B, 3), ("old", T0 + 10 * B, 5)]
        _, view = self.view_pipeline(evs)
        got = {}
        for p in (0, 1):
            for offset, ts, key, value, _ in fetch_all(self.r, view, p):
                got[key.decode()] = (ts, value)
        self.assertEqual(got["old"], (T0 + 200 * B, None), "a tombstone at the stream time")
        self.assertIsNone(self.features(view, "old", T0 + 200 * B))
        self.assertEqual(json.loads(got[new][1])["features"]["clicks_1h"], 1)

    def test_pipelines_share_a_view_unless_names_collide(self):
        evs = [("a", T0 + 5, 10)]
        first, view = self.view_pipeline(evs)
        n = next(_serial)
        topic = "more%d" % n
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
        other = """
local s = require("sluice")
s.stream("%s", {timestamp = function(r) return r.value.ts end})
  :key_by("user"):window(s.tumbling("%s")):aggregate{%s = s.count(), store = "x"}
  :features("%s", {ranges = {"%s"}})
"""
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", "clash%d" % n,
                          other % (topic, "1m", "spend", view, "1h"))
            self.assertIsInstance(reply, Error)
            self.assertIn("view '%s' already has a feature 'spend_1h', from pipeline '%s'"
                          % (view, first), reply)
            self.assertNotIn(b"clash%d" % n, [p[0] for p in c.cmd("PIPELINE", "LIST")])
        self.submit("more%d" % n, other % (topic, "2m", "aaa", view, "4m"))
        produce(self.r, topic, [("a", T0 + 7, 0), ("a", T0 + 9, 0)])
        wait_caught_up(self.node, "more%d" % n, WAIT)
        got = json.loads(self.features(view, "a", T0 + 10 * B))
        self.assertEqual(list(got), ["aaa_4m"] + NAMES)  # members by name across pipelines
        self.assertEqual((got["aaa_4m"], got["clicks_1h"]), (0, 1))  # 4m ends at 10m: [6m, 10m)
        self.assertEqual(json.loads(self.features(view, "a", T0 + 2 * B))["aaa_4m"], 2)
        self.r.execute_command("PIPELINE", "STOP", "more%d" % n)
        self.assertEqual(list(json.loads(self.features(view, "a", T0 + 10 * B))), NAMES)
        self.r.execute_command("PIPELINE", "STOP", first)
        with self.assertRaises(redis.ResponseError) as e:
            self.features(view, "a", T0)
        self.assertIn("NOTFOUND", str(e.exception))

    def test_views_come_back_after_a_restart(self):
        evs = events(3, 300, users=4)
        _, view = self.view_pipeline(evs)
        t = T0 + 100 * B
        before = [self.features(view, u, t) for u in ("u00", "u01", "u02", "u03")]
        self.node.restart()
        r = self.node.client()
        self.addCleanup(r.close)
        after = [r.execute_command("FEATURES", view, u, "AS", "OF", t)
                 for u in ("u00", "u01", "u02", "u03")]
        self.assertEqual(after, before)
        self.assertVector(after[2], reference(evs, "u02", end_of(t)), "after restart")


class FeatureConsistencyTest(FeatureTestCase):
    """Queries while the pipeline commits: a vector is one committed state."""

    SCRIPT = """
local s = require("sluice")
s.pipeline{name = "%(name)s"}
local users = s.stream("%(input)s"):key_by("user")
users:window(s.tumbling("1m")):aggregate{n = s.count(), store = "a"}
  :features("%(view)s", {ranges = {"1h"}})
users:window(s.tumbling("1m")):aggregate{m = s.count(), store = "b"}
  :features("%(view)s", {ranges = {"1h"}})
"""

    def test_live_answers_follow_every_commit(self):
        """Live vectors are kept for the next query of the same snapshot;
        each commit's state is answered after it, in both formats, and a
        key asked for before it had events has a vector once it has."""
        n = next(_serial)
        name, view, topic = "live%d" % n, "live%d" % n, "livein%d" % n
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
        self.submit(name, self.SCRIPT % {"name": name, "input": topic, "view": view})
        self.r.execute_command("PRODUCE", topic, "", json.dumps({"user": "other"}))
        wait_caught_up(self.node, name, WAIT)
        self.assertIsNone(self.features(view, "k"))  # no events yet
        self.assertEqual(self.r.execute_command("MFEATURES", view, "k"), [None])
        cached = "--features-cache-mb" not in self.node_args
        for i in range(1, 5):
            self.r.execute_command("PRODUCE", topic, "", json.dumps({"user": "k"}))
            wait_caught_up(self.node, name, WAIT)
            hits = self.cache_counter("hits")
            for _ in range(2):  # computed, then kept
                self.assertEqual(json.loads(self.features(view, "k")), {"n_1h": i, "m_1h": i})
                self.assertEqual(struct.unpack("<2f", self.features(view, "k", fmt="f32")),
                                 (i, i))
            self.assertEqual(json.loads(self.features(view, "other")), {"n_1h": 1, "m_1h": 1})
            # the second round was answered from the cache (the node commits only its
            # pipelines here, so no commit came between; /metrics counts it)
            if cached:
                self.assertGreaterEqual(self.cache_counter("hits") - hits, 2)
        if not cached:
            self.assertEqual((self.cache_counter("hits"), self.cache_counter("misses")), (0, 0))

    def cache_counter(self, which):
        metrics = self.node.http_get("/metrics")[1]
        metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
        line = [l for l in metrics.splitlines()
                if l.startswith("sluice_features_cache_%s_total " % which)]
        self.assertEqual(len(line), 1, metrics)
        return int(line[0].split()[1])

    def test_vectors_never_mix_two_commits(self):
        n = next(_serial)
        name, view, topic = "mix%d" % n, "mix%d" % n, "mixin%d" % n
        keys = ["k%d" % i for i in range(5)]
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
        self.submit(name, self.SCRIPT % {"name": name, "input": topic, "view": view})
        stop = threading.Event()
        produced = {k: 0 for k in keys}
        failures = []

        def producer():
            client = self.node.client()
            rnd = random.Random(5)
            try:
                while not stop.is_set():
                    args = []
                    for _ in range(200):
                        k = rnd.choice(keys)
                        produced[k] += 1
                        args += [k, json.dumps({"user": k})]
                    client.execute_command("PRODUCEBATCH", topic, *args)
            except Exception as e:  # reported by the main thread
                failures.append(repr(e))
            finally:
                client.close()

        thread = threading.Thread(target=producer)
        thread.start()
        checked, seen = 0, {k: 0 for k in keys}
        deadline = time.monotonic() + 8
        try:
            client = self.node.client()
            while time.monotonic() < deadline and not failures:
                for k, got in zip(keys, client.execute_command("MFEATURES", view, *keys)):
                    if got is None:
                        continue
                    v = json.loads(got)
                    self.assertEqual(v["m_1h"], v["n_1h"], v)  # both aggregates, one commit
                    self.assertGreaterEqual(v["n_1h"], seen[k])  # never back in time
                    seen[k] = v["n_1h"]
                    checked += 1
            client.close()
        finally:
            stop.set()
            thread.join(30)
        self.assertEqual(failures, [])
        self.assertGreater(checked, 100)
        self.assertGreater(max(seen.values()), 0)  # vectors moved while we watched
        wait_caught_up(self.node, name, WAIT)
        final = [json.loads(v) for v in self.r.execute_command("MFEATURES", view, *keys)]
        self.assertEqual([v["n_1h"] for v in final], [produced[k] for k in keys])
        self.assertEqual([v["m_1h"] for v in final], [produced[k] for k in keys])


class FeatureConsistencyUncachedTest(FeatureConsistencyTest):
    """The same with `--features-cache-mb 0`: every vector computed."""

    node_args = ("--features-cache-mb", "0")


class FeatureCacheOptionTest(unittest.TestCase):

    def test_a_bad_cache_size_is_refused(self):
        for bad in ("-1", "x", "99999999999999999999"):
            proc = subprocess.run([sluice_bin(), "serve", "--features-cache-mb", bad, "--port",
                                   "0", "--http-port", "-1"], capture_output=True, text=True,
                                  timeout=30)
            self.assertEqual(proc.returncode, 2, bad)
            self.assertIn("bad option or value", proc.stderr)


class FeatureBackfillTest(FeatureTestCase):
    """Backfill (issue 7): node A's input topic, replayed from offset 0 into
    a fresh data directory on node B as a backfill job would (FETCH every
    partition, PRODUCE each record with its key, value, TS and PARTITION),
    and the script that serves online on A, submitted on B once the topic is
    full, give byte-identical answers AS OF any time, and the schema. A
    processes the events as they arrive, in small commits; B reads them in
    one go: the answers may not depend on how the input was batched. The
    answers are also checked against the reference, so that both nodes being
    wrong alike fails too."""

    USERS = ["u%02d" % i for i in range(8)] + ["nobody"]
    TIMES = [T0 + k * B for k in (-10, 0, 7, 30, 61, 119, 180, 240)]  # boundaries
    TIMES += [T0 + 45 * B + 31337, T0 + 89 * B + 59999, T0 + 150 * B + 1]  # inside buckets

    def answers(self, client, view):
        """{(key, t, format): FEATURES reply} for USERS x TIMES, and the
        schema."""
        out = {}
        for key in self.USERS:
            for t in self.TIMES:
                for fmt in ("json", "f32"):
                    out[key, t, fmt] = client.execute_command("FEATURES", view, key, "AS", "OF",
                                                              t, "FORMAT", fmt)
        return out, client.execute_command("FEATURES.SCHEMA", view)

    def replay(self, source, target, topic):
        """Copies every partition of topic from source to target, record by
        record, and checks that each lands at its own partition and offset."""
        partitions = sorted(partition_ends(source, topic))
        copied = {}
        for p in partitions:
            records = fetch_all(source, topic, p)
            for i in range(0, len(records), 500):
                pipe = target.pipeline(transaction=False)
                for offset, ts, key, value, headers in records[i:i + 500]:
                    self.assertIsNotNone(value)  # PRODUCE cannot write a tombstone
                    args = [topic, key or b"", value, "TS", ts, "PARTITION", p]
                    for h in range(0, len(headers), 2):
                        args += ["HEADER", headers[h], headers[h + 1]]
                    pipe.execute_command("PRODUCE", *args)
                self.assertEqual(pipe.execute(), [[p, r[0]] for r in records[i:i + 500]])
            copied[p] = records
        return copied

    def test_a_replay_into_a_fresh_node_answers_as_the_online_node(self):
        n = next(_serial)
        name, view, topic = "bf%d" % n, "bview%d" % n, "bclicks%d" % n
        script = VIEW.substitute(name=name, input=topic, view=view, defaults="")
        evs = events(23, 2000, users=8)  # out of event-time order, over 3 hours
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
        self.submit(name, script)
        produce(self.r, topic, evs)
        wait_caught_up(self.node, name, WAIT)
        online, online_schema = self.answers(self.r, view)

        backfill = Node()
        self.addCleanup(backfill.cleanup)
        backfill.start()
        b = backfill.client()
        self.addCleanup(b.close)
        b.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
        copied = self.replay(self.r, b, topic)
        self.assertEqual(sum(len(r) for r in copied.values()), len(evs))
        self.assertTrue(all(copied.values()), "every partition has records")
        for p, records in copied.items():  # the same log: offsets, times, keys, values
            self.assertEqual(fetch_all(b, topic, p), records, p)
        submit(backfill, name, script)
        wait_caught_up(backfill, name, WAIT)
        replayed, replayed_schema = self.answers(b, view)

        self.assertEqual(replayed_schema, online_schema)
        self.assertEqual([row[0].decode() for row in online_schema], NAMES)
        self.assertEqual({row[7].decode() for row in online_schema}, {name})
        differ = [(key, t, fmt, online[key, t, fmt], replayed[key, t, fmt])
                  for key, t, fmt in online if online[key, t, fmt] != replayed[key, t, fmt]]
        self.assertEqual(differ, [], "(key, AS OF, FORMAT, A, B) that differ")
        for key in self.USERS:
            for t in self.TIMES:
                self.assertVector(online[key, t, "json"], reference(evs, key, end_of(t)),
                                  (key, t))
        answered = [k for k, v in online.items() if v is not None]
        self.assertGreater(len(answered), len(online) // 2)  # not a comparison of nils
        self.assertIsNone(online["nobody", T0 + 7 * B, "json"])
        self.assertIsNone(online["u03", T0 - 10 * B, "json"])  # before any event
        backfill.stop()


if __name__ == "__main__":
    unittest.main()
