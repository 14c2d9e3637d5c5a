"""SIGTERM/SIGINT: stop accepting, finish what is in flight, exit 0."""

import signal
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


def connect_refused(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect((it.HOST, port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


class Shutdown(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(2)
        self.start_tether(self.pool, shutdown_timeout="10s")

    def test_sigterm_finishes_in_flight(self):
        idle = self.conn()
        self.assertEqual(idle.get("/").status, 200)
        c = self.conn()
        c.request("GET", "/sleep?ms=1500", [("x-fc-session-id", "sd-1")])
        time.sleep(0.3)
        t0 = time.monotonic()
        self.tether.signal(signal.SIGTERM)
        # the listener goes away promptly, while the request is still running
        refused = it.wait_until(lambda: connect_refused(self.port), 1.0, interval=0.05,
                                what="new connections to be refused after SIGTERM")
        self.assertTrue(refused)
        self.assertTrue(self.tether.alive(), "tetherd exited with a request in flight")
        # the in-flight request completes
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.instance in self.pool.names, True)
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        # that connection and the idle one are closed, nothing more is sent
        for conn in (c, idle):
            closed, extra = conn.closed_within(3)
            self.assertTrue(closed)
            self.assertEqual(extra, b"")
        rc = self.tether.wait(5)
        self.assertEqual(rc, 0, "tetherd did not exit 0 within 5 s of finishing (rc=%s)" % rc)

    def test_sigterm_idle_exits_promptly(self):
        # an idle keep-alive client does not hold the shutdown up
        idle = self.conn()
        self.assertEqual(idle.get("/").status, 200)
        t0 = time.monotonic()
        self.tether.signal(signal.SIGTERM)
        rc = self.tether.wait(5)
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 3)
        closed, extra = idle.closed_within(2)
        self.assertTrue(closed)
        self.assertEqual(extra, b"")

    def test_sigint(self):
        self.tether.signal(signal.SIGINT)
        self.assertEqual(self.tether.wait(5), 0)
        self.assertTrue(connect_refused(self.port))

    def test_streaming_response_finishes(self):
        c = self.conn()
        c.request("GET", "/stream?n=4&delay_ms=300", [("x-fc-session-id", "sd-2")])
        head = c.read_head()
        self.assertEqual(head.status, 200)
        self.tether.signal(signal.SIGTERM)
        c.read_body(head, timeout=5)
        self.assertTrue(head.complete, head)
        self.assertEqual(head.body.count(b"data: "), 4, head.body)
        self.assertEqual(self.tether.wait(5), 0)


if __name__ == "__main__":
    it.main()
