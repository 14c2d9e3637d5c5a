"""Failover end to end: an instance killed under load loses its sessions to
the survivors within fall x interval, with their handoff state, and only
the requests in flight on it at that instant may fail; passive checks take
a dead instance out on their own; with every instance down the bindings
stay and requests get 503 until the instances are back; the backend sees
the epoch, moved-from and state headers of a move exactly once; and a
backend that comes back takes new sessions but never its old ones."""

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

# Scenario 1 runs at the timing the design names; the others faster.
LOAD_INTERVAL = 0.5
LOAD_FALL = 2
LOAD_HEALTH = {"interval": "500ms", "timeout": "300ms", "rise": 2, "fall": LOAD_FALL}
LOAD_SECONDS = 6.0
KILL_AT = 1.5
CLIENTS = 4

INTERVAL = 0.2
TIMEOUT = 0.1
RISE = 2
FALL = 2
SLACK = 1.0
FAST_HEALTH = {"interval": "200ms", "timeout": "100ms", "rise": RISE, "fall": FALL}
DOWN_WITHIN = FALL * INTERVAL + TIMEOUT + SLACK
UP_WITHIN = RISE * INTERVAL + TIMEOUT + SLACK

PASSIVE = 2
T_ORIGIN = time.monotonic()  # origin of the times printed for a failure


def body_kv(r):
    """(instance, session, count) as the instance reported them."""
    kv = it.parse_kv(r.text())
    return kv.get("instance"), kv.get("session"), int(kv.get("count", "-1"))


def b64_count(n):
    return base64.b64encode(b"count=%d" % n).decode()


class PoolAt(it.FnPool):
    """fnpool started on chosen ports (those of instances that died), with
    a PID file of its own so the old pool's file cannot be mistaken for it."""

    def __init__(self, workdir, base, n, first, prefix="fn-"):
        self.n = n
        self.first = first
        self.prefix = prefix
        self.base = base
        self.pidfile = os.path.join(workdir, "fnpool-%d-again-%d.pids" % (base, time.monotonic_ns()))
        self.logpath = self.pidfile[:-5] + ".log"
        self.names = ["%s%d" % (prefix, first + i) for i in range(n)]
        self.ports = {name: base + i for i, name in enumerate(self.names)}
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [it.FNPOOL, "-n", str(n), "-p", str(base), "-f", self.pidfile,
             "--first", str(first), "--prefix", prefix],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        it._live_pids.add(self.proc.pid)
        self.pids = {}
        try:
            it.wait_until(self._pidfile_complete, 10, what="fnpool pid file %s" % self.pidfile)
            for name, port in self.ports.items():
                it.wait_until(lambda p=port: it.port_accepts(p), 10, what="fnpool %s on %d" % (name, port))
        except AssertionError:
            self.stop()
            raise
        self.overhead = self._calibrate()


class Rec:
    """One request of the load loop, as the client saw it."""
    __slots__ = ("key", "sent", "done", "status", "instance", "count", "error", "state_leak")

    def __init__(self, key, sent):
        self.key = key
        self.sent = sent
        self.done = None
        self.status = None  # None: connection error
        self.instance = None
        self.count = None
        self.error = None
        self.state_leak = False

    def ok(self):
        return self.status == 200

    def __repr__(self):
        return "<%s %.3fs..%.3fs %s %s count=%s %s>" % (
            self.key, self.sent - T_ORIGIN, (self.done or T_ORIGIN) - T_ORIGIN, self.status, self.instance,
            self.count, self.error or "")


