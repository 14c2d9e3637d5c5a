"""Hot reload (SIGHUP and POST /api/v1/reload), drain_timeout, SIGUSR1 and
the metrics format, against the real tetherd and fnpool:
- an unchanged listener keeps its socket: an open keep-alive connection
  goes on, and connections queued while tetherd was stopped are answered;
- listeners are added and removed; settings take effect; restart-only keys
  are reported and keep their running values;
- a backend whose address changes is removed and added (its sessions move);
- a bad file is reported with file:line and the running config is kept;
- a draining backend takes no new session and its sessions move after
  drain_timeout;
- SIGUSR1 reopens the access log;
- /metrics parses as the Prometheus text format (promtool too, when
  installed), and its counters move with traffic."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

TOKEN = "reload-test-token"


class ReloadTest(it.TetherTestCase):

    def setUp(self):
        self.pool = self.start_pool(4)
        self.admin_port = it.free_port()
        self.token_file = os.path.join(self.workdir, "admin.token")
        with open(self.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)

    def start(self, backends=None, **over):
        cfg = {"admin": {"listen": "%s:%d" % (it.HOST, self.admin_port),
                         "token_file": self.token_file},
               "health": {"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 2}}
        cfg = it.deep_merge(cfg, over)
        t = self.start_tether(self.pool, backends=backends, **cfg)
        it.wait_until(lambda: it.port_accepts(self.admin_port), 5, what="admin API")
        return t

    def api(self, method, path, body=None, token=TOKEN):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://%s:%d%s" % (it.HOST, self.admin_port, path),
                                     data=data, method=method)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "")
                return r.status, (json.loads(raw) if "json" in ctype else raw.decode())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def rewrite(self, cfg):
        """Write cfg as the running tetherd's file (what a reload reads)."""
        with open(self.tether.cfgpath, "w") as f:
            f.write(it.to_yaml(cfg) + "\n")

    def hup_and_wait(self, marker_count=None):
        before = self.tether.stderr_text().count("SIGHUP: configuration")
        self.tether.signal(signal.SIGHUP)
        self.tether.signalled = False
        it.wait_until(lambda: self.tether.stderr_text().count("SIGHUP: configuration") > before,
                      5, what="the reload to be logged")
        return self.tether.stderr_text()

    def get(self, key, port=None):
        with self.conn(port=port) as c:
            r = c.get("/", headers=[("x-fc-session-id", key)])
            return r

    # ------------------------------------------------------------------

    def test_listener_kept_added_removed(self):
        self.start()
        cfg = dict(self.tether.config)
        keep = self.conn()
        r = keep.get("/", headers=[("x-fc-session-id", "k1")])
        self.assertEqual(r.status, 200)

        extra = it.free_port()
        cfg["listen"] = cfg["listen"] + [{"address": "%s:%d" % (it.HOST, extra)}]
        self.rewrite(cfg)
        log = self.hup_and_wait()
        self.assertIn("listener %s:%d added" % (it.HOST, extra), log)
        # The connection opened before the reload goes on, on the same socket.
        r = keep.get("/", headers=[("x-fc-session-id", "k1")])
        self.assertEqual(r.status, 200)
        self.assertEqual(self.get("k2", port=extra).status, 200)

        cfg["listen"] = cfg["listen"][:1]
        self.rewrite(cfg)
        log = self.hup_and_wait()
        self.assertIn("listener %s:%d removed" % (it.HOST, extra), log)
        it.wait_until(lambda: not it.port_accepts(extra), 3, what="the removed listener to close")
        r = keep.get("/", headers=[("x-fc-session-id", "k1")])
        self.assertEqual(r.status, 200)

    def test_queued_connections_survive(self):
        """Connections the kernel accepted while tetherd could not (it is
        stopped) wait in the listener's queue; a reload keeps that socket,
        so every one of them is answered."""
        self.start()
        cfg = dict(self.tether.config)
        cfg["timeouts"] = dict(cfg["timeouts"], client_idle="30s")
        self.rewrite(cfg)
        os.kill(self.tether.pid, signal.SIGSTOP)
        conns = []
        try:
            for i in range(20):
                c = self.conn()
                c.send(it.build_request("GET", "/", [("x-fc-session-id", "q%d" % i)]))
                conns.append(c)
            os.kill(self.tether.pid, signal.SIGHUP)
        finally:
            os.kill(self.tether.pid, signal.SIGCONT)
        for c in conns:
            r = c.read_response()
            self.assertEqual(r.status, 200)
        it.wait_until(lambda: "SIGHUP: configuration reloaded" in self.tether.stderr_text(), 5,
                      what="the reload")

    def test_settings_and_restart_only(self):
        self.start()
        cfg = dict(self.tether.config)
        cfg["timeouts"] = dict(cfg["timeouts"], client_idle="1s")
        cfg["workers"] = 2
        self.rewrite(cfg)
        status, rep = self.api("POST", "/api/v1/reload")
        self.assertEqual(status, 200, rep)
        self.assertTrue(any(s.startswith("workers") for s in rep["restart_required"]), rep)
        status, st = self.api("GET", "/api/v1/status")
        self.assertEqual(st["workers"], 1)  # the running value
        # client_idle is now 1s: an idle keep-alive connection is closed soon.
        c = self.conn()
        r = c.get("/", headers=[("x-fc-session-id", "s1")])
        t0 = time.monotonic()
        self.assertTrue(c.closed_within(4.0), "idle connection kept past the new client_idle")
        self.assertLess(time.monotonic() - t0, 3.5)

    def test_address_change_moves_sessions(self):
        self.start()
        keys = ["a%d" % i for i in range(40)]
        home = {k: self.get(k).instance for k in keys}
        on1 = [k for k in keys if home[k] == "fn-1"]
        self.assertTrue(on1, "no session landed on fn-1")
        cfg = dict(self.tether.config)
        # fn-1 now points at fn-4's port: a removal plus an addition.
        cfg["backends"] = [dict(b) for b in cfg["backends"]]
        cfg["backends"][0]["address"] = "%s:%d" % (it.HOST, self.pool.ports["fn-4"])
        cfg["backends"] = cfg["backends"][:1] + cfg["backends"][1:3]
        self.rewrite(cfg)
        status, rep = self.api("POST", "/api/v1/reload")
        self.assertEqual(status, 200, rep)
        self.assertTrue(any("fn-1: address" in s for s in rep["changes"]), rep)
        self.assertTrue(any("fn-4 removed" in s for s in rep["changes"]), rep)
        for k in keys:
            status, s = self.api("GET", "/api/v1/sessions/" + k)
            self.assertEqual(status, 200)
            if k in on1 or home[k] == "fn-4":
                self.assertEqual(s["epoch"], 2, s)
            else:
                self.assertEqual(s["epoch"], 1, s)
                self.assertEqual(s["backend"], home[k])

    def test_bad_reload_keeps_running(self):
        self.start()
        self.assertEqual(self.get("b1").status, 200)
        with open(self.tether.cfgpath, "a") as f:
            f.write("limits:\n  max_connections: lots\n")
        status, rep = self.api("POST", "/api/v1/reload")
        self.assertEqual(status, 400, rep)
        path = self.tether.cfgpath
        self.assertTrue(any(e.startswith(path + ":") and "max_connections" in e
                            for e in rep["errors"]), rep)
        self.assertTrue(re.match(r".*:\d+:\d+: ", rep["errors"][0]), rep)
        log = self.hup_and_wait()
        self.assertIn("SIGHUP: configuration not reloaded; the running one stays", log)
        self.assertEqual(self.get("b1").status, 200)
        self.assertAlive()

    def test_unusable_backend_address_changes_nothing(self):
        """A file naming a backend by a host name is refused whole (tether
        connects to addresses, it does not resolve), with file:line, and
        nothing of it is applied: the renamed backend keeps its sessions."""
        self.start()
        keys = ["h%d" % i for i in range(20)]
        for k in keys:
            self.assertEqual(self.get(k).status, 200)
        cfg = dict(self.tether.config)
        cfg["backends"] = [dict(b) for b in cfg["backends"]]
        cfg["backends"][0]["address"] = "fn1.invalid:%d" % self.pool.ports["fn-1"]
        cfg["backends"].append({"name": "fn-9", "address": "127.0.0.1:1"})
        self.rewrite(cfg)
        status, rep = self.api("POST", "/api/v1/reload")
        self.assertEqual(status, 400, rep)
        self.assertTrue(any("backends[0].address" in e and "resolve" in e for e in rep["errors"]),
                        rep)
        status, bs = self.api("GET", "/api/v1/backends")
        self.assertEqual([b["name"] for b in bs["backends"]], ["fn-1", "fn-2", "fn-3", "fn-4"])
        for k in keys:
            self.assertEqual(self.api("GET", "/api/v1/sessions/" + k)[1]["epoch"], 1)

    def test_runtime_backends_are_checked_and_adopted(self):
        """A backend added at run time is health-checked at once (a dead one
        goes down); a removed one is checked no more; a file that names a
        runtime backend at the same address adopts it (its sessions stay)."""
        self.start(health={"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 2})
        dead = it.free_port()
        status, b = self.api("POST", "/api/v1/backends",
                             {"name": "ghost", "address": "%s:%d" % (it.HOST, dead)})
        self.assertEqual(status, 201, b)
        it.wait_until(lambda: self.api("GET", "/api/v1/backends")[1]["backends"][-1]["state"]
                      == "down", 3, what="the dead runtime backend to go down")
        status, _ = self.api("DELETE", "/api/v1/backends/ghost")
        self.assertEqual(status, 200)
        time.sleep(0.8)
        before = self.tether.stderr_text().count("backend ghost")
        time.sleep(0.8)
        self.assertEqual(self.tether.stderr_text().count("backend ghost"), before,
                         "a removed backend is still being checked")

        # fn-4 leaves the file, comes back at run time, then the file names it again.
        cfg = dict(self.tether.config)
        full = [dict(b) for b in cfg["backends"]]
        cfg["backends"] = full[:3]
        self.rewrite(cfg)
        self.assertEqual(self.api("POST", "/api/v1/reload")[0], 200)
        status, _ = self.api("POST", "/api/v1/backends", {"name": "fn-4",
                                                          "address": full[3]["address"]})
        self.assertEqual(status, 201)
        # Sessions placed while fn-1..3 are drained land on fn-4.
        for name in ("fn-1", "fn-2", "fn-3"):
            self.assertEqual(self.api("POST", "/api/v1/backends/%s/drain" % name)[0], 200)
        keys = ["ad%d" % i for i in range(5)]
        for k in keys:
            self.assertEqual(self.get(k).instance, "fn-4")
        cfg["backends"] = full
        self.rewrite(cfg)
        status, rep = self.api("POST", "/api/v1/reload")
        self.assertEqual(status, 200, rep)
        self.assertTrue(any("fn-4: added at run time, now from the file" in c
                            for c in rep["changes"]), rep)
        for k in keys:
            s_ = self.api("GET", "/api/v1/sessions/" + k)[1]
            self.assertEqual((s_["backend"], s_["epoch"]), ("fn-4", 1), s_)
        origin = {b["name"]: b["origin"] for b in self.api("GET", "/api/v1/backends")[1]["backends"]}
        self.assertEqual(origin["fn-4"], "config")

    def test_admin_http_details(self):
        """405 carries Allow; HEAD works where GET does; a message quoting
        bytes that are not UTF-8 is still a JSON error."""
        self.start()
        url = "http://%s:%d" % (it.HOST, self.admin_port)
        auth = ("-H", "Authorization: Bearer " + TOKEN)
        out = it.curl("-i", "-X", "PUT", *auth, url + "/api/v1/status").stdout.decode()
        head, _, body = out.partition("\r\n\r\n")
        self.assertIn("405", head.split("\r\n")[0])
        self.assertRegex(head, r"(?im)^allow: GET, HEAD\r?$")
        self.assertIn("error", json.loads(body))
        out = it.curl("-I", *auth, url + "/api/v1/status").stdout.decode()
        self.assertIn("200", out.split("\r\n")[0])
        out = it.curl("-i", *auth, url + "/api/v1/backends/%FF").stdout.decode()
        head, _, body = out.partition("\r\n\r\n")
        self.assertIn("404", head.split("\r\n")[0])
        self.assertIn("unknown backend", json.loads(body)["error"])

    def test_drain_timeout_moves_sessions(self):
        self.start(drain_timeout="1s")
        keys = ["d%d" % i for i in range(40)]
        home = {k: self.get(k).instance for k in keys}
        on1 = [k for k in keys if home[k] == "fn-1"]
        self.assertTrue(on1)
        status, b = self.api("POST", "/api/v1/backends/fn-1/drain")
        self.assertEqual(status, 200)
        self.assertEqual(b["state"], "draining")
        # Existing sessions stay, new ones go elsewhere.
        self.assertEqual(self.get(on1[0]).instance, "fn-1")
        fresh = [self.get("new%d" % i).instance for i in range(30)]
        self.assertNotIn("fn-1", fresh)

        def moved():
            return all(self.api("GET", "/api/v1/sessions/" + k)[1]["backend"] != "fn-1"
                       for k in on1)
        it.wait_until(moved, 4, what="drained sessions to move after drain_timeout")
        r = self.get(on1[0])
        self.assertNotEqual(r.instance, "fn-1")

    def test_sigusr1_reopens_access_log(self):
        self.start()
        log = self.access_log
        self.assertEqual(self.get("u1").status, 200)
        it.wait_until(lambda: os.path.exists(log) and os.path.getsize(log) > 0, 3,
                      what="the access log")
        os.rename(log, log + ".1")
        self.tether.signal(signal.SIGUSR1)
        self.tether.signalled = False
        it.wait_until(lambda: "SIGUSR1: log files reopened" in self.tether.stderr_text(), 3,
                      what="the reopen")
        self.assertEqual(self.get("u2").status, 200)
        it.wait_until(lambda: os.path.exists(log) and os.path.getsize(log) > 0, 3,
                      what="a line in the new access log")
        with open(log) as f:
            self.assertEqual(len(f.readlines()), 1)

    def test_metrics_format(self):
        self.start()
        for i in range(10):
            self.assertEqual(self.get("m%d" % i).status, 200)
        status, text = self.api("GET", "/metrics")
        self.assertEqual(status, 200)
        samples = parse_prometheus(self, text)
        total = sum(v for labels, v in family(samples, "tether_requests_total")
                    if labels["class"] == "2xx")
        self.assertEqual(total, 10)
        self.assertEqual(samples[("tether_request_duration_seconds_count", ())], 10)
        buckets = sorted((float(l["le"]), v)
                         for l, v in family(samples, "tether_request_duration_seconds_bucket"))
        self.assertEqual(buckets[-1], (float("inf"), 10))
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), "histogram buckets must be cumulative")
        self.assertEqual(samples[("tether_sessions_live", ())], 10)
        live = sum(v for _, v in family(samples, "tether_sessions"))
        self.assertEqual(live, 10)
        self.assertEqual(samples[("tether_backend_state", (("backend", "fn-1"), ("state", "up")))], 1)
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


