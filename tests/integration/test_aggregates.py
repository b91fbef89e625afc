#!/usr/bin/python3
"""
test_aggregates.py - windowed and running aggregates on a real node (issue 5):
results against a reference computed here, emit modes, late records, the
exactly-once requirement, restart after SIGKILL, and restore from the
changelogs after DATA/state is deleted.

Records are produced with explicit timestamps (TS) so windows are exact.
Waits are bounded polls of FETCH on the result topic, never sleeps.

    SLUICE_BIN=/path/to/sluice /usr/bin/python3 -m unittest -v test_aggregates
"""
import itertools
import json
import random
import shutil
import os
import unittest

import subprocess

from node import Node, NodeTestCase, fetch_all, murmur2_partition, sluice_bin, wait_until

WAIT = 20.0
_serial = itertools.count()

SCRIPT = """
local s = require("sluice")
s.pipeline{name = "%(name)s", processing = "exactly_once"}
s.stream("%(input)s")
  %(window)s
  :aggregate{n = s.count(), total = s.sum("amount"), avg = s.avg("amount"),
             low = s.min("amount"), high = s.max("amount")%(options)s}
  :to("%(output)s", {create = true, partitions = 2})
"""


def results(client, topic, partitions=2):
    """Every result record of topic, decoded: list of (key, value dict)."""
    out = []
    for p in range(partitions):
        for rec in fetch_all(client, topic, p):
            out.append((rec[2].decode(), json.loads(rec[3])))
    return out


def latest(rows):
    """The last result per (key, window_start)."""
    last = {}
    for key, v in rows:
        last[(key, v.get("window_start"))] = v
    return last


def reference(events, size=None, advance=None):
    """{(key, window_start): values} over (key, ts, amount) events, with
    tumbling (advance = size) or hopping windows, or none (size None)."""
    acc = {}
    for key, ts, amount in events:
        if size is None:
            starts = [None]
        else:
            adv = advance or size
            last = ts - ts % adv
            starts = [s for s in range(last, ts - size, -adv) if s <= ts < s + size]
        for start in starts:
            a = acc.setdefault((key, start), [])
            a.append(amount)
    return {
        k: {"n": len(v), "total": sum(v), "avg": sum(v) / len(v), "low": min(v), "high": max(v)}
        for k, v in acc.items()
    }