class Failover(it.TetherTestCase):
    def setUp(self):
        self.tag = os.urandom(4).hex()

    def keyed(self, key, path="/", conn=None, timeout=10.0):
        c = conn or it.Conn(self.port, timeout=timeout)
        try:
            return c.get(path, [("x-fc-session-id", key)], timeout=timeout)
        finally:
            if conn is None:
                c.close()

    def assertServed(self, r, key, instance=None, count=None, not_on=None):
        self.assertEqual(r.status, 200, r)
        inst, sess, n = body_kv(r)
        self.assertEqual(inst, r.instance, r)
        self.assertEqual(sess, key, r)
        if instance is not None:
            self.assertEqual(r.instance, instance, "session %s is not on %s: %r" % (key, instance, r))
        if not_on is not None:
            self.assertNotEqual(r.instance, not_on, "session %s still on %s" % (key, not_on))
        if count is not None:
            self.assertEqual(n, count, "session %s: %r" % (key, r))
        self.assertEqual(r.header_all("x-fc-session-state"), [], r)
        return n

    def log_count(self, fragment):
        return sum(1 for line in self.tether.stderr_text().splitlines() if fragment in line)

    def wait_logged(self, fragment, timeout, more_than=0):
        it.wait_until(lambda: self.log_count(fragment) > more_than, timeout,
                      what="%r in tetherd's log" % fragment)

    def place(self, keys, conn=None, requests=1):
        """Each key, `requests` times: {key: (instance, last count)}."""
        c = conn or self.conn()
        out = {}
        for key in keys:
            for i in range(requests):
                r = self.keyed(key, conn=c)
                self.assertServed(r, key, out.get(key, (None,))[0], i + 1)
                out[key] = (r.instance, i + 1)
        return out

    # ---------------------------------------------------------- scenario 1

    def _load_client(self, keys, stop_at, out):
        conn = None
        i = 0
        for _ in range(10 ** 6):
            if time.monotonic() >= stop_at:
                break
            key = keys[i % len(keys)]
            i += 1
            rec = Rec(key, time.monotonic())
            try:
                if conn is None:
                    conn = it.Conn(self.port, timeout=5.0)
                r = conn.get("/", [("x-fc-session-id", key)], timeout=5.0)
                rec.done = time.monotonic()
                rec.status = r.status
                rec.instance = r.instance
                rec.state_leak = bool(r.header_all("x-fc-session-state"))
                if r.status == 200:
                    _, sess, rec.count = body_kv(r)
                    if sess != key:
                        rec.error = "answered for session %r" % sess
                        rec.status = -1
                if r.has_token("connection", "close"):
                    conn.close()
                    conn = None
            except (OSError, it.Closed, AssertionError, ValueError) as e:
                rec.done = time.monotonic()
                rec.error = repr(e)[:120]
                if conn is not None:
                    conn.close()
                conn = None
            out.append(rec)
        if conn is not None:
            conn.close()

    def test_failover_under_load(self):
        pool = self.start_pool(4)
        self.start_tether(pool, health=LOAD_HEALTH, retries=1)
        keys = ["s-%03d" % i for i in range(200)]
        home = {k: v[0] for k, v in self.place(keys, requests=3).items()}
        victim = pool.names[1]
        moved = [k for k in keys if home[k] == victim]
        stay = [k for k in keys if home[k] != victim]
        self.assertTrue(moved, "no session on %s to begin with: %r" % (victim, home))

        # each client owns a quarter of the keys, so a session's requests are
        # sequential and its counter must rise by exactly one per request
        recs = [[] for _ in range(CLIENTS)]
        start = time.monotonic()
        stop_at = start + LOAD_SECONDS
        threads = [threading.Thread(target=self._load_client, args=(keys[i::CLIENTS], stop_at, recs[i]),
                                    daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(max(0.0, start + KILL_AT - time.monotonic()))
        t_kill0 = time.monotonic()
        os.kill(pool.pids[victim], signal.SIGKILL)
        t_kill1 = time.monotonic()
        for t in threads:
            t.join(timeout=LOAD_SECONDS + 15)
        self.assertFalse(any(t.is_alive() for t in threads), "a load client hung")
        it.wait_until(lambda: not it.port_accepts(pool.ports[victim]), 5, what="%s gone" % victim)

        by_key = {k: [] for k in keys}
        for part in recs:
            for r in part:
                by_key[r.key].append(r)
        every = [r for part in recs for r in part]
        self.assertGreater(len(every), 4 * len(keys), "too little load to say anything")
        self.assertFalse([r for r in every if r.state_leak], "x-fc-session-state reached the client")

        # (b) only what was in flight on the victim at the kill may fail
        failed = [r for r in every if not r.ok()]
        in_flight = [r for r in every if home[r.key] == victim and r.sent < t_kill1 and r.done > t_kill0]
        sys.stderr.write("\nfailover under load: %d requests, %d failed, %d in flight on %s at the kill\n"
                         % (len(every), len(failed), len(in_flight), victim))
        for r in failed[:20]:
            sys.stderr.write("  failed: %r (kill at %.3fs)\n" % (r, t_kill0 - T_ORIGIN))

        def check_counts(key, seq, first_move=None):
            """Each answer counts one more than the previous one, or up to
            one more per failed request between them (it may have counted)."""
            prev = 3
            lost = 0
            for r in seq:
                if not r.ok():
                    lost += 1
                    continue
                if r is first_move:
                    ok = r.count in (prev + 1, prev + 2)
                else:
                    ok = prev + 1 <= r.count <= prev + 1 + lost
                self.assertTrue(ok, "session %s: count %d after %d (%d lost between): %r"
                                % (key, r.count, prev, lost, seq))
                prev = r.count
                lost = 0

        # (d) sessions of the survivors never change instance
        for key in stay:
            seq = by_key[key]
            self.assertTrue(seq, "session %s got no request in the loop" % key)
            wrong = [r for r in seq if r.ok() and r.instance != home[key]]
            self.assertFalse(wrong, "session %s of %s moved: %r" % (key, home[key], wrong))
            check_counts(key, seq)

        # (a) and (c) for the victim's sessions
        limit = LOAD_FALL * LOAD_INTERVAL + 1.0
        for key in moved:
            seq = by_key[key]
            after = [r for r in seq if r.done > t_kill0]
            self.assertTrue(after, "session %s got no request after the kill" % key)
            first_after = max(t_kill0, after[0].sent)
            served = [r for r in after if r.ok() and r.instance != victim]
            self.assertTrue(served, "session %s never served after the kill: %r" % (key, after))
            first = served[0]
            self.assertLessEqual(first.done - first_after, limit,
                                 "session %s first served elsewhere %.2fs after its first request past "
                                 "the kill (limit %.1fs): %r" % (key, first.done - first_after, limit, after))
            late = [r for r in seq if r.ok() and r.done > first.done and r.instance != first.instance]
            self.assertFalse(late, "session %s moved to %s, then elsewhere: %r" % (key, first.instance, late))
            before = [r for r in seq if r.ok() and r.instance == victim]
            if before:
                last_seen = before[-1].count
            else:
                last_seen = 3
            self.assertIn(first.count, (last_seen + 1, last_seen + 2),
                          "session %s: %d on %s, then %d on %s: handoff lost"
                          % (key, last_seen, victim, first.count, first.instance))
            check_counts(key, seq, first)

        # (b), last, so that a failure here still shows (a), (c) and (d) held
        self.assertLessEqual(len(failed), len(in_flight),
                             "%d requests failed, %d were in flight on %s at the kill: %r"
                             % (len(failed), len(in_flight), victim, failed[:10]))
        self.assertLessEqual(len(in_flight), CLIENTS)
        self.assertAlive()

    # ---------------------------------------------------------- scenario 2

    def test_passive_ejection(self):
        pool = self.start_pool(4)
        self.start_tether(pool, health={"interval": "60s", "passive_failures": PASSIVE})
        keys = ["p-%s-%03d" % (self.tag, i) for i in range(60)]
        placed = self.place(keys)
        victim = pool.names[2]
        theirs = [k for k in keys if placed[k][0] == victim]
        self.assertGreater(len(theirs), PASSIVE, "too few sessions on %s: %r" % (victim, placed))
        pool.kill(victim)

        # at most passive_failures requests find the instance dead...
        for key in theirs[:PASSIVE]:
            r = self.keyed(key)
            self.assertServed(r, key, count=2, not_on=victim)
        # ...then it is out: no new session lands on it
        per = {}
        for i in range(100):
            key = "pn-%s-%03d" % (self.tag, i)
            r = self.keyed(key)
            self.assertServed(r, key, count=1)
            per[r.instance] = per.get(r.instance, 0) + 1
        self.assertNotIn(victim, per, "new sessions placed on dead %s: %r" % (victim, per))
        # every session of the victim is served elsewhere, resumed, and stays
        for key in theirs:
            first = self.keyed(key)
            n = self.assertServed(first, key, not_on=victim)
            self.assertEqual(n, 3 if key in theirs[:PASSIVE] else 2, first)
            self.assertServed(self.keyed(key), key, first.instance, n + 1)
        for key in keys:
            if key not in theirs:
                self.assertServed(self.keyed(key), key, placed[key][0], 2)
        self.wait_logged("backend %s is down: passive:" % victim, 2)
        self.assertAlive()

    # ---------------------------------------------------------- scenario 3

    def test_all_down_then_back(self):
        pool = self.start_pool(2)
        self.start_tether(pool, health=FAST_HEALTH)
        keys = ["a-%s-%02d" % (self.tag, i) for i in range(30)]
        home = {k: v[0] for k, v in self.place(keys).items()}
        self.assertEqual(set(home.values()), set(pool.names), home)
        for name in pool.names:
            pool.kill(name)

        # The checker sees them go one after the other: the first one's
        # sessions may still move to the second; the second's have nowhere
        # to go and keep their binding.
        downs = []

        def both_down():
            downs[:] = []
            for line in self.tether.stderr_text().splitlines():
                m = re.search(r"backend (\S+) is down: .*; (\d+) sessions? moved", line)
                if m:
                    downs.append((m.group(1), int(m.group(2))))
            return len(downs) >= 2
        it.wait_until(both_down, DOWN_WITHIN + 2, what="both instances marked down")
        self.assertEqual(sorted(n for n, _ in downs), sorted(pool.names), downs)
        (first_down, n_moved), (last_down, n_stranded) = downs
        self.assertEqual(n_stranded, 0, "%s went down last, yet %d sessions moved: %r"
                         % (last_down, n_stranded, downs))

        for rnd in range(2):
            for key in keys:
                t0 = time.monotonic()
                r = self.keyed(key, timeout=5.0)
                took = time.monotonic() - t0
                self.assertEqual(r.status, 503, r)
                self.assertIsNotNone(r.header("retry-after"), "503 without Retry-After: %r" % r)
                self.assertLess(took, 2.0, "503 for %s took %.2fs" % (key, took))

        again = PoolAt(self.workdir, pool.base, 2, 1)
        self._pools.append(again)

        # wait until both take new sessions: both are up again
        seen = set()

        def both_up():
            for i in range(8):
                r = self.keyed("an-%s-%d" % (self.tag, time.monotonic_ns()), timeout=5.0)
                if r.status == 200:
                    seen.add(r.instance)
            return seen >= set(pool.names)
        it.wait_until(both_up, UP_WITHIN + 4, interval=0.1, what="both instances up again")

        # The bindings were kept while all were down: a session that never
        # moved (epoch 1) is back on its own instance; only the first one
        # down can have lost sessions, once, to the other.
        moved = 0
        for key in keys:
            r = self.keyed(key, "/echo")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header_all("x-fc-session-state"), [], r)
            _, hdrs = it.parse_echo(r.body)
            epoch = it.echo_values(hdrs, "x-fc-session-epoch")
            moved_from = it.echo_values(hdrs, "x-fc-session-moved-from")
            if epoch == ["1"]:
                self.assertEqual(r.instance, home[key], "session %s of %s came back on %s: %r"
                                 % (key, home[key], r.instance, hdrs))
                self.assertEqual(moved_from, [], hdrs)
            else:
                moved += 1
                self.assertEqual((home[key], r.instance, epoch, moved_from),
                                 (first_down, last_down, ["2"], [first_down]),
                                 "session %s of %s: %r (downs %r)" % (key, home[key], hdrs, downs))
        self.assertEqual(moved, n_moved, downs)
        self.assertAlive()

    # ---------------------------------------------------------- scenario 4

    def test_epoch_and_moved_from_at_the_backend(self):
        pool = self.start_pool(3)
        self.start_tether(pool, health=FAST_HEALTH)
        key = "e-%s" % self.tag
        c = self.conn()

        def echo():
            r = self.keyed(key, "/echo", conn=c)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header_all("x-fc-session-state"), [], "state leaked to the client: %r" % r)
            _, hdrs = it.parse_echo(r.body)
            return r, {n: it.echo_values(hdrs, n) for n in
                       ("x-fc-session-epoch", "x-fc-session-moved-from", "x-fc-session-state",
                        "x-fc-session-id")}

        r, h = echo()
        old = r.instance
        self.assertEqual(h, {"x-fc-session-epoch": ["1"], "x-fc-session-moved-from": [],
                             "x-fc-session-state": [], "x-fc-session-id": [key]})
        r, h = echo()
        self.assertEqual(r.instance, old)
        self.assertEqual(h["x-fc-session-epoch"], ["1"])
        self.assertEqual(h["x-fc-session-moved-from"], [])

        pool.kill(old)
        self.wait_logged("backend %s is down" % old, DOWN_WITHIN + 2)
        r, h = echo()
        new = r.instance
        self.assertNotEqual(new, old)
        self.assertEqual(h, {"x-fc-session-epoch": ["2"], "x-fc-session-moved-from": [old],
                             "x-fc-session-state": [b64_count(2)], "x-fc-session-id": [key]})
        # the new instance answered 200: the handoff is complete
        r, h = echo()
        self.assertEqual(r.instance, new)
        self.assertEqual(h, {"x-fc-session-epoch": ["2"], "x-fc-session-moved-from": [],
                             "x-fc-session-state": [], "x-fc-session-id": [key]})
        self.assertServed(self.keyed(key, conn=c), key, new, 5)
        self.assertAlive()

    # ---------------------------------------------------------- scenario 5

    def test_sessions_never_move_back(self):
        pool = self.start_pool(4)
        self.start_tether(pool, health=FAST_HEALTH)
        keys = ["b-%s-%03d" % (self.tag, i) for i in range(100)]
        c = self.conn()
        placed = self.place(keys, conn=c)
        victim = pool.names[2]
        self.assertIn(victim, [v[0] for v in placed.values()])
        ups = self.log_count("backend %s is up" % victim)
        pool.kill(victim)
        self.wait_logged("backend %s is down" % victim, DOWN_WITHIN + 2)
        home = {}
        for key in keys:
            r = self.keyed(key, conn=c)
            if placed[key][0] == victim:
                self.assertServed(r, key, count=2, not_on=victim)
            else:
                self.assertServed(r, key, placed[key][0], 2)
            home[key] = r.instance

        again = PoolAt(self.workdir, pool.ports[victim], 1, pool.names.index(victim) + 1)
        self._pools.append(again)
        self.assertEqual(again.names, [victim])
        self.wait_logged("backend %s is up" % victim, UP_WITHIN + 2, more_than=ups)

        for rnd in range(2):
            for key in keys:
                self.assertServed(self.keyed(key, conn=c), key, home[key], 3 + rnd)
        per = {}
        for i in range(100):
            key = "bn-%s-%03d" % (self.tag, i)
            r = self.keyed(key, conn=c)
            self.assertServed(r, key, count=1)
            per[r.instance] = per.get(r.instance, 0) + 1
        self.assertGreater(per.get(victim, 0), 0, "%s is back but takes no new session: %r" % (victim, per))
        self.assertAlive()


if __name__ == "__main__":
    it.main()
