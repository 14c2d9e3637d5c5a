/*
 * The redis store's Lua scripts and the reading of records out of replies.
 * A session is one hash, <prefix>s:<key>, with the fields backend (a
 * name), epoch, created and last_seen (wall-clock ms), requests,
 * provisional, handoff, moved_from (a name, "" when none) and state (the
 * handoff blob, absent when none); its TTL is the idle timeout (the
 * provisional timeout for a minted key not yet seen back). Every script
 * touches that one key (KEYS[1]), so each runs atomically and all of them
 * work on Redis Cluster; a move is published on <prefix>moves from within
 * the script that makes it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "tether/util.h"
#include "store-int.h"

/*
 * A claim: the record Redis holds, or ours when it holds none.
 * ARGV: 1 TTL (ms) of a live record, 2 the oldest `created` still within
 * max_lifetime (wall ms), 3 backend, 4 epoch, 5 created, 6 last_seen,
 * 7 requests, 8 provisional, 9 handoff, 10 moved_from, 11 has_state ("1"),
 * 12 state, 13 TTL of a provisional record.
 * Returns {0, HGETALL} when Redis held a record (its TTL refreshed: it is
 * being used), {1} when ours is stored now. A hash missing its binding, or
 * past max_lifetime, counts as none.
 */
const char store_lua_claim[] =
    "local k = KEYS[1]\n"
    "local cur = redis.call('HMGET', k, 'backend', 'epoch', 'created')\n"
    "if cur[1] and tonumber(cur[2]) and tonumber(cur[3])\n"
    "   and tonumber(cur[3]) >= tonumber(ARGV[2]) then\n"
    "  redis.call('PEXPIRE', k, ARGV[1])\n"
    "  return {0, redis.call('HGETALL', k)}\n"
    "end\n"
    "if cur[1] or cur[2] or cur[3] then redis.call('DEL', k) end\n"
    "redis.call('HSET', k, 'backend', ARGV[3], 'epoch', ARGV[4], 'created', ARGV[5],\n"
    "  'last_seen', ARGV[6], 'requests', ARGV[7], 'provisional', ARGV[8],\n"
    "  'handoff', ARGV[9], 'moved_from', ARGV[10])\n"
    "if ARGV[11] == '1' then redis.call('HSET', k, 'state', ARGV[12]) end\n"
    "redis.call('PEXPIRE', k, ARGV[8] == '1' and ARGV[13] or ARGV[1])\n"
    "return {1}\n";

/*
 * Write a record back (write-behind of any change).
 * ARGV: 1 TTL of a live record, 2 base epoch (a move: compare-and-set from
 * it; 0 = not a move), 3 backend, 4 epoch, 5 created, 6 last_seen,
 * 7 requests, 8 provisional, 9 handoff, 10 moved_from, 11 has_state,
 * 12 state, 13 create ("1": store it when absent, else answer {3}),
 * 14 channel, 15 origin, 16 the session key, 17 TTL of a provisional record.
 * Returns {1} written (same binding, or stored anew), {2, state} moved
 * (from the base epoch; published, with the state Redis now holds),
 * {3} absent, {0, HGETALL} when Redis holds another binding (the caller
 * adopts it). A record live in Redis stays live.
 */
const char store_lua_sync[] =
    "local k = KEYS[1]\n"
    "local cur = redis.call('HMGET', k, 'backend', 'epoch', 'provisional')\n"
    "local function put(new)\n"
    "  local prov = ARGV[8]\n"
    "  if not new and cur[3] == '0' then prov = '0' end\n"
    "  redis.call('HSET', k, 'backend', ARGV[3], 'epoch', ARGV[4], 'last_seen', ARGV[6],\n"
    "    'requests', ARGV[7], 'provisional', prov, 'handoff', ARGV[9], 'moved_from', ARGV[10])\n"
    "  if new then redis.call('HSET', k, 'created', ARGV[5]) end\n"
    "  if ARGV[11] == '1' then redis.call('HSET', k, 'state', ARGV[12]) end\n"
    "  redis.call('PEXPIRE', k, prov == '1' and ARGV[17] or ARGV[1])\n"
    "end\n"
    "if not cur[1] or not tonumber(cur[2]) then\n"
    "  if ARGV[13] ~= '1' then return {3} end\n"
    "  redis.call('DEL', k)\n"
    "  put(true)\n"
    "  return {1}\n"
    "end\n"
    "local e = tonumber(cur[2])\n"
    "if cur[1] == ARGV[3] and e == tonumber(ARGV[4]) then\n"
    "  put(false)\n"
    "  return {1}\n"
    "end\n"
    "local base = tonumber(ARGV[2])\n"
    "if base > 0 and e == base and base < tonumber(ARGV[4]) then\n"
    "  put(false)\n"
    "  local st = redis.call('HGET', k, 'state') or ''\n"
    "  redis.call('PUBLISH', ARGV[14], table.concat({ARGV[15], ARGV[16], ARGV[3], ARGV[4],\n"
    "    ARGV[10], ARGV[9], st}, '\\n'))\n"
    "  return {2, st}\n"
    "end\n"
    "return {0, redis.call('HGETALL', k)}\n";

