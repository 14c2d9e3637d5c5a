"""The admin API and tetherctl end to end: every tetherctl command against a
running tetherd in front of fnpool, in table and --json form; the API's
answers checked with curl (no token 401, wrong token 403, /livez and
/readyz open, bad JSON, unknown field, oversized body, unknown backend);
drain, disable, enable, runtime add and remove (--dry-run changes nothing);
pagination; watch while an instance is killed; reloads under load, a bad
reload that keeps the running configuration; a token file tetherd refuses;
the admin API on a unix socket; and tetherctl's exit codes."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


def _tetherctl():
    path = os.environ.get("TETHERCTL")
    if path:
        return path
    candidates = [os.path.join(it.ROOT, "build", "tools", "tetherctl")]
    if it.TETHERD:
        candidates.insert(0, os.path.join(os.path.dirname(it.TETHERD), "tools", "tetherctl"))
    for p in candidates:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


TETHERCTL = _tetherctl()
TOKEN = "t0ken-" + os.urandom(12).hex()
FAST_HEALTH = {"interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 2}
DOWN_WITHIN = 2 * 0.2 + 0.1 + 1.5
JSON_TYPE = "application/json"


def parse_table(text):
    """A tetherctl table -> [{HEADER: cell}]. Columns start where their
    header starts; the last column runs to the end of the line."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        return []
    head = lines[0]
    cols = [(m.start(), m.group(0)) for m in re.finditer(r"\S+", head)]
    rows = []
    for line in lines[1:]:
        row = {}
        for i, (start, name) in enumerate(cols):
            end = cols[i + 1][0] if i + 1 < len(cols) else len(line)
            row[name] = line[start:end].strip()
        rows.append(row)
    return rows


