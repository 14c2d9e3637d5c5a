"""Session affinity: one key, one instance; new keys spread over the pool."""

import os
import re
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


class AffinityBasic(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(4)
        self.start_tether(self.pool)
        self.tag = os.urandom(4).hex()

    def check_body(self, r, key, count):
        self.assertEqual(r.status, 200, r)
        kv = it.parse_kv(r.text())
        self.assertEqual(kv.get("instance"), r.instance, r)
        self.assertEqual(kv.get("session"), key, r)
        self.assertEqual(kv.get("count"), str(count), r)

    def test_same_key_same_instance(self):
        # 50 keys x 5 rounds, interleaved, on one keep-alive connection: each
        # key's counter on its instance goes 1..5, so no request went astray.
        keys = ["aff-%s-%02d" % (self.tag, i) for i in range(50)]
        home = {}
        c = self.conn()
        for rnd in range(5):
            for key in keys:
                r = c.get("/", [("x-fc-session-id", key)])
                self.assertIn(r.instance, self.pool.names, r)
                if rnd == 0:
                    home[key] = r.instance
                self.assertEqual(r.instance, home[key], "key %s moved in round %d" % (key, rnd))
                self.check_body(r, key, rnd + 1)
        used = set(home.values())
        self.assertGreaterEqual(len(used), 3, "50 keys landed on only %s" % sorted(used))

        # the pinned binding survives fresh connections too
        for key in keys[:10]:
            with it.Conn(self.port) as c2:
                r = c2.get("/", [("x-fc-session-id", key)])
            self.assertEqual(r.instance, home[key])
            self.check_body(r, key, 6)

    def test_curl_keeps_affinity(self):
        # A real client: one curl run, several URLs over one connection.
        for i in range(6):
            key = "curl-%s-%d" % (self.tag, i)
            url = "http://127.0.0.1:%d/" % self.port
            p = it.curl("-H", "x-fc-session-id: " + key, "-w", "code=%{http_code}\\n", url, url, url)
            self.assertEqual(p.returncode, 0, p.stderr)
            lines = p.stdout.decode().splitlines()
            bodies = [it.parse_kv(l) for l in lines if l.startswith("instance=")]
            codes = [l for l in lines if l.startswith("code=")]
            self.assertEqual(codes, ["code=200"] * 3, p.stdout)
            self.assertEqual([b["count"] for b in bodies], ["1", "2", "3"], p.stdout)
            self.assertEqual(len({b["instance"] for b in bodies}), 1, p.stdout)
            self.assertEqual({b["session"] for b in bodies}, {key})

    def test_no_key_still_served(self):
        c = self.conn()
        seen = set()
        for i in range(20):
            r = c.get("/")
            self.assertEqual(r.status, 200, r)
            self.assertIn(r.instance, self.pool.names, r)
            self.assertTrue(re.match(r"^instance=\S+ session=\S+ count=\d+$", r.text().strip()), r)
            seen.add(r.instance)
        # keyless requests go to the least-loaded instance; sequential ones
        # all tie at zero in flight, so they must not all pile on one instance
        self.assertGreaterEqual(len(seen), 2, "20 keyless requests all went to %s" % seen)


if __name__ == "__main__":
    it.main()
