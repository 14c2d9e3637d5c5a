"""What the backend sees (via /echo): internal headers are tether's own,
hop-by-hop headers are gone, X-Forwarded-* are added. And what the access
log says: one JSON line per request, never the session key."""

import json
import os
import re
import signal
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


class Headers(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(2)
        self.start_tether(self.pool)
        self.key = "hk-" + os.urandom(6).hex()

    def echo(self, headers, path="/echo", host="127.0.0.1"):
        c = self.conn()
        c.request("GET", path, headers, host=host)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        line, hdrs = it.parse_echo(r.body)
        self.assertTrue(line.startswith("GET " + path + " "), line)
        return r, hdrs

    def test_session_id_is_tethers(self):
        r, hdrs = self.echo([("X-FC-Session-Id", self.key)])
        self.assertEqual(it.echo_values(hdrs, "x-fc-session-id"), [self.key], hdrs)
        self.assertIn(r.instance, self.pool.names)

    def test_forged_internal_headers_dropped(self):
        forged = [
            ("x-fc-session-id", self.key),
            ("x-fc-session-state", "forged"),
            ("X-FC-SESSION-STATE", "Zm9yZ2VkMg=="),
            ("x-fc-session-epoch", "999999"),
            ("x-fc-session-moved-from", "fn-evil"),
            ("X-FC-Session-Foo", "foo-forged"),
            ("x-Fc-SeSsIoN-eNd", "1"),
        ]
        for with_key in (True, False):
            with self.subTest(with_key=with_key):
                sent = forged if with_key else forged[1:]
                r, hdrs = self.echo(sent)
                names = [k.lower() for k, _ in hdrs]
                values = " ".join(v for _, v in hdrs)
                for bad in ("forged", "Zm9yZ2VkMg==", "999999", "fn-evil", "foo-forged"):
                    self.assertNotIn(bad, values, "backend saw %r: %r" % (bad, hdrs))
                for name in ("x-fc-session-state", "x-fc-session-moved-from", "x-fc-session-foo", "x-fc-session-end"):
                    self.assertNotIn(name, names, hdrs)
                self.assertLessEqual(names.count("x-fc-session-epoch"), 1, hdrs)
                ids = it.echo_values(hdrs, "x-fc-session-id")
                self.assertLessEqual(len(ids), 1, hdrs)
                if with_key:
                    self.assertEqual(ids, [self.key])

    def test_hop_by_hop_removed(self):
        r, hdrs = self.echo([
            ("x-fc-session-id", self.key),
            ("Connection", "keep-alive, X-Foo"),
            ("Keep-Alive", "timeout=5, max=1000"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers, deflate"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("X-Foo", "1"),
            ("X-Bar", "kept"),
            ("X-Multi", "a"),
            ("X-Multi", "b"),
        ])
        names = [k.lower() for k, _ in hdrs]
        for name in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-foo"):
            self.assertNotIn(name, names, "hop-by-hop %s reached the backend: %r" % (name, hdrs))
        for v in it.echo_values(hdrs, "connection"):
            self.assertNotIn("x-foo", v.lower(), hdrs)
            self.assertNotIn("upgrade", v.lower(), hdrs)
        # end-to-end headers pass untouched, repeated ones in order
        self.assertEqual(it.echo_values(hdrs, "x-bar"), ["kept"])
        self.assertEqual(it.echo_values(hdrs, "x-multi"), ["a", "b"])
        self.assertEqual(it.echo_values(hdrs, "x-fc-session-id"), [self.key])

    def test_forwarded_headers(self):
        r, hdrs = self.echo([("x-fc-session-id", self.key)], host="app.example:8080")
        self.assertEqual(it.echo_values(hdrs, "host"), ["app.example:8080"], hdrs)
        xff = it.echo_values(hdrs, "x-forwarded-for")
        self.assertEqual(xff, ["127.0.0.1"], hdrs)
        self.assertEqual(it.echo_values(hdrs, "x-forwarded-proto"), ["http"], hdrs)
        self.assertEqual(it.echo_values(hdrs, "x-forwarded-host"), ["app.example:8080"], hdrs)

        # appended to what the client sent
        r, hdrs = self.echo([("x-fc-session-id", self.key), ("X-Forwarded-For", "203.0.113.7")])
        chain = [p.strip() for v in it.echo_values(hdrs, "x-forwarded-for") for p in v.split(",")]
        self.assertEqual(chain, ["203.0.113.7", "127.0.0.1"], hdrs)

    def test_access_log(self):
        other = "hk-" + os.urandom(6).hex()
        plan = [  # (path, key, expected status)
            ("/", self.key, 200),
            ("/status?code=404", self.key, 404),
            ("/status?code=500", other, 500),
            ("/echo", other, 200),
            ("/", None, 200),
            ("/status?code=201", self.key, 201),
        ]
        got = []
        c = self.conn()
        for path, key, status in plan:
            c.request("GET", path, [("x-fc-session-id", key)] if key else [])
            r = c.read_response()
            self.assertEqual(r.status, status, r)
            got.append(r)
        c.close()
        # a clean stop flushes the log
        self.tether.signal(signal.SIGTERM)
        self.assertEqual(self.tether.wait(10), 0)
        with open(self.access_log, "rb") as f:
            raw = f.read()
        self.assertNotIn(self.key.encode(), raw, "the session key is in the access log")
        self.assertNotIn(other.encode(), raw, "the session key is in the access log")
        self.assertNotIn(self.key[3:].encode(), raw)
        lines = [l for l in raw.decode().splitlines() if l.strip()]
        self.assertEqual(len(lines), len(plan), lines)
        recs = [json.loads(l) for l in lines]
        for (path, key, status), rec, r in zip(plan, recs, got):
            for field in ("time", "client", "method", "path", "status", "bytes", "backend", "session"):
                self.assertIn(field, rec, rec)
            # durations may carry their unit in the name (duration_ms)
            self.assertTrue(any(k.startswith("duration") for k in rec), "no duration field: %r" % rec)
            self.assertTrue(any(k.startswith("upstream") for k in rec), "no upstream time field: %r" % rec)
            self.assertEqual(rec["method"], "GET")
            self.assertEqual(rec["path"].split("?")[0], path.split("?")[0], rec)
            self.assertEqual(int(rec["status"]), status, rec)
            self.assertEqual(rec["backend"], r.instance, rec)
            self.assertIn("127.0.0.1", str(rec["client"]))
            self.assertGreaterEqual(int(rec["bytes"]), len(r.body), rec)
        sess = [rec["session"] for rec in recs]
        # same key, same short hash; different keys, different hashes
        self.assertTrue(sess[0], recs[0])
        self.assertLessEqual(len(str(sess[0])), 32)
        self.assertEqual(sess[0], sess[1])
        self.assertEqual(sess[0], sess[5])
        self.assertEqual(sess[2], sess[3])
        self.assertNotEqual(sess[0], sess[2])


if __name__ == "__main__":
    it.main()
