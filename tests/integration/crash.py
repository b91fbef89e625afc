"""
crash.py - a SIGKILL harness for exactly-once pipelines (issue 5, DESIGN.md
section 7): a seeded input generator, a driver that kills and restarts a node
at seeded random moments while a pipeline processes, bounded waits for the
pipeline to catch up, and readers of whole topics.

What the tests built on it check is that the outputs equal a reference
computed in Python over the same input, whatever moments the kills hit: the
kill points are random (seeded, printed), the outcome must not be.

Sizes come from the environment, so that a longer run outside `make test`
only needs variables:

    SLUICE_CRASH_RECORDS  input records (default 100000; 30000 under ASan)
    SLUICE_CRASH_KILLS    SIGKILLs per run (default 20; never fewer)
    SLUICE_CRASH_SEED     the seed of the input and of the kill moments
"""
import json
import os
import random
import sys
import time

from node import fetch_all, partition_ends, sluice_bin

KINDS = ("click", "view", "buy", "scroll", "search")
BASE_TS = 1700000000000  # ms, a multiple of 10 s: window starts are easy to read


def _env_int(name, default, minimum):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError("%s=%r is not an integer" % (name, value))
    if n < minimum:
        raise ValueError("%s=%d: at least %d" % (name, n, minimum))
    return n


def sanitized():
    """True for an ASan/UBSan build (slower: smaller default inputs)."""
    return "asan" in sluice_bin()


def records_wanted():
    return _env_int("SLUICE_CRASH_RECORDS", 30000 if sanitized() else 100000, 1000)


def kills_wanted():
    return _env_int("SLUICE_CRASH_KILLS", 20, 20)


def seed():
    return _env_int("SLUICE_CRASH_SEED", 20240605, 0)


def say(text):
    """Progress for whoever watches the run (unittest prints to stderr too)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---- input --------------------------------------------------------------------


class Input:
    """A deterministic input: n JSON records of about 100 bytes,

        key   "s<k>" (a session: which input partition the record lands in)
        value {"user": "u<k>", "kind": one of KINDS, "amount": int,
               "ts": ms, "seq": n, "page": "/p/<k>"}

    with event times rising by about 3 ms per record (so 100 K records span
    about 5 minutes). produce() appends a range of them with PRODUCEBATCH
    and keeps where each one landed (partition, offset), which is what the
    references work from."""

    def __init__(self, n, rng_seed, users=500):
        rng = random.Random(rng_seed)
        self.records = []  # (key, value dict)
        self.where = [None] * n  # (partition, offset) once produced
        for seqno in range(n):
            value = {"user": "u%d" % rng.randrange(users), "kind": rng.choice(KINDS),
                     "amount": rng.randrange(1, 100000), "ts": BASE_TS + 3 * seqno +
                     rng.randrange(0, 40), "seq": seqno, "page": "/p/%d" % rng.randrange(10000)}
            self.records.append(("s%d" % rng.randrange(20000), value))
        self.produced = 0

    def __len__(self):
        return len(self.records)

    def produce(self, client, topic, count, batch=2000):
        """Appends the next count records (acknowledged: durable)."""
        end = min(len(self.records), self.produced + count)
        while self.produced < end:
            upto = min(end, self.produced + batch)
            args = []
            for key, value in self.records[self.produced:upto]:
                args += [key, json.dumps(value)]
            acks = client.execute_command("PRODUCEBATCH", topic, *args)
            if len(acks) != upto - self.produced:
                raise AssertionError("PRODUCEBATCH acknowledged %d of %d records"
                                     % (len(acks), upto - self.produced))
            for i, (p, o) in enumerate(acks):
                self.where[self.produced + i] = (p, o)
            self.produced = upto

    def in_order(self):
        """The produced records as (partition, offset, key, value), in
        partition then offset order: the order each task reads them."""
        out = [(p, o, k, v) for (k, v), w in zip(self.records, self.where) if w
               for p, o in (w,)]
        out.sort(key=lambda r: (r[0], r[1]))
        return out


# ---- the pipeline's progress ------------------------------------------------------


def fields(reply):
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in zip(reply[0::2], reply[1::2])}


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def describe(client, name):
    """PIPELINE DESCRIBE as a dict (tasks: [topic, partition, committed,
    end, lag])."""
    reply = client.execute_command("PIPELINE", "DESCRIBE", name)
    return fields(reply)


def progress(desc, topic):
    """(committed, end) summed over the pipeline's tasks reading topic;
    a task that never committed counts 0."""
    committed = end = 0
    for t in desc["tasks"]:
        if text(t[0]) == topic:
            committed += max(t[2], 0)
            end += t[3]
    return committed, end


def check_running(desc, name, node):
    if text(desc["state"]) != "running":
        raise AssertionError("pipeline %s is %s: %s\nnode log tail:\n%s"
                             % (name, text(desc["state"]), text(desc["error"]),
                                "\n".join(node.log().splitlines()[-30:])))


def wait_caught_up(node, name, timeout):
    """Waits (bounded) until every task of the pipeline has committed its
    input's end, in two DESCRIBEs in a row that agree: the first shows no
    lag, the second that nothing moved meanwhile (tasks are read one after
    the other, so one DESCRIBE alone could read a downstream task before an
    upstream commit fed it). A task whose partition is empty (committed -1,
    end 0) is caught up. Fails at once if the pipeline failed."""
    deadline = time.monotonic() + timeout
    client = node.client()
    previous = None
    try:
        while True:
            desc = describe(client, name)
            check_running(desc, name, node)
            tasks = [tuple(t) for t in desc["tasks"]]
            done = tasks and all(t[4] == 0 and (t[2] == t[3] or (t[2] == -1 and t[3] == 0))
                                 for t in tasks)
            if done and tasks == previous:
                return desc
            previous = tasks if done else None
            if time.monotonic() >= deadline:
                raise AssertionError("pipeline %s did not catch up within %.0f s: %r\n"
                                     "node log tail:\n%s"
                                     % (name, timeout, tasks,
                                        "\n".join(node.log().splitlines()[-30:])))
            time.sleep(0.02)
    finally:
        client.close()


def read_topic(client, topic):
    """{partition: [(offset, timestamp, key, value)]} of the whole topic,
    checking that each partition's offsets run from 0 without a gap."""
    out = {}
    for p in sorted(partition_ends(client, topic)):
        recs = fetch_all(client, topic, p)
        offsets = [r[0] for r in recs]
        if offsets != list(range(len(recs))):
            raise AssertionError("%s/%d: offsets are not 0..%d without gaps"
                                 % (topic, p, len(recs) - 1))
        out[p] = [(r[0], r[1], r[2], r[3]) for r in recs]
    return out


