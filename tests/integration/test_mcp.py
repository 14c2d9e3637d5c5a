"""Learned sessions (MCP): the backend names the session in Mcp-Session-Id,
tether binds that name to the instance that chose it, routes every later
request carrying it there, and ends the session on a DELETE. fnpool counts
/mcp requests under the mcp-session-id they carry."""

import os
import re
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import tether_it as it  # noqa: E402

INIT = '{"jsonrpc":"2.0","id":1,"method":"initialize"}'
CALL = '{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
LEARN = {"learn_header": "mcp-session-id", "insert_cookie": False}


def body_kv(r):
    kv = it.parse_kv(r.text())
    return kv.get("instance"), kv.get("session"), kv.get("count")


class Mcp(it.TetherTestCase):
    def post(self, body, sid=None, method="POST", conn=None):
        headers = [("Content-Type", "application/json")]
        if sid is not None:
            headers.append(("mcp-session-id", sid))
        c = conn or it.Conn(self.port)
        try:
            c.request(method, "/mcp", headers, body)
            return c.read_response()
        finally:
            if conn is None:
                c.close()

    def initialize(self, conn=None):
        r = self.post(INIT, conn=conn)
        self.assertEqual(r.status, 200, r)
        sid = r.header("mcp-session-id")
        self.assertIsNotNone(sid, r)
        self.assertTrue(HEX32.match(sid), sid)
        self.assertEqual(body_kv(r), (r.instance, sid, "1"), r)
        self.assertEqual(r.header_all("x-fc-session-state"), [], r)
        return sid, r.instance

    def assertCounted(self, r, sid, instance, count):
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.instance, instance, "session %s left its instance: %r" % (sid, r))
        self.assertEqual(body_kv(r), (instance, sid, str(count)), r)
        self.assertEqual(r.header_all("x-fc-session-state"), [], r)
        self.assertEqual(r.header_all("x-fc-session-end"), [], r)

    def test_learned_session_sticks(self):
        pool = self.start_pool(4)
        self.start_tether(pool, session=LEARN)
        c = self.conn()
        # several clients: the id an instance chose must lead back to it, not
        # to wherever the id's hash would place a new session
        homes = {}
        for _ in range(8):
            sid, inst = self.initialize(conn=c)
            self.assertNotIn(sid, homes)
            homes[sid] = inst
        for n in range(2, 7):
            for sid, inst in homes.items():
                self.assertCounted(self.post(CALL, sid, conn=c), sid, inst, n)
        # a fresh connection is no different
        for sid, inst in homes.items():
            self.assertCounted(self.post(CALL, sid), sid, inst, 7)

    def test_state_of_learned_session_survives_failover(self):
        """The state blob on the response that names the session (initialize)
        belongs to that session: after its instance dies, the next request
        carries it to the new instance, whose count goes on from 1 to 2."""
        pool = self.start_pool(4)
        self.start_tether(pool, session=LEARN,
                          health={"interval": "200ms", "timeout": "150ms", "fall": 1, "rise": 1})
        sid, inst = self.initialize()
        pool.kill(inst)
        it.wait_until(lambda: not it.port_accepts(pool.ports[inst]), 5, what="the instance to die")
        r = self.post(CALL, sid)
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.instance, inst)
        self.assertEqual(body_kv(r), (r.instance, sid, "2"),
                         "the learned session's state did not reach its new instance: %r" % r)

    def test_delete_ends_session(self):
        pool = self.start_pool(4)
        self.start_tether(pool, session=LEARN)
        sid, inst = self.initialize()
        other, other_inst = self.initialize()
        self.assertNotEqual(sid, other)
        for n in range(2, 7):
            self.assertCounted(self.post(CALL, sid), sid, inst, n)

        r = self.post(None, sid, method="DELETE")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.instance, inst, r)
        self.assertEqual(r.header_all("x-fc-session-end"), [], r)
        # placed anew: wherever it lands, its count starts again
        r = self.post(CALL, sid)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(body_kv(r), (r.instance, sid, "1"), r)
        # the other session is untouched
        self.assertCounted(self.post(CALL, other), other, other_inst, 2)

    def test_delete_frees_the_slot(self):
        # Two instances, one session each: only tether's own bookkeeping
        # decides whether a third client can start a session.
        pool = self.start_pool(2)
        backends = [dict(b, max_sessions=1) for b in self.backends_of(pool)]
        self.start_tether(backends=backends, session=LEARN)
        a, a_inst = self.initialize()
        b, b_inst = self.initialize()
        self.assertNotEqual(a_inst, b_inst)
        before = pool.snapshot()
        r = self.post(INIT)
        self.assertEqual(r.status, 503, r)
        self.assertIsNotNone(r.header("retry-after"), r)
        self.assertEqual(pool.delta(before, pool.snapshot(), "requests"), {n: 0 for n in pool.names})

        self.assertEqual(self.post(None, a, method="DELETE").status, 200)
        c, c_inst = self.initialize()
        self.assertEqual(c_inst, a_inst)
        self.assertCounted(self.post(CALL, b), b, b_inst, 2)
        self.assertCounted(self.post(CALL, c), c, c_inst, 2)
        # a is gone from tether too: as a new session it finds no room
        r = self.post(CALL, a)
        self.assertEqual(r.status, 503, r)

    def test_learned_key_beats_minted_cookie(self):
        pool = self.start_pool(4)
        self.start_tether(pool, session={"learn_header": "mcp-session-id", "insert_cookie": True})
        homes = {}
        for _ in range(6):
            r = self.post(INIT)
            self.assertEqual(r.status, 200, r)
            sid = r.header("mcp-session-id")
            self.assertTrue(sid and HEX32.match(sid), r)
            self.assertEqual(r.header_all("set-cookie"), [], "learned key, yet a cookie: %r" % r)
            homes[sid] = r.instance
        for sid, inst in homes.items():
            self.assertCounted(self.post(CALL, sid), sid, inst, 2)

        with it.Conn(self.port) as c:
            r = c.get("/")
        self.assertEqual(r.status, 200, r)
        cookies = r.header_all("set-cookie")
        self.assertEqual(len(cookies), 1, r)
        self.assertTrue(re.match(r"^fc_session=[0-9a-fA-F]{32}; ", cookies[0]), cookies)


if __name__ == "__main__":
    it.main()
