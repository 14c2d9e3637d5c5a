"""Bodies stream both ways: SSE arrives as produced, big uploads (length
and chunked) pass intact, Expect: 100-continue is relayed."""

import os
import random
import re
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

BIG = random.Random(1234).randbytes(5 * 1024 * 1024)
BIG_SUM = None


def big_sum():
    global BIG_SUM
    if BIG_SUM is None:
        BIG_SUM = it.fnv1a32(BIG)
    return BIG_SUM


class Streaming(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(2)
        self.start_tether(self.pool)
        self.key = "st-" + os.urandom(4).hex()

    def check_body_answer(self, r, data):
        self.assertEqual(r.status, 200, r)
        kv = it.parse_kv(r.text())
        self.assertEqual(int(kv["len"]), len(data), r.text())
        self.assertEqual(int(kv["sum"], 16), it.fnv1a32(data) if data is not BIG else big_sum(), r.text())

    def test_sse_is_incremental(self):
        c = self.conn()
        c.request("GET", "/stream?n=5&delay_ms=400", [("x-fc-session-id", self.key), ("Accept", "text/event-stream")])
        t0 = time.monotonic()
        head = c.read_head()
        self.assertEqual(head.status, 200, head)
        # record when each event becomes visible at the client
        is_chunked = head.has_token("transfer-encoding", "chunked")
        raw, c.buf = c.buf, b""
        arrivals = []
        done = False
        deadline = t0 + 10
        for _ in range(100000):
            decoded, used = it.dechunk(raw) if is_chunked else (raw, None)
            now = time.monotonic()
            events = re.findall(rb"data: (\d+)\n\n", decoded)
            while len(arrivals) < len(events):
                arrivals.append((int(events[len(arrivals)]), now))
            if (is_chunked and used is not None) or c.eof:
                done = True
                break
            left = deadline - now
            if left <= 0:
                break
            c.sock.settimeout(left)
            try:
                d = c.sock.recv(65536)
            except socket.timeout:
                break
            if not d:
                c.eof = True
            raw += d
        self.assertTrue(done, "stream did not end within 10 s; events: %r" % arrivals)
        ids = [i for i, _ in arrivals]
        self.assertEqual(len(ids), 5, arrivals)
        self.assertEqual(ids, list(range(ids[0], ids[0] + 5)), "events out of order: %r" % ids)
        spread = arrivals[-1][1] - arrivals[0][1]
        self.assertGreaterEqual(spread, 1.0, "events arrived %.2fs apart: buffered, not streamed" % spread)
        # the first event must not wait for the stream to end (1.6 s)
        self.assertLess(arrivals[0][1] - t0, 1.2)
        self.assertAlive()

    def test_long_stream_in_order(self):
        # a large chunked response (20000 events, produced as fast as possible)
        c = self.conn()
        c.request("GET", "/stream?n=20000&delay_ms=0", [("x-fc-session-id", self.key)])
        r = c.read_response(timeout=20)
        self.assertEqual(r.status, 200, r)
        ids = [int(x) for x in re.findall(rb"data: (\d+)\n\n", r.body)]
        self.assertEqual(len(ids), 20000)
        self.assertEqual(ids, list(range(ids[0], ids[0] + 20000)))
        # and the connection is usable afterwards
        r = c.get("/", [("x-fc-session-id", self.key)])
        self.assertEqual(r.status, 200, r)

    def test_big_upload_content_length(self):
        c = self.conn()
        c.request("POST", "/body", [("x-fc-session-id", self.key), ("Content-Type", "application/octet-stream")], BIG)
        self.check_body_answer(c.read_response(timeout=30), BIG)

    def test_big_upload_chunked(self):
        c = self.conn()
        c.send(it.build_request("POST", "/body", [("x-fc-session-id", self.key),
                                                  ("Transfer-Encoding", "chunked")]))
        # odd chunk sizes, several writes
        body = it.chunked(BIG, sizes=(65536, 1, 4093, 300000, 17))
        for i in range(0, len(body), 1 << 20):
            c.send(body[i:i + (1 << 20)])
        self.check_body_answer(c.read_response(timeout=30), BIG)

    def test_big_upload_with_curl(self):
        path = os.path.join(self.workdir, "big.bin")
        with open(path, "wb") as f:
            f.write(BIG)
        url = "http://127.0.0.1:%d/body" % self.port
        for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
            p = it.curl("-H", "x-fc-session-id: " + self.key, "--data-binary", "@" + path, *extra, url)
            self.assertEqual(p.returncode, 0, p.stderr)
            kv = it.parse_kv(p.stdout.decode())
            self.assertEqual(int(kv["len"]), len(BIG), p.stdout)
            self.assertEqual(int(kv["sum"], 16), big_sum(), p.stdout)

    def expect_continue(self, chunked_body):
        data = random.Random(7).randbytes(300000)
        c = self.conn()
        hdrs = [("x-fc-session-id", self.key), ("Expect", "100-continue")]
        if chunked_body:
            hdrs.append(("Transfer-Encoding", "chunked"))
        else:
            hdrs.append(("Content-Length", str(len(data))))
        c.send(it.build_request("POST", "/body", hdrs))
        # nothing of the body is sent until the 100 arrives
        interim = c.read_response(timeout=5, skip_interim=False)
        self.assertEqual(interim.status, 100, interim)
        self.assertEqual(interim.version, "HTTP/1.1")
        c.send(it.chunked(data, (10000,)) if chunked_body else data)
        r = c.read_response(timeout=10)
        self.check_body_answer(r, data)
        # the exchange leaves the connection usable
        r = c.get("/", [("x-fc-session-id", self.key)])
        self.assertEqual(r.status, 200, r)

    def test_expect_continue_length(self):
        self.expect_continue(False)

    def test_expect_continue_chunked(self):
        self.expect_continue(True)


if __name__ == "__main__":
    it.main()
