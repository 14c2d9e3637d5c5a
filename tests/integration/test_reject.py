"""Requests the strict parser must refuse: each gets its status, a short
plain-text reason and a closed socket, and reaches no backend."""

import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

H = b"Host: 127.0.0.1\r\n"

# (name, raw bytes, accepted statuses)
CASES = [
    ("cl_and_te", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("te_and_cl", b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", {400}),
    ("two_cl_same", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", {400}),
    ("two_cl_diff", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", {400}),
    ("cl_list", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 1,1\r\n\r\nh", {400}),
    ("cl_plus", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", {400}),
    ("cl_hex", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n0123456789abcdef", {400}),
    ("cl_negative", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", {400}),
    ("cl_trailing_junk", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 5a\r\n\r\nhello", {400}),
    ("cl_overflow", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", {400}),
    ("te_gzip", b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nxxxx", {400}),
    ("te_chunked_gzip", b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", {400}),
    ("te_http10", b"POST /body HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", {400}),
    ("obs_fold", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\r\n  folded\r\n\r\n", {400}),
    ("bare_lf", b"GET /echo HTTP/1.1\n" + b"Host: 127.0.0.1\n\n", {400}),
    ("bare_lf_header", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\n\r\n", {400}),
    ("bare_cr", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", {400}),
    ("space_before_colon", b"GET /echo HTTP/1.1\r\n" + H + b"X-A : 1\r\n\r\n", {400}),
    ("nul_in_value", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", {400}),
    ("del_in_value", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", {400}),
    ("chunk_size_zz", b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", {400}),
    ("chunk_size_overflow", b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n", {400}),
    ("double_space", b"GET  /echo HTTP/1.1\r\n" + H + b"\r\n", {400}),
    # RFC 9110 2.5 would have a 1.1 server treat 1.2 as 1.1; tether's spec
    # asks for a strict parser, so a refusal (400, or 505) is expected here
    ("version_1_2", b"GET /echo HTTP/1.2\r\n" + H + b"\r\n", {400, 505}),
    ("version_lower", b"GET /echo http/1.1\r\n" + H + b"\r\n", {400}),
    ("http09", b"GET /echo\r\n\r\n", {400}),
    ("no_host", b"GET /echo HTTP/1.1\r\nX-A: 1\r\n\r\n", {400}),
    ("two_hosts", b"GET /echo HTTP/1.1\r\n" + H + b"Host: other.example\r\n\r\n", {400}),
    ("key_too_long", b"GET /echo HTTP/1.1\r\n" + H + b"x-fc-session-id: " + b"k" * 257 + b"\r\n\r\n", {400}),
    ("key_not_printable", b"GET /echo HTTP/1.1\r\n" + H + b"x-fc-session-id: a\tb\r\n\r\n", {400}),
    ("head_too_big", b"GET /echo HTTP/1.1\r\n" + H + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(8)) + b"\r\n", {431}),
    ("body_too_big_cl", b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 2000\r\n\r\n", {413}),
]


class Reject(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(2)
        # health checks quiet, so the backends' counters move only with us
        self.start_tether(self.pool, limits={"max_header_bytes": "4k", "max_body_bytes": "1k"},
                          health={"interval": "1h"})

    def requests_seen(self, before):
        return self.pool.delta(before, self.pool.snapshot(), "requests")

    def check_reject(self, raw, statuses, pieces=None, pause=0.0):
        """Send raw (or pieces with a pause between), expect exactly one
        response with a status in statuses, then EOF within 2 s; nothing
        reaches a backend. Returns the response."""
        before = self.pool.snapshot()
        c = self.conn(timeout=5)
        t0 = time.monotonic()
        for p in (pieces or [raw]):
            try:
                c.send(p)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause:
                time.sleep(pause)
        data, closed = c.read_until_close(2.0 + (pause * len(pieces or [])))
        elapsed = time.monotonic() - t0
        self.assertTrue(data, "no response at all (closed=%s, reset=%s)" % (closed, c.reset))
        resps, rest = it.split_responses(data)
        self.assertEqual(len(resps), 1, "expected one response, got %r + %r" % (resps, rest))
        r = resps[0]
        self.assertIn(r.status, statuses, r)
        self.assertEqual(rest, b"", "bytes after the error response: %r" % rest)
        self.assertTrue(closed, "socket not closed within %.1fs after %d" % (elapsed, r.status))
        # a short plain-text reason
        self.assertTrue(r.complete, r)
        self.assertTrue(0 < len(r.body) <= 512, r)
        self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)
        self.assertTrue(all(32 <= b < 127 or b in (9, 10, 13) for b in r.body), r.body)
        self.assertIsNone(r.instance, "the error came from a backend: %r" % r)
        seen = self.requests_seen(before)
        self.assertEqual(sum(seen.values()), 0, "backends saw %r" % seen)
        return r

    def test_control_accepted(self):
        # the same tether accepts well-formed requests at the limits, and the
        # backend counters do move for them (so the checks above can fail)
        before = self.pool.snapshot()
        c = self.conn()
        for body in (b"x" * 1024,):
            c.request("POST", "/body", [], body)
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(it.parse_kv(r.text())["len"], "1024")
        c.send(b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + it.chunked(b"y" * 1000, (300,)))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(it.parse_kv(r.text())["len"], "1000")
        c.send(b"GET /echo HTTP/1.1\r\n" + H + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 500) for i in range(5)) + b"\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        c.send(b"GET /echo HTTP/1.1\r\n" + H + b"Content-Length:  0 \r\nX-A:\tspaced\t\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        seen = self.requests_seen(before)
        self.assertEqual(sum(seen.values()), 4, seen)

    def test_rejected(self):
        for name, raw, statuses in CASES:
            with self.subTest(case=name):
                self.check_reject(raw, statuses)
        self.assertAlive()

    def test_body_too_big_before_forwarding(self):
        # 413 arrives without the client sending any body byte
        c = self.conn(timeout=5)
        before = self.pool.snapshot()
        c.send(b"POST /body HTTP/1.1\r\n" + H + b"Content-Length: 2000\r\n\r\n")
        r = c.read_response(timeout=2)
        self.assertEqual(r.status, 413, r)
        closed, _ = c.closed_within(2)
        self.assertTrue(closed)
        self.assertEqual(sum(self.requests_seen(before).values()), 0)

    def test_chunked_body_grows_too_big(self):
        head = b"POST /body HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        pieces = [head] + [b"200\r\n" + b"z" * 0x200 + b"\r\n" for _ in range(4)] + [b"0\r\n\r\n"]
        r = self.check_reject(None, {413}, pieces=pieces, pause=0.05)
        self.assertEqual(r.status, 413)

    def test_smuggling_probe(self):
        # after a rejected request, a second one in the same write is never
        # answered: one response, then close
        second = b"GET /echo?smuggled=1 HTTP/1.1\r\n" + H + b"\r\n"
        probes = [
            b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0\r\nContent-Length: 44\r\n\r\n",
            b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
            b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
            b"GET /echo HTTP/1.1\nHost: 127.0.0.1\n\n",
        ]
        for i, p in enumerate(probes):
            with self.subTest(probe=i):
                r = self.check_reject(p + second, {400})
                self.assertNotIn(b"smuggled", r.raw_head + r.body)
        # and after a good request on a keep-alive socket, a bad one ends it
        before = self.pool.snapshot()
        c = self.conn()
        c.send(b"GET /echo?i=1 HTTP/1.1\r\n" + H + b"\r\n" + probes[0] + second)
        data, closed = c.read_until_close(3)
        resps, rest = it.split_responses(data)
        self.assertEqual([r.status for r in resps], [200, 400], resps)
        self.assertEqual(rest, b"")
        self.assertTrue(closed)
        self.assertNotIn(b"smuggled", data)
        self.assertEqual(sum(self.requests_seen(before).values()), 1)


if __name__ == "__main__":
    it.main()
