"""
test_metrics.py - GET /health and GET /metrics; the metrics are checked with
a strict Prometheus text-format (0.0.4) parser written here, then for the
values they should have after known traffic.
"""
import math
import re
import shutil
import subprocess
import unittest

from node import NodeTestCase, partition_ends, wait_until

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z|[+-]?Inf\Z|NaN\Z")
TYPES = ("counter", "gauge", "summary", "histogram", "untyped")


class PromFormatError(AssertionError):
    pass


class Family:
    def __init__(self, name, type_, line):
        self.name, self.type, self.line = name, type_, line
        self.help = None
        self.samples = []  # (sample name, labels dict, value)


def _parse_labels(text, lineno):
    """Parses `a="x",b="y"` (the text between the braces) strictly."""
    labels, i = {}, 0
    while i < len(text):
        m = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"").match(text, i)
        if not m:
            raise PromFormatError("line %d: bad label at %r" % (lineno, text[i:]))
        name = m.group(1)
        if name.startswith("__"):
            raise PromFormatError("line %d: reserved label name %s" % (lineno, name))
        if name in labels:
            raise PromFormatError("line %d: duplicate label %s" % (lineno, name))
        i = m.end()
        value = []
        while True:
            if i >= len(text):
                raise PromFormatError("line %d: unterminated label value" % lineno)
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise PromFormatError("line %d: bad escape \\%s in label value" % (lineno, nxt))
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            elif ch == "\n":
                raise PromFormatError("line %d: raw newline in label value" % lineno)
            else:
                value.append(ch)
                i += 1
        labels[name] = "".join(value)
        if i < len(text):
            if text[i] != ",":
                raise PromFormatError("line %d: expected ',' between labels" % lineno)
            i += 1
            if i == len(text):
                raise PromFormatError("line %d: trailing comma in labels" % lineno)
    return labels


def _split_sample(line, lineno):
    """`name{labels} value [timestamp]` -> (name, labels, value)."""
    m = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)").match(line)
    if not m:
        raise PromFormatError("line %d: bad metric name in %r" % (lineno, line))
    name, rest = m.group(1), line[m.end():]
    labels = {}
    if rest.startswith("{"):
        # find the closing brace outside quotes
        i, in_quotes = 1, False
        while i < len(rest):
            ch = rest[i]
            if in_quotes and ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quotes = not in_quotes
            elif ch == "}" and not in_quotes:
                break
            i += 1
        else:
            raise PromFormatError("line %d: unterminated label set" % lineno)
        labels = _parse_labels(rest[1:i], lineno)
        rest = rest[i + 1:]
    parts = rest.split(" ")
    if len(parts) not in (2, 3) or parts[0] != "":
        raise PromFormatError("line %d: expected one space then value [timestamp]: %r"
                              % (lineno, line))
    if not FLOAT.match(parts[1]):
        raise PromFormatError("line %d: bad value %r" % (lineno, parts[1]))
    if len(parts) == 3 and not re.match(r"-?\d+\Z", parts[2]):
        raise PromFormatError("line %d: bad timestamp %r" % (lineno, parts[2]))
    return name, labels, float(parts[1])


