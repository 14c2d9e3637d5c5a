"""Harness for tether's integration tests.

Starts the real `tetherd` (TETHERD) in front of a real pool of `fnpool`
instances (FNPOOL) on 127.0.0.1, with a YAML config generated per test,
and offers small raw-socket helpers so each scenario reads as a few
declarative lines. Every wait is bounded in time and in iterations; every
process started here is stopped by PID in tearDown and again at exit.
"""

import atexit
import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _binary(env, fallbacks):
    path = os.environ.get(env)
    if path:
        return path
    for p in fallbacks:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


TETHERD = _binary("TETHERD", [os.path.join(ROOT, "build", "tetherd")])
FNPOOL = _binary("FNPOOL", [os.path.join(ROOT, "build", "tools", "fnpool")])

# ---------------------------------------------------------------- processes

_live_pids = set()


def _reap_all():
    for pid in list(_live_pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        _live_pids.discard(pid)


atexit.register(_reap_all)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid, popen=None, grace=5.0):
    """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code
    when pid is our child (popen given), else None."""
    sigs = [(signal.SIGTERM, grace), (signal.SIGKILL, 5.0)]
    for sig, bound in sigs:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if popen is not None:
                if popen.poll() is not None:
                    _live_pids.discard(pid)
                    return popen.returncode
            elif not _pid_alive(pid):
                _live_pids.discard(pid)
                return None
            time.sleep(0.02)
    _live_pids.discard(pid)
    if popen is not None:
        try:
            return popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None
    return None


# ---------------------------------------------------------------- ports

_handed_out = set()


def _can_bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    """A port nothing listens on now (kernel-chosen, then released)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


def free_port_range(n):
    """BASE such that BASE..BASE+n-1 are all bindable now. Chosen below the
    ephemeral range so client sockets do not collide with it."""
    rng = random.Random(os.getpid() ^ int(time.time() * 1000))
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        ports = range(base, base + n)
        if any(p in _handed_out for p in ports):
            continue
        if all(_can_bind(p) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError("no free port range of %d" % n)


def port_accepts(port, timeout=0.2):
    try:
        s = socket.create_connection((HOST, port), timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    n = int(timeout / interval) + 2
    for _ in range(n):
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    v = pred()
    if v:
        return v
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


# ---------------------------------------------------------------- YAML

_PLAIN = re.compile(r"^[A-Za-z0-9_./@+-]([A-Za-z0-9_./:@+-]*[A-Za-z0-9_./@+-])?$")  # no ':' last


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if s and _PLAIN.match(s) and s.lower() not in ("true", "false", "null", "yes", "no", "on", "off", "~"):
        return s
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Block-style YAML for nested dicts/lists of scalars."""
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict):
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 2))
            elif isinstance(v, list):
                if not v:
                    out.append("%s%s: []" % (pad, k))
                else:
                    out.append("%s%s:" % (pad, k))
                    out.append(to_yaml(v, indent + 2))
            else:
                out.append("%s%s: %s" % (pad, k, _scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                sub = to_yaml(item, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0].lstrip()
                out.append("\n".join(sub))
            else:
                out.append("%s- %s" % (pad, _scalar(item)))
    else:
        out.append(pad + _scalar(obj))
    return "\n".join(out)


def deep_merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


# ---------------------------------------------------------------- HTTP

class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)] as received
        self.raw_head = raw_head
        self.body = b""
        self.complete = False  # body fully framed (CL reached / last chunk)
        self.interim = []  # 1xx responses that preceded this one

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_token(self, name, token):
        token = token.lower()
        for v in self.header_all(name):
            if token in [t.strip().lower() for t in v.split(",")]:
                return True
        return False

    @property
    def instance(self):
        return self.header("x-fc-instance")

    def text(self):
        return self.body.decode("latin-1")

    def __repr__(self):
        return "<Response %s %d %r body=%r>" % (self.version, self.status, self.headers, self.body[:200])


