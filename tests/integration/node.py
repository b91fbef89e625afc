"""
node.py - shared helpers for sluice's integration tests.

Node starts a real `sluice serve` (binary from $SLUICE_BIN, default
/work/main/build/runtime/sluice) on a fresh temporary data directory with
`--port 0 --http-port 0`, waits (bounded) for its ready line on stderr and
learns the ports from it; stop() sends SIGTERM and checks the exit code.

RawConn is a plain socket speaking RESP2/RESP3 by hand, for the tests that
need to see reply types (RESP3 maps, nulls), control how bytes are split
across writes, or send malformed frames. Its reader keeps the reply types:
simple strings come back as Simple, errors as Error, maps as Map, so tests
can assert on the exact shape.

Nothing here sleeps to synchronise: every wait polls a condition with a
deadline (wait_until) or uses a socket timeout.
"""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import http.client

import redis

DEFAULT_BIN = "/work/main/build/runtime/sluice"
READY_RE = re.compile(r"serve: ready resp=(\S+):(\d+) http=(\S+):(-?\d+) data=(.*)$")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


def sluice_bin():
    return os.environ.get("SLUICE_BIN", DEFAULT_BIN)


def wait_until(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Polls predicate() until it returns a true value (returned) or the
    deadline passes (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class NodeError(AssertionError):
    pass


class Node:
    """One sluice node process."""

    def __init__(self, *args, data_dir=None, bind=None, password=None):
        self.args = list(args)
        self.owns_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="sluice-it-")
        self.bind = bind
        self.password = password
        self.proc = None
        self.port = self.http_port = None
        self.host = "127.0.0.1"
        self._lines = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = None

    # ---- lifecycle --------------------------------------------------------

    def command_line(self):
        cmd = [sluice_bin(), "serve", "--data", self.data_dir, "--port", "0", "--http-port", "0"]
        if self.bind:
            cmd += ["--bind", self.bind]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        return cmd + self.args

    def _read_stderr(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._lines.append(line)
            m = READY_RE.search(line)
            if m and not self._ready.is_set():
                self.port = int(m.group(2))
                self.http_port = int(m.group(4))
                self._ready.set()
        stream.close()

    def start(self, timeout=START_TIMEOUT):
        """Starts the node and waits for its ready line; fails with the log
        if it exits first or does not get ready within timeout."""
        binary = sluice_bin()
        if not os.access(binary, os.X_OK):
            raise NodeError("no sluice binary at %s (set SLUICE_BIN)" % binary)
        self._ready.clear()
        self.port = self.http_port = None
        self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_stderr, args=(self.proc.stderr,),
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise NodeError("sluice exited with %d before getting ready:\n%s"
                                % (self.proc.returncode, self.log()))
            if time.monotonic() >= deadline:
                self.proc.kill()
                self.proc.wait(10)
                raise NodeError("sluice not ready after %.0fs:\n%s" % (timeout, self.log()))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise NodeError("sluice did not exit within %.0fs:\n%s" % (timeout, self.log()))
        if self._reader:
            self._reader.join(5)
        return rc

    def stop(self, timeout=STOP_TIMEOUT, check=True):
        """SIGTERM, bounded wait; with check, the exit code must be 0."""
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else 0
        else:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.wait_exit(timeout)
        if check and rc != 0:
            raise NodeError("sluice exited with %d after SIGTERM:\n%s" % (rc, self.log()))
        return rc

    def kill(self):
        """SIGKILL, no chance to clean up."""
        self.proc.send_signal(signal.SIGKILL)
        return self.wait_exit()

    def restart(self):
        """Stops cleanly and starts again on the same data directory."""
        self.stop()
        return self.start()

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.stop()
        finally:
            self.cleanup()

    def log(self):
        with self._lock:
            return "\n".join(self._lines)

    # ---- clients ------------------------------------------------------------

    def client(self, **kw):
        kw.setdefault("socket_timeout", 15)
        kw.setdefault("socket_connect_timeout", 10)
        if self.password is not None:
            kw.setdefault("password", self.password)
        return redis.Redis(host=self.host, port=self.port, **kw)

    def raw(self, timeout=10.0):
        return RawConn(self.host, self.port, timeout)

    def http_get(self, path, timeout=10.0):
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read(), dict(resp.getheaders())
        finally:
            conn.close()

    def info(self):
        """INFO parsed into a dict of str -> str."""
        with self.raw() as c:
            if self.password is not None:
                c.cmd("AUTH", self.password)
            text = c.cmd("INFO").decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and ":" in line:
                k, v = line.split(":", 1)
                out[k] = v
        return out


# ---- RESP by hand -------------------------------------------------------------


class Simple(str):
    """A RESP simple string (+OK)."""


class Error(str):
    """A RESP error (-ERR ...); the text without the leading '-'."""


class Map(list):
    """A RESP3 map: a list of (key, value) pairs, in wire order."""


class SetReply(list):
    """A RESP3 set."""


class Push(list):
    """A RESP3 push."""


class Closed(Exception):
    """The server closed the connection."""


def encode(*args):
    """One multibulk request."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = str(a)
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RawConn:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, *args):
        """Sends one command and returns its reply."""
        self.send(encode(*args))
        return self.read_reply()

    # reading

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no complete reply in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed("connection closed by the server (buffered: %r)" % self.buf[:200])
        self.buf += chunk

    def _line(self, deadline):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill(deadline)

    def _exact(self, n, deadline):
        while len(self.buf) < n + 2:
            self._fill(deadline)
        data, tail = self.buf[:n], self.buf[n:n + 2]
        if tail != b"\r\n":
            raise AssertionError("bulk not followed by CRLF: %r" % tail)
        self.buf = self.buf[n + 2:]
        return data

    def _value(self, deadline):
        line = self._line(deadline)
        if not line:
            raise AssertionError("empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return Simple(rest.decode("utf-8", "replace"))
        if kind == b"-":
            return Error(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n, deadline)
        if kind in (b"*", b"~", b">"):
            n = int(rest)
            if n < 0:
                return None
            items = [self._value(deadline) for _ in range(n)]
            return {b"*": list, b"~": SetReply, b">": Push}[kind](items)
        if kind == b"%":
            n = int(rest)
            return Map((self._value(deadline), self._value(deadline)) for _ in range(n))
        if kind == b"_":
            return None
        if kind == b"#":
            return rest == b"t"
        if kind == b",":
            return float(rest)
        if kind == b"(":
            return int(rest)
        if kind in (b"=", b"!"):
            data = self._exact(int(rest), deadline)
            return Error(data.decode()) if kind == b"!" else data
        raise AssertionError("unknown RESP type byte %r in %r" % (kind, line[:100]))

    def read_reply(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return self._value(deadline)

    def read_replies(self, n, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return [self._value(deadline) for _ in range(n)]

    def read_until_closed(self, timeout=None):
        """Everything the server sends until it closes the connection; fails
        if it stays open past the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                self._fill(deadline)
            except Closed:
                data, self.buf = self.buf, b""
                return data
            except ConnectionResetError:
                data, self.buf = self.buf, b""
                return data
            except socket.timeout:
                raise AssertionError("server kept the connection open; got %r" % self.buf[:300])

    def pending(self):
        """True if bytes are waiting to be read (without blocking)."""
        r, _, _ = select.select([self.sock], [], [], 0)
        return bool(r) or bool(self.buf)


def parse_replies(data):
    """Parses a complete byte string of replies (e.g. read_until_closed's)
    into a list of values."""
    conn = RawConn.__new__(RawConn)
    conn.buf = data
    conn.sock = None
    out = []
    while conn.buf:
        out.append(conn._value(float("inf")))
    return out


# ---- misc ------------------------------------------------------------------------


def murmur2_partition(key, partitions):
    """Kafka's default partitioner (Utils.murmur2, positive, modulo)."""
    m = 0x5BD1E995
    h = (0x9747B28C ^ len(key)) & 0xFFFFFFFF
    n4 = len(key) // 4 * 4
    for i in range(0, n4, 4):
        k = key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = len(key) - n4
    if rest == 3:
        h ^= key[n4 + 2] << 16
    if rest >= 2:
        h ^= key[n4 + 1] << 8
    if rest >= 1:
        h ^= key[n4]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def fetch_all(client, topic, partition, start=0):
    """Every record of a partition from `start` (FETCH in pages)."""
    out = []
    offset = start
    while True:
        page = client.execute_command("FETCH", topic, partition, offset, "COUNT", 10000)
        if not page:
            return out
        out.extend(page)
        offset = page[-1][0] + 1


def partition_ends(client, topic):
    """{partition: end offset} from TOPIC DESCRIBE."""
    desc = client.execute_command("TOPIC", "DESCRIBE", topic)
    fields = dict(zip(desc[0::2], desc[1::2]))
    return {p[0]: p[2] for p in fields[b"partitions"]}


KNOWN_ERROR_CODES = ("ERR", "NOAUTH", "WRONGPASS", "NOTFOUND", "BUSY", "WRONGTYPE", "NOPROTO")


# ---- test base ---------------------------------------------------------------------

import itertools
import unittest

_names = itertools.count()


class NodeTestCase(unittest.TestCase):
    """One node per test class (started in setUpClass, stopped - exit code 0
    required - in tearDownClass). node_args/node_kwargs configure it."""

    node_args = ()
    node_kwargs = {}

    @classmethod
    def setUpClass(cls):
        cls.node = Node(*cls.node_args, **cls.node_kwargs).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.node.stop()
        finally:
            cls.node.cleanup()

    def setUp(self):
        self.assertTrue(self.node.alive(), "node died earlier:\n" + self.node.log())
        self.r = self.node.client()
        self.addCleanup(self.r.close)

    def new_topic(self, partitions=1, *options, client=None):
        """Creates a topic with a unique name and returns the name."""
        name = "t%d-%s" % (next(_names), self._testMethodName[5:40].replace("_", "-"))
        (client or self.r).execute_command("TOPIC", "CREATE", name, "PARTITIONS", partitions,
                                           *options)
        return name

    def new_sink(self, partitions=1, *options, client=None):
        """A topic for an exactly-once pipeline to write (TRANSACTIONAL)."""
        return self.new_topic(partitions, "TRANSACTIONAL", *options, client=client)

    def raw(self):
        c = self.node.raw()
        self.addCleanup(c.close)
        return c

    def assertNodeHealthy(self, conn=None):
        """The node is alive and a connection (an existing one if given)
        still answers PING and can PRODUCE and FETCH."""
        self.assertTrue(self.node.alive(), "node died:\n" + self.node.log())
        c = conn or self.raw()
        self.assertEqual(c.cmd("PING"), "PONG")
        topic = "health-%d" % next(_names)
        self.assertEqual(c.cmd("TOPIC", "CREATE", topic), "OK")
        p, o = c.cmd("PRODUCE", topic, "k", "alive")
        self.assertEqual((p, o), (0, 0))
        rec = c.cmd("FETCH", topic, 0, 0)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0][3], b"alive")

    def assertErrorCode(self, reply, *codes):
        self.assertIsInstance(reply, Error, "expected an error reply, got %r" % (reply,))
        self.assertTrue(reply.split(" ", 1)[0] in codes,
                        "error %r should start with one of %s" % (reply, codes))
