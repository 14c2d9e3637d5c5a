"""Active health checks end to end: an instance whose /healthz turns 503,
a backend that accepts and never answers, one that answers garbage, and
one that is killed are all marked down within fall x interval + timeout,
after which no new session is placed on them; an instance that recovers
takes new sessions again after rise checks. Passive checks are set out of
reach (passive_failures: 1000) so every verdict here is the checker's."""

import os
import signal
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

INTERVAL = 0.2
TIMEOUT = 0.1
RISE = 2
FALL = 2
SLACK = 0.6
HEALTH = {"path": "/healthz", "interval": "200ms", "timeout": "100ms", "rise": RISE, "fall": FALL,
          "passive_failures": 1000}
DOWN_WITHIN = FALL * INTERVAL + TIMEOUT + SLACK
UP_WITHIN = RISE * INTERVAL + TIMEOUT + SLACK


class RawBackend:
    """A listener on 127.0.0.1 that plays a broken backend: `reply` None
    accepts and never answers, else it reads a request head and answers
    reply, then closes. Every accepted connection's first bytes are kept."""

    def __init__(self, reply=None):
        self.reply = reply
        self.port = it.free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((it.HOST, self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.stopping = False
        self.lock = threading.Lock()
        self.requests = []  # first bytes of every connection
        self.held = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for _ in range(10 ** 7):
            if self.stopping:
                return
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.reply is None:
                self.held.append(c)
                continue
            c.settimeout(1.0)
            data = b""
            try:
                for _ in range(64):
                    if b"\r\n\r\n" in data:
                        break
                    d = c.recv(4096)
                    if not d:
                        break
                    data += d
                c.sendall(self.reply)
            except OSError:
                pass
            with self.lock:
                self.requests.append(data)
            c.close()

    def silent_peeks(self):
        """First bytes of each held (never answered) connection, as far as sent."""
        out = []
        for c in self.held:
            c.setblocking(False)
            try:
                out.append(c.recv(4096, socket.MSG_PEEK))
            except OSError:
                out.append(b"")
        return out

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()
        for c in self.held:
            c.close()


class Health(it.TetherTestCase):
    def setUp(self):
        self.tag = os.urandom(4).hex()
        self.n = 0

    def raw_backend(self, reply=None):
        b = RawBackend(reply)
        self.addCleanup(b.stop)
        return b

    def start(self, pool, extra=()):
        backends = self.backends_of(pool) + list(extra)
        t = self.start_tether(backends=backends, health=HEALTH)
        return t, time.monotonic()

    def keyed(self, key, timeout=5.0):
        with it.Conn(self.port, timeout=timeout) as c:
            return c.get("/", [("x-fc-session-id", key)], timeout=timeout)

    def new_sessions(self, n, timeout=5.0):
        """n new keys, one request each: {instance: count}."""
        per = {}
        for _ in range(n):
            self.n += 1
            r = self.keyed("h-%s-%05d" % (self.tag, self.n), timeout)
            self.assertEqual(r.status, 200, r)
            per[r.instance] = per.get(r.instance, 0) + 1
        return per

    def sleep_until(self, t0, seconds):
        left = t0 + seconds - time.monotonic()
        if left > 0:
            time.sleep(left)

    def assertDownLogged(self, name, fragment):
        """The transition names the backend and why the checker failed it."""
        def logged():
            for line in self.tether.stderr_text().splitlines():
                if name in line and "down" in line and "active: " in line and fragment in line:
                    return True
            return False
        it.wait_until(logged, 2, what="%s marked down (%r) in the log" % (name, fragment))

    # ---------------------------------------------------------- scenario 1

    def test_failing_healthz_takes_instance_out_and_back(self):
        pool = self.start_pool(4)
        self.start(pool)
        victim = pool.names[1]
        # sessions first, so the moves below have something to keep apart
        homes = {}
        for i in range(60):
            key = "old-%s-%03d" % (self.tag, i)
            r = self.keyed(key)
            self.assertEqual(r.status, 200, r)
            homes[key] = r.instance
        self.assertIn(victim, homes.values(), "no session on %s to begin with" % victim)

        os.kill(pool.pids[victim], signal.SIGUSR1)
        t0 = time.monotonic()
        self.sleep_until(t0, DOWN_WITHIN)
        per = self.new_sessions(200)
        self.assertNotIn(victim, per, "new sessions still placed on %s: %r" % (victim, per))
        self.assertEqual(sum(per.values()), 200)
        self.assertDownLogged(victim, "GET /healthz: 503")

        for key, home in homes.items():
            r = self.keyed(key)
            self.assertEqual(r.status, 200, r)
            if home == victim:
                # moved away with its sessions, never left on a down backend
                self.assertNotEqual(r.instance, victim, "session %s stayed on %s" % (key, victim))
            else:
                self.assertEqual(r.instance, home, "session %s of a healthy instance moved" % key)

        os.kill(pool.pids[victim], signal.SIGUSR1)
        t1 = time.monotonic()
        self.sleep_until(t1, UP_WITHIN)
        per = self.new_sessions(200)
        self.assertGreater(per.get(victim, 0), 0, "%s takes no new session: %r" % (victim, per))
        self.assertAlive()

    # ---------------------------------------------------------- scenario 2

    def test_backend_that_never_answers_goes_down(self):
        pool = self.start_pool(3)
        mute = self.raw_backend(None)
        _, t0 = self.start(pool, [{"name": "mute", "address": "%s:%d" % (it.HOST, mute.port)}])
        self.sleep_until(t0, DOWN_WITHIN)
        per = self.new_sessions(200, timeout=3.0)
        self.assertNotIn("mute", per)
        self.assertEqual(sum(per.get(n, 0) for n in pool.names), 200, per)
        # every connection it got was a check, sent as specified
        peeks = mute.silent_peeks()
        self.assertGreaterEqual(len(peeks), FALL)
        for p in peeks:
            self.assertTrue(p.startswith(b"GET /healthz HTTP/1.1\r\n"), p)
            self.assertIn(b"\r\nHost: %s:%d\r\n" % (it.HOST.encode(), mute.port), p)
            self.assertIn(b"\r\nUser-Agent: tether-health\r\n", p)
            self.assertIn(b"\r\nConnection: close\r\n", p)
        self.assertDownLogged("mute", "timeout after 100ms")
        self.assertAlive()

    # ---------------------------------------------------------- scenario 3

    def test_backend_answering_garbage_goes_down(self):
        pool = self.start_pool(3)
        junk = self.raw_backend(b"hello\r\n\r\n")
        _, t0 = self.start(pool, [{"name": "junk", "address": "%s:%d" % (it.HOST, junk.port)}])
        self.sleep_until(t0, DOWN_WITHIN)
        per = self.new_sessions(200)
        self.assertNotIn("junk", per)
        self.assertEqual(sum(per.get(n, 0) for n in pool.names), 200, per)
        with junk.lock:
            seen = list(junk.requests)
        self.assertGreaterEqual(len(seen), FALL)
        self.assertTrue(all(s.startswith(b"GET /healthz HTTP/1.1\r\n") for s in seen), seen)
        self.assertDownLogged("junk", "invalid response head")
        self.assertAlive()

    # ---------------------------------------------------------- scenario 4

    def test_killed_instance_goes_down(self):
        pool = self.start_pool(4)
        self.start(pool)
        victim = pool.names[2]
        per = self.new_sessions(100)
        self.assertIn(victim, per)
        t0 = time.monotonic()
        pool.kill(victim)
        self.sleep_until(t0, DOWN_WITHIN)
        per = self.new_sessions(200)
        self.assertNotIn(victim, per)
        self.assertEqual(sum(per.values()), 200)
        self.assertDownLogged(victim, "connect: refused")
        self.assertAlive()


if __name__ == "__main__":
    it.main()