def parse_prometheus(tc, text):
    """A strict reader of the text exposition format (0.0.4): every sample
    belongs to a family declared by # TYPE, names and labels are well
    formed, values are numbers; returns {(name, sorted label items): value}."""
    name_re = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    sample_re = re.compile(r"^(%s)(\{(.*)\})? (\S+)$" % name_re)
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')
    types = {}
    out = {}
    tc.assertTrue(text.endswith("\n"))
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            tc.assertRegex(line, r"^# HELP %s .+$" % name_re)
            continue
        if line.startswith("# TYPE "):
            m = re.match(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % name_re,
                         line)
            tc.assertIsNotNone(m, line)
            tc.assertNotIn(m.group(1), types, "family declared twice: " + line)
            types[m.group(1)] = m.group(2)
            continue
        tc.assertFalse(line.startswith("#"), line)
        m = sample_re.match(line)
        tc.assertIsNotNone(m, "not a sample line: %r" % line)
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(4)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        tc.assertTrue(name in types or (family in types and types[family] == "histogram"),
                      "sample without a TYPE: " + line)
        labels = {}
        pos = 0
        while pos < len(labels_text):
            lm = label_re.match(labels_text, pos)
            tc.assertIsNotNone(lm, "bad labels in %r" % line)
            labels[lm.group(1)] = lm.group(2)
            pos = lm.end()
        v = float(value)
        key = (name, tuple(sorted(labels.items())))
        tc.assertNotIn(key, out, "duplicate sample " + line)
        out[key] = v
    return out


def family(samples, name):
    """[(labels dict, value)] of one metric name."""
    return [(dict(k[1]), v) for k, v in samples.items() if k[0] == name]


if __name__ == "__main__":
    it.main()