class AggregateTest(NodeTestCase):
    def names(self):
        n = next(_serial)
        return "agg%d" % n, "agg-in-%d" % n, "agg-out-%d" % n

    def submit(self, name, input_topic, output, window="", options=""):
        script = SCRIPT % dict(name=name, input=input_topic, output=output, window=window,
                               options=options)
        return self.r.execute_command("PIPELINE", "SUBMIT", name, script)

    def produce(self, topic, events, client=None):
        client = client or self.r
        for key, ts, amount in events:
            client.execute_command("PRODUCE", topic, key, json.dumps({"amount": amount}), "TS", ts)

    def wait_results(self, topic, want, client=None):
        client = client or self.r

        def check():
            got = latest(results(client, topic))
            return all(got.get(k) and got[k]["values"]["n"] == v["n"] for k, v in want.items())

        wait_until(check, WAIT, what="results in %s" % topic)
        return latest(results(client, topic))

    def check_values(self, got, want):
        for k, v in want.items():
            values = got[k]["values"]
            self.assertEqual(values["n"], v["n"], k)
            self.assertEqual(values["total"], v["total"], k)
            self.assertAlmostEqual(values["avg"], v["avg"], 9, k)
            self.assertEqual(values["low"], v["low"], k)
            self.assertEqual(values["high"], v["high"], k)

    def events(self, seed, count, keys=7, span=60000):
        rnd = random.Random(seed)
        return [("k%d" % rnd.randrange(keys), 1_000_000 + rnd.randrange(span),
                 rnd.randrange(-50, 1000)) for _ in range(count)]

    def test_tumbling_window_results_match_the_reference(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        self.assertEqual(self.submit(name, t_in, out, ':window(s.tumbling("10s", {grace = "1m"}))'),
                         b"OK")
        events = self.events(1, 400)
        self.produce(t_in, events)
        want = reference(events, 10000)
        got = self.wait_results(out, want)
        self.check_values(got, want)
        for (key, start), v in got.items():
            self.assertEqual(v["key"], key)
            self.assertEqual(v["window_end"] - v["window_start"], 10000)
        self.assertEqual(set(got), set(want))

    def test_hopping_windows_put_a_record_in_every_window_it_falls_in(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        self.assertEqual(
            self.submit(name, t_in, out, ':window(s.hopping("10s", "5s", {grace = "1m"}))'), b"OK")
        events = self.events(2, 300)
        self.produce(t_in, events)
        want = reference(events, 10000, 5000)
        got = self.wait_results(out, want)
        self.check_values(got, want)
        self.assertEqual(set(got), set(want))

    def test_session_windows_merge_when_a_record_bridges_two_sessions(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 1)
        self.assertEqual(
            self.submit(name, t_in, out, ':window(s.session("5s", {grace = "1m"}))'), b"OK")
        self.produce(t_in, [("a", 1000, 1), ("a", 2000, 2), ("a", 9000, 4), ("b", 1500, 10)])
        self.wait_results(out, {("a", 9000): {"n": 1}, ("a", 1000): {"n": 2}})
        self.produce(t_in, [("a", 5500, 8)])  # within 5 s of both: one session now
        got = self.wait_results(out, {("a", 1000): {"n": 4}})
        merged = got[("a", 1000)]
        self.assertEqual(merged["window_end"], 9000)
        self.assertEqual(merged["values"]["total"], 15)
        self.assertEqual(got[("b", 1500)]["values"]["n"], 1)
        self.produce(t_in, [("a", 30000, 1)])  # a gap: a new session
        got = self.wait_results(out, {("a", 30000): {"n": 1}})
        self.assertEqual(got[("a", 1000)]["values"]["n"], 4)

    def sluice_get(self, *args):
        return subprocess.run([sluice_bin(), "get", *args, "--port", str(self.node.port)],
                              capture_output=True, text=True, timeout=30)

    def test_sluice_get_prints_a_keys_state(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 1)
        self.assertEqual(self.submit(name, t_in, out, options=', store = "tot"'), b"OK")
        win_name, win_out = name + "w", out + "w"
        self.assertEqual(self.submit(win_name, t_in, win_out, ':window(s.tumbling("10s"))',
                                     ', store = "win"'), b"OK")
        self.produce(t_in, [("a", 1000, 5), ("a", 12000, 7), ("b", 2000, 1)])
        self.wait_results(out, {("a", None): {"n": 2}, ("b", None): {"n": 1}})
        self.wait_results(win_out, {("a", 10000): {"n": 1}})
        kv = self.sluice_get(name + ".tot", "a")
        self.assertEqual(kv.returncode, 0, kv.stderr)
        self.assertEqual(json.loads(kv.stdout)["total"], 12)
        missing = self.sluice_get(name + ".tot", "nobody")
        self.assertEqual((missing.returncode, missing.stdout), (0, "null\n"))
        windows = self.sluice_get(win_name + ".win", "a")
        self.assertEqual(windows.returncode, 0, windows.stderr)
        lines = [l.split(" ", 2) for l in windows.stdout.splitlines()]
        self.assertEqual([(l[0], l[1]) for l in lines], [("0", "10000"), ("10000", "20000")])
        self.assertEqual([json.loads(l[2])["n"] for l in lines], [1, 1])
        late = self.sluice_get(win_name + ".win", "a", "--from", "5000")
        self.assertEqual(len(late.stdout.splitlines()), 1, late.stdout)
        for bad in ("99999999999999999999", "-99999999999999999999", "1e3", "+5", ""):
            refused = self.sluice_get(win_name + ".win", "a", "--from", bad)
            self.assertEqual(refused.returncode, 2, bad)
            self.assertIn("--from needs a time in ms", refused.stderr)
        refused = self.sluice_get(win_name + ".win", "a", "--to", "9223372036854775808")
        self.assertEqual(refused.returncode, 2)
        self.assertIn("--to needs a time in ms", refused.stderr)
        unknown = self.sluice_get("no.such", "a")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no store 'no.such'", unknown.stderr)

    def test_running_totals_without_a_window(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        self.assertEqual(self.submit(name, t_in, out), b"OK")
        events = self.events(3, 200)
        self.produce(t_in, events)
        want = reference(events)
        got = self.wait_results(out, want)
        self.check_values(got, want)
        for v in got.values():
            self.assertNotIn("window_start", v)

    def test_on_close_emits_one_final_result_per_window(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 1)
        self.assertEqual(
            self.submit(name, t_in, out, ':window(s.tumbling("10s"))', ', emit = "on_close"'),
            b"OK")
        events = [("a", 1000, 1), ("a", 2000, 2), ("b", 3000, 5), ("a", 12000, 7)]
        self.produce(t_in, events)  # the last record closes window 0 only
        wait_until(lambda: len(results(self.r, out)) >= 2, WAIT, what="closed windows")
        # push the watermark past 10000-20000 too
        self.produce(t_in, [("c", 25000, 1)])
        wait_until(lambda: len(results(self.r, out)) >= 3, WAIT, what="the second window")
        rows = results(self.r, out)
        windows = sorted((k, v["window_start"], v["values"]["n"]) for k, v in rows)
        self.assertEqual(windows, [("a", 0, 2), ("a", 10000, 1), ("b", 0, 1)])

    def test_late_records_are_dropped_or_sent_to_the_late_topic(self):
        name, t_in, out = self.names()
        late = out + "-late"
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 1)
        self.assertEqual(
            self.submit(name, t_in, out, ':window(s.tumbling("10s", {grace = "5s"}))',
                        ', late = "%s"' % late), b"OK")
        self.produce(t_in, [("a", 1000, 1), ("a", 30000, 2)])  # watermark 25000
        self.produce(t_in, [("a", 2000, 100)])  # window 0 closed at 25000: late
        self.produce(t_in, [("a", 21000, 3)])  # window 20000 still open
        want = {("a", 0): 1, ("a", 30000): 1, ("a", 20000): 1}
        wait_until(lambda: len(fetch_all(self.r, late, 0)) == 1, WAIT, what="the late record")
        got = self.wait_results(out, {k: {"n": n} for k, n in want.items()})
        self.assertEqual(got[("a", 0)]["values"]["total"], 1)
        self.assertEqual(json.loads(fetch_all(self.r, late, 0)[0][3]), {"amount": 100})
        metrics = self.node.http_get("/metrics")[1]
        if isinstance(metrics, bytes):
            metrics = metrics.decode()
        self.assertIn('sluice_pipeline_late_records_total{pipeline="%s",op="1"} 1' % name, metrics)

    def test_aggregates_need_exactly_once(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 1)
        script = (SCRIPT % dict(name=name, input=t_in, output=out, window="", options="")).replace(
            '"exactly_once"', '"at_least_once"')
        with self.assertRaises(Exception) as e:
            self.r.execute_command("PIPELINE", "SUBMIT", name, script)
        self.assertIn("exactly_once", str(e.exception))

    def test_a_record_without_a_key_fails_with_a_message(self):
        name, t_in, out = self.names()
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 1)
        self.assertEqual(self.submit(name, t_in, out), b"OK")
        self.r.execute_command("PRODUCE", t_in, "", json.dumps({"amount": 1}))

        def failed():
            desc = self.r.execute_command("PIPELINE", "DESCRIBE", name)
            return b"failed" in desc

        wait_until(failed, WAIT, what="the pipeline to fail")
        desc = self.r.execute_command("PIPELINE", "DESCRIBE", name)
        self.assertIn(b"has no key", b" ".join(x for x in desc if isinstance(x, bytes)))


KEYED = """
local s = require("sluice")
s.pipeline{name = "%(name)s"}
s.stream("%(input)s")
  :key_by("user")
  :window(s.tumbling("1m"))
  :aggregate{n = s.count(), emit = "on_close"}
  :to("%(output)s", {create = true, partitions = 2})
"""


class RepartitionTimeTest(NodeTestCase):
    """Event time through key_by: the tasks reading a repartition topic wait
    for the slowest task writing it (runtime/frontiers.c). One worker runs
    the two source tasks in turn, a batch each, so their records reach the
    repartition topic up to a batch (17 minutes of event time here) apart:
    with the largest time read as stream time, most of the second source's
    records would be late at grace 0."""

    node_args = ("--workers", "1")

    def test_a_backlog_through_key_by_loses_no_record_at_grace_0(self):
        name, t_in = "rt%d" % next(_serial), "rt-in-%d" % next(_serial)
        out = t_in.replace("in", "out")
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        base, count, users = 1_700_000_000_000, 6000, 7
        want = {}
        p = self.r.pipeline(transaction=False)
        for part in range(2):  # each partition in event-time order, one second apart
            for i in range(count):
                user, ts = "u%d" % ((i * 3 + part) % users), base + i * 1000 + part
                p.execute_command("PRODUCE", t_in, "", json.dumps({"user": user}), "TS", ts,
                                  "PARTITION", part)
                start = ts - ts % 60000
                want[(user, start)] = want.get((user, start), 0) + 1
                if len(p) >= 1000:
                    p.execute()
        p.execute()
        self.assertEqual(self.r.execute_command(
            "PIPELINE", "SUBMIT", name, KEYED % dict(name=name, input=t_in, output=out)), b"OK")
        # every window but the newest closes with the backlog; a record an
        # hour later (both writers idle by then) closes the rest
        last = max(start for _, start in want)
        backlog = {k: n for k, n in want.items() if k[1] < last}

        def closed():
            return {(k, v["window_start"]): v["values"]["n"] for k, v in results(self.r, out)}

        wait_until(lambda: set(backlog) <= set(closed()), WAIT, what="the backlog's windows")
        self.r.execute_command("PRODUCE", t_in, "", json.dumps({"user": "late-comer"}), "TS",
                               base + count * 1000 + 3_600_000, "PARTITION", 0)
        wait_until(lambda: set(want) <= set(closed()), WAIT, what="the newest windows")
        self.assertEqual({k: n for k, n in closed().items() if k[0] != "late-comer"}, want)
        metrics = self.node.http_get("/metrics")[1]
        if isinstance(metrics, bytes):
            metrics = metrics.decode()
        self.assertIn('sluice_pipeline_late_records_total{pipeline="%s",op="2"} 0' % name, metrics)
        # the markers that carried the upstream tasks' progress
        markers = [rec for rec in fetch_all(self.r, "%s.repartition.1" % name, 0)
                   if rec[2] is None and rec[3] is None]
        self.assertTrue(markers)
        self.assertTrue(all(rec[4][0] == b"sluice.frontier" for rec in markers))


class AggregateRecoveryTest(unittest.TestCase):
    """A node of its own per test: killed, restarted, its state deleted."""

    def setUp(self):
        self.node = Node().start()
        self.addCleanup(self.node.cleanup)
        self.r = self.node.client()

    def start(self):
        self.node.start()
        self.r = self.node.client()

    def run_pipeline(self, events_before, events_after, between):
        t_in, out = "in", "out"
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        script = SCRIPT % dict(name="p", input=t_in, output=out,
                               window=':window(s.tumbling("10s", {grace = "1h"}))', options="")
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", "p", script), b"OK")
        AggregateTest.produce(self, t_in, events_before)
        want = reference(events_before, 10000)
        wait_until(lambda: all(latest(results(self.r, out)).get(k, {}).get("values", {}).get("n")
                               == v["n"] for k, v in want.items()), WAIT, what="first results")
        between()
        AggregateTest.produce(self, t_in, events_after)
        want = reference(events_before + events_after, 10000)
        wait_until(lambda: all(latest(results(self.r, out)).get(k, {}).get("values", {}).get("n")
                               == v["n"] for k, v in want.items()), WAIT, what="final results")
        got = latest(results(self.r, out))
        for k, v in want.items():
            self.assertEqual(got[k]["values"]["total"], v["total"], k)
            self.assertEqual(got[k]["values"]["n"], v["n"], k)

    def test_state_survives_sigkill(self):
        events = AggregateTest.events(self, 4, 300)
        def kill():
            self.node.kill()
            self.start()
        self.run_pipeline(events[:150], events[150:], kill)

    def answers(self, store, keys):
        """Every query answer about store: SCAN pages and WINDOWS per key."""
        out, cursor = [], b"0"
        while True:
            cursor, items = self.r.execute_command("SCAN", store, cursor, "COUNT", 7)
            out.append(items)
            if cursor in (b"0", 0, "0"):
                break
        for key in keys:
            out.append(self.r.execute_command("WINDOWS", store, key, 0, 1 << 62))
        return out

    def test_restore_after_deleting_the_state_gives_byte_identical_answers(self):
        events = AggregateTest.events(self, 6, 500)
        t_in, out = "in", "out"
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        script = SCRIPT % dict(name="p", input=t_in, output=out,
                               window=':window(s.tumbling("10s", {grace = "1h"}))',
                               options=', store = "spend"')
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", "p", script), b"OK")
        AggregateTest.produce(self, t_in, events)
        want = reference(events, 10000)
        wait_until(lambda: all(latest(results(self.r, out)).get(k, {}).get("values", {}).get("n")
                               == v["n"] for k, v in want.items()), WAIT, what="results")
        keys = sorted({k for k, _ in want})
        before = self.answers("p.spend", keys)
        self.assertTrue(any(before[-len(keys):]), "the store has windows")
        desc = self.r.execute_command("PIPELINE", "DESCRIBE", "p")
        committed = dict(zip(desc[0::2], desc[1::2]))[b"tasks"]
        self.node.stop()
        shutil.rmtree(os.path.join(self.node.data_dir, "state"))
        self.start()
        self.assertIn("restor", self.node.log())
        self.assertEqual(self.answers("p.spend", keys), before)
        # the committed offsets, lost with the state, come from the offsets topic
        desc = self.r.execute_command("PIPELINE", "DESCRIBE", "p")
        self.assertEqual(dict(zip(desc[0::2], desc[1::2]))[b"tasks"], committed)

    def window_counts(self, store, keys):
        """{(key, window_start): (n, total)} as WINDOWS answers it."""
        got = {}
        for key in keys:
            for start, _end, value in self.r.execute_command("WINDOWS", store, key, 0, 1 << 62):
                v = json.loads(value)
                got[(key, start)] = (v["n"], v["total"])
        return got

    def test_state_between_flushes_is_queried_and_restored_after_sigkill(self):
        """flush_interval = 1h: commits write the state to the changelog
        only, LMDB gets nothing; queries still answer every commit, and a
        node killed with SIGKILL restores the state from the changelog."""
        events = AggregateTest.events(self, 8, 400)
        t_in, out = "in", "out"
        self.r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", 2)
        script = SCRIPT % dict(name="p", input=t_in, output=out,
                               window=':window(s.tumbling("10s", {grace = "1h"}))',
                               options=', store = "spend"')
        script = script.replace('processing = "exactly_once"',
                                'processing = "exactly_once", flush_interval = "1h"')
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", "p", script), b"OK")
        for part, upto in ((events[:200], 200), (events[200:], 400)):
            AggregateTest.produce(self, t_in, part)
            want = {(k, w): (v["n"], v["total"])
                    for (k, w), v in reference(events[:upto], 10000).items()}
            keys = sorted({k for k, _ in want})
            wait_until(lambda: self.window_counts("p.spend", keys) == want, WAIT,
                       what="the store's windows")
            rows = self.stores("p")
            self.assertEqual({(r[0], r[1], r[2]) for r in rows},
                             {("p.spend", "p.spend.changelog", 0),
                              ("p.spend", "p.spend.changelog", 1)})
            self.assertGreater(sum(r[5] for r in rows), 0, rows)  # what a restore reads
            self.node.kill()
            self.start()
            self.assertIn("restoring store p.spend partition", self.node.log())
            self.assertEqual(self.window_counts("p.spend", keys), want)

    def stores(self, name):
        """PIPELINE DESCRIBE's stores rows: [store, changelog, partition,
        flushed, end, behind]."""
        reply = self.r.execute_command("PIPELINE", "DESCRIBE", name)
        desc = dict(zip(reply[0::2], reply[1::2]))
        return [[v.decode() if isinstance(v, bytes) else v for v in row]
                for row in desc[b"stores"]]

    def test_an_idle_pipeline_flushes_its_state_and_restores_nothing(self):
        """flush_interval = 2s and then no more input: the worker wakes to
        flush what the last commits left in the changelog only, so
        DESCRIBE's stores come to be behind by nothing, and a node killed
        with SIGKILL after that restores nothing at its next start."""
        events = AggregateTest.events(self, 6, 300)
        self.r.execute_command("TOPIC", "CREATE", "in", "PARTITIONS", 2)
        script = SCRIPT % dict(name="p", input="in", output="out",
                               window=':window(s.tumbling("10s", {grace = "1h"}))',
                               options=', store = "spend"')
        script = script.replace('processing = "exactly_once"',
                                'processing = "exactly_once", flush_interval = "2s"')
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", "p", script), b"OK")
        for part in (events[:150], events[150:]):  # the second batch right after the first
            AggregateTest.produce(self, "in", part)
        want = {(k, w): (v["n"], v["total"])
                for (k, w), v in reference(events, 10000).items()}
        keys = sorted({k for k, _ in want})
        wait_until(lambda: self.window_counts("p.spend", keys) == want, WAIT,
                   what="the store's windows")
        def flushed():
            rows = self.stores("p")
            return sum(r[4] for r in rows) > 0 and all(r[5] == 0 for r in rows)
        wait_until(flushed, WAIT, what="the stores flushed up to their changelogs' ends")
        self.node.kill()
        self.start()
        self.assertNotIn("restoring store p.spend", self.node.log())
        self.assertEqual(self.window_counts("p.spend", keys), want)

    def test_state_is_restored_from_changelogs_after_deleting_the_state_directory(self):
        events = AggregateTest.events(self, 5, 300)
        def lose_state():
            self.node.stop()
            shutil.rmtree(os.path.join(self.node.data_dir, "state"))
            self.start()
            self.assertIn("restor", self.node.log())
            metrics = self.node.http_get("/metrics")[1]
            if isinstance(metrics, bytes):
                metrics = metrics.decode()
            restored = [l for l in metrics.splitlines()
                        if l.startswith("sluice_pipeline_restore_records_total ")]
            self.assertEqual(len(restored), 1, metrics)
            self.assertGreater(int(restored[0].split()[1]), 0)
        self.run_pipeline(events[:150], events[150:], lose_state)


if __name__ == "__main__":
    unittest.main()
