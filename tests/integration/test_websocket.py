"""WebSocket (RFC 6455) tunnelled through tether after the 101."""

import base64
import os
import struct
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402


def frame(opcode, payload, fin=True):
    """A masked client frame (RFC 6455 section 5.2)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return hdr + mask + masked


def read_frame(c, timeout=10):
    b0, b1 = c.read_exact(2, timeout)
    fin = bool(b0 & 0x80)
    opcode = b0 & 0x0F
    masked = bool(b1 & 0x80)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", c.read_exact(2, timeout))[0]
    elif n == 127:
        n = struct.unpack("!Q", c.read_exact(8, timeout))[0]
    mask = c.read_exact(4, timeout) if masked else None
    payload = c.read_exact(n, timeout) if n else b""
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return fin, opcode, masked, payload


def read_message(c, timeout=10):
    """A whole message (reassembling continuation frames); control frames
    other than close are skipped."""
    opcode = None
    parts = []
    for _ in range(10000):
        fin, op, masked, payload = read_frame(c, timeout)
        if masked:
            raise AssertionError("server frame is masked")
        if op in (0x9, 0xA):  # ping/pong
            continue
        if op == 0x8:
            return op, payload
        if op != 0:
            opcode = op
        parts.append(payload)
        if fin:
            return opcode, b"".join(parts)
    raise AssertionError("message never finished")


class WebSocket(it.TetherTestCase):
    def setUp(self):
        self.pool = self.start_pool(2)
        self.start_tether(self.pool)

    def handshake(self, c):
        key = base64.b64encode(os.urandom(16)).decode()
        c.request("GET", "/ws", [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            ("x-fc-session-id", "ws-" + os.urandom(4).hex()),
        ])
        r = c.read_head()
        self.assertEqual(r.status, 101, r)
        self.assertTrue(r.has_token("upgrade", "websocket"), r)
        self.assertTrue(r.has_token("connection", "upgrade"), r)
        self.assertEqual(r.header("sec-websocket-accept"), it.ws_accept(key), r)
        self.assertIn(r.instance, self.pool.names)
        return r

    def test_echo_and_close(self):
        c = self.conn()
        self.handshake(c)
        msgs = [(0x1, b"hello, tether"),
                (0x2, os.urandom(200)),
                (0x2, os.urandom(70000))]
        for op, payload in msgs:
            c.send(frame(op, payload))
            rop, echoed = read_message(c)
            self.assertEqual(rop, op)
            self.assertEqual(len(echoed), len(payload))
            self.assertEqual(echoed, payload)
        # all three at once: the tunnel keeps their order
        c.send(b"".join(frame(op, p) for op, p in msgs))
        for op, payload in msgs:
            self.assertEqual(read_message(c), (op, payload))
        # close handshake: our close is answered with a close, then EOF
        c.send(frame(0x8, struct.pack("!H", 1000) + b"bye"))
        op, payload = read_message(c)
        self.assertEqual(op, 0x8)
        if payload:
            self.assertEqual(struct.unpack("!H", payload[:2])[0], 1000)
        closed, extra = c.closed_within(3.0)
        self.assertTrue(closed, "tunnel still open 3 s after the close handshake")
        self.assertEqual(extra, b"")
        self.assertAlive()

    def test_tunnel_outlives_backend_response_timeout(self):
        # backend_response bounds the wait for a response head; it must not
        # cut a tunnel that is quiet for longer than that.
        self.tether.stop()
        self.start_tether(self.pool, timeouts={"backend_response": "1s", "client_idle": "60s"})
        c = self.conn()
        self.handshake(c)
        closed, data = c.closed_within(1.8)
        self.assertFalse(closed, "the WebSocket tunnel was closed after 1.8 s of quiet")
        c.send(frame(0x1, b"still there"))
        self.assertEqual(read_message(c), (0x1, b"still there"))


if __name__ == "__main__":
    it.main()
