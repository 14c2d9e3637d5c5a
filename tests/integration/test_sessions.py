"""Session affinity end to end: keys from headers and cookies, minted
cookies and provisional sessions, the bounded-load placement and the
per-backend caps, session end, and the epoch the backend sees. The fnpool
counter of a session (keyed by the x-fc-session-id tether sends) proves
which requests reached which instance."""

import os
import re
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

COOKIE_RE = re.compile(r"^fc_session=([0-9a-fA-F]{32}); Path=/; Max-Age=86400; HttpOnly; SameSite=Lax$")


def body_kv(r):
    """(instance, session, count) as the instance reported them."""
    kv = it.parse_kv(r.text())
    return kv.get("instance"), kv.get("session"), int(kv.get("count", "-1"))


class Sessions(it.TetherTestCase):
    def setUp(self):
        self.tag = os.urandom(4).hex()

    def keyed(self, key, path="/", headers=(), conn=None):
        c = conn or it.Conn(self.port)
        try:
            return c.get(path, [("x-fc-session-id", key)] + list(headers))
        finally:
            if conn is None:
                c.close()

    def one(self, headers, path="/", method="GET"):
        """One request on a fresh connection."""
        with it.Conn(self.port) as c:
            c.request(method, path, headers)
            return c.read_response()

    def assertServed(self, r, key, instance=None, count=None):
        self.assertEqual(r.status, 200, r)
        inst, sess, n = body_kv(r)
        self.assertEqual(inst, r.instance, r)
        self.assertEqual(sess, key, r)
        if instance is not None:
            self.assertEqual(r.instance, instance, "session %s moved: %r" % (key, r))
        if count is not None:
            self.assertEqual(n, count, r)
        self.assertEqual(r.header_all("x-fc-session-state"), [], r)
        self.assertEqual(r.header_all("x-fc-session-end"), [], r)

    def assertFull(self, r):
        self.assertEqual(r.status, 503, r)
        self.assertIsNotNone(r.header("retry-after"), "503 without Retry-After: %r" % r)

    # ---------------------------------------------------------- scenario 1

    def test_thousand_sessions_stay_home(self):
        pool = self.start_pool(4)
        self.start_tether(pool)
        keys = ["s1-%s-%04d" % (self.tag, i) for i in range(1000)]
        conns = [self.conn() for _ in range(8)]
        home = {}
        for rnd in range(5):
            # rotate keys over connections every round, so one key's requests
            # arrive on different connections, interleaved with the others'
            order = keys[rnd * 137 % len(keys):] + keys[: rnd * 137 % len(keys)]
            for i in range(0, len(order), len(conns)):
                batch = order[i:i + len(conns)]
                for j, key in enumerate(batch):
                    conns[(j + rnd) % len(conns)].request("GET", "/", [("x-fc-session-id", key)])
                for j, key in enumerate(batch):
                    r = conns[(j + rnd) % len(conns)].read_response()
                    self.assertServed(r, key, home.get(key), rnd + 1)
                    home.setdefault(key, r.instance)
        per = {n: 0 for n in pool.names}
        for inst in home.values():
            per[inst] += 1
        self.assertTrue(all(v > 0 for v in per.values()), per)

    # ---------------------------------------------------------- scenario 2

    def test_bounded_load_at_every_step(self):
        pool = self.start_pool(4)
        self.start_tether(pool, balance={"load_factor": 1.25})
        load = {n: 0 for n in pool.names}
        c = self.conn()
        for i in range(1, 201):
            key = "s2-%s-%03d" % (self.tag, i)
            r = self.keyed(key, conn=c)
            self.assertServed(r, key, count=1)
            load[r.instance] += 1
            bound = (5 * i + 15) // 16  # ceil(1.25 * i / 4)
            self.assertLessEqual(max(load.values()), bound,
                                 "after placement %d: loads %s exceed %d" % (i, load, bound))
        self.assertEqual(sum(load.values()), 200)

    def test_caps_then_503(self):
        pool = self.start_pool(4)
        backends = [dict(b, max_sessions=3) for b in self.backends_of(pool)]
        self.start_tether(backends=backends)
        home = {}
        for i in range(12):
            key = "s2c-%s-%02d" % (self.tag, i)
            r = self.keyed(key)
            self.assertServed(r, key, count=1)
            home[key] = r.instance
        per = {n: list(home.values()).count(n) for n in pool.names}
        self.assertEqual(per, {n: 3 for n in pool.names})

        before = pool.snapshot()
        for attempt in range(2):
            r = self.keyed("s2c-%s-new" % self.tag)
            self.assertFull(r)
        self.assertEqual(pool.delta(before, pool.snapshot(), "requests"), {n: 0 for n in pool.names})

        for key, inst in home.items():
            self.assertServed(self.keyed(key), key, inst, 2)

    # ---------------------------------------------------------- scenario 3

    def test_curl_cookie_jar(self):
        pool = self.start_pool(4)
        self.start_tether(pool)
        jar = os.path.join(self.workdir, "jar")
        url = "http://127.0.0.1:%d/" % self.port
        key = None
        inst = None
        for i in range(5):
            hdr = os.path.join(self.workdir, "h%d" % i)
            p = it.curl("-c", jar, "-b", jar, "-D", hdr, url)
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(hdr, "rb") as f:
                head = f.read().decode("latin-1")
            cookies = re.findall(r"(?im)^set-cookie:\s*(.*?)\r?$", head)
            got = re.search(r"(?im)^x-fc-instance:\s*(\S+)", head).group(1)
            kv = it.parse_kv(p.stdout.decode())
            if i == 0:
                self.assertEqual(len(cookies), 1, head)
                m = COOKIE_RE.match(cookies[0])
                self.assertTrue(m, "Set-Cookie %r" % cookies[0])
                self.assertNotIn("secure", cookies[0].lower())
                key, inst = m.group(1), got
            else:
                self.assertEqual(cookies, [], "request %d got a new cookie: %s" % (i + 1, head))
                self.assertEqual(got, inst, head)
            self.assertEqual(kv.get("session"), key, p.stdout)
            self.assertEqual(kv.get("count"), str(i + 1), p.stdout)
            self.assertNotIn("x-fc-session-state", head.lower())

    def test_cookie_parsing(self):
        pool = self.start_pool(4)
        self.start_tether(pool)
        key = "s3-%s" % self.tag
        r = self.keyed(key)
        self.assertServed(r, key, count=1)
        inst = r.instance
        good = [
            [("Cookie", "a=1; fc_session=%s; b=2" % key)],
            [("Cookie", "a=1"), ("Cookie", "fc_session=%s" % key)],
            [("Cookie", 'fc_session="%s"' % key)],
        ]
        for n, headers in enumerate(good, start=2):
            with self.subTest(headers=headers):
                r = self.one(headers)
                self.assertServed(r, key, inst, n)
                self.assertEqual(r.header_all("set-cookie"), [], r)
        bad = [
            [("Cookie", "fc_session=%s; fc_session=%s" % (key, key))],
            [("Cookie", "fc_session=%s" % key), ("Cookie", "x=1; fc_session=%s" % key)],
        ]
        before = pool.snapshot()
        for headers in bad:
            with self.subTest(headers=headers):
                self.assertEqual(self.one(headers).status, 400)
        self.assertEqual(pool.delta(before, pool.snapshot(), "requests"), {n: 0 for n in pool.names})
        self.assertServed(self.keyed(key), key, inst, len(good) + 2)

    def test_sources_order(self):
        pool = self.start_pool(4)
        hkey, ckey = "s3h-%s" % self.tag, "s3c-%s" % self.tag
        both = [("x-fc-session-id", hkey), ("Cookie", "fc_session=" + ckey)]
        self.start_tether(pool)
        r = self.one(both)
        self.assertServed(r, hkey, count=1)
        self.assertEqual(r.header_all("set-cookie"), [], r)

        self.start_tether(pool, session={"sources": ["cookie", "header"]})
        r = self.one(both)
        self.assertServed(r, ckey, count=1)
        r = self.one(both)
        self.assertServed(r, ckey, count=2)

    # ---------------------------------------------------------- scenario 4

    def test_invalid_keys(self):
        pool = self.start_pool(4)
        self.start_tether(pool)
        ok = "k" * 256
        r = self.keyed(ok)
        self.assertServed(r, ok, count=1)
        bad = [
            [("x-fc-session-id", "k" * 257)],
            [("x-fc-session-id", "a b")],
            [("x-fc-session-id", "a\tb")],
            [("x-fc-session-id", "caf\xe9")],
            [("x-fc-session-id", "ab\x01cd")],
            [("x-fc-session-id", "ab\x7fcd")],
            [("x-fc-session-id", "one"), ("x-fc-session-id", "two")],
            [("X-FC-Session-Id", "one"), ("x-fc-session-id", "one")],
            [("Cookie", "fc_session=" + "c" * 257)],
        ]
        before = pool.snapshot()
        for headers in bad:
            with self.subTest(headers=headers):
                self.assertEqual(self.one(headers).status, 400)
        self.assertEqual(pool.delta(before, pool.snapshot(), "requests"), {n: 0 for n in pool.names})
        self.assertServed(self.keyed(ok), ok, r.instance, 2)

    # ---------------------------------------------------------- scenario 5

    def provisional_tether(self):
        pool = self.start_pool(4)
        backends = [dict(b, max_sessions=2) for b in self.backends_of(pool)]
        self.start_tether(backends=backends, session={"provisional_timeout": "1s"})
        return pool

    def test_minted_sessions_take_no_slots(self):
        self.provisional_tether()
        minted = set()
        c = self.conn()
        for i in range(50):
            r = c.get("/")
            self.assertEqual(r.status, 200, r)
            cookies = r.header_all("set-cookie")
            self.assertEqual(len(cookies), 1, r)
            m = COOKIE_RE.match(cookies[0])
            self.assertTrue(m, cookies)
            self.assertEqual(body_kv(r)[1], m.group(1), r)
            minted.add(m.group(1))
        self.assertEqual(len(minted), 50)
        for i in range(8):
            key = "s5-%s-%d" % (self.tag, i)
            self.assertServed(self.keyed(key), key, count=1)
        self.assertFull(self.keyed("s5-%s-ninth" % self.tag))
        # a minted key coming back now would be a ninth live session: no room
        self.assertFull(self.one([("Cookie", "fc_session=" + sorted(minted)[0])]))

    def test_minted_key_back_in_time_is_confirmed(self):
        self.provisional_tether()
        r = self.one([])
        key = COOKIE_RE.match(r.header("set-cookie")).group(1)
        inst = r.instance
        r = self.one([("Cookie", "fc_session=" + key)])
        self.assertServed(r, key, inst, 2)
        self.assertEqual(r.header_all("set-cookie"), [], r)
        for i in range(7):
            k = "s5b-%s-%d" % (self.tag, i)
            self.assertServed(self.keyed(k), k, count=1)
        self.assertFull(self.keyed("s5b-%s-ninth" % self.tag))

    def test_minted_key_back_late_is_new_live_session(self):
        self.provisional_tether()
        r = self.one([])
        self.assertEqual(r.status, 200, r)
        key = COOKIE_RE.match(r.header("set-cookie")).group(1)
        time.sleep(2.5)  # past provisional_timeout
        r = self.one([("Cookie", "fc_session=" + key)])
        self.assertServed(r, key)
        self.assertEqual(r.header_all("set-cookie"), [], r)
        inst = r.instance
        # it is live now: it takes one of the 8 slots
        for i in range(7):
            k = "s5c-%s-%d" % (self.tag, i)
            self.assertServed(self.keyed(k), k, count=1)
        self.assertFull(self.keyed("s5c-%s-ninth" % self.tag))
        self.assertServed(self.one([("Cookie", "fc_session=" + key)]), key, inst)

    # ---------------------------------------------------------- scenario 7

    def test_session_end(self):
        pool = self.start_pool(2)
        backends = [dict(b, max_sessions=1) for b in self.backends_of(pool)]
        self.start_tether(backends=backends)
        a, b, c = ("s7%s-%s" % (x, self.tag) for x in "abc")
        self.assertServed(self.keyed(a), a, count=1)
        self.assertServed(self.keyed(a), a, count=2)
        self.assertServed(self.keyed(b), b, count=1)
        self.assertFull(self.keyed(c))

        r = self.keyed(a, "/end")
        self.assertServed(r, a, count=3)  # no x-fc-session-end, no state, to the client
        # a's slot is free again: tether ended the session, not just the instance
        self.assertServed(self.keyed(c), c, count=1)
        # and a is a new session now: with both slots taken, there is no room for it
        self.assertFull(self.keyed(a))
        self.assertServed(self.keyed(c, "/end"), c, count=2)
        self.assertServed(self.keyed(a), a, count=1)
        self.assertServed(self.keyed(a), a, count=2)

    # ---------------------------------------------------------- scenario 8

    def test_epoch_header(self):
        pool = self.start_pool(2)
        self.start_tether(pool)
        key = "s8-%s" % self.tag
        forged = [("x-fc-session-epoch", "99"), ("X-FC-Session-Epoch", "99")]
        cases = [
            ("header", [("x-fc-session-id", key)]),
            ("header-again", [("x-fc-session-id", key)] + forged),
            ("cookie", [("Cookie", "fc_session=%s" % key)] + forged),
            ("minted", forged),
        ]
        for what, headers in cases:
            with self.subTest(what=what):
                r = self.one(headers, "/echo")
                self.assertEqual(r.status, 200, r)
                _, seen = it.parse_echo(r.body)
                epochs = it.echo_values(seen, "x-fc-session-epoch")
                self.assertEqual(len(epochs), 1, seen)
                self.assertTrue(re.match(r"^[0-9]+$", epochs[0]), epochs)
                self.assertEqual(epochs[0], "1", "a session that never moved: %r" % seen)
                ids = it.echo_values(seen, "x-fc-session-id")
                self.assertEqual(len(ids), 1, seen)
                if what != "minted":
                    self.assertEqual(ids, [key])


if __name__ == "__main__":
    it.main()