def parse_prometheus(text):
    """Parses exposition text strictly; returns {family name: Family}.
    Raises PromFormatError for anything a strict consumer would reject."""
    if text and not text.endswith("\n"):
        raise PromFormatError("the last line must end with a newline")
    families, order, seen_series = {}, [], set()
    current = None  # the family whose lines we are in
    closed = set()  # families whose block has ended
    helps = {}

    def family_of(sample):
        if sample in families:
            return families[sample]
        for suffix in ("_sum", "_count", "_bucket"):
            base = sample[: -len(suffix)]
            if sample.endswith(suffix) and base in families:
                f = families[base]
                if f.type == "summary" and suffix != "_bucket" or f.type == "histogram":
                    return f
        return None

    def enter(f, lineno):
        nonlocal current
        if current is f:
            return
        if f.name in closed:
            raise PromFormatError("line %d: family %s interleaved with others" % (lineno, f.name))
        if current is not None:
            closed.add(current.name)
        current = f

    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not METRIC_NAME.match(name):
                    raise PromFormatError("line %d: bad metric name %r" % (lineno, name))
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise PromFormatError("line %d: bad TYPE line %r" % (lineno, line))
                    if name in families:
                        raise PromFormatError("line %d: second TYPE for %s" % (lineno, name))
                    if family_of(name) is not None or any(
                            s[0] == name for f in families.values() for s in f.samples):
                        raise PromFormatError("line %d: TYPE for %s after its samples"
                                              % (lineno, name))
                    f = families[name] = Family(name, parts[3], lineno)
                    f.help = helps.get(name)
                    order.append(name)
                    if current is not None and current.name != name:
                        closed.add(current.name)
                    current = f
                else:
                    if name in helps:
                        raise PromFormatError("line %d: second HELP for %s" % (lineno, name))
                    doc = parts[3] if len(parts) == 4 else ""
                    if re.search(r"\\[^\\n]|\\\Z", doc):
                        raise PromFormatError("line %d: bad escape in HELP" % lineno)
                    helps[name] = doc
                    if name in families:
                        if families[name].samples:
                            raise PromFormatError("line %d: HELP for %s after its samples"
                                                  % (lineno, name))
                        families[name].help = doc
            continue  # other comments are allowed
        name, labels, value = _split_sample(line, lineno)
        f = family_of(name)
        if f is None:
            raise PromFormatError("line %d: sample %s has no # TYPE line before it" % (lineno, name))
        enter(f, lineno)
        series = (name, tuple(sorted(labels.items())))
        if series in seen_series:
            raise PromFormatError("line %d: duplicate series %s%s" % (lineno, name, labels))
        seen_series.add(series)
        f.samples.append((name, labels, value))

    for f in families.values():
        _check_family(f)
    return families


def _check_family(f):
    if f.type == "counter":
        if not f.name.endswith("_total"):
            raise PromFormatError("counter %s does not end in _total" % f.name)
        for name, labels, value in f.samples:
            if name != f.name or value < 0 or math.isnan(value):
                raise PromFormatError("bad counter sample %s %s %s" % (name, labels, value))
    elif f.type in ("gauge", "untyped"):
        for name, labels, _ in f.samples:
            if name != f.name:
                raise PromFormatError("sample %s in family %s" % (name, f.name))
    elif f.type == "summary":
        groups = {}
        for name, labels, value in f.samples:
            rest = {k: v for k, v in labels.items() if k != "quantile"}
            key = tuple(sorted(rest.items()))
            g = groups.setdefault(key, {"quantiles": [], "sum": None, "count": None})
            if name == f.name:
                if "quantile" not in labels:
                    raise PromFormatError("summary %s sample without quantile" % f.name)
                q = float(labels["quantile"])
                if not 0 <= q <= 1:
                    raise PromFormatError("summary %s quantile %s out of range" % (f.name, q))
                g["quantiles"].append(q)
            elif "quantile" in labels:
                raise PromFormatError("%s must not have a quantile label" % name)
            elif name == f.name + "_sum":
                g["sum"] = value
            elif name == f.name + "_count":
                if value < 0 or value != int(value):
                    raise PromFormatError("%s is not a count" % name)
                g["count"] = value
        for key, g in groups.items():
            if g["sum"] is None or g["count"] is None:
                raise PromFormatError("summary %s%s lacks _sum or _count" % (f.name, key))
            if g["quantiles"] != sorted(g["quantiles"]):
                raise PromFormatError("summary %s quantiles out of order" % f.name)
    elif f.type == "histogram":
        for name, labels, _ in f.samples:
            if name == f.name + "_bucket" and "le" not in labels:
                raise PromFormatError("histogram bucket without le")


def sample(families, name, **labels):
    """The value of one series; KeyError if absent."""
    fam = None
    for f in families.values():
        if any(s[0] == name for s in f.samples):
            fam = f
            break
    if fam is None:
        raise KeyError(name)
    for n, l, v in fam.samples:
        if n == name and l == labels:
            return v
    raise KeyError("%s%s" % (name, labels))


