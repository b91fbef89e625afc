#!/usr/bin/python3
"""
test_route.py - pipelines routing into work queues (issue 8, DESIGN.md
sections 7 and 9) on a real node: s.exchange / s.queue / s.bind declared by
the script and applied idempotently (conflicts refused naming the
difference), :route() through topic, direct, headers and the default
exchange, priorities and headers as QPOP shows them, unroutable messages
counted, bad records under on_error, blocked QPOPs woken by a pipeline's
commit; and the crash harness: a deterministic input, the node killed with
SIGKILL at seeded random moments at least 20 times while the pipeline
routes, restarted each time; at the end every queue holds exactly the
messages a Python reference routes (each enqueued exactly once), checked by
popping and acking everything.

Sizes and the seed come from SLUICE_CRASH_RECORDS (here at least 20000,
default half of crash.py's), SLUICE_CRASH_KILLS and SLUICE_CRASH_SEED.
"""
import collections
import itertools
import json
import string
import threading
import time
import unittest

from crash import (Input, Killer, kills_wanted, paced_feed, records_wanted, say, seed,
                   wait_caught_up)
from node import Error, Node, NodeTestCase, wait_until
from test_metrics import parse_prometheus, sample

_serial = itertools.count()


def unique(prefix, test):
    return "%s%d-%s" % (prefix, next(_serial), test._testMethodName[5:28].replace("_", "-"))


def headers_of(delivery):
    h = delivery[4]
    return {h[i].decode(): None if h[i + 1] is None else h[i + 1].decode()
            for i in range(0, len(h), 2)}


def drain(r, queue, count=1000):
    """Pops and acks every ready message of queue: [(payload, priority,
    headers, delivery count)], in delivery order."""
    out = []
    while True:
        got = r.execute_command("QPOP", queue, "COUNT", count)
        if not got:
            return out
        acked = r.execute_command("ACK", queue, *[d[0] for d in got])
        if acked != len(got):
            raise AssertionError("ACK %s acknowledged %r of %d deliveries" % (queue, acked,
                                                                          len(got)))
        out += [(d[1], d[3], tuple(sorted(headers_of(d).items())), d[2]) for d in got]


def queue_stats(r, queue):
    flat = r.execute_command("QUEUE", "STATS", queue)
    return {k.decode(): v for k, v in zip(flat[0::2], flat[1::2])}


class RouteTestCase(NodeTestCase):
    def submit(self, name, script, client=None):
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, script)
        self.assertEqual(reply, "OK", "PIPELINE SUBMIT %s: %r" % (name, reply))
        self.addCleanup(self.stop_pipeline, name)

    def stop_pipeline(self, name):
        with self.node.raw() as c:
            c.cmd("PIPELINE", "STOP", name)

    def refused(self, name, script):
        """The reply to a submission that must fail, as text."""
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, script)
            self.assertIsInstance(reply, Error, reply)
            self.assertErrorCode(c.cmd("PIPELINE", "DESCRIBE", name), "NOTFOUND")
        return str(reply)

    def produce(self, topic, records):
        """PRODUCEBATCH of (key, value dict) pairs; returns the value bytes
        as the node stored them."""
        args, values = [], []
        for key, value in records:
            text = json.dumps(value)
            args += [key, text]
            values.append(text.encode())
        self.r.execute_command("PRODUCEBATCH", topic, *args)
        return values


ROUTED = string.Template("""\
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
local work = s.exchange("$ex", "topic")
s.queue("$fraud", {maxpriority = 9})
s.queue("$eu", {maxpriority = 2})
s.queue("$all")
s.bind(work, "$fraud", "fraud.#")
s.bind(work, "$eu", "*.eu")
s.bind(work, "$all", "#")
s.bind(work, "$all", "fraud.*") -- a second match stores the message once
s.stream("$input")
  :filter(function(r) return r.value.kind ~= "skip" end)
  :route(work, {key = function(r) return r.value.kind .. "." .. r.value.region end,
                priority = function(r) return r.value.p end,
                headers = function(r) return {user = r.value.user, n = r.value.n} end})
""")


