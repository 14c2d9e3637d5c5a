"""The Redis sidecar (state.store: redis), against a real redis-server:
a restarted tetherd forgets no session; two tetherd sharing one Redis agree
on every new session and follow each other's moves; a Redis stopped,
killed and restarted under load fails no request and delays none past
claim_timeout, and what was written meanwhile reaches it afterwards; a
Redis that answers errors is treated as down."""

import os
import random
import re
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

CLAIM_TIMEOUT = 0.05
SLOW = CLAIM_TIMEOUT + 0.25  # the slowest request the outage may cause, measured in the client
PREFIX = "tt:"


def body_kv(r):
    kv = it.parse_kv(r.text())
    return kv.get("instance"), kv.get("session"), int(kv.get("count", "-1"))


class RedisStore(it.TetherTestCase):
    def setUp(self):
        self.tag = os.urandom(4).hex()
        self.pool = self.start_pool(4)
        self.redis = self.start_redis()

    def redis_state(self, **extra):
        st = {"store": "redis",
              "redis": dict({"address": self.redis.address, "prefix": PREFIX,
                             "claim_timeout": "%dms" % (CLAIM_TIMEOUT * 1000)}, **extra)}
        return st

    def start(self, backends=None, **overrides):
        overrides.setdefault("state", self.redis_state())
        return self.start_tether(self.pool, backends=backends, **overrides)

    def keyed(self, port, key, conn=None, timeout=10.0):
        c = conn or it.Conn(port, timeout=timeout)
        try:
            return c.get("/", [("x-fc-session-id", key)], timeout=timeout)
        finally:
            if conn is None:
                c.close()

    def served(self, r, key):
        self.assertEqual(r.status, 200, r)
        inst, sess, n = body_kv(r)
        self.assertEqual(sess, key, r)
        self.assertEqual(inst, r.instance, r)
        return inst, n

    def record(self, key):
        return self.redis.hgetall(PREFIX + "s:" + key)

    def stop(self, t):
        t.signal(signal.SIGTERM)
        self.assertEqual(t.wait(10), 0, t.stderr_text())

    def wait_logged(self, t, fragment, timeout=10, more_than=0):
        it.wait_until(lambda: t.stderr_text().count(fragment) > more_than, timeout,
                      what="%r in tetherd's log" % fragment)

    # ------------------------------------------------------------ restart

    def test_restart_returns_every_session_to_its_instance(self):
        keys = ["rs-%s-%02d" % (self.tag, i) for i in range(40)]
        t = self.start()
        home = {}
        c = self.conn()
        for n in range(1, 4):
            for k in keys:
                inst, count = self.served(self.keyed(self.port, k, c), k)
                self.assertEqual(count, n)
                self.assertEqual(home.setdefault(k, inst), inst)
        c.close()
        self.stop(t)
        for k in keys:
            rec = self.record(k)
            self.assertEqual(rec.get("backend"), home[k], (k, rec))
            self.assertEqual(rec.get("epoch"), "1")
            self.assertEqual(rec.get("requests"), "3")
            ttl = self.redis.call("PTTL", PREFIX + "s:" + k)
            self.assertTrue(0 < ttl <= 30 * 60 * 1000, ttl)
        # An empty table, and a ring that would place keys elsewhere: Redis decides.
        backends = self.backends_of(self.pool)
        backends[0] = dict(backends[0], weight=6)
        self.start(backends=backends)
        c = self.conn()
        for k in keys:
            inst, count = self.served(self.keyed(self.port, k, c), k)
            self.assertEqual(inst, home[k], k)
            self.assertEqual(count, 4, k)  # the instance's counter goes on

    def test_stop_flushes_what_is_queued(self):
        t = self.start(shutdown_timeout="20s")
        c = self.conn()
        old = ["st-%s-old%02d" % (self.tag, i) for i in range(10)]
        new = ["st-%s-new%02d" % (self.tag, i) for i in range(20)]
        for k in old:
            self.served(self.keyed(t.port, k, c), k)
        it.wait_until(lambda: all(self.record(k).get("backend") for k in old), 5,
                      what="the first sessions in Redis")
        self.redis.signal(signal.SIGSTOP)
        try:
            home = {k: self.served(self.keyed(t.port, k, c), k)[0] for k in new}
            for k in old:
                self.assertEqual(self.served(self.keyed(t.port, k, c), k)[1], 2)
            c.close()
            t.signal(signal.SIGTERM)
            # Redis does not answer: tetherd waits for it (within shutdown_timeout)
            self.assertIsNone(t.wait(1.0), "tetherd exited before its writes were acknowledged")
        finally:
            self.redis.signal(signal.SIGCONT)
        self.assertEqual(t.wait(10), 0, t.stderr_text())
        for k in new:
            self.assertEqual(self.record(k).get("backend"), home[k], k)
        for k in old:
            self.assertEqual(self.record(k).get("state"), "Y291bnQ9Mg==", k)  # count=2

    # ------------------------------------------------------------ two tetherd

    def test_two_tetherd_agree_and_follow_moves(self):
        fast = {"interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 2}
        a = self.start(health=fast)
        # B lists the backends the other way round, with weights that make its
        # ring disagree with A's for many keys, and checks them too slowly to
        # notice a death itself within the test: what it knows, it has from A.
        backends = list(reversed(self.backends_of(self.pool)))
        for i, b in enumerate(backends):
            b["weight"] = 1 + 2 * i
        b = self.start(backends=backends,
                       health={"interval": "60s", "timeout": "1s", "passive_failures": 1000})
        ports = (a.port, b.port)
        keys = ["two-%s-%03d" % (self.tag, i) for i in range(100)]

        def first(k):
            """The first request of k through both at once: one instance."""
            conns = [it.Conn(p) for p in ports]
            try:
                req = it.build_request("GET", "/", [("x-fc-session-id", k)])
                for cn in conns:
                    cn.send(req)
                out = [self.served(cn.read_response(), k) for cn in conns]
            finally:
                for cn in conns:
                    cn.close()
            return out

        def client(i):
            rng = random.Random(i)
            mine = keys[i::10]
            homes = {}
            conns = [it.Conn(p) for p in ports]
            try:
                for k in mine:
                    (i1, n1), (i2, n2) = first(k)
                    self.assertEqual(i1, i2, "%s: A sent it to %s, B to %s" % (k, i1, i2))
                    self.assertEqual(sorted((n1, n2)), [1, 2], k)
                    homes[k] = i1
                for n in range(3, 7):
                    for k in mine:
                        via = (n + rng.randrange(2)) % 2
                        inst, count = self.served(self.keyed(ports[via], k, conns[via]), k)
                        self.assertEqual(inst, homes[k], "%s through %s" % (k, "AB"[via]))
                        self.assertEqual(count, n, k)
            finally:
                for cn in conns:
                    cn.close()
            return homes

        homes = {}
        for h in self.run_threads(client, 10):
            homes.update(h)
        self.assertEqual(len(homes), len(keys))
        self.assertGreater(len(set(homes.values())), 1, homes)

        # A's health check moves the sessions of a killed instance; B follows
        # the moves A publishes, with the state: the counters go on.
        victim = max(self.pool.names, key=lambda n: sum(1 for v in homes.values() if v == n))
        moved = [k for k in keys if homes[k] == victim]
        self.pool.kill(victim)
        self.wait_logged(a, "backend %s is down" % victim)
        it.wait_until(lambda: all(self.record(k).get("backend") not in (None, victim)
                                  for k in moved), 5, what="the moves in Redis")
        time.sleep(0.2)  # the publication reaches B
        cb, ca = self.conn(port=b.port), self.conn(port=a.port)
        for k in moved:
            rec = self.record(k)
            inst, count = self.served(self.keyed(b.port, k, cb), k)
            self.assertEqual(inst, rec["backend"], "%s: B did not follow A's move" % k)
            self.assertEqual(count, 7, k)
            inst, count = self.served(self.keyed(a.port, k, ca), k)
            self.assertEqual(inst, rec["backend"], k)
            self.assertEqual(count, 8, k)
        for k in keys[:20]:
            if k not in moved:
                self.assertEqual(self.served(self.keyed(b.port, k, cb), k)[0], homes[k])
        self.assertIn("backend %s is down" % victim, a.stderr_text())
        self.assertNotIn("backend %s is down" % victim, b.stderr_text())

    def test_minted_cookie_comes_back_through_the_other(self):
        a = self.start()
        b = self.start()
        r = self.conn(port=a.port).get("/", [])
        self.assertEqual(r.status, 200, r)
        cookie = r.header("set-cookie")
        self.assertTrue(cookie and cookie.startswith("fc_session="), r)
        key = cookie.split(";")[0].split("=", 1)[1]
        it.wait_until(lambda: self.record(key).get("provisional") == "1", 5,
                      what="the minted session in Redis")
        ttl = self.redis.call("PTTL", PREFIX + "s:" + key)
        self.assertTrue(0 < ttl <= 60 * 1000, ttl)  # provisional_timeout
        for port in (b.port, a.port, b.port):
            r2 = self.conn(port=port).get("/", [("Cookie", "fc_session=" + key)])
            self.assertEqual(r2.status, 200, r2)
            self.assertEqual(r2.instance, r.instance)
            self.assertEqual(r2.header_all("set-cookie"), [])
        # seen back: live, with the idle timeout
        it.wait_until(lambda: self.record(key).get("provisional") == "0", 5,
                      what="the session confirmed in Redis")
        self.assertGreater(self.redis.call("PTTL", PREFIX + "s:" + key), 60 * 1000)

    # ------------------------------------------------------------ outage

    def test_outage_fails_and_delays_nothing(self):
        t = self.start(workers=2)
        recurring = ["out-%s-r%02d" % (self.tag, i) for i in range(24)]
        phase = {"name": "before"}
        lock = threading.Lock()
        made = {}  # key -> phase it was created in
        last = {}  # key -> instance that served it last
        done = threading.Event()
        lost_while_stopped = []

        def client(i):
            rng = random.Random(i)
            recs = []
            conn = None
            fresh = 0
            for _ in range(100000):
                if done.is_set():
                    break
                if rng.random() < 0.5:
                    key = rng.choice(recurring)
                else:
                    fresh += 1
                    key = "out-%s-c%d-%d" % (self.tag, i, fresh)
                    with lock:
                        made[key] = phase["name"]
                start = time.monotonic()
                try:
                    if conn is None:
                        conn = it.Conn(t.port, timeout=5)
                    r = conn.get("/", [("x-fc-session-id", key)], timeout=5)
                    took = time.monotonic() - start
                    ok = r.status == 200 and body_kv(r)[1] == key
                    recs.append((key, ok, took, r.status))
                    if ok:
                        with lock:
                            last[key] = r.instance
                except (OSError, it.Closed, AssertionError) as e:
                    recs.append((key, False, time.monotonic() - start, repr(e)[:80]))
                    if conn:
                        conn.close()
                    conn = None
                time.sleep(0.002)
            if conn:
                conn.close()
            return recs

        def script():
            time.sleep(1.0)
            phase["name"] = "stopped"
            self.redis.signal(signal.SIGSTOP)
            time.sleep(3.0)
            self.redis.signal(signal.SIGCONT)
            phase["name"] = "resumed"
            time.sleep(1.5)
            with lock:
                while_stopped = {k: last.get(k) for k, p in made.items() if p == "stopped"}
            for k, inst in while_stopped.items():
                rec = self.record(k)
                if rec.get("backend") != inst:
                    lost_while_stopped.append((k, inst, rec))
            phase["name"] = "killed"
            self.redis.kill()
            time.sleep(1.0)
            self.redis.start()  # the same port, empty
            phase["name"] = "restarted"
            it.wait_until(lambda: t.stderr_text().count("reconnected") >= 2, 10,
                          what="tetherd to reconnect")
            time.sleep(1.0)
            phase["name"] = "after"
            time.sleep(1.0)
            done.set()

        director = threading.Thread(target=script, daemon=True)
        director.start()
        try:
            results = self.run_threads(client, 4, timeout=60)
        finally:
            done.set()
            director.join(30)
        recs = [r for out in results for r in out]
        failed = [r for r in recs if not r[1]]
        slow = sorted(recs, key=lambda r: -r[2])[:5]
        self.assertGreater(len(recs), 500)
        self.assertEqual(failed, [], "%d of %d requests failed" % (len(failed), len(recs)))
        self.assertLess(slow[0][2], SLOW, "slowest requests: %r" % slow)
        for p in ("stopped", "killed", "after"):
            self.assertTrue(any(v == p for v in made.values()), "no new session while %s" % p)
        self.assertEqual(lost_while_stopped, [], "written while Redis was stopped, not in it")
        log = t.stderr_text()
        self.assertIn("new keys are placed without waiting for Redis", log)
        self.assertIn("lost", log)
        # What was written while Redis was stopped or away is in it now: every
        # session created or used since it came back, as this tetherd has it.
        self.stop(t)
        m = re.search(r"redis: claims (\d+) \((\d+) past claim_timeout\), reconciles \d+, "
                      r"writes (\d+), error replies (\d+), reconnects (\d+)", t.stderr_text())
        self.assertTrue(m, "no counters at stop")
        claims, late, writes, errors, reconnects = map(int, m.groups())
        self.assertGreater(claims, 100)
        self.assertGreater(late, 0)  # the first claims while Redis was stopped
        self.assertLess(late, claims / 4)  # ... but not every one: no waiting on a stalled Redis
        self.assertGreater(writes, 100)
        self.assertEqual(errors, 0)
        self.assertGreaterEqual(reconnects, 3)  # two workers and the subscriber
        since = [k for k, p in made.items() if p in ("killed", "restarted", "after")]
        since += recurring
        missing = []
        for k in since:
            rec = self.record(k)
            if rec.get("backend") != last.get(k):
                missing.append((k, made.get(k, "recurring"), last.get(k), rec))
        self.assertEqual(missing, [], "not in Redis as served")

    # ------------------------------------------------------------ errors

    def test_error_replies_are_treated_as_down(self):
        bad = "err-%s-wrongtype" % self.tag
        self.redis.call("SET", PREFIX + "s:" + bad, "not a hash")
        t = self.start()
        c = self.conn()
        homes = set()
        for n in range(1, 4):
            inst, count = self.served(self.keyed(t.port, bad, c), bad)
            homes.add(inst)
            self.assertEqual(count, n)
        self.assertEqual(len(homes), 1)
        self.wait_logged(t, "WRONGTYPE")
        self.assertIn("treated as Redis being down", t.stderr_text())
        self.assertEqual(self.served(self.keyed(t.port, bad, c), bad), (homes.pop(), 4))
        self.assertEqual(self.redis.call("GET", PREFIX + "s:" + bad), "not a hash")
        # the other keys are not affected
        good = "err-%s-good" % self.tag
        self.served(self.keyed(t.port, good, c), good)
        it.wait_until(lambda: self.record(good).get("backend"), 5, what="a good key written")
        self.stop(t)
        m = re.search(r"error replies (\d+)", t.stderr_text())
        self.assertTrue(m and int(m.group(1)) >= 2, "claim and write refused: %r" % (m and m.group(0)))

    def test_unknown_backend_is_placed_here(self):
        key = "unk-%s" % self.tag
        rk = PREFIX + "s:" + key
        self.redis.call("HSET", rk, "backend", "fn-99", "epoch", "3", "created",
                        str(int(time.time() * 1000)), "last_seen", str(int(time.time() * 1000)),
                        "requests", "7", "provisional", "0", "handoff", "0", "moved_from", "",
                        "state", "Y291bnQ9Nw==")  # count=7
        self.redis.call("PEXPIRE", rk, 60000)
        t = self.start()
        r = self.keyed(t.port, key)
        inst, count = self.served(r, key)
        self.assertEqual(count, 8)  # the stored state went along
        self.wait_logged(t, 'backend "fn-99", which is not configured here')
        # written over as a move, so every tetherd agrees on a binding that works
        it.wait_until(lambda: self.record(key).get("backend") == inst, 5,
                      what="the new binding in Redis")
        self.assertEqual(self.record(key).get("epoch"), "4")
        self.assertEqual(self.served(self.keyed(t.port, key), key), (inst, 9))

    def test_flushed_scripts_are_loaded_again(self):
        t = self.start()
        c = self.conn()
        first = "fl-%s-a" % self.tag
        self.served(self.keyed(t.port, first, c), first)
        self.assertEqual(self.redis.call("SCRIPT", "FLUSH"), "OK")
        keys = ["fl-%s-%d" % (self.tag, i) for i in range(5)]
        for k in keys:  # the first of them meets NOSCRIPT: served here all the same
            self.served(self.keyed(t.port, k, c), k)
        self.wait_logged(t, "no longer has tether's scripts")
        self.wait_logged(t, "reconnected")
        later = "fl-%s-b" % self.tag
        self.served(self.keyed(t.port, later, c), later)
        for k in keys + [later]:
            it.wait_until(lambda k=k: self.record(k).get("backend"), 5, what="%s in Redis" % k)

    def test_wrong_password_is_treated_as_down(self):
        self.redis.stop()
        self.redis = self.start_redis(password="sesame-%s" % self.tag)
        pw = os.path.join(self.workdir, "redis.pw")
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"not-the-password\n")
        os.close(fd)
        t = self.start(state=self.redis_state(password_file=pw))
        c = self.conn()
        key = "pw-%s" % self.tag
        for n in range(1, 4):
            self.assertEqual(self.served(self.keyed(t.port, key, c), key)[1], n)
        self.wait_logged(t, "setup refused")
        self.assertIn("serving from the local table", t.stderr_text())
        self.assertEqual(self.redis.call("EXISTS", PREFIX + "s:" + key), 0)
        self.stop(t)
        # the right one: the session is written
        with open(pw, "w") as f:
            f.write(self.redis.password + "\n")
        t = self.start(state=self.redis_state(password_file=pw))
        self.assertEqual(self.served(self.keyed(t.port, key), key)[1], 4)
        it.wait_until(lambda: self.record(key).get("backend"), 5, what="the session in Redis")


if __name__ == "__main__":
    it.main()
