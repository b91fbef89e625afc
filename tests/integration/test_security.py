"""
test_security.py - AUTH with --requirepass, and protected mode: binding
beyond loopback needs a password (DESIGN §11).
"""
import subprocess
import unittest

import redis

from node import Error, Map, Node, NodeTestCase

PASSWORD = "s3cret-pass"


class RequirePassTest(NodeTestCase):
    node_kwargs = {"password": PASSWORD}

    def test_commands_before_auth_get_noauth(self):
        c = self.raw()
        for cmd in (("PING",), ("TOPIC", "LIST"), ("PRODUCE", "t", "k", "v"), ("FETCH", "t", 0, 0),
                    ("INFO",), ("GROUP", "LIST"), ("ECHO", "x"), ("COMMAND",)):
            with self.subTest(cmd=cmd):
                reply = c.cmd(*cmd)
                self.assertIsInstance(reply, Error)
                self.assertTrue(reply.startswith("NOAUTH"), reply)

    def test_noauth_comes_before_arity_and_unknown_topic_checks(self):
        c = self.raw()
        self.assertTrue(c.cmd("PRODUCE").startswith("NOAUTH"))
        self.assertTrue(c.cmd("FETCH", "missing", 0, 0).startswith("NOAUTH"))

    def test_wrong_password_gets_wrongpass_and_stays_unauthenticated(self):
        c = self.raw()
        reply = c.cmd("AUTH", "not-the-password")
        self.assertIsInstance(reply, Error)
        self.assertTrue(reply.startswith("WRONGPASS"), reply)
        self.assertTrue(c.cmd("PING").startswith("NOAUTH"))

    def test_empty_and_prefix_passwords_are_wrong(self):
        c = self.raw()
        for pw in ("", PASSWORD[:-1], PASSWORD + "x", PASSWORD.upper()):
            with self.subTest(pw=pw):
                self.assertTrue(c.cmd("AUTH", pw).startswith("WRONGPASS"))

    def test_auth_with_the_password_lets_commands_run(self):
        c = self.raw()
        self.assertEqual(c.cmd("AUTH", PASSWORD), "OK")
        self.assertEqual(c.cmd("PING"), "PONG")
        self.assertEqual(c.cmd("TOPIC", "CREATE", "authed"), "OK")
        self.assertEqual(c.cmd("PRODUCE", "authed", "k", "v"), [0, 0])

    def test_auth_default_user_form_works(self):
        c = self.raw()
        self.assertEqual(c.cmd("AUTH", "default", PASSWORD), "OK")
        self.assertEqual(c.cmd("PING"), "PONG")

    def test_auth_other_user_is_wrongpass(self):
        c = self.raw()
        self.assertTrue(c.cmd("AUTH", "admin", PASSWORD).startswith("WRONGPASS"))
        self.assertTrue(c.cmd("PING").startswith("NOAUTH"))

    def test_authentication_is_per_connection(self):
        a, b = self.raw(), self.raw()
        self.assertEqual(a.cmd("AUTH", PASSWORD), "OK")
        self.assertTrue(b.cmd("PING").startswith("NOAUTH"))
        self.assertEqual(a.cmd("PING"), "PONG")

    def test_hello_3_with_auth_default_pass_works(self):
        c = self.raw()
        hello = c.cmd("HELLO", "3", "AUTH", "default", PASSWORD)
        self.assertIsInstance(hello, Map)
        self.assertEqual(dict(hello)[b"proto"], 3)
        self.assertEqual(c.cmd("PING"), "PONG")

    def test_hello_with_auth_and_setname_works(self):
        c = self.raw()
        hello = c.cmd("HELLO", "2", "AUTH", "default", PASSWORD, "SETNAME", "worker1")
        self.assertEqual(dict(zip(hello[0::2], hello[1::2]))[b"proto"], 2)
        self.assertEqual(c.cmd("CLIENT", "GETNAME"), b"worker1")

    def test_hello_3_with_wrong_password_is_wrongpass(self):
        c = self.raw()
        reply = c.cmd("HELLO", "3", "AUTH", "default", "wrong")
        self.assertIsInstance(reply, Error)
        self.assertTrue(reply.startswith("WRONGPASS"), reply)
        self.assertTrue(c.cmd("PING").startswith("NOAUTH"))

    def test_hello_3_without_auth_is_noauth(self):
        c = self.raw()
        reply = c.cmd("HELLO", "3")
        self.assertIsInstance(reply, Error)
        self.assertTrue(reply.startswith("NOAUTH"), reply)
        self.assertTrue(c.cmd("PING").startswith("NOAUTH"))

    def test_quit_is_allowed_before_auth(self):
        c = self.raw()
        self.assertEqual(c.cmd("QUIT"), "OK")
        self.assertEqual(c.read_until_closed(), b"")

    def test_redis_py_with_password_works(self):
        r = self.node.client(password=PASSWORD)
        self.assertTrue(r.ping())
        r.close()

    def test_redis_py_with_wrong_password_fails_to_authenticate(self):
        r = self.node.client(password="nope")
        # redis-py 4.3 maps WRONGPASS to a plain ResponseError (as with Redis)
        with self.assertRaisesRegex(redis.ResponseError, "^WRONGPASS"):
            r.ping()
        r.close()

    def test_redis_cli_with_password_works(self):
        out = subprocess.run(["redis-cli", "-p", str(self.node.port), "-a", PASSWORD,
                              "--no-auth-warning", "PING"], capture_output=True, timeout=30)
        self.assertEqual(out.stdout.strip(), b"PONG")
        out = subprocess.run(["redis-cli", "-p", str(self.node.port), "PING"],
                             capture_output=True, timeout=30)
        self.assertIn(b"NOAUTH", out.stdout + out.stderr)