class RouteTest(RouteTestCase):
    def names(self):
        return {k: unique(k, self) for k in ("ex", "fraud", "eu", "all", "input", "p")}

    def test_routed_messages_reach_the_bound_queues_with_priorities_and_headers(self):
        n = self.names()
        self.r.execute_command("TOPIC", "CREATE", n["input"])
        self.submit(n["p"], ROUTED.substitute(n))
        kinds = ["fraud", "order", "fraud", "skip", "order", "fraud", "login"]
        records = [("k%d" % i, {"kind": kinds[i % len(kinds)], "region": ("eu", "us")[i % 2],
                                "p": i % 12, "user": "u%d" % (i % 5), "n": i})
                   for i in range(60)]
        values = self.produce(n["input"], records)
        wait_caught_up(self.node, n["p"], 30)
        want = {n["fraud"]: [], n["eu"]: [], n["all"]: []}
        for (_, v), payload in zip(records, values):
            if v["kind"] == "skip":
                continue
            key = "%s.%s" % (v["kind"], v["region"])
            headers = (("n", str(v["n"])), ("user", v["user"]))
            if key.startswith("fraud."):
                want[n["fraud"]].append((payload, min(v["p"], 9), headers, 1))
            if key.endswith(".eu"):
                want[n["eu"]].append((payload, min(v["p"], 2), headers, 1))
            want[n["all"]].append((payload, 0, headers, 1))
        for queue, expected in want.items():
            # highest priority first, FIFO (input order) within a priority
            expected.sort(key=lambda m: -m[1])
            self.assertEqual(drain(self.r, queue), expected, queue)
        self.assertEqual(queue_stats(self.r, n["all"])["ready"], 0)

    def test_key_field_record_key_and_default_exchange(self):
        t_in, name = unique("in", self), unique("p", self)
        direct, qa, qb, qc = (unique(x, self) for x in ("d", "qa", "qb", "qc"))
        self.r.execute_command("TOPIC", "CREATE", t_in)
        self.r.execute_command("QUEUE", "DECLARE", qc)  # declared outside the script
        self.submit(name, """
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.exchange("%(d)s", "direct")
s.queue("%(qa)s")
s.queue("%(qb)s")
s.bind("%(d)s", "%(qa)s", "to-a")
s.bind("%(d)s", "%(qb)s", "to-b")
local in_ = s.stream("%(t)s")
in_:route("%(d)s")                        -- the record key is the routing key
in_:route("", {key = "queue"})           -- the default exchange: key = queue name
""" % {"d": direct, "qa": qa, "qb": qb, "t": t_in})
        self.r.execute_command("PRODUCE", t_in, "to-a", json.dumps({"queue": qc, "n": 1}),
                               "HEADER", "trace", "t-1")
        self.r.execute_command("PRODUCE", t_in, "to-b", json.dumps({"queue": qa, "n": 2}))
        self.r.execute_command("PRODUCE", t_in, "to-nowhere", json.dumps({"queue": "none", "n": 3}))
        wait_caught_up(self.node, name, 30)
        a, b, c = drain(self.r, qa), drain(self.r, qb), drain(self.r, qc)
        self.assertEqual([json.loads(m[0])["n"] for m in a], [1, 2])
        self.assertEqual(a[0][2], (("trace", "t-1"),), "the record's headers go along")
        self.assertEqual([json.loads(m[0])["n"] for m in b], [2])
        self.assertEqual([json.loads(m[0])["n"] for m in c], [1])

    def test_headers_exchange_routes_on_the_headers_function(self):
        t_in, name, hx, q = (unique(x, self) for x in ("in", "p", "h", "q"))
        self.r.execute_command("TOPIC", "CREATE", t_in)
        self.submit(name, """
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.exchange("%(h)s", "headers")
s.queue("%(q)s")
s.bind("%(h)s", "%(q)s", "", {["x-match"] = "all", format = "pdf", size = 2})
s.stream("%(t)s"):route("%(h)s", {headers = function(r)
  return {format = r.value.format, size = r.value.size} end})
""" % {"h": hx, "q": q, "t": t_in})
        self.produce(t_in, [("a", {"format": "pdf", "size": 2, "n": 1}),
                            ("b", {"format": "pdf", "size": 3, "n": 2}),
                            ("c", {"format": "doc", "size": 2, "n": 3}),
                            ("d", {"format": "pdf", "size": 2, "n": 4})])
        wait_caught_up(self.node, name, 30)
        self.assertEqual([json.loads(m[0])["n"] for m in drain(self.r, q)], [1, 4])

    def test_unroutable_messages_are_counted_and_the_pipeline_goes_on(self):
        t_in, name, ex, q = (unique(x, self) for x in ("in", "p", "e", "q"))
        self.r.execute_command("TOPIC", "CREATE", t_in)
        self.submit(name, """
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.exchange("%(e)s", "direct")
s.queue("%(q)s")
s.bind("%(e)s", "%(q)s", "yes")
s.stream("%(t)s"):route("%(e)s", {key = "route"})
""" % {"e": ex, "q": q, "t": t_in})
        self.produce(t_in, [("k", {"route": ("yes", "no")[i % 3 == 0], "n": i})
                            for i in range(30)])
        wait_caught_up(self.node, name, 30)
        self.assertEqual(sorted(json.loads(m[0])["n"] for m in drain(self.r, q)),
                         [i for i in range(30) if i % 3])
        status, body, _ = self.node.http_get("/metrics")
        self.assertEqual(status, 200)
        families = parse_prometheus(body.decode())
        self.assertEqual(sample(families, "sluice_exchange_unroutable_total", exchange=ex,
                                type="direct"), 10)
        with self.node.raw() as c:
            desc = c.cmd("PIPELINE", "DESCRIBE", name)
        self.assertEqual(desc[desc.index(b"state") + 1], b"running")

    def test_bad_records_follow_on_error(self):
        t_in, name, q = (unique(x, self) for x in ("in", "p", "q"))
        self.r.execute_command("TOPIC", "CREATE", t_in)
        self.submit(name, """
local s = require("sluice")
s.pipeline{processing = "exactly_once", on_error = "dead_letter"}
s.queue("%(q)s", {maxpriority = 5})
s.stream("%(t)s"):route("", {key = function(r) return "%(q)s" end,
                             priority = function(r) return r.value.p end})
""" % {"q": q, "t": t_in})
        self.produce(t_in, [("a", {"p": 1}), ("b", {"p": 300}), ("c", {"p": "high"}),
                            ("d", {"p": 5})])
        self.r.execute_command("PRODUCE", t_in, "tomb", "null")  # JSON null: a value
        wait_caught_up(self.node, name, 30)
        got = drain(self.r, q)
        self.assertEqual(sorted(json.loads(m[0])["p"] for m in got if m[0] != b"null"), [1, 5])
        dead = self.r.execute_command("FETCH", "%s.dlq" % name, 0, 0, "COUNT", 10)
        self.assertEqual(len(dead), 3, dead)  # p = 300, p = 'high', and null's r.value.p
        errors = [dict(zip(d[4][0::2], d[4][1::2]))[b"error"].decode() for d in dead]
        self.assertIn("priority: returned 300 (return an integer 0 to 255)", errors[0])
        self.assertIn(".lua:5", errors[0], "names the script line of the :route()")

    def test_a_blocked_qpop_is_woken_by_the_pipeline_commit(self):
        t_in, name, q = (unique(x, self) for x in ("in", "p", "q"))
        self.r.execute_command("TOPIC", "CREATE", t_in)
        self.submit(name, """
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.queue("%(q)s")
s.stream("%(t)s"):route("", {key = function() return "%(q)s" end})
""" % {"q": q, "t": t_in})
        result = {}
        # The block outlasts the join below: only the commit's wake can serve
        # the QPOP in time (a QPOP served at its timeout fails the test).
        consumer = self.node.client(socket_timeout=90)
        self.addCleanup(consumer.close)

        def pop():
            result["got"] = consumer.execute_command("QPOP", q, "BLOCK", 60000)

        waiter = threading.Thread(target=pop, daemon=True)
        waiter.start()
        wait_until(lambda: queue_stats(self.r, q)["waiting"] == 1, 10, what="QPOP to block")
        self.produce(t_in, [("k", {"wake": 1})])
        waiter.join(20)
        self.assertFalse(waiter.is_alive(), "the commit did not wake the blocked QPOP")
        self.assertEqual([d[1] for d in result["got"]], [b'{"wake": 1}'])