def parse_head(raw):
    """Parse a response head (without the final CRLFCRLF handling: raw is the
    head including its terminating empty line)."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise AssertionError("bad status line: %r" % lines[0])
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        if ":" not in line:
            raise AssertionError("bad header line: %r" % line)
        k, v = line.split(":", 1)
        headers.append((k, v.strip(" \t")))
    return Response(m.group(1), int(m.group(2)), m.group(3) or "", headers, raw)


class Closed(Exception):
    pass


class Conn:
    """A client connection with its own read buffer, so pipelined responses
    and data following a 101 can be read in sequence."""

    def __init__(self, port, timeout=10.0, host=HOST):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False
        self.reset = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, deadline):
        """One recv. Returns False on timeout; sets eof on close/reset."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(262144)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.eof = True
            self.reset = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _need(self, pred, deadline, what):
        for _ in range(1000000):
            r = pred()
            if r is not None:
                return r
            if not self._fill(deadline):
                r = pred()
                if r is not None:
                    return r
                if self.eof:
                    raise Closed("connection closed while waiting for %s (have %r)" % (what, self.buf[:300]))
                raise socket.timeout("timed out waiting for %s (have %r)" % (what, self.buf[:300]))
        raise AssertionError("unbounded read")

    def _take_until(self, marker, deadline, what):
        def pred():
            i = self.buf.find(marker)
            if i < 0:
                return None
            out = self.buf[: i + len(marker)]
            self.buf = self.buf[i + len(marker):]
            return out

        return self._need(pred, deadline, what)

    def _take(self, n, deadline, what):
        def pred():
            if len(self.buf) < n:
                return None
            out = self.buf[:n]
            self.buf = self.buf[n:]
            return out

        return self._need(pred, deadline, what)

    def recv_some(self, n, timeout):
        """Up to n bytes, whatever arrives first (b"" on EOF/timeout)."""
        deadline = time.monotonic() + timeout
        if not self.buf:
            self._fill(deadline)
        out = self.buf[:n]
        self.buf = self.buf[n:]
        return out

    def read_exact(self, n, timeout=10.0):
        return self._take(n, time.monotonic() + timeout, "%d bytes" % n)

    def read_head(self, timeout=10.0):
        raw = self._take_until(b"\r\n\r\n", time.monotonic() + timeout, "a response head")
        return parse_head(raw)

    def read_body(self, resp, method="GET", timeout=10.0):
        deadline = time.monotonic() + timeout
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            resp.complete = True
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te is not None and "chunked" in te.lower():
            body = []
            for _ in range(10000000):
                line = self._take_until(b"\r\n", deadline, "a chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    for _ in range(1000):  # trailers
                        t = self._take_until(b"\r\n", deadline, "trailers")
                        if t == b"\r\n":
                            break
                    break
                body.append(self._take(size, deadline, "chunk data"))
                self._take(2, deadline, "chunk CRLF")
            resp.body = b"".join(body)
            resp.complete = True
        elif cl is not None:
            resp.body = self._take(int(cl), deadline, "%s body bytes" % cl)
            resp.complete = True
        else:
            data, closed = self.read_until_close(deadline - time.monotonic())
            resp.body = data
            resp.complete = closed
        return resp

    def read_response(self, method="GET", timeout=10.0, skip_interim=True):
        """The next response; 1xx ones are collected in .interim unless
        skip_interim is False (then a 1xx is returned as is)."""
        deadline = time.monotonic() + timeout
        interim = []
        for _ in range(20):
            resp = self.read_head(deadline - time.monotonic())
            if 100 <= resp.status < 200 and resp.status != 101 and skip_interim:
                interim.append(resp)
                continue
            self.read_body(resp, method, deadline - time.monotonic())
            resp.interim = interim
            return resp
        raise AssertionError("too many interim responses")

    def request(self, method, path, headers=(), body=None, version="HTTP/1.1", host="127.0.0.1"):
        self.send(build_request(method, path, headers, body, version, host))

    def get(self, path, headers=(), timeout=10.0):
        self.request("GET", path, headers)
        return self.read_response(timeout=timeout)

    def read_until_close(self, timeout):
        """Everything until EOF/reset or timeout: (bytes, closed)."""
        deadline = time.monotonic() + timeout
        for _ in range(1000000):
            if self.eof:
                break
            if not self._fill(deadline) and not self.eof:
                break
        out, self.buf = self.buf, b""
        return out, self.eof

    def closed_within(self, timeout):
        """True if the peer closes within timeout; also returns bytes read."""
        data, closed = self.read_until_close(timeout)
        return closed, data


def build_request(method, path, headers=(), body=None, version="HTTP/1.1", host="127.0.0.1"):
    headers = list(headers)
    names = {k.lower() for k, _ in headers}
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        if isinstance(body, str):
            body = body.encode("latin-1")
        head += body
    return head


def split_responses(data):
    """Split bytes holding zero or more complete responses (CL or chunked
    framed); returns (list of Response, leftover bytes)."""
    out = []
    for _ in range(1000):
        if not data:
            break
        i = data.find(b"\r\n\r\n")
        if i < 0:
            break
        resp = parse_head(data[: i + 4])
        rest = data[i + 4:]
        cl = resp.header("content-length")
        te = resp.header("transfer-encoding")
        if resp.status < 200 or resp.status in (204, 304):
            n = 0
        elif te and "chunked" in te.lower():
            dec, used = dechunk(rest)
            if used is None:
                resp.body = dec
                out.append(resp)
                return out, b""
            resp.body = dec
            resp.complete = True
            out.append(resp)
            data = rest[used:]
            continue
        elif cl is not None:
            n = int(cl)
        else:
            resp.body = rest
            out.append(resp)
            return out, b""
        resp.body = rest[:n]
        resp.complete = len(resp.body) == n
        out.append(resp)
        data = rest[n:]
    return out, data


def dechunk(data):
    """Decode chunked data: (decoded, bytes used) or (partial, None)."""
    out = []
    pos = 0
    for _ in range(10000000):
        j = data.find(b"\r\n", pos)
        if j < 0:
            return b"".join(out), None
        size = int(data[pos:j].split(b";")[0].strip() or b"0", 16)
        pos = j + 2
        if size == 0:
            for _ in range(1000):
                k = data.find(b"\r\n", pos)
                if k < 0:
                    return b"".join(out), None
                line = data[pos:k]
                pos = k + 2
                if not line:
                    return b"".join(out), pos
        if len(data) < pos + size:
            out.append(data[pos:])
            return b"".join(out), None
        out.append(data[pos:pos + size])
        pos += size + 2
    return b"".join(out), None


def chunked(body, sizes=(65536,)):
    """Chunked encoding of body with chunk sizes cycling through sizes."""
    out = []
    pos = 0
    i = 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        i += 1
        part = body[pos:pos + n]
        pos += n
        out.append(b"%x\r\n" % len(part) + part + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def parse_kv(text):
    """'a=1 b=x' -> {'a': '1', 'b': 'x'}"""
    out = {}
    for tok in text.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def parse_echo(body):
    """The /echo body (a request head) -> (request line, [(name, value)])."""
    text = body.decode("latin-1")
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        headers.append((k, v.strip(" \t")))
    return lines[0], headers


def echo_values(headers, name):
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def curl(*args, timeout=30):
    """Run the real curl; returns CompletedProcess (stdout bytes)."""
    cmd = ["curl", "-sS", "--max-time", str(timeout)] + list(args)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5)


# ---------------------------------------------------------------- fnpool

class FnPool:
    def __init__(self, workdir, n=4, first=1, prefix="fn-"):
        if not FNPOOL:
            raise AssertionError("FNPOOL is not set and no build/tools/fnpool was found")
        self.n = n
        self.first = first
        self.prefix = prefix
        self.base = free_port_range(n)
        self.pidfile = os.path.join(workdir, "fnpool-%d.pids" % self.base)
        self.logpath = os.path.join(workdir, "fnpool-%d.log" % self.base)
        self.names = ["%s%d" % (prefix, first + i) for i in range(n)]
        self.ports = {name: self.base + i for i, name in enumerate(self.names)}
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [FNPOOL, "-n", str(n), "-p", str(self.base), "-f", self.pidfile,
             "--first", str(first), "--prefix", prefix],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        _live_pids.add(self.proc.pid)
        self.pids = {}
        try:
            wait_until(self._pidfile_complete, 10, what="fnpool pid file %s" % self.pidfile)
            for name, port in self.ports.items():
                wait_until(lambda p=port: port_accepts(p), 10, what="fnpool %s on %d" % (name, port))
        except AssertionError:
            self.stop()
            raise
        self.overhead = self._calibrate()

    def _pidfile_complete(self):
        if self.proc.poll() is not None and not os.path.exists(self.pidfile):
            raise AssertionError("fnpool exited with %s: %s" % (self.proc.returncode, self.log_text()))
        try:
            with open(self.pidfile) as f:
                lines = [l.split() for l in f.read().splitlines() if l.strip()]
        except OSError:
            return False
        if len(lines) < self.n or any(len(l) < 3 for l in lines):
            return False
        for name, pid, port in (l[:3] for l in lines):
            self.pids[name] = int(pid)
            _live_pids.add(int(pid))
            if self.ports.get(name) != int(port):
                raise AssertionError("pid file says %s on %s, expected %s" % (name, port, self.ports.get(name)))
        return True

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("latin-1")
        except OSError:
            return ""

    def stats(self, name):
        """GET /stats from one instance directly -> dict of ints (name kept)."""
        port = self.ports[name]
        with Conn(port, timeout=5) as c:
            c.request("GET", "/stats", [("Connection", "close")])
            r = c.read_response(timeout=5)
        if r.status != 200:
            raise AssertionError("fnpool %s /stats answered %d" % (name, r.status))
        kv = parse_kv(r.text())
        out = {"name": kv.get("name")}
        for k in ("connections", "requests", "active"):
            out[k] = int(kv[k])
        return out

    def snapshot(self):
        return {name: self.stats(name) for name in self.names}

    def _calibrate(self):
        """What one /stats query itself adds to the next snapshot."""
        a = self.snapshot()
        b = self.snapshot()
        return {n: {k: b[n][k] - a[n][k] for k in ("connections", "requests")} for n in self.names}

    def delta(self, before, after, key):
        """Per-instance growth of key between two snapshots, net of the
        snapshot query itself."""
        return {n: after[n][key] - before[n][key] - self.overhead[n][key] for n in self.names}

    def kill(self, name, sig=signal.SIGKILL):
        pid = self.pids[name]
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        wait_until(lambda: not port_accepts(self.ports[name]), 5, what="%s to stop listening" % name)

    def stop(self):
        for pid in list(self.pids.values()):
            stop_pid(pid, grace=2.0)
        if self.proc.poll() is None:
            stop_pid(self.proc.pid, self.proc, grace=2.0)
        _live_pids.discard(self.proc.pid)
        self.log.close()


# ---------------------------------------------------------------- redis

REDIS_SERVER = shutil.which("redis-server")


class RedisError(Exception):
    """An error reply, as Redis sent it."""


class Redis:
    """A real redis-server on a free 127.0.0.1 port (or a given one), without
    persistence, and a minimal RESP client to look at what tetherd wrote."""

    def __init__(self, workdir, port=None, password=None):
        if not REDIS_SERVER:
            raise unittest.SkipTest("redis-server is not installed")
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.logpath = os.path.join(workdir, "redis-%d.log" % self.port)
        self.proc = None
        self.start()

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.workdir, "--logfile", self.logpath]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _live_pids.add(self.proc.pid)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited with %s" % self.proc.returncode)
            try:
                return self.call("PING") == "PONG"
            except (OSError, RedisError):
                return False

        wait_until(up, 10, what="redis-server on %d" % self.port)

    @property
    def address(self):
        return "%s:%d" % (HOST, self.port)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def kill(self):
        """SIGKILL, and wait until it is gone."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=5)
        _live_pids.discard(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped one cannot act on TERM
            except ProcessLookupError:
                pass
            stop_pid(self.proc.pid, self.proc, grace=5.0)
        if self.proc:
            _live_pids.discard(self.proc.pid)

    def call(self, *args, timeout=5.0):
        """One command; returns the reply (str, int, list, None), raises
        RedisError on an error reply."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(_resp(["AUTH", self.password]))
                _read_reply(f)
            s.sendall(_resp(args))
            return _read_reply(f)

    def hgetall(self, key):
        r = self.call("HGETALL", key)
        return dict(zip(r[0::2], r[1::2]))


