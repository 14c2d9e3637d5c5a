"""Keep-alive on both sides, pipelining, and closing when asked to."""

import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


class KeepAlive(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(4)
        self.start_tether(self.pool)
        self.tag = os.urandom(4).hex()

    def upstream_conns(self, before):
        after = self.pool.snapshot()
        return sum(self.pool.delta(before, after, "connections").values()), \
            sum(self.pool.delta(before, after, "requests").values())

    def test_upstream_reuse_one_client_connection(self):
        before = self.pool.snapshot()
        c = self.conn()
        for i in range(200):
            r = c.get("/", [("x-fc-session-id", "ka-%s-%d" % (self.tag, i % 20))])
            self.assertEqual(r.status, 200, r)
        conns, reqs = self.upstream_conns(before)
        self.assertEqual(reqs, 200, "backends saw %d requests for 200 sent" % reqs)
        self.assertLessEqual(conns, 8, "200 sequential requests used %d upstream connections" % conns)

    def test_upstream_reuse_across_client_connections(self):
        before = self.pool.snapshot()
        for j in range(10):
            with it.Conn(self.port) as c:
                for i in range(20):
                    r = c.get("/", [("x-fc-session-id", "kb-%s-%d" % (self.tag, i))])
                    self.assertEqual(r.status, 200, r)
        conns, reqs = self.upstream_conns(before)
        self.assertEqual(reqs, 200)
        self.assertLessEqual(conns, 8, "200 requests over 10 client connections used %d upstream connections" % conns)

    def test_client_keepalive(self):
        c = self.conn()
        for i in range(10):
            r = c.get("/echo?i=%d" % i)
            self.assertEqual(r.status, 200, r)
            line, _ = it.parse_echo(r.body)
            self.assertEqual(line, "GET /echo?i=%d HTTP/1.1" % i)
            self.assertFalse(r.has_token("connection", "close"), r)
        # still open: nothing pending, no EOF
        closed, data = c.closed_within(0.3)
        self.assertFalse(closed)
        self.assertEqual(data, b"")

    def keys_on_instances(self, n, prefix):
        """n session keys, bound (by a first request each) to n different
        instances, so pipelined requests with them go to different backends."""
        keys = {}
        with it.Conn(self.port) as c:
            for i in range(200):
                key = "%s-%s-%d" % (prefix, self.tag, i)
                r = c.get("/", [("x-fc-session-id", key)])
                self.assertEqual(r.status, 200, r)
                keys.setdefault(r.instance, key)
                if len(keys) >= n:
                    return list(keys.values())
        self.fail("200 keys reached only %s" % sorted(keys))

    def test_pipelining_in_order(self):
        c = self.conn()
        # the five keys live on different instances (keys[i % 4])
        keys = self.keys_on_instances(4, "pl")
        sent = [keys[i % 4] for i in range(1, 6)]
        reqs = b"".join(it.build_request("GET", "/echo?i=%d" % i, [("x-fc-session-id", k)])
                        for i, k in zip(range(1, 6), sent))
        c.send(reqs)
        instances = set()
        for i, key in zip(range(1, 6), sent):
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            line, hdrs = it.parse_echo(r.body)
            self.assertEqual(line, "GET /echo?i=%d HTTP/1.1" % i)
            self.assertEqual(it.echo_values(hdrs, "x-fc-session-id"), [key])
            instances.add(r.instance)
        self.assertEqual(len(instances), 4, instances)

    def test_pipelining_slow_first(self):
        # The first request is slow and the others fast (on other
        # instances): answers still come back in request order.
        c = self.conn()
        keys = self.keys_on_instances(4, "ps")
        reqs = it.build_request("GET", "/sleep?ms=500", [("x-fc-session-id", keys[0])])
        reqs += b"".join(it.build_request("GET", "/echo?i=%d" % i, [("x-fc-session-id", keys[i % 4])])
                         for i in range(1, 5))
        t0 = time.monotonic()
        c.send(reqs)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)
        self.assertNotIn(b"GET /echo", r.body)
        for i in range(1, 5):
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(it.parse_echo(r.body)[0], "GET /echo?i=%d HTTP/1.1" % i)

    def test_max_pipelined(self):
        """Once max_pipelined requests wait behind the one in progress, tether
        reads no further (the rest stays in its socket's receive queue), and
        every request is still answered, in order."""
        self.tether.stop()
        self._tethers.remove(self.tether)
        self.start_tether(self.pool, limits={"max_pipelined": 2})
        c = self.conn()
        c.send(it.build_request("GET", "/sleep?ms=1500", [("x-fc-session-id", "mp")]))
        time.sleep(0.2)
        for i in range(10):
            c.send(it.build_request("GET", "/echo?i=%d" % i, [("x-fc-session-id", "mp")]))
            time.sleep(0.03)
        time.sleep(0.3)
        local = c.sock.getsockname()[1]
        self.assertGreater(rx_queue(self.port, local), 0,
                           "tetherd read past max_pipelined queued requests")
        self.assertEqual(c.read_response(timeout=5).status, 200)
        for i in range(10):
            r = c.read_response(timeout=5)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(it.parse_echo(r.body)[0], "GET /echo?i=%d HTTP/1.1" % i)

    def test_connection_close(self):
        c = self.conn()
        c.request("GET", "/", [("Connection", "close")])
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.has_token("connection", "close"), r)
        closed, extra = c.closed_within(2.0)
        self.assertTrue(closed, "socket still open 2 s after Connection: close")
        self.assertEqual(extra, b"")

    def test_close_is_immediate_after_whole_exchange(self):
        """After a whole request and its response, with nothing more from the
        client, tetherd closes its socket at once (the kernel holds it as an
        orphan, inode 0) instead of lingering; bytes that came after the
        request make it linger, so they cannot turn the close into a reset."""
        c = self.conn()
        c.request("GET", "/", [("Connection", "close")])
        self.assertEqual(c.read_response().status, 200)
        local = c.sock.getsockname()[1]
        self.assertTrue(wait_for(lambda: tcp_inode(self.port, local) in (None, 0), 1.0),
                        "tetherd kept its socket open after the exchange ended")
        # the same with bytes after the request: the response is whole, and
        # tetherd still holds the socket (lingering), reading and discarding
        c = self.conn()
        c.send(it.build_request("GET", "/sleep?ms=200", [("Connection", "close")]) + b"GARBAGE")
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        local = c.sock.getsockname()[1]
        time.sleep(0.2)
        self.assertNotIn(tcp_inode(self.port, local), (None, 0),
                         "tetherd closed with unread bytes from the client")
        closed, extra = c.closed_within(1.0)
        self.assertTrue(closed)
        self.assertEqual(extra, b"")

    def test_http10_closes(self):
        c = self.conn()
        c.send(b"GET /echo HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(it.parse_echo(r.body)[0].split(" ")[:2], ["GET", "/echo"])
        self.assertFalse(r.has_token("transfer-encoding", "chunked"), "chunked sent to an HTTP/1.0 client")
        closed, extra = c.closed_within(2.0)
        self.assertTrue(closed, "HTTP/1.0 request without keep-alive left the socket open")
        self.assertEqual(extra, b"")

    def test_http10_upstream_kept(self):
        # each HTTP/1.0 client closes, but the backend connection goes back to the pool
        before = self.pool.snapshot()
        for i in range(10):
            c = self.conn()
            c.send(b"GET /echo HTTP/1.0\r\nHost: 127.0.0.1\r\nx-fc-session-id: h10-%s\r\n\r\n"
                   % self.tag.encode())
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            _, headers = it.parse_echo(r.body)
            self.assertIn(("connection", "keep-alive"), [(k.lower(), v.lower()) for k, v in headers])
            closed, extra = c.closed_within(2.0)
            self.assertTrue(closed, "HTTP/1.0 request without keep-alive left the socket open")
            c.close()
        conns, reqs = self.upstream_conns(before)
        self.assertEqual(reqs, 10)
        self.assertLessEqual(conns, 2, "10 HTTP/1.0 requests used %d upstream connections" % conns)

    def test_sequential_curl_keepalive(self):
        # curl with many URLs reuses its one connection; upstream too
        before = self.pool.snapshot()
        url = "http://127.0.0.1:%d/" % self.port
        p = it.curl("-H", "x-fc-session-id: curl-%s" % self.tag, "-w", "%{num_connects}\\n", *([url] * 20))
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.decode().splitlines()
        counts = [l for l in out if l.startswith("instance=")]
        self.assertEqual(len(counts), 20)
        self.assertEqual(it.parse_kv(counts[-1])["count"], "20")
        num_connects = [int(l) for l in out if l.isdigit()]
        self.assertEqual(sum(num_connects), 1, "curl opened %s connections" % num_connects)
        conns, reqs = self.upstream_conns(before)
        self.assertEqual(reqs, 20)
        self.assertLessEqual(conns, 2)


def tcp_inode(server_port, client_port):
    """The inode of the server's side of a loopback TCP connection: 0 once
    the process closed it (an orphan), None once the kernel forgot it."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if int(cols[1].split(":")[1], 16) == server_port and \
                    int(cols[2].split(":")[1], 16) == client_port:
                return int(cols[9])
    return None


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def rx_queue(server_port, client_port):
    """Unread bytes in the receive queue of the server's side of a loopback
    TCP connection (/proc/net/tcp: local, remote, ..., tx_queue:rx_queue)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            lport = int(cols[1].split(":")[1], 16)
            rport = int(cols[2].split(":")[1], 16)
            if lport == server_port and rport == client_port:
                return int(cols[4].split(":")[1], 16)
    raise AssertionError("no connection %d <- %d in /proc/net/tcp" % (server_port, client_port))


if __name__ == "__main__":
    it.main()