class Admin(it.TetherTestCase):
    def setUp(self):
        if not TETHERCTL:
            self.fail("TETHERCTL is not set and no tetherctl was found beside tetherd")
        self.tag = os.urandom(3).hex()

    # ---------------------------------------------------------- starting

    def token_file(self, mode=0o600, name="admin.token", content=TOKEN + "\n"):
        path = os.path.join(self.workdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def start(self, n=4, configured=None, unix=False, health=None, **overrides):
        """fnpool with n instances, tetherd in front of the first
        `configured` of them, with an admin block; waits for the admin
        listener."""
        self.pool = self.start_pool(n)
        backends = self.backends_of(self.pool)[:configured or n]
        self.tokpath = self.token_file()
        if unix:
            self.admin_addr = "unix:" + os.path.join(self.workdir, "admin.sock")
        else:
            self.admin_port = it.free_port()
            self.admin_addr = "%s:%d" % (it.HOST, self.admin_port)
        admin = {"listen": self.admin_addr, "token_file": self.tokpath}
        t = self.start_tether(backends=backends, admin=admin, health=health or FAST_HEALTH,
                              **overrides)
        self.cfgpath = t.cfgpath
        it.wait_until(self.admin_up, 10, what="the admin API on %s" % self.admin_addr)
        return t

    def admin_up(self):
        if not self.tether.alive():
            raise AssertionError("tetherd exited: %s" % self.tether.stderr_text()[-3000:])
        if self.admin_addr.startswith("unix:"):
            return os.path.exists(self.admin_addr[5:])
        return it.port_accepts(self.admin_port)

    def write_config(self, backends, extra=None):
        """Rewrites tetherd's config file with other backends (for a reload)."""
        cfg = dict(self.tether.config)
        cfg["backends"] = backends
        if extra:
            cfg = it.deep_merge(cfg, extra)
        with open(self.cfgpath, "w") as f:
            f.write(it.to_yaml(cfg) + "\n")

    # ---------------------------------------------------------- tetherctl

    def ctl(self, *args, env=None, config=True, timeout=20):
        """Runs tetherctl (-c the test's config unless config is False);
        returns (exit code, stdout, stderr)."""
        e = {k: v for k, v in os.environ.items() if k != "TETHER_TOKEN"}
        e.update(env or {})
        cmd = [TETHERCTL] + (["-c", self.cfgpath] if config else []) + list(args)
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=e, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def ok(self, *args, **kw):
        rc, out, err = self.ctl(*args, **kw)
        self.assertEqual(rc, 0, "tetherctl %s: rc %d: %s%s" % (" ".join(args), rc, err, out))
        self.assertEqual(err, "", "tetherctl %s wrote on stderr" % " ".join(args))
        return out

    def js(self, *args, **kw):
        out = self.ok("--json", *args, **kw)
        try:
            return json.loads(out)
        except ValueError as e:
            self.fail("tetherctl --json %s: not one JSON document (%s): %r" % (" ".join(args), e, out))

    def refused(self, args, rc=1, contains=(), **kw):
        """tetherctl fails with rc and exactly one line on stderr."""
        got, out, err = self.ctl(*args, **kw)
        self.assertEqual(got, rc, "tetherctl %s: rc %d, want %d: %r %r" % (" ".join(args), got, rc, err, out))
        self.assertEqual(out, "", "tetherctl %s printed on stdout on failure" % " ".join(args))
        lines = err.split("\n")
        self.assertTrue(err.endswith("\n") and len(lines) == 2 and lines[0].startswith("tetherctl: "),
                        "not one line on stderr: %r" % err)
        for frag in contains:
            self.assertIn(frag, lines[0])
        return lines[0]

    def backends(self):
        return {b["name"]: b for b in self.js("backends")["backends"]}

    def sessions(self, *args):
        return {s["key"]: s for s in self.js("sessions", "--all", *args)["sessions"]}

    def wait_state(self, name, state, timeout=5):
        it.wait_until(lambda: self.backends().get(name, {}).get("state") == state, timeout,
                      what="%s to be %s" % (name, state))

    # ---------------------------------------------------------- HTTP

    def curl(self, method, path, data=None, token=TOKEN, headers=()):
        """The admin API through curl: (status, {lower name: value}, body)."""
        args = ["-i", "-X", method]
        if self.admin_addr.startswith("unix:"):
            args += ["--unix-socket", self.admin_addr[5:]]
            url = "http://localhost" + path
        else:
            url = "http://%s%s" % (self.admin_addr, path)
        if token is not None:
            args += ["-H", "Authorization: Bearer " + token]
        for h in headers:
            args += ["-H", h]
        if data is not None:
            body = os.path.join(self.workdir, "body-%d" % time.monotonic_ns())
            with open(body, "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode())
            args += ["-H", "Content-Type: application/json", "--data-binary", "@" + body]
        p = it.curl(*(args + [url]), timeout=10)
        self.assertEqual(p.returncode, 0, "curl %s %s: %s" % (method, path, p.stderr))
        head, _, body = p.stdout.partition(b"\r\n\r\n")
        r = it.parse_head(head + b"\r\n\r\n")
        return r.status, {k.lower(): v for k, v in r.headers}, body

    def curl_json(self, method, path, status, **kw):
        got, hdrs, body = self.curl(method, path, **kw)
        self.assertEqual(got, status, "%s %s: %d %r" % (method, path, got, body))
        self.assertTrue(hdrs.get("content-type", "").startswith(JSON_TYPE), hdrs)
        doc = json.loads(body)
        if status >= 400:
            self.assertIsInstance(doc.get("error"), str, doc)
            self.assertTrue(doc["error"] and "\n" not in doc["error"], doc)
        return doc

    # ---------------------------------------------------------- traffic

    def hit(self, key, conn=None):
        c = conn or it.Conn(self.port, timeout=5)
        try:
            r = c.get("/", [("x-fc-session-id", key)], timeout=5)
        finally:
            if conn is None:
                c.close()
        self.assertEqual(r.status, 200, r)
        return r.instance

    def place(self, n, prefix="k"):
        """n new sessions: {key: instance}."""
        out = {}
        with it.Conn(self.port, timeout=5) as c:
            for i in range(n):
                key = "%s-%s-%03d" % (prefix, self.tag, i)
                out[key] = self.hit(key, c)
        return out

    # ========================================================== no server

    def test_usage_and_connection_refused(self):
        self.cfgpath = "/nonexistent"
        rc, out, err = self.ctl("-h", config=False)
        self.assertEqual(rc, 0, err)
        for word in ("status", "backends", "backend add", "sessions", "session move", "reload",
                     "watch", "metrics", "--json", "--token-file", "TETHER_TOKEN"):
            self.assertIn(word, out)
        self.assertRegex(out, r"(?m)^\s+1\s.*refused")
        self.assertRegex(out, r"(?m)^\s+2\s.*usage")
        self.assertRegex(out, r"(?m)^\s+3\s.*connect")
        rc, out, err = self.ctl("-V", config=False)
        self.assertEqual((rc, err), (0, ""))
        self.assertRegex(out, r"^tetherctl \d+\.\d+\.\d+\n$")

        for args in (["bogus"], [], ["backend"], ["backend", "frob", "x"], ["backend", "add", "x"],
                     ["session", "show"], ["--frob", "status"], ["--weight", "2", "status"],
                     ["backend", "add", "x", "127.0.0.1:1", "--weight", "0"],
                     ["sessions", "--limit", "1001"], ["sessions", "--limit", "x"],
                     ["status", "-s"]):
            self.refused(["-s", "127.0.0.1:1"] + args, rc=2, config=False)

        port = it.free_port()
        self.refused(["-s", "%s:%d" % (it.HOST, port), "--token-file", self.token_file(), "status"],
                     rc=3, contains=("cannot connect to %s:%d" % (it.HOST, port), "Connection refused"),
                     config=False)
        self.refused(["-s", "unix:" + os.path.join(self.workdir, "none.sock"), "backends"], rc=3,
                     contains=("cannot connect",), config=False, env={"TETHER_TOKEN": TOKEN})
        self.refused(["-c", os.path.join(self.workdir, "absent.yaml"), "status"], rc=2,
                     contains=("absent.yaml",), config=False)

    # ========================================================== reading

    def test_status_backends_metrics(self):
        self.start(n=3)
        self.place(20)
        it.wait_until(lambda: self.js("status")["backends"]["up"] == 3, 5, what="3 backends up")

        st = self.js("status")
        self.assertRegex(st["version"], r"^\d+\.\d+\.\d+$")
        self.assertEqual(st["pid"], self.tether.pid)
        self.assertEqual(st["workers"], 1)
        self.assertEqual(st["sessions"]["live"], 20, st)
        self.assertEqual(st["sessions"]["provisional"], 0, st)
        self.assertGreaterEqual(st["sessions"]["created"], 20, st)
        self.assertEqual(st["store"]["kind"], "memory")
        self.assertIs(st["store"]["healthy"], True)
        self.assertEqual(st["backends"], {"total": 3, "up": 3})
        human = self.ok("status")
        for frag in (st["version"], str(self.tether.pid), "20 live", "3 up of 3", "memory"):
            self.assertIn(frag, human)

        bs = self.js("backends")["backends"]
        self.assertEqual([b["name"] for b in bs], self.pool.names)
        for b in bs:
            self.assertEqual(b["address"], "%s:%d" % (it.HOST, self.pool.ports[b["name"]]))
            self.assertEqual((b["state"], b["weight"], b["origin"]), ("up", 1, "config"), b)
            self.assertIs(b["healthy"], True)
        self.assertEqual(sum(b["sessions"] for b in bs), 20)
        self.assertGreaterEqual(sum(b["requests"] for b in bs), 20)
        rows = parse_table(self.ok("backends"))
        self.assertEqual([r["NAME"] for r in rows], self.pool.names)
        for r, b in zip(rows, bs):
            self.assertEqual((r["ADDRESS"], r["STATE"], r["SESSIONS"]),
                             (b["address"], "up", str(b["sessions"])))

        metrics = self.ok("metrics")
        self.assertRegex(metrics, r"(?m)^tether_\w+(\{[^}]*\})? \S+$")
        self.assertNotRegex(metrics, r"(?m)^(?!#)(?!tether_)\S")
        self.assertEqual(self.ok("--json", "metrics").splitlines()[0], metrics.splitlines()[0])
        got, hdrs, body = self.curl("GET", "/metrics")
        self.assertEqual(got, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/plain"), hdrs)
        self.assertIn(b"tether_", body)

    # ========================================================== auth and errors

    def test_auth_and_error_answers(self):
        self.start(n=2)
        # /livez and /readyz need no token
        self.assertEqual(self.curl_json("GET", "/livez", 200, token=None), {"status": "ok"})
        self.assertEqual(self.curl_json("GET", "/readyz", 200, token=None), {"status": "ready"})
        # no token, not Bearer, wrong token
        for path in ("/api/v1/status", "/api/v1/backends", "/metrics"):
            self.curl_json("GET", path, 401, token=None)
            self.curl_json("GET", path, 401, token=None,
                           headers=["Authorization: Basic " + "dXNlcjpwYXNz"])
            self.curl_json("GET", path, 403, token=TOKEN + "x")
            self.curl_json("GET", path, 403, token=TOKEN[:-1])
        self.curl_json("GET", "/api/v1/status", 200)

        noadmin = os.path.join(self.workdir, "noadmin.yaml")
        cfg = {k: v for k, v in self.tether.config.items() if k != "admin"}
        with open(noadmin, "w") as f:
            f.write(it.to_yaml(cfg) + "\n")
        line = self.refused(["-c", noadmin, "-s", self.admin_addr, "status"], config=False,
                            contains=("401",))
        self.assertRegex(line, r"^tetherctl: 401 unauthorized: \S")
        self.refused(["-s", self.admin_addr, "status"], config=False,
                     env={"TETHER_TOKEN": "wrong"}, contains=("403",))
        wrong = self.token_file(name="wrong.token", content="nope\n")
        self.refused(["--token-file", wrong, "backends"], contains=("403",))
        # the token from the environment, before the config's token file
        self.assertEqual(self.js("-c", noadmin, "-s", self.admin_addr, "status", config=False,
                                 env={"TETHER_TOKEN": TOKEN})["workers"], 1)
        self.refused(["status"], env={"TETHER_TOKEN": "wrong"}, contains=("403",))
        self.ok("--token-file", self.tokpath, "status", env={"TETHER_TOKEN": "wrong"})
        # trailing whitespace of a token file is not part of the token
        spaced = self.token_file(name="spaced.token", content=TOKEN + " \t\r\n\n")
        self.ok("-s", self.admin_addr, "--token-file", spaced, "status", config=False)

        # bad JSON, unknown field, bad value, oversized body
        for data in (b"{", b"[]", b"{\"name\": \"fn-9\", \"address\": ", b"\xff\xfe"):
            self.curl_json("POST", "/api/v1/backends", 400, data=data)
        self.curl_json("POST", "/api/v1/backends", 400,
                       data=json.dumps({"name": "fn-9", "address": "127.0.0.1:1", "colour": "red"}))
        self.curl_json("POST", "/api/v1/backends", 400, data=json.dumps({"name": "fn-9"}))
        self.curl_json("POST", "/api/v1/backends", 400,
                       data=json.dumps({"name": "fn-9", "address": "127.0.0.1:1", "weight": 0}))
        self.curl_json("POST", "/api/v1/backends", 400,
                       data=json.dumps({"name": "fn-9", "address": "not an address"}))
        # unknown things, wrong method, taken name
        self.curl_json("POST", "/api/v1/backends/fn-9/drain", 404, data="{}")
        self.curl_json("DELETE", "/api/v1/backends/fn-9", 404)
        self.curl_json("GET", "/api/v1/sessions/nope", 404)
        self.curl_json("GET", "/api/v1/sessions?backend=fn-9", 404)
        self.curl_json("GET", "/api/v1/sessions?limit=0", 400)
        self.curl_json("GET", "/api/v1/sessions?limit=1001", 400)
        self.curl_json("GET", "/api/v1/nothing", 404)
        self.curl_json("DELETE", "/api/v1/status", 405)
        self.curl_json("POST", "/api/v1/sessions", 405, data="{}")
        self.curl_json("POST", "/api/v1/backends", 409,
                       data=json.dumps({"name": "fn-1", "address": "127.0.0.1:1"}))
        # and through tetherctl: exit 1, the server's error on one line
        self.refused(["backend", "drain", "fn-9"], contains=("404", "fn-9"))
        self.refused(["backend", "remove", "fn-9", "--dry-run"], contains=("404", "fn-9"))
        self.refused(["session", "show", "nope"], contains=("404",))
        self.refused(["session", "forget", "nope"], contains=("404",))
        self.refused(["sessions", "--backend", "fn-9"], contains=("404",))
        self.refused(["backend", "add", "fn-1", "127.0.0.1:1"], contains=("409",))
        self.refused(["backend", "add", "fn-9", "nowhere"], contains=("400",))
        self.assertEqual(set(self.backends()), {"fn-1", "fn-2"})
        # any method, and a body over 64 KiB
        self.curl_json("PUT", "/api/v1/status", 405)
        self.curl_json("PATCH", "/api/v1/backends/fn-1", 405, data="{}")
        big = json.dumps({"name": "fn-9", "address": "127.0.0.1:1", "pad": "x" * (70 * 1024)})
        self.curl_json("POST", "/api/v1/backends", 400, data=big)  # the issue: oversized bodies get 400 with a JSON error
        self.assertTrue(self.tether.alive())

    # ========================================================== sessions

    def test_sessions_pages_show_forget_move(self):
        self.start(n=3)
        homes = self.place(23)
        odd = "k/1?x=%41&y#z+:@!$'()*,;=[]"
        homes[odd] = self.hit(odd)
        n = len(homes)

        page = self.js("sessions", "--limit", "10")
        self.assertEqual(len(page["sessions"]), 10)
        self.assertIsInstance(page["next_cursor"], str)
        rc, out, err = self.ctl("sessions", "--limit", "10")
        self.assertEqual((rc, err), (0, ""))
        self.assertIn("--all", out.splitlines()[-1])
        self.assertEqual(len(parse_table("\n".join(out.splitlines()[:-1]))), 10)
        default = self.js("sessions")
        self.assertEqual(len(default["sessions"]), n)  # default page: 100
        self.assertIsNone(default["next_cursor"])

        for limit in ("7", "1"):
            every = self.js("sessions", "--all", "--limit", limit)
            keys = [s["key"] for s in every["sessions"]]
            self.assertEqual(sorted(keys), sorted(homes), "--all --limit %s" % limit)
            self.assertIsNone(every["next_cursor"])
        rows = parse_table(self.ok("sessions", "--all", "--limit", "5"))
        self.assertEqual({r["KEY"]: r["BACKEND"] for r in rows}, homes)
        for s in every["sessions"]:
            self.assertEqual(s["backend"], homes[s["key"]])
            self.assertEqual((s["epoch"], s["provisional"], s["moved_from"]), (1, False, None), s)
            self.assertGreaterEqual(s["requests"], 1)
            self.assertLessEqual(s["created_ms"], s["last_seen_ms"])
        for name in self.pool.names:
            mine = self.sessions("--backend", name, "--limit", "4")
            self.assertEqual(set(mine), {k for k, v in homes.items() if v == name})

        # show / move / forget, with a key that needs percent-encoding
        s = self.js("session", "show", odd)
        self.assertEqual((s["key"], s["backend"], s["epoch"]), (odd, homes[odd], 1))
        show = self.ok("session", "show", odd)
        self.assertRegex(show, r"(?m)^key\s+%s$" % re.escape(odd))
        self.assertRegex(show, r"(?m)^backend\s+%s$" % homes[odd])
        to = next(b for b in self.pool.names if b != homes[odd])
        moved = self.js("session", "move", odd, to)
        self.assertEqual((moved["key"], moved["backend"], moved["epoch"], moved["moved_from"]),
                         (odd, to, 2, homes[odd]))
        self.assertEqual(self.hit(odd), to)
        self.refused(["session", "move", odd, "fn-9"], contains=("404",))
        key2 = sorted(k for k in homes if k != odd)[0]
        to2 = next(b for b in self.pool.names if b != homes[key2])
        out = self.ok("session", "move", key2, to2)
        self.assertIn(key2, out)
        self.assertIn(to2, out)
        self.assertEqual(self.js("session", "show", key2)["epoch"], 2)
        self.assertEqual(self.hit(key2), to2)

        self.assertEqual(self.js("session", "forget", odd), {"forgotten": odd})
        self.refused(["session", "show", odd], contains=("404",))
        self.refused(["session", "forget", odd], contains=("404",))
        self.assertIn(key2, self.ok("session", "forget", key2))
        self.assertEqual(len(self.sessions()), n - 2)
        self.assertEqual(self.js("status")["sessions"]["live"], n - 2)

    # ========================================================== backends at run time

    def test_remove_dry_run_then_remove(self):
        self.start(n=3)
        homes = self.place(30)
        victim = "fn-2"
        theirs = {k for k, v in homes.items() if v == victim}
        self.assertTrue(theirs, homes)

        def stable():
            """Sessions and backends, but for what health checks change."""
            bs = self.backends()
            for b in bs.values():
                for volatile in ("last_check", "changed_ms", "reason", "requests", "inflight"):
                    b.pop(volatile, None)
            return self.sessions(), bs

        def assertSame(a, b):
            # the server derives wall-clock times from its monotonic clock at
            # each answer: they may differ by a millisecond between two reads
            self.assertEqual(a[1], b[1], "--dry-run changed the backends")
            self.assertEqual(set(a[0]), set(b[0]), "--dry-run changed the set of sessions")
            for key, s in a[0].items():
                t = b[0][key]
                for f in ("created_ms", "last_seen_ms"):
                    self.assertLessEqual(abs(s[f] - t[f]), 2, (s, t))
                self.assertEqual({k: v for k, v in s.items() if not k.endswith("_ms")},
                                 {k: v for k, v in t.items() if not k.endswith("_ms")})

        before = stable()
        dry = self.js("backend", "remove", victim, "--dry-run")
        self.assertIs(dry["dry_run"], True)
        self.assertEqual((dry["backend"], dry["count"]), (victim, len(theirs)))
        self.assertEqual({m["key"] for m in dry["moves"]}, theirs)
        for m in dry["moves"]:
            self.assertIn(m["to"], ("fn-1", "fn-3"))
        out = self.ok("backend", "remove", victim, "--dry-run")
        self.assertIn("%d session" % len(theirs), out.splitlines()[0])
        for key in theirs:
            self.assertIn(key, out)
        assertSame(before, stable())
        for key, home in homes.items():
            self.assertEqual(self.hit(key), home)

        res = self.js("backend", "remove", victim)
        self.assertEqual(res, {"removed": victim, "moved": len(theirs)})
        self.assertEqual(set(self.backends()), {"fn-1", "fn-3"})
        after = self.sessions()
        self.assertEqual(set(after), set(homes))
        for key, home in homes.items():
            if home == victim:
                self.assertIn(after[key]["backend"], ("fn-1", "fn-3"))
                self.assertEqual(after[key]["epoch"], 2)
                self.assertEqual(after[key]["moved_from"], victim)
                self.assertEqual(self.hit(key), after[key]["backend"])
            else:
                self.assertEqual(after[key]["backend"], home)
        self.refused(["backend", "remove", victim], contains=("404",))
        out = self.ok("backend", "remove", "fn-3")
        self.assertIn("fn-3", out)
        self.assertEqual(set(self.backends()), {"fn-1"})

    def test_drain_enable_disable(self):
        self.start(n=3)
        homes = self.place(30, "old")
        name = "fn-1"
        mine = sorted(k for k, v in homes.items() if v == name)
        self.assertTrue(mine, homes)

        b = self.js("backend", "drain", name)
        self.assertEqual((b["name"], b["state"]), (name, "draining"))
        self.assertEqual(parse_table(self.ok("backends"))[0]["STATE"], "draining")
        fresh = self.place(40, "drained")
        self.assertNotIn(name, fresh.values(), "a new session went to a draining backend")
        for key in mine:
            self.assertEqual(self.hit(key), name, "an existing session left a draining backend")
        self.assertEqual(self.js("status")["backends"]["total"], 3)

        rows = parse_table(self.ok("backend", "enable", name))
        self.assertEqual([(r["NAME"], r["STATE"]) for r in rows], [(name, "up")])
        again = self.place(60, "enabled")
        self.assertIn(name, again.values(), "no new session on %s after enable" % name)
        for key in mine:
            self.assertEqual(self.hit(key), name)

        on_it = sorted(k for k, s in self.sessions().items() if s["backend"] == name)
        epochs = {k: self.js("session", "show", k)["epoch"] for k in on_it}
        rows = parse_table(self.ok("backend", "disable", name))
        self.assertEqual([(r["NAME"], r["STATE"]) for r in rows], [(name, "disabled")])
        it.wait_until(lambda: not self.js("sessions", "--backend", name)["sessions"], 5,
                      what="the sessions of a disabled backend to move")
        for key in on_it:
            s = self.js("session", "show", key)
            self.assertNotEqual(s["backend"], name)
            self.assertEqual(s["epoch"], epochs[key] + 1, s)
            self.assertEqual(s["moved_from"], name)
            self.assertEqual(self.hit(key), s["backend"])
        self.assertNotIn(name, self.place(30, "disabled").values())
        self.refused(["session", "move", on_it[0], name], contains=("409", name))
        self.assertEqual(self.js("backend", "enable", name)["state"], "up")
        self.assertIn(name, self.place(60, "back").values())
        for key in on_it:  # nothing moves back
            self.assertNotEqual(self.hit(key), name)

    def test_runtime_add(self):
        self.start(n=3, configured=2)
        extra = self.pool.names[2]
        addr = "%s:%d" % (it.HOST, self.pool.ports[extra])
        self.assertNotIn(extra, self.place(30, "before").values())
        b = self.js("backend", "add", extra, addr, "--weight", "2")
        self.assertEqual((b["name"], b["address"], b["weight"], b["origin"]),
                         (extra, addr, 2, "runtime"))
        self.wait_state(extra, "up")
        names = [r["NAME"] for r in parse_table(self.ok("backends"))]
        self.assertEqual(names, self.pool.names)  # config order, runtime additions after
        self.assertIn(extra, self.place(60, "after").values())
        self.refused(["backend", "add", extra, addr], contains=("409",))
        self.refused(["backend", "add", "fn-x", addr, "--weight", "1001"], rc=2)
        out = self.ok("backend", "add", "fn-x", "%s:%d" % (it.HOST, it.free_port()))
        self.assertEqual(parse_table(out)[0]["NAME"], "fn-x")
        self.assertEqual(self.js("status")["backends"]["total"], 4)

    def test_readyz_follows_backends(self):
        self.start(n=1)
        self.assertEqual(self.curl_json("GET", "/readyz", 200, token=None), {"status": "ready"})
        self.pool.kill("fn-1")

        def not_ready():
            got, hdrs, body = self.curl("GET", "/readyz", token=None)
            return got == 503 and json.loads(body)
        doc = it.wait_until(not_ready, DOWN_WITHIN + 3, what="/readyz to answer 503")
        self.assertEqual(doc["status"], "not ready")
        self.assertTrue(isinstance(doc["reason"], str) and doc["reason"], doc)
        self.assertEqual(self.curl_json("GET", "/livez", 200, token=None), {"status": "ok"})
        self.assertEqual(self.js("status")["backends"], {"total": 1, "up": 0})

    # ========================================================== watch

    def test_watch_shows_kill(self):
        self.start(n=3, health=FAST_HEALTH)
        procs = []
        for mode in ([], ["--json"]):
            out = os.path.join(self.workdir, "watch%s.out" % "".join(mode))
            f = open(out, "wb")
            e = {k: v for k, v in os.environ.items() if k != "TETHER_TOKEN"}
            p = subprocess.Popen([TETHERCTL, "-c", self.cfgpath] + mode + ["watch"], stdout=f,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=e)
            it._live_pids.add(p.pid)
            self.addCleanup(it.stop_pid, p.pid, p)
            self.addCleanup(f.close)
            procs.append((p, out))

        def lines(i):
            with open(procs[i][1], "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()

        # both are subscribed once a session made now shows up in each
        probe = "probe-" + self.tag

        def subscribed():
            self.hit("%s-%d" % (probe, time.monotonic_ns()))
            return all(any(probe in l for l in lines(i)) for i in (0, 1))
        it.wait_until(subscribed, 5, interval=0.2, what="watch to show session.created")
        created = [l for l in lines(0) if probe in l]
        self.assertRegex(created[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z session\.created "
                                     r".*key=%s" % probe)
        homes = self.place(30)
        victim = "fn-2"
        theirs = [k for k, v in homes.items() if v == victim]
        self.assertTrue(theirs)
        self.pool.kill(victim)

        def down(i):
            if i == 0:
                return any(re.search(r" backend\.down backend=%s( |$)" % victim, l) for l in lines(0))
            return any(json.loads(l).get("event") == "backend.down" and
                       json.loads(l).get("backend") == victim for l in lines(1))
        it.wait_until(lambda: down(0) and down(1), DOWN_WITHIN + 3, what="backend.down in watch")
        for key in theirs:  # served elsewhere, whether moved already or now
            self.assertNotEqual(self.hit(key), victim)

        def moved():
            docs = [json.loads(l) for l in lines(1)]
            got = {d["key"] for d in docs if d.get("event") == "session.moved" and d.get("from") == victim}
            human = {k for k in theirs if any(" session.moved " in l and re.search(
                r" key=%s( |$)" % re.escape(k), l) for l in lines(0))}
            return got >= set(theirs) and human == set(theirs)
        it.wait_until(moved, 5, what="session.moved for every session of %s" % victim)
        for d in (json.loads(l) for l in lines(1)):
            self.assertIsInstance(d.get("ts_ms"), int, d)
            if d["event"] == "session.moved" and d["key"] in theirs:
                self.assertNotEqual(d["to"], victim)
                self.assertGreaterEqual(d["epoch"], 2)
                self.assertIsInstance(d["reason"], str)
        for p, _ in procs:
            self.assertIsNone(p.poll(), "watch ended by itself")
            p.send_signal(signal.SIGINT)
        for p, _ in procs:
            self.assertEqual(p.wait(timeout=5), 0)
            self.assertEqual(p.stderr.read(), b"")
            p.stderr.close()
            it._live_pids.discard(p.pid)

    # ========================================================== reload

    def test_reload_under_load(self):
        self.start(n=4, configured=3)
        backends = self.backends_of(self.pool)
        keys = ["load-%s-%02d" % (self.tag, i) for i in range(16)]
        stop = threading.Event()
        results = []

        def load():
            conn = None
            for i in range(10 ** 6):
                if stop.is_set():
                    break
                key = keys[i % len(keys)]
                try:
                    if conn is None:
                        conn = it.Conn(self.port, timeout=5)
                    r = conn.get("/", [("x-fc-session-id", key)], timeout=5)
                    results.append((key, r.status, r.instance))
                    if r.has_token("connection", "close"):
                        conn.close()
                        conn = None
                except (OSError, it.Closed, AssertionError) as e:
                    results.append((key, None, repr(e)))
                    if conn is not None:
                        conn.close()
                    conn = None
                time.sleep(0.002)
            if conn is not None:
                conn.close()

        th = threading.Thread(target=load, daemon=True)
        th.start()
        self.addCleanup(th.join, 10)
        self.addCleanup(stop.set)
        try:
            it.wait_until(lambda: len(results) > 50, 10, what="load")
            # SIGHUP: fn-4 joins
            self.write_config(backends)
            os.kill(self.tether.pid, signal.SIGHUP)
            it.wait_until(lambda: "fn-4" in self.backends(), 5, what="fn-4 after SIGHUP")
            self.wait_state("fn-4", "up")
            n = len(results)
            it.wait_until(lambda: len(results) > n + 50, 10, what="load after SIGHUP")
            # tetherctl reload: fn-1 leaves, a runtime addition is dropped
            self.ok("backend", "add", "fn-rt", "%s:%d" % (it.HOST, it.free_port()))
            self.write_config(backends[1:])
            res = self.js("reload")
            self.assertIs(res["reloaded"], True)
            self.assertTrue(any("fn-1" in c for c in res["changes"]), res)
            self.assertTrue(any("fn-rt" in d for d in res["dropped"]), res)
            self.assertEqual(res["restart_required"], [])
            self.assertEqual(set(self.backends()), {"fn-2", "fn-3", "fn-4"})
            n = len(results)
            it.wait_until(lambda: len(results) > n + 50, 10, what="load after reload")
            # human output; the file unchanged: nothing to do
            out = self.ok("reload")
            self.assertRegex(out.splitlines()[0], r"^reloaded")
            # a setting that needs a restart is reported as such
            self.write_config(backends[1:], {"workers": 2})
            res = self.js("reload")
            self.assertTrue(any("workers" in r for r in res["restart_required"]), res)
            self.assertEqual(self.js("status")["workers"], 1)
        finally:
            stop.set()
            th.join(10)
        failed = [r for r in results if r[1] != 200]
        self.assertEqual(failed, [], "%d of %d requests failed across the reloads" % (len(failed), len(results)))
        late = {k: inst for k, _, inst in results[-len(keys) * 2:]}
        self.assertNotIn("fn-1", late.values(), "sessions still on a backend the reload removed")

    def test_bad_reload_keeps_running(self):
        self.start(n=2)
        homes = self.place(10)
        with open(self.cfgpath) as f:
            good = f.read()
        nlines = len(good.splitlines())
        with open(self.cfgpath, "w") as f:
            f.write(good + "workers: [unclosed\n")
        where = re.escape(self.cfgpath) + r":(\d+):\d+: "
        line = self.refused(["reload"], contains=(self.cfgpath + ":",))
        m = re.match(r"^tetherctl: 400: .*?" + where, line)
        self.assertTrue(m and int(m.group(1)) > nlines, line)
        got, hdrs, body = self.curl("POST", "/api/v1/reload")
        doc = json.loads(body)
        self.assertEqual(got, 400)
        self.assertTrue(hdrs["content-type"].startswith(JSON_TYPE), hdrs)
        self.assertIsInstance(doc["error"], str)
        self.assertTrue(doc["errors"], doc)
        for e in doc["errors"]:
            m = re.match(where, e)
            self.assertTrue(m and int(m.group(1)) > nlines, doc)

        def logged():
            return self.tether.stderr_text().count(self.cfgpath + ":")
        n = logged()
        os.kill(self.tether.pid, signal.SIGHUP)
        it.wait_until(lambda: logged() > n, 5, what="the bad file reported in the log")
        self.assertTrue(self.tether.alive())
        for key, home in homes.items():
            self.assertEqual(self.hit(key), home)
        self.assertEqual(set(self.backends()), {"fn-1", "fn-2"})
        with open(self.cfgpath, "w") as f:
            f.write(good)
        self.assertIs(self.js("reload")["reloaded"], True)

    # ========================================================== token file, unix socket

    def test_token_file_mode_refused(self):
        pool = self.start_pool(1)
        tok = self.token_file(mode=0o644)
        port = it.free_port()
        cfg = it.default_config(port, self.backends_of(pool), os.path.join(self.workdir, "a.log"))
        cfg["admin"] = {"listen": "%s:%d" % (it.HOST, it.free_port()), "token_file": tok}
        path = os.path.join(self.workdir, "loose.yaml")
        with open(path, "w") as f:
            f.write(it.to_yaml(cfg) + "\n")
        for args in (["-t", "-c", path], ["-c", path]):
            p = subprocess.run([it.TETHERD] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=10)
            self.assertNotEqual(p.returncode, 0, "tetherd %s accepted a 0644 token file" % args)
            self.assertIn(b"token_file", p.stderr)
        self.assertFalse(it.port_accepts(port))

    def test_unix_socket(self):
        self.start(n=2, unix=True)
        path = self.admin_addr[5:]
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.place(5)
        out = self.js("-s", self.admin_addr, "--token-file", self.tokpath, "status", config=False)
        self.assertEqual(out["sessions"]["live"], 5)
        self.assertEqual([r["NAME"] for r in parse_table(self.ok("backends"))], ["fn-1", "fn-2"])
        self.assertEqual(self.curl_json("GET", "/livez", 200, token=None), {"status": "ok"})
        self.curl_json("GET", "/api/v1/status", 401, token=None)
        self.refused(["-s", self.admin_addr, "status"], config=False, env={"TETHER_TOKEN": "no"},
                     contains=("403",))


if __name__ == "__main__":
    it.main()
