"""Restart with the memory store: a snapshot carries every session across a
stop and start, even when the new configuration would place keys elsewhere;
a damaged snapshot is reported and ignored, never trusted."""
import os
import signal
import stat

import tether_it as it


class Restart(it.TetherTestCase):
    def setUp(self):
        super().setUp()
        self.pool = self.start_pool(4)
        self.snap = os.path.join(self.workdir, "sessions.snap")
        self.keys = ["rs-%d-%02d" % (os.getpid(), i) for i in range(40)]

    def start(self, heavy_first=False):
        backends = self.backends_of(self.pool)
        if heavy_first:
            # A different ring: fresh placement would move some keys.
            backends[0] = dict(backends[0], weight=6)
        return self.start_tether(backends=backends,
                                 state={"snapshot": self.snap, "snapshot_interval": "1s"})

    def homes(self):
        c = self.conn()
        out = {}
        for k in self.keys:
            r = c.get("/", [("x-fc-session-id", k)])
            self.assertEqual(r.status, 200, r)
            out[k] = r.instance
        return out

    def stop(self, t):
        t.signal(signal.SIGTERM)
        self.assertEqual(t.wait(10), 0, t.stderr_text())

    def test_sessions_return_to_their_instance(self):
        t = self.start()
        before = self.homes()
        self.stop(t)
        st = os.stat(self.snap)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        t = self.start(heavy_first=True)
        self.assertEqual(self.homes(), before)
        self.assertIn("40 sessions loaded", t.stderr_text())

    def test_damaged_snapshot_is_ignored(self):
        t = self.start()
        before = self.homes()
        self.stop(t)
        with open(self.snap, "r+b") as f:
            f.seek(30)
            b = f.read(1)
            f.seek(30)
            f.write(bytes([b[0] ^ 0x5A]))
        t = self.start(heavy_first=True)
        after = self.homes()
        self.assertIn("ignored: checksum mismatch", t.stderr_text())
        # Started empty: the heavier ring takes some keys elsewhere, which
        # also shows the test above could fail.
        self.assertGreater(sum(1 for k in self.keys if after[k] != before[k]), 0)

    def test_truncated_and_foreign_files(self):
        for content, why in ((b"TETHSNP1\x01", "too short"),
                             (b"not a snapshot at all, just forty-odd bytes of text", "not a tether snapshot")):
            with open(self.snap, "wb") as f:
                f.write(content)
            t = self.start()
            self.homes()
            self.assertIn(why, t.stderr_text())
            self.stop(t)


if __name__ == "__main__":
    it.main()