class NoPasswordTest(NodeTestCase):
    def test_auth_without_a_configured_password_is_an_error(self):
        c = self.raw()
        reply = c.cmd("AUTH", "anything")
        self.assertIsInstance(reply, Error)
        self.assertIn("without any password configured", reply)
        self.assertEqual(c.cmd("PING"), "PONG")


class ProtectedModeTest(unittest.TestCase):
    def check_refused(self, address):
        node = Node(bind=address)
        self.addCleanup(node.cleanup)
        with self.assertRaises(AssertionError):  # NodeError: exited before ready
            node.start()
        self.assertNotEqual(node.proc.returncode, 0)
        log = node.log()
        self.assertIn("requirepass", log)
        self.assertIn("refusing", log)
        self.assertNotIn("serve: ready", log)

    def test_binding_0_0_0_0_without_requirepass_is_refused(self):
        self.check_refused("0.0.0.0")

    def test_binding_ipv6_any_without_requirepass_is_refused(self):
        self.check_refused("::")

    def test_binding_0_0_0_0_with_requirepass_starts(self):
        node = Node(bind="0.0.0.0", password=PASSWORD)
        self.addCleanup(node.cleanup)
        node.start()
        self.assertIn("resp=0.0.0.0:", node.log())
        c = node.raw()
        self.assertTrue(c.cmd("PING").startswith("NOAUTH"))
        self.assertEqual(c.cmd("AUTH", PASSWORD), "OK")
        self.assertEqual(c.cmd("PING"), "PONG")
        c.close()
        self.assertEqual(node.stop(), 0)

    def test_binding_another_loopback_address_needs_no_password(self):
        node = Node(bind="127.0.0.1")
        self.addCleanup(node.cleanup)
        node.start()
        self.assertTrue(node.client().ping())
        node.stop()

    def test_loopback_is_judged_on_the_resolved_address(self):
        # "localhost" resolves to loopback: allowed without a password
        node = Node(bind="localhost")
        self.addCleanup(node.cleanup)
        node.start()
        self.assertTrue(node.client().ping())
        node.stop()


class MetricsAuthTest(NodeTestCase):
    node_kwargs = {"password": PASSWORD}

    def get(self, headers):
        import http.client
        conn = http.client.HTTPConnection(self.node.host, self.node.http_port, timeout=10)
        try:
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def test_metrics_need_the_password_when_one_is_set(self):
        status, _ = self.get({})
        self.assertEqual(status, 401)
        status, _ = self.get({"Authorization": "Bearer wrong"})
        self.assertEqual(status, 401)

    def test_metrics_accept_bearer_and_basic_auth(self):
        import base64
        status, body = self.get({"Authorization": "Bearer " + PASSWORD})
        self.assertEqual(status, 200)
        self.assertIn(b"sluice_connections", body)
        token = base64.b64encode(("prometheus:" + PASSWORD).encode()).decode()
        status, _ = self.get({"Authorization": "Basic " + token})
        self.assertEqual(status, 200)

    def test_health_needs_no_password(self):
        self.assertEqual(self.node.http_get("/health")[0], 200)


if __name__ == "__main__":
    unittest.main()
