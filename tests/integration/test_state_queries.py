#!/usr/bin/python3
"""
test_state_queries.py - GET, WINDOWS and SCAN over the pipelines' state
stores on a real node (issue 5's queries, issue 7's SCAN; docs/commands.md,
"State queries").

Stores are made the only way there is: by an exactly-once pipeline with a
windowed aggregate (a window store) and a running one (a kv store). Answers
are compared with a reference computed here from the produced input; errors
for unknown stores, the wrong kind, bad arguments; SCAN pages cover every
entry once; queries go on answering, each from one committed state, while
the pipeline commits; a stopped pipeline's store shows its stored bytes; a
restart gives the same answers byte for byte.

Until the node accepts windowed aggregates in a pipeline, every test here is
skipped with the node's refusal as the reason.
"""
import json
import random
import string
import threading
import time
import unittest

from crash import wait_caught_up
from node import Error, Node, NodeTestCase, wait_until

WAIT = 60.0
WINDOW = 60000  # s.tumbling("1m")
USERS = 60

# Both kinds of store from one input: per user and 1-minute window, and
# per user since the start. The grace is a day so that no record is late
# whatever order the two input partitions meet in after key_by.
SCRIPT = string.Template("""\
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
local pay = s.stream("$input", {timestamp = function(r) return r.value.ts end})
pay:key_by("user")
  :window(s.tumbling("1m", {grace = "1d"}))
  :aggregate{n = s.count(), total = s.sum("amount"), store = "win"}
  :to("$name-w", {create = true})
pay:key_by("user")
  :aggregate{n = s.count(), total = s.sum("amount"), store = "tot"}
  :to("$name-t", {create = true})
""")

# Session windows: one input partition, so records meet the operator in
# the order they were produced.
SESSIONS = string.Template("""\
local s = require("sluice")
s.stream("$input", {timestamp = function(r) return r.value.ts end})
  :key_by("user")
  :window(s.session("5s", {grace = "1d"}))
  :aggregate{n = s.count(), total = s.sum("amount"), store = "ses"}
  :to("$name-s", {create = true})
""")

_capability = []
_serial = iter(range(1, 1 << 30))


def capability():
    """(ok, why): whether a node runs the pipeline above (accepts it, and
    then aggregates a record into its store); asked once."""
    if not _capability:
        with Node() as node:
            r = node.client()
            r.execute_command("TOPIC", "CREATE", "probe-in", "PARTITIONS", 1)
            with node.raw() as c:
                reply = c.cmd("PIPELINE", "SUBMIT", "probe",
                              SCRIPT.substitute(input="probe-in", name="probe"))
            if reply == "OK":
                produce(r, "probe-in", [("u", 1_700_000_000_000, 1)])
                try:
                    wait_caught_up(node, "probe", WAIT)
                except AssertionError as e:
                    reply = str(e).splitlines()[0]
            r.close()
        _capability.append((reply == "OK", str(reply)))
    return _capability[0]


