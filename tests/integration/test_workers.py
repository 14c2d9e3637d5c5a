"""workers: 2 — concurrent connections over both event loops keep every
session on one instance."""

import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

NCONN = 20
PER_CONN = 10
NKEYS = 40


class Workers(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(4)
        self.start_tether(self.pool, workers=2)
        self.tag = os.urandom(4).hex()

    def test_concurrent_connections_keep_affinity(self):
        def client(i, barrier):
            out = []
            with it.Conn(self.port) as c:
                barrier.wait()
                for j in range(PER_CONN):
                    key = "w-%s-%d" % (self.tag, (i * 3 + j * 7) % NKEYS)
                    r = c.get("/", [("x-fc-session-id", key)])
                    out.append((key, r.status, r.instance, it.parse_kv(r.text()).get("count")))
            return out

        results = self.run_threads(client, NCONN, timeout=30, barrier=True)
        homes = {}
        counts = {}
        total = 0
        for out in results:
            for key, status, inst, count in out:
                total += 1
                self.assertEqual(status, 200)
                homes.setdefault(key, set()).add(inst)
                counts.setdefault(key, []).append(int(count))
        self.assertEqual(total, NCONN * PER_CONN)
        split = {k: v for k, v in homes.items() if len(v) > 1}
        self.assertEqual(split, {}, "sessions served by more than one instance")
        # each key's counter on its one instance saw every request of it
        for key, cs in counts.items():
            self.assertEqual(sorted(cs), list(range(1, len(cs) + 1)), key)
        self.assertGreaterEqual(len({next(iter(v)) for v in homes.values()}), 3)
        self.assertAlive()

    def test_same_new_key_from_many_connections(self):
        # 20 connections ask for the same new key at the same moment; the
        # check-then-insert is atomic across workers, so one instance wins
        for round_ in range(3):
            key = "race-%s-%d" % (self.tag, round_)

            def client(i, barrier):
                with it.Conn(self.port) as c:
                    barrier.wait()
                    r = c.get("/", [("x-fc-session-id", key)])
                    return r.status, r.instance

            results = self.run_threads(client, NCONN, timeout=30, barrier=True)
            self.assertEqual({s for s, _ in results}, {200})
            self.assertEqual(len({i for _, i in results}), 1, "key %s split over %s" % (key, results))


if __name__ == "__main__":
    it.main()