class ParserSelfTest(unittest.TestCase):
    """The parser is strict: each of these must be rejected."""

    GOOD = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"

    def test_accepts_a_good_exposition(self):
        fams = parse_prometheus(self.GOOD + "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n")
        self.assertEqual(sample(fams, "a_total", x="1"), 3)
        self.assertEqual(sample(fams, "s_count"), 3)

    def test_rejects_bad_input(self):
        bad = {
            "no TYPE": "a_total 1\n",
            "no newline at end": self.GOOD.rstrip("\n"),
            "two TYPE": self.GOOD + "# TYPE a_total counter\n",
            "interleaved": self.GOOD + "# TYPE b gauge\nb 1\na_total{x=\"2\"} 1\n",
            "counter without _total": "# TYPE a counter\na 1\n",
            "bad escape": "# TYPE g gauge\ng{l=\"a\\qb\"} 1\n",
            "unescaped quote": "# TYPE g gauge\ng{l=\"a\"b\"} 1\n",
            "bad label name": "# TYPE g gauge\ng{1l=\"a\"} 1\n",
            "bad value": "# TYPE g gauge\ng 1,5\n",
            "duplicate series": "# TYPE g gauge\ng 1\ng 2\n",
            "two spaces": "# TYPE g gauge\ng  1\n",
            "summary without quantile": "# TYPE s summary\ns 1\ns_sum 1\ns_count 1\n",
            "summary without count": "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\n",
            "TYPE after samples": "# TYPE g gauge\ng 1\n# TYPE g2 gauge\ng2 1\n# TYPE g gauge\n",
            "trailing comma": "# TYPE g gauge\ng{a=\"1\",} 1\n",
            "bad type": "# TYPE g meter\ng 1\n",
        }
        for what, text in bad.items():
            with self.subTest(what=what):
                with self.assertRaises(PromFormatError):
                    parse_prometheus(text)