class DeclarationTest(RouteTestCase):
    SCRIPT = string.Template("""\
local s = require("sluice")
s.pipeline{processing = "$mode"}
s.exchange("$ex", "$type")
s.queue("$q", {maxlen = $maxlen, ttl = "10s", overflow = "reject-publish", maxdeliveries = 3,
               deadletter = "$dl", lease = "2s", maxpriority = 4})
s.queue("$dl")
s.bind("$ex", "$q", "a.*")
s.stream("$input"):route("$ex", {key = function(r) return "a.b" end})
""")

    def fill(self, **changes):
        base = {k: unique(k, self) for k in ("ex", "q", "dl", "input")}
        base.update(mode="exactly_once", type="topic", maxlen=100)
        base.update(changes)
        return base

    def test_declarations_are_applied_idempotently(self):
        n = self.fill()
        self.r.execute_command("TOPIC", "CREATE", n["input"])
        name = unique("p", self)
        self.submit(name, self.SCRIPT.substitute(n))
        self.assertIn([n["ex"].encode(), b"topic"], self.r.execute_command("EXCHANGE", "LIST"))
        queues = self.r.execute_command("QUEUE", "LIST")
        self.assertIn(n["q"].encode(), queues)
        self.assertIn(n["dl"].encode(), queues)
        self.assertEqual(queue_stats(self.r, n["q"])["priorities"], 5)
        # the commands agree with what the script declared: no conflict
        self.assertEqual(self.r.execute_command(
            "QUEUE", "DECLARE", n["q"], "MAXLEN", 100, "TTL", 10000, "OVERFLOW", "reject-publish",
            "MAXDELIVERIES", 3, "DEADLETTER", n["dl"], "LEASE", 2000, "MAXPRIORITY", 4), b"OK")
        self.assertEqual(self.r.execute_command("EXCHANGE", "DECLARE", n["ex"], "topic"), b"OK")
        self.produce(n["input"], [("k", {"n": 1})])
        wait_caught_up(self.node, name, 30)
        # submitting again (a replacement) declares everything again: no-ops
        self.submit(name, self.SCRIPT.substitute(n))
        self.produce(n["input"], [("k", {"n": 2})])
        wait_caught_up(self.node, name, 30)
        got = drain(self.r, n["q"])
        self.assertEqual([json.loads(m[0])["n"] for m in got], [1, 2], "one binding, not two")

    def test_conflicting_declarations_are_refused_naming_the_difference(self):
        n = self.fill()
        self.r.execute_command("TOPIC", "CREATE", n["input"])
        self.r.execute_command("QUEUE", "DECLARE", n["q"], "MAXPRIORITY", 4, "TTL", 10000, "MAXLEN",
                               10)
        reply = self.refused(unique("p", self), self.SCRIPT.substitute(n))
        self.assertIn(".lua:4: queue %s exists with MAXLEN 10, not 100" % n["q"], reply)
        n = self.fill(type="fanout")
        self.r.execute_command("TOPIC", "CREATE", n["input"])
        self.r.execute_command("EXCHANGE", "DECLARE", n["ex"], "direct")
        reply = self.refused(unique("p", self), self.SCRIPT.substitute(n))
        self.assertIn(".lua:3: exchange %s exists with type direct, not fanout" % n["ex"], reply)
        self.assertNotIn(n["q"].encode(), self.r.execute_command("QUEUE", "LIST"),
                         "exchanges are declared first, and this one failed")

    def test_routing_needs_exactly_once_and_nothing_is_declared_without_it(self):
        n = self.fill(mode="at_least_once")
        self.r.execute_command("TOPIC", "CREATE", n["input"])
        reply = self.refused(unique("p", self), self.SCRIPT.substitute(n))
        self.assertIn(".lua:8: :route() enqueues its messages exactly once", reply)
        self.assertIn('processing = "exactly_once"', reply)
        self.assertNotIn(n["q"].encode(), self.r.execute_command("QUEUE", "LIST"))
        self.assertNotIn([n["ex"].encode(), b"topic"], self.r.execute_command("EXCHANGE", "LIST"))

    def test_a_missing_exchange_or_a_bad_script_is_refused(self):
        t_in = unique("in", self)
        self.r.execute_command("TOPIC", "CREATE", t_in)
        reply = self.refused(unique("p", self), """local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.stream("%s"):route("nowhere")
""" % t_in)
        self.assertIn(".lua:3: no exchange 'nowhere'", reply)
        reply = self.refused(unique("p", self), """local s = require("sluice")
s.queue("q", {maxpriority = 12})
s.stream("%s"):route("")
""" % t_in)
        self.assertIn(".lua:2: option 'maxpriority' for queue must be an integer 0 to 9, got 12",
                      reply)
        with self.node.raw() as c:
            self.assertErrorCode(c.cmd("BIND", "e-none", "q-none", "k"), "NOTFOUND")

    def test_declarations_survive_a_restart_and_are_applied_again(self):
        n = self.fill()
        self.r.execute_command("TOPIC", "CREATE", n["input"])
        name = unique("p", self)
        self.submit(name, self.SCRIPT.substitute(n))
        self.produce(n["input"], [("k", {"n": 1})])
        wait_caught_up(self.node, name, 30)
        self.r.execute_command("QUEUE", "DELETE", n["dl"])  # the restart declares it again
        self.r.close()
        self.node.restart()
        self.r = self.node.client()
        self.addCleanup(self.r.close)
        self.assertIn(n["dl"].encode(), self.r.execute_command("QUEUE", "LIST"))
        self.produce(n["input"], [("k", {"n": 2})])
        wait_caught_up(self.node, name, 30)
        self.assertEqual([json.loads(m[0])["n"] for m in drain(self.r, n["q"])], [1, 2])


