"""limits.max_connections and limits.max_pipelined."""

import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


class Limits(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(2)
        self.tag = os.urandom(4).hex()

    def served(self, timeout=1.5):
        """Open a new connection and try one request: True if answered 200,
        False if refused, reset, closed or left unanswered (or 503)."""
        try:
            c = it.Conn(self.port, timeout=timeout)
        except OSError:
            return False
        try:
            c.request("GET", "/")
            r = c.read_response(timeout=timeout)
            return r.status == 200
        except (OSError, it.Closed, AssertionError):
            return False
        finally:
            c.close()

    def test_max_connections(self):
        self.start_tether(self.pool, limits={"max_connections": 5})
        held = []
        for i in range(5):
            c = self.conn()
            r = c.get("/", [("x-fc-session-id", "mc-%s-%d" % (self.tag, i))])
            self.assertEqual(r.status, 200, "connection %d of 5: %r" % (i + 1, r))
            held.append(c)
        # a 6th is not served while the five are open
        self.assertFalse(self.served(), "a 6th connection was served with max_connections: 5")
        # ... and the five still work
        for c in held:
            self.assertEqual(c.get("/").status, 200)
        # after two close, new connections are served again
        held.pop().close()
        held.pop().close()
        ok = it.wait_until(lambda: self.served(timeout=1.0), 6, interval=0.2,
                           what="a new connection to be served after two closed")
        self.assertTrue(ok)
        self.assertAlive()

    def test_max_pipelined(self):
        # With max_pipelined: 2 the stricter reading is asserted: however many
        # requests a client pipelines, tether answers every one of them,
        # correctly and in request order. It may stop reading the socket
        # while its queue is full (backpressure) but must not drop, reorder
        # or refuse any of them.
        self.start_tether(self.pool, limits={"max_pipelined": 2})
        c = self.conn()
        n = 30
        reqs = []
        for i in range(n):
            key = "mp-%s-%d" % (self.tag, i % 7)
            path = "/sleep?ms=200" if i == 0 else "/echo?i=%d" % i
            reqs.append(it.build_request("GET", path, [("x-fc-session-id", key)]))
        c.send(b"".join(reqs))
        r = c.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn(b"GET /echo", r.body)
        for i in range(1, n):
            r = c.read_response(timeout=10)
            self.assertEqual(r.status, 200, "response %d: %r" % (i, r))
            self.assertEqual(it.parse_echo(r.body)[0], "GET /echo?i=%d HTTP/1.1" % i)
        # the connection is still usable
        self.assertEqual(c.get("/echo?after").status, 200)

    def test_max_pipelined_with_bodies(self):
        # same, with request bodies in the pipeline (the queue must not let
        # a body be confused with the next request)
        self.start_tether(self.pool, limits={"max_pipelined": 2})
        c = self.conn()
        bodies = [os.urandom(1000 + 37 * i) for i in range(10)]
        c.send(b"".join(it.build_request("POST", "/body", [("x-fc-session-id", "mb-%s" % self.tag)], b)
                        for b in bodies))
        for b in bodies:
            r = c.read_response(timeout=10)
            self.assertEqual(r.status, 200, r)
            kv = it.parse_kv(r.text())
            self.assertEqual(int(kv["len"]), len(b))
            self.assertEqual(int(kv["sum"], 16), it.fnv1a32(b))


if __name__ == "__main__":
    it.main()