class HttpTest(NodeTestCase):
    def metrics(self):
        status, body, headers = self.node.http_get("/metrics")
        self.assertEqual(status, 200)
        return parse_prometheus(body.decode("utf-8"))

    def test_health_is_200_ok(self):
        status, body, _ = self.node.http_get("/health")
        self.assertEqual(status, 200)
        self.assertEqual(body.strip(), b"ok")

    def test_metrics_content_type_is_prometheus_text(self):
        status, _, headers = self.node.http_get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"),
                        headers["Content-Type"])

    def test_unknown_path_is_404(self):
        self.assertEqual(self.node.http_get("/nope")[0], 404)

    def test_metrics_parse_strictly_after_mixed_traffic(self):
        t = self.new_topic(3)
        c = self.raw()
        c.cmd("PRODUCE", t, "k", "v")
        c.cmd("FETCH", t, 0, 0)
        c.cmd("NOSUCH")
        c.cmd("GROUP", "COMMIT", 'we"ird\\gr\noup', t, 0, 0)
        fams = self.metrics()
        for name in ("sluice_connections", "sluice_commands_total", "sluice_command_errors_total",
                     "sluice_request_latency_seconds", "sluice_partition_records_in_total",
                     "sluice_partition_end_offset", "sluice_group_lag",
                     "sluice_protocol_errors_total", "sluice_fsyncs_total"):
            self.assertIn(name, fams)
        self.assertEqual(fams["sluice_request_latency_seconds"].type, "summary")
        for f in fams.values():
            self.assertIsNotNone(f.help, "%s has no HELP" % f.name)

    def test_pipeline_operators_lag_and_state_are_counted(self):
        src, dst = self.new_topic(1), self.new_sink(1)
        script = ("local s = require('sluice')\n"
                  "s.pipeline{on_error = 'skip'}\n"
                  "s.stream('%s'):filter(function(r) return r.value.ok end):to('%s')\n"
                  % (src, dst))
        self.assertEqual(self.r.execute_command("PIPELINE", "SUBMIT", "pm", script), b"OK")
        self.r.execute_command("PRODUCEBATCH", src, "a", '{"ok":true}', "b", '{"ok":false}',
                               "c", "not json")
        wait_until(lambda: sample(self.metrics(), "sluice_pipeline_lag", pipeline="pm",
                                  topic=src, partition="0") == 0,
                   timeout=20, what="the pipeline to commit everything")
        fams = self.metrics()
        self.assertEqual(sample(fams, "sluice_pipeline_op_records_in_total",
                                pipeline="pm", op="0", kind="stream"), 3)
        self.assertEqual(sample(fams, "sluice_pipeline_op_errors_total",
                                pipeline="pm", op="0", kind="stream"), 1)
        self.assertEqual(sample(fams, "sluice_pipeline_op_records_out_total",
                                pipeline="pm", op="1", kind="filter"), 1)
        self.assertEqual(sample(fams, "sluice_pipeline_failed", pipeline="pm"), 0)

    def test_group_names_are_escaped_in_labels(self):
        t = self.new_topic(1)
        self.r.execute_command("PRODUCE", t, "k", "v")
        group = 'we"ird\\gr\noup{x="1"}'
        self.r.execute_command("GROUP", "COMMIT", group, t, 0, 0)
        fams = self.metrics()
        self.assertEqual(sample(fams, "sluice_group_lag", group=group, topic=t, partition="0"), 1)

    def test_records_in_and_end_offset_per_topic_and_partition(self):
        t = self.new_topic(3)
        for i in range(5):
            self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 0)
        self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 2)
        self.r.execute_command("PRODUCEBATCH", t, "", "a", "", "b")  # null keys: one partition
        ends = partition_ends(self.r, t)
        self.assertEqual(sum(ends.values()), 8)
        fams = self.metrics()
        for q in range(3):
            labels = {"topic": t, "partition": str(q)}
            self.assertEqual(sample(fams, "sluice_partition_records_in_total", **labels), ends[q])
            self.assertEqual(sample(fams, "sluice_partition_end_offset", **labels), ends[q])
            self.assertEqual(sample(fams, "sluice_partition_start_offset", **labels), 0)
            bytes_in = sample(fams, "sluice_partition_bytes_in_total", **labels)
            self.assertEqual(bytes_in > 0, ends[q] > 0)
        self.assertGreaterEqual(ends[0], 5)

    def test_records_out_counts_fetched_records(self):
        t = self.new_topic(1)
        for i in range(4):
            self.r.execute_command("PRODUCE", t, "k", "v")
        self.r.execute_command("FETCH", t, 0, 1, "COUNT", 2)
        self.r.execute_command("GROUP", "FETCH", "reader", t)
        fams = self.metrics()
        self.assertEqual(sample(fams, "sluice_partition_records_out_total", topic=t,
                                partition="0"), 6)

    def test_commands_are_counted_by_command(self):
        t = self.new_topic(1)
        before = self.metrics()
        c = self.raw()
        for _ in range(7):
            c.cmd("PING")
        for _ in range(3):
            c.cmd("PRODUCE", t, "k", "v")
        c.cmd("FETCH", t, 0, 0)
        c.cmd("FETCH", "missing", 0, 0)
        c.cmd("FETCH", t, 0, "bad")
        c.cmd("NOSUCH")
        after = self.metrics()

        def delta(name, **labels):
            return sample(after, name, **labels) - sample(before, name, **labels)
        self.assertEqual(delta("sluice_commands_total", command="PING"), 7)
        self.assertEqual(delta("sluice_commands_total", command="PRODUCE"), 3)
        self.assertEqual(delta("sluice_commands_total", command="FETCH"), 3)
        self.assertEqual(delta("sluice_command_errors_total", command="FETCH"), 2)
        self.assertEqual(delta("sluice_command_errors_total", command="PRODUCE"), 0)
        self.assertEqual(delta("sluice_unknown_commands_total"), 1)
        self.assertGreaterEqual(delta("sluice_request_latency_seconds_count"), 14)
        self.assertGreaterEqual(delta("sluice_request_latency_seconds_sum"), 0)

    def test_latency_summary_has_quantiles_sum_and_count(self):
        self.assertTrue(self.r.ping())
        fams = self.metrics()
        f = fams["sluice_request_latency_seconds"]
        quantiles = [l["quantile"] for n, l, _ in f.samples if n == f.name]
        self.assertEqual(quantiles, ["0.5", "0.9", "0.99", "0.999"])
        values = [v for n, l, v in f.samples if n == f.name]
        self.assertEqual(values, sorted(values), "quantiles must not decrease")
        self.assertGreater(sample(fams, "sluice_request_latency_seconds_count"), 0)

    def test_group_lag_after_commit(self):
        t = self.new_topic(2)
        for i in range(10):
            self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 0)
        for i in range(4):
            self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 1)
        self.r.execute_command("GROUP", "COMMIT", "lagging", t, 0, 3)
        fams = self.metrics()
        self.assertEqual(sample(fams, "sluice_group_lag", group="lagging", topic=t,
                                partition="0"), 7)
        with self.assertRaises(KeyError):  # nothing committed on partition 1
            sample(fams, "sluice_group_lag", group="lagging", topic=t, partition="1")
        for i in range(2):
            self.r.execute_command("PRODUCE", t, "k", "v", "PARTITION", 0)
        self.assertEqual(sample(self.metrics(), "sluice_group_lag", group="lagging", topic=t,
                                partition="0"), 9)
        self.r.execute_command("GROUP", "COMMIT", "lagging", t, 0, 12)
        self.assertEqual(sample(self.metrics(), "sluice_group_lag", group="lagging", topic=t,
                                partition="0"), 0)

    def test_group_lag_matches_group_offsets(self):
        t = self.new_topic(1)
        for i in range(6):
            self.r.execute_command("PRODUCE", t, "k", "v")
        self.r.execute_command("GROUP", "COMMIT", "same", t, 0, 2)
        lag = self.r.execute_command("GROUP", "OFFSETS", "same", t)[0][3]
        self.assertEqual(sample(self.metrics(), "sluice_group_lag", group="same", topic=t,
                                partition="0"), lag)

    def test_connections_gauge_follows_open_connections(self):
        self.assertTrue(self.r.ping())
        base = sample(self.metrics(), "sluice_connections")
        conns = [self.node.raw() for _ in range(3)]
        for c in conns:
            self.assertEqual(c.cmd("PING"), "PONG")
        wait_until(lambda: sample(self.metrics(), "sluice_connections") == base + 3, timeout=10,
                   what="the gauge to show 3 more connections")
        for c in conns:
            c.close()
        wait_until(lambda: sample(self.metrics(), "sluice_connections") == base, timeout=10,
                   what="the gauge to drop back")

    def test_connections_received_counts_accepts(self):
        before = sample(self.metrics(), "sluice_connections_received_total")
        for _ in range(4):
            with self.node.raw() as c:
                c.cmd("PING")
        self.assertEqual(sample(self.metrics(), "sluice_connections_received_total"), before + 4)

    def test_fsyncs_counted_for_an_fsync_always_topic(self):
        t = self.new_topic(1, "FSYNC", "always")
        before = sample(self.metrics(), "sluice_fsyncs_total")
        self.r.execute_command("PRODUCE", t, "k", "v")
        self.assertGreaterEqual(sample(self.metrics(), "sluice_fsyncs_total"), before + 1)

    @unittest.skipUnless(shutil.which("promtool"), "promtool not installed")
    def test_promtool_accepts_the_metrics(self):
        t = self.new_topic(2)
        self.r.execute_command("PRODUCE", t, "k", "v")
        self.r.execute_command("GROUP", "COMMIT", 'g"\\\n', t, 0, 0)
        body = self.node.http_get("/metrics")[1]
        out = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                             timeout=30)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(out.stdout + out.stderr, b"", "promtool lint findings")


if __name__ == "__main__":
    unittest.main()