# ---- the crash harness -----------------------------------------------------------------

INPUT_PARTITIONS = 4

# Every record becomes up to two messages: one through a topic exchange
# (key "<kind>.<zone>", priority and headers from the record) to up to
# three queues, one through a direct exchange keyed by kind, which binds
# "buy" only (so the rest is unroutable, and counted).
CRASH_SCRIPT = string.Template("""\
local s = require("sluice")
s.pipeline{processing = "exactly_once"}
s.exchange("work", "topic")
s.exchange("audit", "direct")
s.queue("clicks", {maxpriority = 9})
s.queue("eu", {maxpriority = 3})
s.queue("all")
s.queue("buys")
s.bind("work", "clicks", "click.*")
s.bind("work", "eu", "*.eu")
s.bind("work", "all", "#")
s.bind("audit", "buys", "buy")
local events = s.stream("$input")
events
  :filter(function(r) return r.value.kind ~= "view" end)
  :route("work", {key = function(r)
                    return r.value.kind .. "." .. (r.value.amount % 3 == 0 and "eu" or "us")
                  end,
                  priority = function(r) return r.value.seq % 10 end,
                  headers = function(r) return {seq = r.value.seq, user = r.value.user} end})
events:route("audit", {key = "kind"})
""")


def crash_records():
    return max(20000, records_wanted() // 2)


class RouteCrashTest(unittest.TestCase):
    def setUp(self):
        self.node = Node().start()
        self.addCleanup(self.node.cleanup)
        self.started = time.monotonic()

    def reference(self, data):
        """{queue: Counter of (payload, priority, headers)} the pipeline
        must enqueue, and how many messages are unroutable."""
        want = {q: collections.Counter() for q in ("clicks", "eu", "all", "buys")}
        unroutable = 0
        for _, value in data.records:
            if value["kind"] == "view":
                continue
            payload = json.dumps(value).encode()
            zone = "eu" if value["amount"] % 3 == 0 else "us"
            headers = (("seq", str(value["seq"])), ("user", value["user"]))
            priority = value["seq"] % 10
            if value["kind"] == "click":
                want["clicks"][(payload, priority, headers)] += 1
            if zone == "eu":
                want["eu"][(payload, min(priority, 3), headers)] += 1
            want["all"][(payload, 0, headers)] += 1
            if value["kind"] == "buy":
                want["buys"][(payload, 0, ())] += 1
            else:
                unroutable += 1
        return want, unroutable

    def test_sigkill_while_routing_enqueues_every_message_exactly_once(self):
        name, t_in = "route-crash", "route-crash-in"
        data = Input(crash_records(), seed() + 7)
        kills = kills_wanted()
        r = self.node.client()
        r.execute_command("TOPIC", "CREATE", t_in, "PARTITIONS", INPUT_PARTITIONS)
        data.produce(r, t_in, len(data) // 2)
        r.close()
        with self.node.raw() as c:
            reply = c.cmd("PIPELINE", "SUBMIT", name, CRASH_SCRIPT.substitute(input=t_in))
        self.assertEqual(reply, "OK", reply)
        killer = Killer(self.node, name, t_in, kills, 0.3, seed() + 8)
        killer.run(paced_feed(data, t_in, kills))
        self.assertEqual(data.produced, len(data))
        wait_caught_up(self.node, name, 120 + len(data) / 1000)
        want, unroutable = self.reference(data)
        r = self.node.client()
        self.addCleanup(r.close)
        total = 0
        for queue, expected in sorted(want.items()):
            got = collections.Counter((m[0], m[1], m[2]) for m in drain(r, queue))
            total += sum(got.values())
            missing, extra = expected - got, got - expected
            self.assertEqual((sum(missing.values()), sum(extra.values())), (0, 0),
                             "%s: %d messages (want %d): %d missing, %d extra or duplicated\n"
                             "missing e.g. %s\nextra e.g. %s"
                             % (queue, sum(got.values()), sum(expected.values()),
                                sum(missing.values()), sum(extra.values()),
                                list(missing)[:3], list(extra)[:3]))
            self.assertEqual(queue_stats(r, queue)["ready"], 0, queue)
            self.assertEqual(queue_stats(r, queue)["in_flight"], 0, queue)
        say("\n%s: %d records, %d messages in 4 queues (%d unroutable), %d kills (%d while input "
            "was uncommitted), %.1f s:\n%s"
            % (self.id().rsplit(".", 1)[-1], len(data), total, unroutable, len(killer.log),
               killer.busy_kills(), time.monotonic() - self.started, killer.summary()))
        self.assertGreaterEqual(len(killer.log), 20)
        self.node.stop()


if __name__ == "__main__":
    unittest.main()
