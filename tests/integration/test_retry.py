"""Retries (DESIGN.md step 6) against a backend that drops a pooled
connection as it is reused: an idempotent request whose body tether still
holds is replayed once, body and all; anything else is a 502, never
replayed. A refused connect is retried for any method."""
import socket
import threading

import tether_it as it


class DroppingBackend:
    """Answers the first request of each connection (keep-alive); reads the
    second one whole, records it, and closes without answering."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.seen = []  # (connection number, request index, method, body)
        self.lock = threading.Lock()
        self.n = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def read_request(self, f):
        line = f.readline()
        if not line:
            return None
        method = line.split(b" ")[0].decode()
        length = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            k, _, v = h.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        return method, f.read(length) if length else b""

    def serve(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.n += 1
                num = self.n
            threading.Thread(target=self.conn, args=(s, num), daemon=True).start()

    def conn(self, s, num):
        f = s.makefile("rb")
        for i in range(2):
            req = self.read_request(f)
            if req is None:
                break
            with self.lock:
                self.seen.append((num, i, req[0], req[1]))
            if i == 1:
                break  # drop it: no answer on a reused connection
            body = b"ok %s %d\n" % (req[0].encode(), len(req[1]))
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        s.close()

    def close(self):
        self.ls.close()


class Retry(it.TetherTestCase):
    def setUp(self):
        super().setUp()
        self.be = DroppingBackend()
        self.addCleanup(self.be.close)
        self.start_tether(backends=[{"name": "drop", "address": "127.0.0.1:%d" % self.be.port}],
                          retries=1, retry_body_bytes="64k",
                          health={"interval": "60s", "passive_failures": 100})

    def warm(self, c):
        r = c.get("/warm")
        self.assertEqual(r.status, 200, r)

    def test_idempotent_with_body_replayed_whole(self):
        c = self.conn()
        self.warm(c)
        body = b"x" * 3000
        c.request("PUT", "/put", [("Content-Length", str(len(body)))], body)
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"ok PUT 3000\n")
        puts = [s for s in self.be.seen if s[2] == "PUT"]
        # once on the reused connection (dropped), once replayed on a new one
        self.assertEqual(len(puts), 2, self.be.seen)
        self.assertEqual([p[3] for p in puts], [body, body])

    def test_post_is_never_replayed(self):
        c = self.conn()
        self.warm(c)
        c.request("POST", "/post", [("Content-Length", "5")], b"hello")
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 502, r)
        self.assertEqual(len([s for s in self.be.seen if s[2] == "POST"]), 1, self.be.seen)

    def test_body_over_retry_limit_not_replayed(self):
        c = self.conn()
        self.warm(c)
        body = b"y" * (70 * 1024)
        c.request("PUT", "/big", [("Content-Length", str(len(body)))], body)
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 502, r)
        self.assertEqual(len([s for s in self.be.seen if s[2] == "PUT"]), 1)

    def test_refused_connect_retried_for_any_method(self):
        # two backends: one refusing; with passive ejection off and retries: 1
        # a POST whose first connect is refused is retried (nothing reached it)
        dead = it.free_port()
        pool = self.start_pool(1)
        self.start_tether(backends=[{"name": "dead", "address": "127.0.0.1:%d" % dead}]
                          + self.backends_of(pool), retries=1,
                          health={"interval": "60s", "passive_failures": 1})
        c = self.conn()
        for i in range(8):
            c.request("POST", "/body", [("x-fc-session-id", "rk-%d" % i), ("Content-Length", "3")],
                      b"abc")
            r = c.read_response(timeout=5)
            self.assertEqual(r.status, 200, r)
        # some key met the refusing backend first (P(not) = 2^-8): it was
        # retried, then the backend was ejected
        self.assertIn("backend dead is down", self.tether.stderr_text())


if __name__ == "__main__":
    it.main()