def events(seed, count, users=USERS, minutes=8):
    """A deterministic input: (user, ts, amount), timestamps increasing."""
    rnd = random.Random(seed)
    out, ts = [], 1_700_000_000_000
    for _ in range(count):
        ts += rnd.randrange(minutes * WINDOW * 2 // count + 1)
        out.append(("u%03d" % rnd.randrange(users), ts, rnd.randrange(-20, 500)))
    return out


def reference(evs):
    """({user: {n, total}}, {user: {window_start: {n, total}}})."""
    totals, windows = {}, {}
    for user, ts, amount in evs:
        for v in (totals.setdefault(user, {"n": 0, "total": 0}),
                  windows.setdefault(user, {}).setdefault(ts - ts % WINDOW,
                                                          {"n": 0, "total": 0})):
            v["n"] += 1
            v["total"] += amount
    return totals, windows


def produce(client, topic, evs, batch=500):
    for i in range(0, len(evs), batch):
        args = []
        for user, ts, amount in evs[i:i + batch]:
            args += [user, json.dumps({"user": user, "ts": ts, "amount": amount})]
        client.execute_command("PRODUCEBATCH", topic, *args)


def scan_all(client, store, count=None, match=None):
    """Every (key, rest...) SCAN returns for store, and how many calls."""
    cursor, items, calls = b"0", [], 0
    width = None
    while True:
        args = ["SCAN", store, cursor]
        if match is not None:
            args += ["MATCH", match]
        if count is not None:
            args += ["COUNT", count]
        cursor, flat = client.execute_command(*args)
        calls += 1
        if width is None:
            width = 3 if store.endswith(".win") else 2
        assert len(flat) % width == 0, flat
        if count is not None:
            assert len(flat) // width <= count, (count, len(flat))
        items += [tuple(flat[i:i + width]) for i in range(0, len(flat), width)]
        if int(cursor) == 0:  # redis-py makes SCAN's cursor an int
            return items, calls


class StateQueryArgumentTest(NodeTestCase):
    """What needs no store: unknown stores and bad arguments."""

    def assertError(self, reply, code, *words):
        self.assertIsInstance(reply, Error, reply)
        self.assertTrue(reply.startswith(code + " "), reply)
        for w in words:
            self.assertIn(w, reply)

    def test_unknown_stores_are_not_found(self):
        c = self.raw()
        for cmd in (("GET", "p.none", "k"), ("WINDOWS", "p.none", "k", 0, 1),
                    ("SCAN", "p.none", "0"), ("SCAN", "p.none", "0", "MATCH", "a", "COUNT", 5),
                    ("GET", "a/b", "k"), ("GET", "", "k"), ("GET", "p", "k"),
                    ("GET", "x" * 245, "k")):
            self.assertError(c.cmd(*cmd), "NOTFOUND", "no store '%s'" % cmd[1])
        self.assertError(c.cmd("GET", "x" * 300, "k"), "ERR", "store name")
        self.assertError(c.cmd("GET", "p\x00q", "k"), "ERR", "NUL")
        self.assertNodeHealthy(c)

    def test_bad_arguments_are_named_before_the_store_is_looked_up(self):
        c = self.raw()
        e = self.assertError
        e(c.cmd("WINDOWS", "p.none", "k", "x", 1), "ERR", "from must be an integer")
        e(c.cmd("WINDOWS", "p.none", "k", 0, ""), "ERR", "to must be an integer")
        e(c.cmd("SCAN", "p.none", "x"), "ERR", "invalid cursor")
        e(c.cmd("SCAN", "p.none", "0", "COUNT", 0), "ERR", "COUNT must be 1 to 1000")
        e(c.cmd("SCAN", "p.none", "0", "NOPE"), "ERR", "syntax error")
        e(c.cmd("GET", "p.none"), "ERR", "wrong number of arguments for 'GET'")
        e(c.cmd("GET", "p.none", "k", "x"), "ERR", "wrong number of arguments for 'GET'")
        e(c.cmd("WINDOWS", "p.none", "k", 1, 2, 3), "ERR", "wrong number of arguments")
        e(c.cmd("SCAN", "p.none"), "ERR", "wrong number of arguments")
        self.assertNodeHealthy(c)


class StateQueryTest(NodeTestCase):
    """One pipeline for the class, fed once; the tests read its stores."""

    @classmethod
    def setUpClass(cls):
        ok, why = capability()
        if not ok:
            raise unittest.SkipTest("the node refuses windowed aggregates yet: " + why)
        super().setUpClass()
        cls.name, cls.input = "sq", "sq-in"
        r = cls.node.client()
        r.execute_command("TOPIC", "CREATE", cls.input, "PARTITIONS", 2)
        reply = r.execute_command("PIPELINE", "SUBMIT", cls.name,
                                  SCRIPT.substitute(input=cls.input, name=cls.name))
        assert reply == b"OK", reply
        cls.events = events(5, 4000)
        produce(r, cls.input, cls.events)
        r.close()
        wait_caught_up(cls.node, cls.name, WAIT)
        cls.totals, cls.windows = reference(cls.events)

    def get(self, user):
        v = self.r.execute_command("GET", "sq.tot", user)
        return None if v is None else json.loads(v)

    def test_get_answers_the_reference(self):
        self.assertEqual(len(self.totals), USERS)
        for user, want in self.totals.items():
            self.assertEqual(self.get(user), want, user)
        self.assertIsNone(self.get("nobody"))
        raw = self.r.execute_command("GET", "sq.tot", "u000")
        self.assertEqual(raw, b'{"n":%d,"total":%d}' % (self.totals["u000"]["n"],
                                                       self.totals["u000"]["total"]))

    def test_windows_answers_the_reference(self):
        for user, want in self.windows.items():
            got = self.r.execute_command("WINDOWS", "sq.win", user, 0, 1 << 62)
            self.assertEqual([(s, e) for s, e, _ in got],
                             [(s, s + WINDOW) for s in sorted(want)], user)
            self.assertEqual({s: json.loads(v) for s, _, v in got}, want, user)

    def test_windows_takes_starts_from_to_inclusive(self):
        user = max(self.windows, key=lambda u: len(self.windows[u]))
        starts = sorted(self.windows[user])
        self.assertGreaterEqual(len(starts), 4)
        inner = starts[1:-1]
        for lo, hi, want in ((inner[0], inner[-1], inner), (inner[0] + 1, inner[-1], inner[1:]),
                             (inner[0], inner[-1] - 1, inner[:-1]), (inner[0], inner[0], inner[:1]),
                             (inner[-1], inner[0], []), (-(1 << 63), (1 << 63) - 1, starts)):
            got = self.r.execute_command("WINDOWS", "sq.win", user, lo, hi)
            self.assertEqual([w[0] for w in got], want, (lo, hi))
        self.assertEqual(self.r.execute_command("WINDOWS", "sq.win", "nobody", 0, 1 << 62), [])

    def test_resp3_replies_have_the_same_shape(self):
        user = "u001"
        c = self.raw()
        c.cmd("HELLO", 3)
        self.assertEqual(json.loads(c.cmd("GET", "sq.tot", user)), self.totals[user])
        self.assertIsNone(c.cmd("GET", "sq.tot", "nobody"))
        got = c.cmd("WINDOWS", "sq.win", user, 0, 1 << 62)
        self.assertEqual({s: json.loads(v) for s, _, v in got}, self.windows[user])
        cursor, flat = c.cmd("SCAN", "sq.tot", "0", "COUNT", 3)
        self.assertEqual(flat[0::2], [b"u000", b"u001", b"u002"])
        self.assertEqual(int(cursor), int.from_bytes(b"\x01u003", "big"),
                         "a cursor is the integer of 0x01 and the next key")

    def test_scan_pages_cover_every_key_exactly_once(self):
        for count in (1, 7, None, 1000):
            items, calls = scan_all(self.r, "sq.tot", count)
            keys = [k.decode() for k, _ in items]
            self.assertEqual(keys, sorted(self.totals), "in key order, each once (COUNT %s)"
                             % count)
            self.assertEqual({k.decode(): json.loads(v) for k, v in items}, self.totals)
            per_call = count or 10
            self.assertEqual(calls, -(-len(keys) // per_call), "calls with COUNT %s" % count)

    def test_scan_of_a_window_store_gives_key_start_value(self):
        items, _ = scan_all(self.r, "sq.win", 13)
        got = [(k.decode(), s) for k, s, _ in items]
        want = [(u, s) for u in sorted(self.windows) for s in sorted(self.windows[u])]
        self.assertEqual(got, want)
        for k, s, v in items:
            self.assertEqual(json.loads(v), self.windows[k.decode()][s])

    def test_scan_match_takes_a_key_prefix(self):
        for prefix in ("u01", "u0", "u", "u059", "x", "u0599"):
            want = sorted(u for u in self.totals if u.startswith(prefix))
            for count in (4, 1000):
                items, _ = scan_all(self.r, "sq.tot", count, prefix)
                self.assertEqual([k.decode() for k, _ in items], want, (prefix, count))
            items, _ = scan_all(self.r, "sq.win", 5, prefix)
            self.assertEqual(sorted({k.decode() for k, _, _ in items}), want, prefix)
        # a prefix that runs into the window's bytes matches no key, though
        # the walk looks at every window of u059 (pages may come back empty)
        items, calls = scan_all(self.r, "sq.win", 1, b"u059\x80")
        self.assertEqual(items, [])
        self.assertEqual(calls, len(self.windows["u059"]))
        # a cursor from before the prefix's range jumps to the prefix
        cursor, flat = self.r.execute_command("SCAN", "sq.tot", "0", "COUNT", 1)
        cursor, flat = self.r.execute_command("SCAN", "sq.tot", cursor, "MATCH", "u05",
                                              "COUNT", 2)
        self.assertEqual(flat[0::2], [b"u050", b"u051"])

    def assertError(self, reply, code, *words):
        self.assertIsInstance(reply, Error, reply)
        self.assertTrue(reply.startswith(code + " "), reply)
        for w in words:
            self.assertIn(w, reply)

    def test_errors_say_what_was_wrong(self):
        c = self.raw()
        e = self.assertError
        e(c.cmd("GET", "sq.nothing", "k"), "NOTFOUND", "'sq.nothing'", "<pipeline>.<store>")
        e(c.cmd("WINDOWS", "nope", "k", 0, 1), "NOTFOUND", "'nope'")
        e(c.cmd("SCAN", "a/b", "0"), "NOTFOUND", "'a/b'")
        e(c.cmd("GET", "x" * 300, "k"), "ERR", "store name")
        e(c.cmd("GET", "sq.win", "u001"), "WRONGTYPE", "'sq.win'", "window store", "WINDOWS")
        e(c.cmd("WINDOWS", "sq.tot", "u001", 0, 1), "WRONGTYPE", "'sq.tot'", "kv store", "GET")
        e(c.cmd("WINDOWS", "sq.win", "u001", "x", 1), "ERR", "from must be an integer")
        e(c.cmd("WINDOWS", "sq.win", "u001", 0, "1.5"), "ERR", "to must be an integer")
        e(c.cmd("WINDOWS", "sq.win", "u001", "99999999999999999999", 1), "ERR", "from")
        e(c.cmd("GET", "sq.tot", ""), "ERR", "must not be empty")
        e(c.cmd("GET", "sq.tot", "k" * 512), "ERR", "512 bytes", "511")
        e(c.cmd("WINDOWS", "sq.win", "k" * 504, 0, 1), "ERR", "504 bytes", "503")
        e(c.cmd("GET", "sq.tot"), "ERR", "wrong number of arguments")
        e(c.cmd("WINDOWS", "sq.win", "k", 1), "ERR", "wrong number of arguments")
        e(c.cmd("SCAN", "sq.tot"), "ERR", "wrong number of arguments")
        for cursor in ("1", "zz", "", "abc", "0123", "-5", "1" * 1235, str(1 << 4096),
                       str(2 << 16)):
            e(c.cmd("SCAN", "sq.tot", cursor), "ERR", "invalid cursor")
        for count in ("0", "1001", "x", "-1"):
            e(c.cmd("SCAN", "sq.tot", "0", "COUNT", count), "ERR", "COUNT must be 1 to 1000")
        e(c.cmd("SCAN", "sq.tot", "0", "MATCH"), "ERR", "syntax error")
        e(c.cmd("SCAN", "sq.tot", "0", "LIMIT", 3), "ERR", "syntax error")
        e(c.cmd("SCAN", "sq.tot", "0", "MATCH", "m" * 512), "ERR", "MATCH prefix")
        self.assertNodeHealthy(c)
        self.assertEqual(self.get("u002"), self.totals["u002"])


class StateQueryLiveTest(NodeTestCase):
    """Queries while the pipeline commits; stopped pipelines; restarts."""

    def setUp(self):
        ok, why = capability()
        if not ok:
            self.skipTest("the node refuses windowed aggregates yet: " + why)
        super().setUp()

    def start_pipeline(self, name):
        self.r.execute_command("TOPIC", "CREATE", name + "-in", "PARTITIONS", 2)
        reply = self.r.execute_command("PIPELINE", "SUBMIT", name,
                                       SCRIPT.substitute(input=name + "-in", name=name))
        self.assertEqual(reply, b"OK")
        return name + "-in"

    def test_queries_keep_answering_while_the_pipeline_commits(self):
        name = "live%d" % next(_serial)
        topic = self.start_pipeline(name)
        evs = events(9, 30000, users=5, minutes=4)
        totals, windows = reference(evs)
        busy = max(windows, key=lambda u: sum(v["n"] for v in windows[u].values()))
        done = threading.Event()
        seen = {"replies": 0, "during": 0, "error": None, "slowest": 0.0}

        def ask():
            r = self.node.client()
            last = {}
            try:
                while True:
                    finished = done.is_set()
                    t0 = time.monotonic()
                    got = r.execute_command("WINDOWS", name + ".win", busy, 0, 1 << 62)
                    seen["slowest"] = max(seen["slowest"], time.monotonic() - t0)
                    seen["replies"] += 1
                    seen["during"] += not finished
                    now = {s: json.loads(v) for s, e, v in got}
                    for s, v in last.items():  # committed states only grow
                        if now.get(s, {"n": -1})["n"] < v["n"]:
                            raise AssertionError("window %d went back: %r then %r"
                                                 % (s, v, now.get(s)))
                    last = now
                    if finished:
                        return
            except Exception as exc:  # reported by the main thread
                seen["error"] = exc
            finally:
                r.close()

        reader = threading.Thread(target=ask)
        reader.start()
        try:
            produce(self.r, topic, evs, batch=200)
        finally:
            done.set()
            reader.join(WAIT)
        self.assertFalse(reader.is_alive())
        self.assertIsNone(seen["error"])
        self.assertGreaterEqual(seen["during"], 5, "answers while producing: %r" % seen)
        wait_caught_up(self.node, name, WAIT)
        got = self.r.execute_command("WINDOWS", name + ".win", busy, 0, 1 << 62)
        self.assertEqual({s: json.loads(v) for s, _, v in got}, windows[busy])
        for user, want in totals.items():
            self.assertEqual(json.loads(self.r.execute_command("GET", name + ".tot", user)), want)
        print("\n    %d WINDOWS answers, %d while producing; slowest %.1f ms"
              % (seen["replies"], seen["during"], seen["slowest"] * 1000), end=" ")

    def test_aggregates_without_a_sink_fill_their_stores(self):
        """A pipeline may end in aggregates: the stores are its output
        (on_update and on_close windows, running totals), no topic."""
        name = "nosink%d" % next(_serial)
        topic = name + "-in"
        self.r.execute_command("TOPIC", "CREATE", topic, "PARTITIONS", 2)
        script = SCRIPT.substitute(input=topic, name=name)
        script = "\n".join(line for line in script.splitlines() if ":to(" not in line)
        script += ('\npay:key_by("user"):window(s.tumbling("1m", {grace = "1d"}))'
                   ':aggregate{n = s.count(), total = s.sum("amount"), emit = "on_close", '
                   'store = "closed"}\n')
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", name, script), b"OK")
        evs = events(13, 3000, users=7)
        totals, windows = reference(evs)
        produce(self.r, topic, evs)
        wait_caught_up(self.node, name, WAIT)
        for user, want in totals.items():
            self.assertEqual(json.loads(self.r.execute_command("GET", name + ".tot", user)), want)
            for store in (".win", ".closed"):
                got = self.r.execute_command("WINDOWS", name + store, user, 0, 1 << 62)
                self.assertEqual({s: json.loads(v) for s, _, v in got}, windows[user],
                                 (store, user))
        made = {t.decode() for t in self.r.execute_command("TOPIC", "LIST")}
        self.assertEqual({t for t in made if t.startswith(name)},
                         {topic, name + ".offsets", name + ".repartition.1",
                          name + ".repartition.3", name + ".repartition.5", name + ".win.changelog",
                          name + ".tot.changelog", name + ".closed.changelog"})

    def test_a_stopped_pipelines_store_shows_its_stored_bytes(self):
        name = "stop%d" % next(_serial)
        topic = self.start_pipeline(name)
        evs = events(11, 300, users=3)
        totals, windows = reference(evs)
        produce(self.r, topic, evs)
        wait_caught_up(self.node, name, WAIT)
        self.assertEqual(json.loads(self.r.execute_command("GET", name + ".tot", "u000")),
                         totals["u000"])
        self.assertEqual(self.r.execute_command("PIPELINE", "STOP", name), b"OK")
        raw = self.r.execute_command("GET", name + ".tot", "u000")
        self.assertEqual(raw[:2], b"\x02\x02", "an aggregate state, version 2, two members")
        got = self.r.execute_command("WINDOWS", name + ".win", "u000", 0, 1 << 62)
        self.assertEqual([w[0] for w in got], sorted(windows["u000"]))
        self.assertTrue(all(len(w) == 2 and w[1][:2] == b"\x02\x02" for w in got), got)
        cursor, flat = self.r.execute_command("SCAN", name + ".tot", "0")
        self.assertEqual(flat[0::2], [b"u000", b"u001", b"u002"])
        # submitted again, the same values show as JSON again
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", name,
                                                SCRIPT.substitute(input=topic, name=name)), b"OK")
        self.assertEqual(json.loads(self.r.execute_command("GET", name + ".tot", "u000")),
                         totals["u000"])

    def test_scan_cursors_carry_any_key(self):
        name = "odd%d" % next(_serial)
        topic = self.start_pipeline(name)
        users = ["k" * 503, "k" * 502 + "x", "\x00", "\x00\x00a", "\x01", "0", "é", "\u20ac" * 150,
                 "a\x7f", "~"] + ["u%d" % i for i in range(20)]
        evs = [(u, 1_700_000_000_000 + 1000 * i, i) for i, u in enumerate(users)]
        produce(self.r, topic, evs)
        wait_caught_up(self.node, name, WAIT)
        kv_keys = sorted(u.encode() for u in users)
        # a window store's keys are key || be64(start with its sign bit
        # flipped): "\x00\x00a" + W sorts before "\x00" + W
        win_keys = sorted(u.encode() + ((ts - ts % WINDOW) ^ 1 << 63).to_bytes(8, "big")
                          for u, ts, _ in evs)
        for store, width, keys in ((".tot", 2, kv_keys), (".win", 3, win_keys)):
            c = self.raw()
            cursor, got = b"0", []
            while True:
                cursor, flat = c.cmd("SCAN", name + store, cursor, "COUNT", 1)
                got += flat[0::width]
                if cursor == b"0":
                    break
                self.assertEqual(int(cursor), int.from_bytes(b"\x01" + keys[len(got)], "big"))
            self.assertEqual(got, [k[:len(k) - 8] if width == 3 else k for k in keys], store)

    def test_session_windows_end_at_their_last_record(self):
        name = "ses%d" % next(_serial)
        self.r.execute_command("TOPIC", "CREATE", name + "-in")
        script = SESSIONS.substitute(input=name + "-in", name=name)
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", name, script), b"OK")
        produce(self.r, name + "-in", [("a", 1000, 1), ("a", 2000, 2), ("a", 9000, 4),
                                       ("b", 1500, 10), ("a", 30000, 8)])
        wait_caught_up(self.node, name, WAIT)
        got = self.r.execute_command("WINDOWS", name + ".ses", "a", 0, 1 << 62)
        self.assertEqual([(s, e, json.loads(v)) for s, e, v in got],
                         [(1000, 2000, {"n": 2, "total": 3}), (9000, 9000, {"n": 1, "total": 4}),
                          (30000, 30000, {"n": 1, "total": 8})])
        got = self.r.execute_command("WINDOWS", name + ".ses", "a", 1001, 30000)
        self.assertEqual([w[0] for w in got], [9000, 30000], "a session is found by its start")
        produce(self.r, name + "-in", [("a", 5500, 16)])  # bridges the first two
        wait_caught_up(self.node, name, WAIT)
        got = self.r.execute_command("WINDOWS", name + ".ses", "a", 0, 1 << 62)
        self.assertEqual([(s, e, json.loads(v)) for s, e, v in got],
                         [(1000, 9000, {"n": 4, "total": 23}), (30000, 30000, {"n": 1, "total": 8})])
        cursor, flat = self.r.execute_command("SCAN", name + ".ses", 0)
        self.assertEqual(flat[0::3], [b"a", b"a", b"b"])
        self.assertEqual(flat[1::3], [1000, 30000, 1500])

    def test_answers_are_byte_identical_after_a_restart(self):
        name = "rs%d" % next(_serial)
        topic = self.start_pipeline(name)
        evs = events(13, 1000, users=20)
        produce(self.r, topic, evs)
        wait_caught_up(self.node, name, WAIT)

        def answers():
            r = self.node.client()
            try:
                out = [scan_all(r, name + ".tot", 1000)[0], scan_all(r, name + ".win", 1000)[0]]
                for user in sorted(reference(evs)[0]):
                    out.append(r.execute_command("GET", name + ".tot", user))
                    out.append(r.execute_command("WINDOWS", name + ".win", user, 0, 1 << 62))
                return out
            finally:
                r.close()

        before = answers()
        self.r.close()
        self.node.restart()
        wait_caught_up(self.node, name, WAIT)
        self.assertEqual(answers(), before)
        self.r = self.node.client()


if __name__ == "__main__":
    unittest.main()
