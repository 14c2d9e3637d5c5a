"""TLS: listeners (SNI, ALPN, versions, suites, renegotiation, resumption,
plain HTTP on a TLS port, handshake limits, reload on SIGHUP), TLS to
backends (verification on, off, CA, SNI) and `tetherd -t` on certificate
files. Real clients: curl, `openssl s_client`, Python's ssl module.

The certificates are made here with the openssl command line, in a
temporary directory: a CA and a second, unrelated CA; leaves for `a.test`
and `*.b.test`; a backend leaf for 127.0.0.1 / backend.test; a self-signed
one; an expired one (issued with `openssl ca -startdate/-enddate`); `c.test`
from an intermediate CA, in a file that holds the chain.
"""

import http.server
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

HOST = it.HOST
OPENSSL = shutil.which("openssl")

# ---------------------------------------------------------------- PKI

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $ENV::SAN
[selfsigned]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $ENV::SAN
[ca]
default_ca = ca_default
[ca_default]
dir = .
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = policy_any
copy_extensions = none
x509_extensions = leaf
unique_subject = no
[policy_any]
commonName = supplied
"""


class Pki:
    """Every certificate and key the tests use, made once per run."""

    def __init__(self, d):
        self.dir = d
        self.cnf = os.path.join(d, "openssl.cnf")
        with open(self.cnf, "w") as f:
            f.write(_OPENSSL_CNF)
        os.mkdir(os.path.join(d, "newcerts"))
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial"), "w") as f:
            f.write("1000\n")
        self.ca_crt, self.ca_key = self._ca("ca", "tether test CA")
        self.ca2_crt, _ = self._ca("ca2", "unrelated test CA")
        self.a_crt, self.a_key = self._leaf("a", "a.test", "DNS:a.test")
        self.b_crt, self.b_key = self._leaf("b", "wildcard.b.test", "DNS:*.b.test")
        self.be_crt, self.be_key = self._leaf("backend", "backend.test", "DNS:backend.test,IP:127.0.0.1")
        self.self_crt, self.self_key = self._selfsigned("self", "backend.test", "DNS:backend.test,IP:127.0.0.1")
        self.old_crt, self.old_key = self._expired("old", "old.test", "DNS:old.test")
        # c.test is issued by an intermediate CA; its file holds the leaf, then the intermediate
        self.inter_crt, self.inter_key = self._intermediate("inter", "tether test intermediate")
        leaf, self.c_key = self._leaf("c", "c.test", "DNS:c.test", ca=(self.inter_crt, self.inter_key))
        self.c_chain = self.path("c-chain.crt")
        with open(self.c_chain, "w") as out:
            for part in (leaf, self.inter_crt):
                with open(part) as f:
                    out.write(f.read())
        self.der = {}
        for name in ("a", "b", "backend", "self", "old"):
            with open(os.path.join(d, name + ".crt")) as f:
                self.der[name] = ssl.PEM_cert_to_DER_cert(f.read())

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args, san="DNS:unused"):
        env = dict(os.environ, SAN=san, OPENSSL_CONF=self.cnf)
        p = subprocess.run([OPENSSL] + list(args), cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if p.returncode != 0:
            raise AssertionError("openssl %s failed: %s" % (" ".join(args), p.stderr.decode("latin-1")))
        return p

    def _newkey(self):
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def _ca(self, name, cn):
        crt, key = self.path(name + ".crt"), self.path(name + ".key")
        self.openssl("req", "-x509", "-config", self.cnf, "-extensions", "v3_ca", *self._newkey(),
                     "-subj", "/CN=" + cn, "-days", "30", "-keyout", key, "-out", crt)
        return crt, key

    def _csr(self, name, cn, san):
        key, csr = self.path(name + ".key"), self.path(name + ".csr")
        self.openssl("req", "-new", "-config", self.cnf, *self._newkey(), "-subj", "/CN=" + cn,
                     "-keyout", key, "-out", csr, san=san)
        return key, csr

    def _leaf(self, name, cn, san, ca=None, extensions="leaf"):
        ca_crt, ca_key = ca or (self.ca_crt, self.ca_key)
        key, csr = self._csr(name, cn, san)
        crt = self.path(name + ".crt")
        self.openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                     "-CAcreateserial", "-days", "30", "-extfile", self.cnf, "-extensions", extensions,
                     "-out", crt, san=san)
        return crt, key

    def _intermediate(self, name, cn):
        return self._leaf(name, cn, "DNS:unused", extensions="v3_ca")

    def _selfsigned(self, name, cn, san):
        crt, key = self.path(name + ".crt"), self.path(name + ".key")
        self.openssl("req", "-x509", "-config", self.cnf, "-extensions", "selfsigned", *self._newkey(),
                     "-subj", "/CN=" + cn, "-days", "30", "-keyout", key, "-out", crt, san=san)
        return crt, key

    def _expired(self, name, cn, san):
        # OpenSSL 3.0's x509 cannot backdate; `openssl ca` can.
        key, csr = self._csr(name, cn, san)
        crt = self.path(name + ".crt")
        self.openssl("ca", "-batch", "-config", self.cnf, "-cert", self.ca_crt, "-keyfile", self.ca_key,
                     "-in", csr, "-out", crt, "-notext",
                     "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", san=san)
        return crt, key


PKI = None
_PKI_DIR = None


def setUpModule():
    global PKI, _PKI_DIR
    if not OPENSSL:
        raise unittest.SkipTest("openssl command line not installed")
    _PKI_DIR = tempfile.mkdtemp(prefix="tether-tls-pki-")
    PKI = Pki(_PKI_DIR)


def tearDownModule():
    if _PKI_DIR:
        shutil.rmtree(_PKI_DIR, ignore_errors=True)


# ---------------------------------------------------------------- clients

def run(cmd, stdin_data=b"", timeout=15):
    """Run a client to completion, bounded: (returncode, stdout+stderr text, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run(cmd, input=stdin_data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    return p.returncode, p.stdout.decode("latin-1"), time.monotonic() - t0


def s_client(port, *args, stdin_data=b"", timeout=15):
    """openssl s_client to 127.0.0.1:port; stdin ends at once unless data given."""
    return run([OPENSSL, "s_client", "-connect", "%s:%d" % (HOST, port)] + list(args),
               stdin_data=stdin_data, timeout=timeout)


def negotiated(out):
    """('TLSv1.2', 'ECDHE-...') from s_client's 'New, TLSv1.2, Cipher is X' line,
    or None when no session was established."""
    for line in out.splitlines():
        for lead in ("New, ", "Reused, "):
            if line.startswith(lead):
                parts = line[len(lead):].split(", Cipher is ")
                if len(parts) == 2 and parts[0] != "(NONE)" and parts[1].strip() != "(NONE)":
                    return parts[0], parts[1].strip()
    return None


def client_ctx(cafile=None, verify=True, alpn=("http/1.1",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify and cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TlsConn(it.Conn):
    """it.Conn over TLS: same reading helpers, on an SSLSocket."""

    def __init__(self, port, ctx, server_hostname=None, timeout=10.0):
        super().__init__(port, timeout=timeout)
        if server_hostname is None:
            ctx.check_hostname = False
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def peer_der(self):
        return self.sock.getpeercert(binary_form=True)


def client_hello(server_hostname="a.test"):
    """The bytes of a real ClientHello (TLS 1.2-1.3), from Python's ssl."""
    ctx = client_ctx(verify=False)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read(), obj, inc, out


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class OpensslServer:
    """`openssl s_server -www` on a free port, as a control for the probes."""

    def __init__(self, workdir, *args):
        self.port = it.free_port()
        self.logpath = os.path.join(workdir, "s_server-%d.log" % self.port)
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", "%s:%d" % (HOST, self.port), "-www",
             "-cert", PKI.a_crt, "-key", PKI.a_key] + list(args),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        it._live_pids.add(self.proc.pid)
        try:
            it.wait_until(lambda: self.proc.poll() is None and it.port_accepts(self.port), 10,
                          what="openssl s_server on %d" % self.port)
        except AssertionError:
            self.stop()
            raise

    def stop(self):
        it.stop_pid(self.proc.pid, self.proc, grace=2.0)
        self.log.close()


# ---------------------------------------------------------------- a TLS backend

class TlsBackend:
    """An HTTPS/1.1 server (stdlib) on a free port: answers every path with
    200 `tls-backend path=P`, records requests and the SNI names it saw."""

    def __init__(self, certfile, keyfile):
        self.requests = []
        self.sni = []
        self.port = it.free_port()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        ctx.sni_callback = lambda obj, name, c: self.sni.append(name) and None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def do_GET(self):
                owner.requests.append((self.path, dict(self.headers)))
                if self.path in ("/eof-clean", "/eof-cut"):
                    # A body that ends with the connection, closed with
                    # close_notify or cut at the TCP level without it.
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"x" * 5000)
                    self.wfile.flush()
                    self.close_connection = True
                    if self.path == "/eof-clean":
                        self.connection.unwrap()
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = ("tls-backend path=%s" % self.path).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = super().get_request()
                # the handshake runs in the handler thread, on first read
                return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address):
                pass  # a refused handshake is expected in some tests

        self.server = Server((HOST, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def app_requests(self):
        return [p for p, _ in self.requests if p != "/healthz"]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---------------------------------------------------------------- base case

class TlsCase(it.TetherTestCase):
    def setUp(self):
        self._servers = []

    def tearDown(self):
        for s in self._servers:
            s.stop()
        super().tearDown()

    def tls_block(self, certs=None, **kw):
        certs = certs if certs is not None else [(PKI.a_crt, PKI.a_key), (PKI.b_crt, PKI.b_key)]
        block = {"certificates": [{"cert": c, "key": k} for c, k in certs]}
        block.update(kw)
        return block

    def start_tls(self, pool=None, tls=None, backends=None, plain=False, **overrides):
        """tetherd with a TLS listener on self.port (+ a plain one on
        self.plain_port when plain=True)."""
        port = it.free_port()
        if backends is None:
            backends = self.backends_of(pool)
        self.access_log = os.path.join(self.workdir, "access-%d.log" % port)
        cfg = it.default_config(port, backends, self.access_log)
        cfg["listen"][0]["tls"] = tls if tls is not None else self.tls_block()
        if plain:
            self.plain_port = it.free_port()
            cfg["listen"].append({"address": "%s:%d" % (HOST, self.plain_port)})
        cfg = it.deep_merge(cfg, overrides)
        t = it.Tetherd(self.workdir, cfg, port)
        self._tethers.append(t)
        self.tether = t
        self.port = port
        return t

    def tls_conn(self, server_hostname=None, ctx=None, port=None, timeout=10.0):
        c = TlsConn(port or self.port, ctx or client_ctx(verify=False), server_hostname, timeout)
        self._conns.append(c)
        return c

    def assertServes(self, server_hostname="a.test", port=None):
        c = self.tls_conn(server_hostname, port=port)
        r = c.get("/", [("x-fc-session-id", "probe-%d" % random.randrange(1 << 30)), ("Connection", "close")])
        self.assertEqual(r.status, 200, r)
        return r

    def curl_tls(self, name, path="/", *extra):
        url = "https://%s:%d%s" % (name, self.port, path)
        return it.curl("--resolve", "%s:%d:%s" % (name, self.port, HOST), "--cacert", PKI.ca_crt,
                       "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", *extra, url, timeout=10)


# ---------------------------------------------------------------- listener

class Listener(TlsCase):
    def setUp(self):
        super().setUp()
        self.pool = self.start_pool(n=2)
        self.start_tls(self.pool, plain=True)

    def test_sni_picks_the_certificate_by_name(self):
        # curl verifies each name against the CA and the name: both must pass
        for name in ("a.test", "x.b.test", "y.b.test"):
            p = self.curl_tls(name)
            self.assertEqual(p.returncode, 0, "%s: %s" % (name, p.stderr))
            self.assertEqual(p.stdout.decode(), "200 0", name)
        # and they are two different certificates
        for name, want in (("a.test", "a"), ("x.b.test", "b"), ("unknown.test", "a"), (None, "a"),
                           ("b.test", "a"), ("deep.x.b.test", "a")):
            c = self.tls_conn(name)
            self.assertEqual(c.peer_der(), PKI.der[want], "SNI %r should get certificate %s" % (name, want))
            c.close()

    def test_sni_strict_client_against_other_name_fails(self):
        # the default certificate does not cover c.test: a verifying client refuses it
        p = self.curl_tls("c.test")
        self.assertNotEqual(p.returncode, 0, p.stdout)

    def test_certificate_chain_sent_as_configured(self):
        # a client that trusts only the root verifies c.test through the intermediate
        # sent from the certificate file; a leaf alone goes out alone
        t = self.start_tls(self.pool, tls=self.tls_block(certs=[(PKI.a_crt, PKI.a_key),
                                                                (PKI.c_chain, PKI.c_key)]))
        p = self.curl_tls("c.test")
        self.assertEqual((p.returncode, p.stdout.decode()), (0, "200 0"), p.stderr)
        for name, want in (("c.test", 2), ("a.test", 1)):
            rc, out, _ = s_client(t.port, "-servername", name, "-showcerts")
            self.assertEqual(out.count("-----BEGIN CERTIFICATE-----"), want, out)

    def test_alpn_http11(self):
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-alpn", "h2,http/1.1")
        self.assertIn("ALPN protocol: http/1.1", out)
        # no ALPN at all: still served
        p = it.curl("-k", "--no-alpn", "--resolve", "a.test:%d:%s" % (self.port, HOST),
                    "-H", "x-fc-session-id: noalpn", "https://a.test:%d/" % self.port, timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"instance=", p.stdout)

    def test_alpn_h2_only_gets_fatal_alert(self):
        rc, out, secs = s_client(self.port, "-servername", "a.test", "-alpn", "h2", timeout=15)
        self.assertIsNone(negotiated(out), out)
        self.assertRegex(out.lower(), r"no application protocol|alert number 120", out)
        self.assertLess(secs, 5, "the refusal took %.1fs" % secs)
        with self.assertRaises(ssl.SSLError) as cm:
            self.tls_conn("a.test", client_ctx(verify=False, alpn=("h2",)), timeout=5)
        self.assertIn("NO APPLICATION PROTOCOL", str(cm.exception).upper().replace("_", " "))
        self.assertServes()

    def test_tls12_and_tls13(self):
        for flag, want in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            rc, out, _ = s_client(self.port, "-servername", "a.test", flag)
            n = negotiated(out)
            self.assertIsNotNone(n, out)
            self.assertEqual(n[0], want)
            self.assertIn("Compression: NONE", out)

    def test_refuses_tls10_and_tls11(self):
        probe = ("-cipher", "DEFAULT@SECLEVEL=0")
        for flag in ("-tls1", "-tls1_1"):
            rc, out, _ = s_client(self.port, "-servername", "a.test", flag, *probe)
            self.assertIsNone(negotiated(out), "%s was accepted:\n%s" % (flag, out))
            self.assertNotEqual(rc, 0)
        self.assertServes()

    def test_tls10_probe_can_fail(self):
        # the same probe against a server that allows TLS 1.0 / 1.1 connects:
        # the refusal above is tetherd's, not the client's
        for flag, want in (("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")):
            srv = OpensslServer(self.workdir, flag, "-cipher", "DEFAULT@SECLEVEL=0")
            self._servers.append(srv)
            rc, out, _ = s_client(srv.port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
            n = negotiated(out)
            self.assertIsNotNone(n, out)
            self.assertIn("Protocol  : %s\n" % want, out)

    def test_intermediate_suites_only(self):
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertEqual(negotiated(out), ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"), out)
        # CBC-SHA1 and null/export suites are not in Mozilla's intermediate list
        for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0"):
            rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_2", "-cipher", weak)
            self.assertIsNone(negotiated(out), "%s accepted:\n%s" % (weak, out))

    def renegotiate(self, port, request_host):
        """s_client -tls1_2; 'R' once connected, then an HTTP request:
        (output, renegotiated_and_answered)."""
        outpath = os.path.join(self.workdir, "reneg-%d.out" % port)
        with open(outpath, "wb") as out:
            p = subprocess.Popen([OPENSSL, "s_client", "-connect", "%s:%d" % (HOST, port), "-tls1_2",
                                  "-servername", request_host, "-crlf"],
                                 stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
            it._live_pids.add(p.pid)
            try:
                def wait_for(s, t):
                    try:
                        it.wait_until(lambda: s in read_file(outpath) or p.poll() is not None, t,
                                      what=repr(s))
                    except AssertionError:
                        pass
                wait_for(b"SSL-Session:", 5)
                for data, mark in ((b"R\n", b"RENEGOTIATING"),
                                   (("GET / HTTP/1.1\nHost: %s\nx-fc-session-id: reneg\n"
                                     "Connection: close\n\n" % request_host).encode(), b"HTTP/1.")):
                    try:
                        p.stdin.write(data)
                        p.stdin.flush()
                    except (BrokenPipeError, ValueError):
                        break
                    wait_for(mark, 3)
                time.sleep(0.3)
                try:
                    p.stdin.close()
                except BrokenPipeError:
                    pass
                p.wait(10)
            finally:
                it.stop_pid(p.pid, p, grace=1.0)
        with open(outpath, "rb") as f:
            text = f.read().decode("latin-1")
        after = text.split("RENEGOTIATING", 1)
        return text, len(after) == 2 and "HTTP/1." in after[1]

    def test_refuses_renegotiation(self):
        out, renegotiated = self.renegotiate(self.port, "a.test")
        self.assertIn("RENEGOTIATING", out)
        self.assertFalse(renegotiated, "renegotiation accepted:\n" + out[-2000:])
        self.assertAlive()
        self.assertServes()

    def test_renegotiation_probe_can_fail(self):
        srv = OpensslServer(self.workdir, "-client_renegotiation")
        self._servers.append(srv)
        out, renegotiated = self.renegotiate(srv.port, "a.test")
        self.assertTrue(renegotiated, "control server did not renegotiate:\n" + out[-2000:])

    def test_resumption_tls12(self):
        for extra in ((), ("-no_ticket",)):  # tickets, then the server's session cache
            rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_2", "-reconnect", *extra, timeout=30)
            self.assertEqual(out.count("New, TLSv1.2"), 1, out)
            self.assertGreaterEqual(out.count("Reused, TLSv1.2"), 5, "%s:\n%s" % (extra, out))

    def test_resumption_tls13(self):
        sess = os.path.join(self.workdir, "tls13.sess")
        req = b"GET / HTTP/1.1\r\nHost: a.test\r\nx-fc-session-id: t13\r\nConnection: close\r\n\r\n"
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_3", "-ign_eof", "-sess_out", sess,
                              stdin_data=req)
        self.assertIn("HTTP/1.1 200", out)
        self.assertIn("New, TLSv1.3", out)
        self.assertTrue(os.path.getsize(sess) > 0)
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_3", "-ign_eof", "-sess_in", sess,
                              stdin_data=req)
        self.assertIn("Reused, TLSv1.3", out)
        self.assertIn("HTTP/1.1 200", out)

    def ticket_chain(self, port):
        """(tickets on a full TLS 1.3 connection, reused?, tickets on the
        connection resumed from it)."""
        s1, s2 = (os.path.join(self.workdir, "chain-%d-%d.sess" % (port, i)) for i in (1, 2))
        req = b"GET / HTTP/1.1\r\nHost: a.test\r\nx-fc-session-id: chain\r\nConnection: close\r\n\r\n"
        mark = "Post-Handshake New Session Ticket arrived"
        rc, out1, _ = s_client(port, "-servername", "a.test", "-tls1_3", "-ign_eof", "-sess_out", s1,
                               stdin_data=req)
        rc, out2, _ = s_client(port, "-servername", "a.test", "-tls1_3", "-ign_eof", "-sess_in", s1,
                               "-sess_out", s2, stdin_data=req)
        return out1.count(mark), "Reused, TLSv1.3" in out2, out2.count(mark)

    def test_resumed_tls13_connection_gets_a_new_ticket(self):
        # TLS 1.3 clients use a ticket once (RFC 8446 C.4): without a fresh
        # one on the resumed connection, every other connection is a full
        # handshake. OpenSSL's own server sends one; the control shows the
        # probe sees it.
        srv = OpensslServer(self.workdir)
        self._servers.append(srv)
        self.assertEqual(self.ticket_chain(srv.port), (2, True, 1))
        first, reused, again = self.ticket_chain(self.port)
        self.assertGreaterEqual(first, 1)
        self.assertTrue(reused)
        self.assertGreaterEqual(again, 1, "no new session ticket on a resumed TLS 1.3 connection")

    def test_forwarded_proto_and_secure_cookie(self):
        c = self.tls_conn("a.test")
        r = c.get("/echo", [("x-fc-session-id", "xfp")])
        self.assertEqual(r.status, 200, r)
        _, headers = it.parse_echo(r.body)
        self.assertEqual(it.echo_values(headers, "x-forwarded-proto"), ["https"], headers)
        # a client cannot claim https on a plain listener, nor http on TLS
        r = c.get("/echo", [("x-fc-session-id", "xfp"), ("X-Forwarded-Proto", "http")])
        _, headers = it.parse_echo(r.body)
        self.assertEqual(it.echo_values(headers, "x-forwarded-proto"), ["https"], headers)
        r = c.get("/")  # no key: a cookie is minted
        cookies = r.header_all("set-cookie")
        self.assertEqual(len(cookies), 1, r)
        self.assertIn("secure", [a.strip().lower() for a in cookies[0].split(";")], cookies[0])
        # the plain listener of the same tetherd: http, no Secure
        p = self.conn(port=self.plain_port)
        r = p.get("/echo", [("x-fc-session-id", "xfp")])
        _, headers = it.parse_echo(r.body)
        self.assertEqual(it.echo_values(headers, "x-forwarded-proto"), ["http"], headers)
        r = p.get("/")
        cookies = r.header_all("set-cookie")
        self.assertEqual(len(cookies), 1, r)
        self.assertNotIn("secure", [a.strip().lower() for a in cookies[0].split(";")], cookies[0])

    def test_plain_http_gets_plaintext_400_and_close(self):
        for req in (b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", b"POST /x HTTP/1.0\r\n\r\n", b"G"):
            c = self.conn()
            t0 = time.monotonic()
            c.send(req)
            closed, data = c.closed_within(5)
            self.assertTrue(closed, "not closed within 5s after %r (got %r)" % (req, data))
            self.assertTrue(data.startswith(b"HTTP/1.1 400"), "%r -> %r" % (req, data[:200]))
            self.assertLess(time.monotonic() - t0, 4)
            c.close()
        p = it.curl("http://%s:%d/" % (HOST, self.port), "-o", "/dev/null", "-w", "%{http_code}", timeout=10)
        self.assertEqual(p.stdout, b"400", p.stderr)
        self.assertServes()

    def test_close_notify_before_close(self):
        # RFC 8446 6.1: close_notify before closing the write side, so a
        # client can tell the end of the stream from a truncation
        for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_ctx(verify=False)
            ctx.maximum_version = ver
            s = socket.create_connection((HOST, self.port), timeout=5)
            ss = ctx.wrap_socket(s, server_hostname="a.test", suppress_ragged_eofs=False)
            try:
                ss.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nx-fc-session-id: cn\r\nConnection: close\r\n\r\n")
                data = b""
                try:
                    for _ in range(1000):
                        d = ss.recv(65536)
                        if not d:
                            break
                        data += d
                except ssl.SSLError as e:
                    self.fail("%s: connection closed without close_notify after %r: %s" % (ver.name, data[:40], e))
                self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
            finally:
                ss.close()

    def test_keepalive_over_tls_with_curl(self):
        url = "https://a.test:%d/" % self.port
        p = it.curl("--resolve", "a.test:%d:%s" % (self.port, HOST), "--cacert", PKI.ca_crt,
                    "-H", "x-fc-session-id: ka", "-w", "%{http_code} %{num_connects}\\n",
                    *(["-o", "/dev/null", url] * 10), timeout=20)
        lines = p.stdout.decode().split()
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(lines[0::2], ["200"] * 10)
        self.assertEqual(sum(int(x) for x in lines[1::2]), 1, "one connection for ten requests")


class Resumption(TlsCase):
    def test_tickets_shared_by_workers(self):
        pool = self.start_pool(n=1)
        self.start_tls(pool, workers=2)
        rc, out, _ = s_client(self.port, "-servername", "x.b.test", "-tls1_2", "-reconnect", timeout=30)
        self.assertGreaterEqual(out.count("Reused, TLSv1.2"), 5, out)
        sess = os.path.join(self.workdir, "w.sess")
        req = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        s_client(self.port, "-servername", "a.test", "-tls1_3", "-ign_eof", "-sess_out", sess, stdin_data=req)
        reused = 0
        for _ in range(6):  # new connections land on both workers
            rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_3", "-ign_eof", "-sess_in", sess,
                                  stdin_data=req)
            reused += "Reused, TLSv1.3" in out
        self.assertEqual(reused, 6)


class Settings(TlsCase):
    def test_min_version_tls13(self):
        pool = self.start_pool(n=1)
        self.start_tls(pool, tls=self.tls_block(min_version="tls1.3"))
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_2")
        self.assertIsNone(negotiated(out), out)
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_3")
        self.assertEqual(negotiated(out)[0], "TLSv1.3", out)

    def test_ciphers(self):
        pool = self.start_pool(n=1)
        self.start_tls(pool, tls=self.tls_block(ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_2", "-cipher",
                              "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertIsNone(negotiated(out), out)
        rc, out, _ = s_client(self.port, "-servername", "a.test", "-tls1_2")
        self.assertEqual(negotiated(out), ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"), out)
        # and the x.b.test certificate's context has the same setting
        rc, out, _ = s_client(self.port, "-servername", "x.b.test", "-tls1_2", "-cipher",
                              "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertIsNone(negotiated(out), out)


class StsBackend:
    """A plain HTTP/1.1 backend whose responses state their own HSTS policy."""

    def __init__(self):
        self.port = it.free_port()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = b"sts-backend"
                self.send_response(200)
                self.send_header("Strict-Transport-Security", "max-age=60")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Hsts(TlsCase):
    STS = "strict-transport-security"

    def test_off_by_default(self):
        self.start_tls(self.start_pool(n=1))
        self.assertEqual(self.assertServes().header_all(self.STS), [])

    def test_on_tls_responses_only(self):
        self.start_tls(self.start_pool(n=1), tls=self.tls_block(hsts="365d", hsts_subdomains=True),
                       plain=True)
        self.assertEqual(self.assertServes().header_all(self.STS), ["max-age=31536000; includeSubDomains"])
        # tether's own answers carry it too
        c = self.tls_conn("a.test")
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: x\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.status, r.header_all(self.STS)), (400, ["max-age=31536000; includeSubDomains"]))
        # never over plain HTTP (RFC 6797 7.2): the plain listener, or plain HTTP on the TLS port
        r = self.conn(port=self.plain_port).get("/", [("x-fc-session-id", "plain")])
        self.assertEqual((r.status, r.header_all(self.STS)), (200, []))
        c = self.conn()
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        self.assertEqual((r.status, r.header_all(self.STS)), (400, []))

    def test_max_age_alone(self):
        self.start_tls(self.start_pool(n=1), tls=self.tls_block(hsts="1h"))
        self.assertEqual(self.assertServes().header_all(self.STS), ["max-age=3600"])

    def test_backend_policy_wins(self):
        be = StsBackend()
        self._servers.append(be)
        self.start_tls(backends=[{"name": "sts", "address": "%s:%d" % (HOST, be.port)}],
                       tls=self.tls_block(hsts="365d"))
        r = self.assertServes()
        self.assertEqual((r.body, r.header_all(self.STS)), (b"sts-backend", ["max-age=60"]))


# ---------------------------------------------------------------- bad input, limits

class Handshake(TlsCase):
    TIMEOUT = 1.0

    def setUp(self):
        super().setUp()
        self.pool = self.start_pool(n=1)
        self.start_tls(self.pool, tls=self.tls_block(handshake_timeout="1s"))

    def assertDropped(self, c, what, within=None):
        within = within or self.TIMEOUT + 3
        t0 = time.monotonic()
        closed, data = c.closed_within(within)
        self.assertTrue(closed, "%s: still open after %.1fs" % (what, within))
        return time.monotonic() - t0, data

    def test_silent_client_dropped(self):
        c = self.conn()
        secs, data = self.assertDropped(c, "silent client")
        self.assertGreater(secs, self.TIMEOUT * 0.5)
        self.assertServes()

    def test_timeout_ends_with_the_handshake(self):
        # once the handshake is done, handshake_timeout no longer applies
        c = self.tls_conn("a.test")
        time.sleep(self.TIMEOUT * 2)
        r = c.get("/", [("x-fc-session-id", "slow-first")])
        self.assertEqual(r.status, 200, r)
        time.sleep(self.TIMEOUT * 2)
        r = c.get("/", [("x-fc-session-id", "slow-first")])
        self.assertEqual(r.status, 200, r)

    def test_truncated_client_hello(self):
        hello = client_hello()[0]
        for cut in (1, 5, 40, len(hello) - 1):
            c = self.conn()
            c.send(hello[:cut])
            self.assertDropped(c, "ClientHello cut at %d/%d" % (cut, len(hello)))
        # cut then closed by the client
        c = self.conn()
        c.send(hello[:50])
        c.sock.shutdown(socket.SHUT_WR)
        self.assertDropped(c, "cut ClientHello then FIN", within=3)
        self.assertServes()

    def test_client_stops_mid_handshake(self):
        hello, obj, inc, out = client_hello()
        c = self.conn()
        c.send(hello)
        first = c.recv_some(65536, 3)
        self.assertTrue(first.startswith(b"\x16\x03"), first[:20])  # ServerHello...
        # ... and the client never sends its Finished
        self.assertDropped(c, "client stopped mid-handshake")
        self.assertServes()

    def test_garbage(self):
        rnd = random.Random(1234)
        cases = [
            b"\x16\x03\x01\xff\xff" + bytes(rnd.randrange(256) for _ in range(4000)),  # record too long
            b"\x16\x03\x01\x00\x30" + bytes(rnd.randrange(256) for _ in range(48)),   # garbage handshake
            b"\x16" + b"\x00" * 4096,
            b"\x16\x03\x03\x00\x05\x01\x00\x00\x01\x00",  # ClientHello with a body of length 1
            bytes([0x80, 0x2e, 0x01, 0x03, 0x01]) + b"\x00" * 41,  # SSLv2-style hello
            bytes(rnd.randrange(1, 256) for _ in range(8192)),
        ]
        for data in cases:
            c = self.conn()
            try:
                c.send(data)
            except OSError:
                pass  # closed while we were still sending
            self.assertDropped(c, "garbage %r" % data[:8])
            self.assertAlive()
        self.assertServes()

    def test_many_stalled_handshakes_do_not_affect_others(self):
        hello = client_hello()[0]
        before = rss_kb(self.tether.pid)
        stalled = []
        try:
            for i in range(200):
                s = socket.create_connection((HOST, self.port), timeout=5)
                s.sendall(hello if i % 2 else hello[:60])
                stalled.append(s)
            during = rss_kb(self.tether.pid)
            # meanwhile other clients are served promptly
            for i in range(10):
                t0 = time.monotonic()
                self.assertServes()
                self.assertLess(time.monotonic() - t0, 1.0)
            # every stalled one is dropped by the handshake timeout
            deadline = time.monotonic() + self.TIMEOUT + 5
            still = 0
            for s in stalled:
                s.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    for _ in range(100):
                        if not s.recv(65536):
                            break
                    else:
                        still += 1
                except socket.timeout:
                    still += 1
                except OSError:
                    pass
            self.assertEqual(still, 0, "%d of 200 stalled handshakes still open" % still)
        finally:
            for s in stalled:
                s.close()
        self.assertLess(during - before, 40 * 1024,
                        "200 stalled handshakes grew RSS by %d kB" % (during - before))
        self.assertServes()


# ---------------------------------------------------------------- reload

class Transfers(TlsCase):
    """Large responses over TLS: the records tetherd makes wait for a slow
    socket without loss, and a reader that takes nothing is still cut."""

    def setUp(self):
        super().setUp()
        from test_timeouts import BigBackend, body_of
        self.body_of = body_of
        big = BigBackend()
        self.addCleanup(big.stop)
        self.start_tls(backends=[{"name": "big", "address": "%s:%d" % (HOST, big.port)}],
                       timeouts={"client_idle": "1s", "backend_idle": "10s"}, health={"path": "/2"})

    def small_window(self):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect((HOST, self.port))
        s = client_ctx(verify=False).wrap_socket(raw, server_hostname="a.test")
        self.addCleanup(s.close)
        return s

    def test_slow_reader_gets_everything(self):
        n = 3 * 1024 * 1024
        s = self.small_window()
        s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nx-fc-session-id: slow\r\nConnection: close\r\n\r\n" % n)
        got = b""
        t0 = time.monotonic()
        for _ in range(100000):
            slow = len(got) < 150000  # about 40 KB/s for 4 s, then at full speed
            if slow:
                time.sleep(0.1)
            try:
                d = s.recv(4096 if slow else 1 << 20)
            except ssl.SSLError as e:
                self.fail("TLS error after %d bytes: %s" % (len(got), e))
            if not d:
                break
            got += d
            self.assertLess(time.monotonic() - t0, 60)
        hdr = got.find(b"\r\n\r\n")
        self.assertGreater(hdr, 0)
        self.assertEqual(len(got) - hdr - 4, n, "the response was cut")
        self.assertEqual(got[hdr + 4:], self.body_of(n))

    def test_pipelined_behind_a_large_response(self):
        """Requests arriving while a large response is still held for the
        socket: every response comes whole and in order."""
        n = 2 * 1024 * 1024
        s = self.small_window()
        s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nx-fc-session-id: pl\r\n\r\n" % n)
        got = b""
        for i in range(3):  # more requests while the first response is under way
            time.sleep(0.1)
            got += s.recv(4096)
            last = b"Connection: close\r\n" if i == 2 else b""
            s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nx-fc-session-id: pl\r\n%s\r\n" % (1000 + i, last))
        t0 = time.monotonic()
        for _ in range(100000):
            d = s.recv(1 << 20)
            if not d:
                break
            got += d
            self.assertLess(time.monotonic() - t0, 30)
        for size in (n, 1000, 1001, 1002):
            hdr = got.find(b"\r\n\r\n")
            self.assertGreater(hdr, 0, "response for %d missing" % size)
            self.assertIn(b"Content-Length: %d\r\n" % size, got[:hdr + 2])
            self.assertEqual(got[hdr + 4:hdr + 4 + size], self.body_of(size))
            got = got[hdr + 4 + size:]
        self.assertEqual(got, b"")

    def test_stuck_reader_is_cut(self):
        n = 32 * 1024 * 1024
        s = self.small_window()
        s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        time.sleep(2 * 1 + 1.5)
        got = 0
        for _ in range(100000):
            try:
                d = s.recv(1 << 20)
            except (ssl.SSLError, OSError):
                break
            if not d:
                break
            got += len(d)
        self.assertLess(got, n, "a client that read nothing for 3.5 s was not cut")


class Reload(TlsCase):
    def install(self, crt, key):
        for src, dst in ((crt, self.live_crt), (key, self.live_key)):
            tmp = dst + ".tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)

    def setUp(self):
        super().setUp()
        self.live_crt = os.path.join(self.workdir, "live.crt")
        self.live_key = os.path.join(self.workdir, "live.key")
        self.install(PKI.a_crt, PKI.a_key)
        self.pool = self.start_pool(n=1)
        self.start_tls(self.pool, tls=self.tls_block([(self.live_crt, self.live_key)]))

    def peer(self):
        c = self.tls_conn(None)
        der = c.peer_der()
        c.close()
        return der

    def test_sighup_reloads_certificates_keeps_connections(self):
        old = self.tls_conn("a.test")
        r = old.get("/", [("x-fc-session-id", "reload")])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(old.peer_der(), PKI.der["a"])
        self.install(PKI.b_crt, PKI.b_key)
        self.tether.signal(signal.SIGHUP)
        self.tether.signalled = False  # SIGHUP is not a stop
        it.wait_until(lambda: self.peer() == PKI.der["b"], 5, interval=0.2, what="the new certificate")
        # the connection opened before the reload keeps working
        for _ in range(3):
            r = old.get("/", [("x-fc-session-id", "reload")])
            self.assertEqual(r.status, 200, r)
        self.assertAlive()

    def test_sighup_with_a_bad_key_keeps_the_running_certificates(self):
        old = self.tls_conn("a.test")
        self.assertEqual(old.get("/", [("x-fc-session-id", "r2")]).status, 200)
        self.install(PKI.a_crt, PKI.b_key)  # key of another certificate
        self.tether.signal(signal.SIGHUP)
        self.tether.signalled = False
        it.wait_until(lambda: "live.key" in self.tether.stderr_text(), 5, what="a log line naming live.key")
        self.assertAlive()
        self.assertEqual(self.peer(), PKI.der["a"])
        self.assertEqual(old.get("/", [("x-fc-session-id", "r2")]).status, 200)
        # fixed files are picked up by the next SIGHUP
        self.install(PKI.b_crt, PKI.b_key)
        self.tether.signal(signal.SIGHUP)
        self.tether.signalled = False
        it.wait_until(lambda: self.peer() == PKI.der["b"], 5, interval=0.2, what="the new certificate")


# ---------------------------------------------------------------- TLS to backends

class Backends(TlsCase):
    def backend(self, crt, key):
        b = TlsBackend(crt, key)
        self._servers.append(b)
        return b

    def through(self, be, tls):
        self.start_tether(backends=[{"name": "tls-1", "address": "%s:%d" % (HOST, be.port), "tls": tls}],
                          health={"interval": "1h"})
        c = self.conn()
        return c.get("/app", [("x-fc-session-id", "be"), ("Connection", "close")])

    def test_verified_backend(self):
        be = self.backend(PKI.be_crt, PKI.be_key)
        r = self.through(be, {"ca": PKI.ca_crt})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"tls-backend path=/app")
        self.assertIn("/app", be.app_requests())

    def test_wrong_ca_is_502_and_logged(self):
        be = self.backend(PKI.be_crt, PKI.be_key)
        r = self.through(be, {"ca": PKI.ca2_crt})
        self.assertEqual(r.status, 502, r)
        self.assertEqual(be.app_requests(), [], "a request reached the backend")
        it.wait_until(lambda: "verif" in self.tether.stderr_text().lower(), 3,
                      what="a log line about the failed verification")
        self.assertAlive()

    def test_close_delimited_body_clean_and_cut(self):
        """A body that ends with a TLS backend's connection reaches an HTTP/1.1
        client chunked: whole (with its last chunk) after close_notify, without
        the last chunk when the backend's close had no close_notify, so the
        client can tell a cut body from a whole one."""
        be = self.backend(PKI.be_crt, PKI.be_key)
        self.start_tether(backends=[{"name": "tls-1", "address": "%s:%d" % (HOST, be.port),
                                     "tls": {"ca": PKI.ca_crt}}], health={"interval": "1h"})
        c = self.conn()
        r = c.get("/eof-clean", [("x-fc-session-id", "eof")])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("transfer-encoding"), "chunked")
        self.assertEqual(r.body, b"x" * 5000)
        # The client connection stays usable.
        r = c.get("/app", [("x-fc-session-id", "eof")])
        self.assertEqual(r.status, 200, r)
        c2 = self.conn()
        c2.request("GET", "/eof-cut", [("x-fc-session-id", "eof2")])
        head = c2.read_head(timeout=5)
        self.assertEqual(head.header("transfer-encoding"), "chunked")
        data, closed = c2.read_until_close(5)
        self.assertTrue(closed, "after %r: %s" % (data[-40:], self.tether.stderr_text()[-1500:]))
        self.assertIn(b"x" * 100, data)
        self.assertFalse(data.endswith(b"0\r\n\r\n"), "a cut body was given its last chunk")

    def test_verification_on_by_default(self):
        be = self.backend(PKI.self_crt, PKI.self_key)
        r = self.through(be, {"sni": "backend.test"})
        self.assertEqual(r.status, 502, r)
        self.assertEqual(be.app_requests(), [])

    def test_verify_off_accepts_self_signed(self):
        be = self.backend(PKI.self_crt, PKI.self_key)
        r = self.through(be, {"verify": False})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"tls-backend path=/app")

    def test_sni_sent_and_checked(self):
        be = self.backend(PKI.be_crt, PKI.be_key)
        r = self.through(be, {"ca": PKI.ca_crt, "sni": "backend.test"})
        self.assertEqual(r.status, 200, r)
        self.assertIn("backend.test", be.sni)

    def test_sni_name_mismatch_is_502(self):
        be = self.backend(PKI.be_crt, PKI.be_key)
        r = self.through(be, {"ca": PKI.ca_crt, "sni": "other.test"})
        self.assertEqual(r.status, 502, r)
        self.assertEqual(be.app_requests(), [])

    def test_ip_checked_without_sni(self):
        # backend certificate for backend.test only: not valid for 127.0.0.1
        be = self.backend(PKI.a_crt, PKI.a_key)
        r = self.through(be, {"ca": PKI.ca_crt})
        self.assertEqual(r.status, 502, r)

    def test_plain_backend_with_tls_is_502_not_plaintext(self):
        pool = self.start_pool(n=1)
        name, port = next(iter(pool.ports.items()))
        self.start_tether(backends=[{"name": name, "address": "%s:%d" % (HOST, port),
                                     "tls": {"verify": False}}], health={"interval": "1h"})
        before = pool.stats(name)["requests"]
        r = self.conn().get("/", [("x-fc-session-id", "plain"), ("Connection", "close")])
        self.assertIn(r.status, (502, 503), r)
        self.assertEqual(pool.stats(name)["requests"], before, "a plaintext request reached the backend")

    def test_keepalive_to_tls_backend(self):
        be = self.backend(PKI.be_crt, PKI.be_key)
        self.start_tether(backends=[{"name": "tls-1", "address": "%s:%d" % (HOST, be.port),
                                     "tls": {"ca": PKI.ca_crt}}], health={"interval": "1h"})
        c = self.conn()
        for i in range(5):
            r = c.get("/k%d" % i, [("x-fc-session-id", "ka")])
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"tls-backend path=/k%d" % i)


# ---------------------------------------------------------------- tetherd -t

class Check(TlsCase):
    def check(self, certs, backend_tls=None):
        cfg = it.default_config(8443, [{"name": "fn-1", "address": "127.0.0.1:9001"}],
                                os.path.join(self.workdir, "access.log"))
        cfg["listen"][0]["tls"] = self.tls_block(certs)
        if backend_tls is not None:
            cfg["backends"][0]["tls"] = backend_tls
        path = os.path.join(self.workdir, "check.yaml")
        with open(path, "w") as f:
            f.write(it.to_yaml(cfg) + "\n")
        p = subprocess.run([it.TETHERD, "-t", "-c", path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=15)
        return p.returncode, p.stdout.decode("latin-1") + p.stderr.decode("latin-1")

    def test_valid(self):
        rc, out = self.check(None)
        self.assertEqual(rc, 0, out)
        self.assertNotIn("warning", out.lower())

    def test_missing_cert_and_key(self):
        missing = os.path.join(self.workdir, "nope.crt")
        rc, out = self.check([(missing, PKI.a_key)])
        self.assertEqual(rc, 1, out)
        self.assertIn(missing, out)
        self.assertRegex(out.lower(), r"no such file|cannot (open|read|load)")
        missing = os.path.join(self.workdir, "nope.key")
        rc, out = self.check([(PKI.a_crt, missing)])
        self.assertEqual(rc, 1, out)
        self.assertIn(missing, out)

    @unittest.skipIf(os.geteuid() == 0, "root reads files whatever their mode")
    def test_unreadable_key(self):
        key = os.path.join(self.workdir, "locked.key")
        shutil.copyfile(PKI.a_key, key)
        os.chmod(key, 0)
        rc, out = self.check([(PKI.a_crt, key)])
        self.assertEqual(rc, 1, out)
        self.assertIn(key, out)

    def test_not_a_certificate(self):
        junk = os.path.join(self.workdir, "junk.crt")
        with open(junk, "w") as f:
            f.write("this is not PEM\n")
        rc, out = self.check([(junk, PKI.a_key)])
        self.assertEqual(rc, 1, out)
        self.assertIn(junk, out)
        rc, out = self.check([(PKI.a_crt, junk)])
        self.assertEqual(rc, 1, out)
        self.assertIn(junk, out)

    def test_key_does_not_match(self):
        rc, out = self.check([(PKI.a_crt, PKI.b_key)])
        self.assertEqual(rc, 1, out)
        self.assertIn(PKI.b_key, out)
        self.assertRegex(out.lower(), r"match")

    def test_expired_is_a_warning(self):
        rc, out = self.check([(PKI.a_crt, PKI.a_key), (PKI.old_crt, PKI.old_key)])
        self.assertEqual(rc, 0, out)
        self.assertIn(PKI.old_crt, out)
        self.assertIn("warning", out.lower())
        self.assertIn("expired", out.lower())

    def test_backend_ca_missing(self):
        missing = os.path.join(self.workdir, "no-ca.pem")
        rc, out = self.check(None, backend_tls={"ca": missing})
        self.assertEqual(rc, 1, out)
        self.assertIn(missing, out)

    def test_daemon_refuses_a_mismatched_key(self):
        cfg = it.default_config(it.free_port(), [{"name": "fn-1", "address": "127.0.0.1:9001"}],
                                os.path.join(self.workdir, "access.log"))
        cfg["listen"][0]["tls"] = self.tls_block([(PKI.a_crt, PKI.b_key)])
        path = os.path.join(self.workdir, "bad.yaml")
        with open(path, "w") as f:
            f.write(it.to_yaml(cfg) + "\n")
        p = subprocess.run([it.TETHERD, "-c", path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=15)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(PKI.b_key, p.stderr.decode("latin-1"))


if __name__ == "__main__":
    it.main()