# ---- kills ---------------------------------------------------------------------------


class Killer:
    """Kills the node with SIGKILL kills times and restarts it on the same
    data directory each time. Each round lasts a seeded random time of at
    most max_delay seconds from the moment the node is ready: feed(i,
    client, seconds) fills it (producing more input as it goes, so that the
    pipeline has work when the kill comes) and returns at its end, and the
    kill follows at once. Keeps, per kill, the round's length and the
    pipeline's progress just before the kill and right after the restart
    (what the crash left committed), and fails if a commit seen before a
    kill is gone after it."""

    def __init__(self, node, pipeline, source, kills, max_delay, rng_seed):
        self.node = node
        self.pipeline = pipeline
        self.source = source
        self.kills = kills
        self.max_delay = max_delay
        self.rng = random.Random(rng_seed)
        self.log = []  # dicts: delay, before (committed, end), after (committed, end)

    def snapshot(self):
        client = self.node.client()
        try:
            desc = describe(client, self.pipeline)
        finally:
            client.close()
        check_running(desc, self.pipeline, self.node)
        return progress(desc, self.source)

    def run(self, feed):
        for i in range(self.kills):
            entry = {"delay": self.rng.uniform(0, self.max_delay)}
            client = self.node.client()
            try:
                feed(i, client, entry["delay"])
            finally:
                client.close()
            entry["before"] = self.snapshot()
            self.node.kill()
            self.log.append(entry)
            self.node.start()
            entry["after"] = self.snapshot()
            if entry["after"][0] < entry["before"][0]:
                raise AssertionError("kill %d: the input offsets committed before it (%d) went "
                                     "back to %d: a commit did not survive"
                                     % (i + 1, entry["before"][0], entry["after"][0]))

    def summary(self):
        """One line per kill: when, and how far the pipeline had committed
        just before it and right after the restart."""
        return "\n".join(
            "  kill %2d after %3.0f ms: input committed %6d of %6d before, %6d after the "
            "restart%s" % (i + 1, e["delay"] * 1000, e["before"][0], e["before"][1],
                           e["after"][0], "" if e["before"][0] < e["before"][1] else " (idle)")
            for i, e in enumerate(self.log))

    def busy_kills(self):
        """How many kills came while input was still uncommitted."""
        return sum(1 for e in self.log if e["before"][0] < e["before"][1])


def paced_feed(data, topic, kills, steps=4):
    """A feed for Killer.run: round i produces its share of the input not
    yet produced in `steps` batches spread over the round, the last one at
    its end, so each kill comes right after fresh input arrived."""
    def feed(i, client, seconds):
        share = -(-(len(data) - data.produced) // (kills - i))
        start = time.monotonic()
        for step in range(steps):
            wait = start + seconds * step / (steps - 1) - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing the load, not a synchronisation
            data.produce(client, topic, -(-share // steps))
    return feed