def _resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _read_reply(f, depth=0):
    line = f.readline()
    if not line.endswith(b"\r\n") or depth > 8:
        raise OSError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("latin-1")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f, depth + 1) for _ in range(n)]
    raise OSError("not RESP: %r" % line[:40])


# ---------------------------------------------------------------- tetherd

class Tetherd:
    def __init__(self, workdir, config, port, name="tetherd", extra_args=()):
        if not TETHERD:
            raise AssertionError("TETHERD is not set and no build/tetherd was found")
        self.port = port
        self.config = config
        self.cfgpath = os.path.join(workdir, "%s-%d.yaml" % (name, port))
        with open(self.cfgpath, "w") as f:
            f.write(to_yaml(config) + "\n")
        self.errpath = os.path.join(workdir, "%s-%d.stderr" % (name, port))
        self.outpath = os.path.join(workdir, "%s-%d.stdout" % (name, port))
        self.err = open(self.errpath, "wb")
        self.out = open(self.outpath, "wb")
        self.signalled = False
        self.proc = subprocess.Popen([TETHERD, "-c", self.cfgpath] + list(extra_args),
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                     start_new_session=True)
        _live_pids.add(self.proc.pid)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("tetherd exited with %s before listening:\n%s"
                                     % (self.proc.returncode, self.stderr_text()))
            return port_accepts(port)

        try:
            wait_until(ready, 10, what="tetherd to listen on %d" % port)
        except AssertionError:
            self.stop()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stderr_text(self):
        try:
            with open(self.errpath, "rb") as f:
                return f.read().decode("latin-1")
        except OSError:
            return ""

    def signal(self, sig):
        self.signalled = True
        os.kill(self.proc.pid, sig)

    def wait(self, timeout):
        """Exit code within timeout, or None."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace=10.0):
        crashed = None
        if self.proc.poll() is not None and not self.signalled:
            crashed = self.proc.returncode
        self.signalled = True
        rc = stop_pid(self.proc.pid, self.proc, grace=grace)
        for f in (self.err, self.out):
            if not f.closed:
                f.close()
        return rc, crashed


# ---------------------------------------------------------------- test case

def default_config(port, backends, access_log):
    return {
        "listen": [{"address": "%s:%d" % (HOST, port)}],
        "workers": 1,
        "log": {"level": "debug", "access": access_log},
        "timeouts": {"client_header": "10s", "client_idle": "60s", "backend_connect": "2s",
                     "backend_response": "300s", "backend_idle": "300s"},
        "backends": backends,
    }


class TetherTestCase(unittest.TestCase):
    """Base class: self.pool / self.tether, started on demand, stopped in
    tearDown; their logs are printed when the test fails."""

    def run(self, result=None):
        if result is None:
            result = self.defaultTestResult()
        self.workdir = tempfile.mkdtemp(prefix="tether-it-")
        self._pools = []
        self._tethers = []
        self._conns = []
        self._redises = []
        before = len(result.failures) + len(result.errors)
        try:
            return super().run(result)
        finally:
            if len(result.failures) + len(result.errors) > before:
                self._dump_logs()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def tearDown(self):
        # clients first, so an open tunnel does not hold tetherd's shutdown up
        for c in self._conns:
            c.close()
        problems = []
        for t in self._tethers:
            rc, crashed = t.stop()
            if crashed is not None:
                problems.append("tetherd exited by itself during the test (code %s)" % crashed)
        for p in self._pools:
            p.stop()
        for r in self._redises:
            r.stop()
        if problems:
            self.fail("; ".join(problems))

    def _dump_logs(self):
        for t in self._tethers:
            sys.stderr.write("\n----- tetherd stderr (%s) -----\n%s\n" % (t.errpath, t.stderr_text()[-20000:]))
            try:
                with open(t.cfgpath) as f:
                    sys.stderr.write("----- config -----\n%s\n" % f.read())
            except OSError:
                pass
        for p in self._pools:
            txt = p.log_text()
            if txt:
                sys.stderr.write("----- fnpool output -----\n%s\n" % txt[-4000:])
        sys.stderr.flush()

    # -- starting things

    def start_pool(self, n=4, first=1, prefix="fn-"):
        pool = FnPool(self.workdir, n, first, prefix)
        self._pools.append(pool)
        return pool

    def start_redis(self, port=None, password=None):
        r = Redis(self.workdir, port, password)
        self._redises.append(r)
        return r

    def backends_of(self, pool):
        return [{"name": name, "address": "%s:%d" % (HOST, port)} for name, port in pool.ports.items()]

    def start_tether(self, pool=None, backends=None, **overrides):
        """Start tetherd in front of pool (or explicit backends); overrides
        are merged into the generated config."""
        port = free_port()
        if backends is None:
            backends = self.backends_of(pool)
        self.access_log = os.path.join(self.workdir, "access-%d.log" % port)
        cfg = deep_merge(default_config(port, backends, self.access_log), overrides)
        t = Tetherd(self.workdir, cfg, port)
        self._tethers.append(t)
        self.tether = t
        self.port = port
        return t

    def conn(self, timeout=10.0, port=None):
        c = Conn(port or self.port, timeout=timeout)
        self._conns.append(c)
        return c

    def run_threads(self, target, n, timeout=60, barrier=False):
        """target(i) (with barrier: target(i, a Barrier of n)) on n threads at
        once; their results in order. An exception in one is raised here, a
        thread still running after timeout fails the test."""
        b = threading.Barrier(n, timeout=10) if barrier else None
        results = [None] * n

        def wrap(i):
            try:
                results[i] = target(i, b) if barrier else target(i)
            except BaseException as e:  # reported by the main thread
                results[i] = e

        threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "client threads hung")
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def assertAlive(self, t=None):
        t = t or self.tether
        self.assertTrue(t.alive(), "tetherd died (code %s)" % t.proc.returncode)


def main():
    unittest.main(verbosity=2)
