"""tetherd's command line: -V, and -t checking a config in one pass."""

import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


class Cli(it.TetherTestCase):
    def run_tetherd(self, *args, timeout=10):
        p = subprocess.run([it.TETHERD] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return p.returncode, p.stdout.decode("latin-1"), p.stderr.decode("latin-1")

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def errors(self, path, stderr):
        """file:line:col: key: message lines -> [(line, col, key, message)]"""
        out = []
        for l in stderr.splitlines():
            m = re.match(r"^%s:(\d+):(\d+): ([^:\s]+): (.+)$" % re.escape(path), l)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
        return out

    def test_version(self):
        rc, out, err = self.run_tetherd("-V")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"\d+\.\d+\.\d+")

    def test_check_valid(self):
        path = self.write("ok.yaml", it.to_yaml(it.default_config(8080, [
            {"name": "fn-1", "address": "127.0.0.1:9001"},
            {"name": "fn-2", "address": "127.0.0.1:9002", "weight": 2, "max_sessions": 100}],
            os.path.join(self.workdir, "access.log"))) + "\n")
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 0, err)

    def test_check_valid_full_schema(self):
        # every documented key (but TLS, admin and redis files) at its default
        text = """\
listen:
  - address: 127.0.0.1:8080
workers: auto
session:
  header: x-fc-session-id
  cookie: fc_session
  sources: [learn, header, cookie]
  learn_header: ""
  insert_cookie: true
  provisional_timeout: 60s
  idle_timeout: 30m
  max_lifetime: 24h
  state_max_bytes: 8k
  max_sessions: 1000000
  max_state_bytes: 256m
balance:
  load_factor: 1.25
  vnodes: 100
backends:
  - name: fn-1
    address: 127.0.0.1:9001
    weight: 1
    max_sessions: 0
  - { name: fn-2, address: "127.0.0.1:9002" }
health:
  path: /healthz
  interval: 2s
  timeout: 1s
  rise: 2
  fall: 3
  passive_failures: 5
  passive_5xx: false
state:
  store: memory
  snapshot: ""
  snapshot_interval: 10s
timeouts:
  client_header: 10s
  client_idle: 60s
  backend_connect: 2s
  backend_response: 300s
  backend_idle: 500ms
limits:
  max_connections: 10000
  max_header_bytes: 16k
  max_body_bytes: 16m
  max_pipelined: 16
retries: 1
retry_body_bytes: 64k
drain_timeout: 10m
shutdown_timeout: 30s
log:
  level: info
  access: off
"""
        path = self.write("full.yaml", text)
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 0, err)

    def test_check_reports_every_error(self):
        text = """\
listen:
  - address: 127.0.0.1:8080
bogus_key: 1
workers: 1
backends:
  - name: fn-1
    address: 127.0.0.1:9001
    weight: many
balance:
  load_factor: 0.5
timeouts:
  client_header: 10x
"""
        path = self.write("bad.yaml", text)
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 1, err)
        errs = self.errors(path, err)
        by_key = {e[2]: e for e in errs}
        expect = {"bogus_key": 3, "backends[0].weight": 8, "balance.load_factor": 10,
                  "timeouts.client_header": 12}
        for key, line in expect.items():
            self.assertIn(key, by_key, "no file:line:col: %s: line in:\n%s" % (key, err))
            self.assertEqual(by_key[key][0], line, by_key[key])
            self.assertGreaterEqual(by_key[key][1], 1)
            self.assertTrue(by_key[key][3].strip(), by_key[key])
        # the daemon itself refuses the file too, quickly, and does not listen
        rc2, _, err2 = self.run_tetherd("-c", path)
        self.assertNotEqual(rc2, 0)
        self.assertIn("backends[0].weight", err2)

    def test_check_missing_backends(self):
        path = self.write("nobackends.yaml", "listen:\n  - address: 127.0.0.1:8080\nworkers: 1\n")
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 1, err)
        self.assertIn("backends", err)
        self.assertTrue(any(l.startswith(path + ":") for l in err.splitlines()), err)

    def test_check_empty_backends(self):
        path = self.write("empty.yaml", "listen:\n  - address: 127.0.0.1:8080\nbackends: []\n")
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 1, err)
        self.assertIn("backends", err)

    def test_check_missing_file(self):
        path = os.path.join(self.workdir, "absent.yaml")
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 1, err)
        self.assertIn(path, err)

    def test_check_duplicate_backend_name(self):
        path = self.write("dup.yaml", """\
listen:
  - address: 127.0.0.1:8080
backends:
  - { name: fn-1, address: 127.0.0.1:9001 }
  - { name: fn-1, address: 127.0.0.1:9002 }
""")
        rc, out, err = self.run_tetherd("-t", "-c", path)
        self.assertEqual(rc, 1, err)
        errs = self.errors(path, err)
        self.assertTrue(any(e[0] == 5 and e[2].startswith("backends[1]") for e in errs), err)


if __name__ == "__main__":
    it.main()