/*
 * End a session, fenced: only at the binding it ended with.
 * ARGV: 1 backend, 2 epoch. Returns 1 deleted, 0 not (moved since, or gone).
 */
const char store_lua_end[] = "local cur = redis.call('HMGET', KEYS[1], 'backend', 'epoch')\n"
                             "if cur[1] == ARGV[1] and tonumber(cur[2]) == tonumber(ARGV[2]) then\n"
                             "  redis.call('DEL', KEYS[1])\n"
                             "  return 1\n"
                             "end\n"
                             "return 0\n";

int store_sha1_hex(const char *text, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        return -EINVAL;
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = '\0';
    return 0;
}

static int num(const redisReply *v, uint64_t *out)
{
    if (v->type != REDIS_REPLY_STRING || v->len == 0 || v->len > 20)
        return -EINVAL;
    uint64_t n = 0;
    for (size_t i = 0; i < v->len; i++) {
        if (v->str[i] < '0' || v->str[i] > '9')
            return -EINVAL;
        n = n * 10 + (uint64_t)(v->str[i] - '0');
    }
    *out = n;
    return 0;
}

static bool is(const redisReply *v, const char *name)
{
    return v->type == REDIS_REPLY_STRING && v->len == strlen(name) &&
           memcmp(v->str, name, v->len) == 0;
}

int rrecord_parse(const redisReply *r, struct rrecord *out)
{
    memset(out, 0, sizeof(*out));
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements % 2)
        return -EINVAL;
    bool have_epoch = false;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        uint64_t n = 0;
        if (v->type != REDIS_REPLY_STRING)
            return -EINVAL;
        if (is(f, "backend")) {
            out->backend = v->str;
            out->backend_len = v->len;
        } else if (is(f, "moved_from")) {
            out->moved_from = v->str;
            out->moved_from_len = v->len;
        } else if (is(f, "state")) {
            out->state = v->str;
            out->state_len = v->len;
        } else if (is(f, "epoch")) {
            if (num(v, &out->epoch) < 0 || out->epoch == 0 || out->epoch > UINT32_MAX)
                return -EINVAL;
            have_epoch = true;
        } else if (is(f, "created") || is(f, "last_seen") || is(f, "requests")) {
            if (num(v, &n) < 0)
                return -EINVAL;
            *(is(f, "created")     ? &out->created
              : is(f, "last_seen") ? &out->last_seen
                                   : &out->requests) = n;
        } else if (is(f, "provisional") || is(f, "handoff")) {
            *(is(f, "handoff") ? &out->handoff : &out->provisional) = is(v, "1");
        }
    }
    return out->backend && out->backend_len && have_epoch ? 0 : -EINVAL;
}

uint64_t store_to_wall(uint64_t mono_ms)
{
    uint64_t now = tether_now_ms(), wall = tether_wall_ms();
    return mono_ms <= now ? wall - (now - mono_ms) : wall;
}

uint64_t store_to_mono(uint64_t wall_ms)
{
    uint64_t now = tether_now_ms(), wall = tether_wall_ms();
    /* Anything from the future (another host's clock) is now. */
    if (wall_ms >= wall)
        return now;
    return wall - wall_ms < now ? now - (wall - wall_ms) : 0;
}

size_t store_rkey(const struct tether_store *st, const char *key, size_t len, char *buf)
{
    memcpy(buf, st->prefix, st->prefix_len);
    memcpy(buf + st->prefix_len, "s:", 2);
    memcpy(buf + st->prefix_len + 2, key, len);
    return st->prefix_len + 2 + len;
}
