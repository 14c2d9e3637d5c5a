/*
 * Unit tests for src/session/table.c: the key -> backend table. Time is
 * driven through the now_ms arguments, never by sleeping. Placement is a
 * stub that records how it was called; the concurrency case hammers one
 * table from several threads with a placement that enforces a per-backend
 * cap by reading the loads, and checks that no cap is ever overshot.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tether/session.h"
#include "../unit.h"

#define BIG (1000ULL * 1000 * 1000 * 1000) /* a timeout that never fires in a test */

/* ---- helpers ---- */

/* A placement stub: answers `answer` (or, for a confirmation, `confirm`),
   and records how often and with which prefer it was asked. */
struct stub {
    int calls;
    int last_prefer;
    uint64_t last_hash;
    int answer;
    int confirm; /* answer when prefer >= 0; -2 = return prefer itself */
};

static int stub_place(void *ctx, uint64_t hash, int prefer)
{
    struct stub *s = ctx;
    s->calls++;
    s->last_prefer = prefer;
    s->last_hash = hash;
    if (prefer >= 0)
        return s->confirm == -2 ? prefer : s->confirm;
    return s->answer;
}

static void stub_init(struct stub *s, int answer)
{
    memset(s, 0, sizeof(*s));
    s->answer = answer;
    s->confirm = -2;
    s->last_prefer = -100;
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Any well-spread hash does: the table only needs the same one per key. */
static uint64_t hash_of(const char *k)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = k; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return mix(h);
}

static struct tether_session_limits limits(uint64_t max_sessions, uint64_t idle, uint64_t life,
                                           uint64_t prov)
{
    struct tether_session_limits l = {
        .max_sessions = max_sessions,
        .max_state_bytes = 1 << 20,
        .idle_timeout_ms = idle,
        .max_lifetime_ms = life,
        .provisional_timeout_ms = prov,
    };
    return l;
}

static struct tether_session_table *table(uint64_t max_sessions, uint64_t idle, uint64_t life,
                                          uint64_t prov, size_t nshards)
{
    struct tether_session_limits l = limits(max_sessions, idle, life, prov);
    struct tether_session_table *t = tether_session_table_new(&l, nshards);
    ck_assert_ptr_nonnull(t);
    return t;
}

static int acq(struct tether_session_table *t, const char *k, uint64_t now, unsigned flags,
               struct stub *s, struct tether_session_info *out)
{
    return tether_session_acquire(t, k, strlen(k), hash_of(k), now, flags, stub_place, s, out);
}

static void rel(struct tether_session_table *t, const char *k, uint64_t now)
{
    struct tether_session_info in;
    if (tether_session_get(t, k, strlen(k), hash_of(k), &in) == 0)
        tether_session_release(t, k, strlen(k), hash_of(k), in.created_ms, now);
}

static int get(struct tether_session_table *t, const char *k, struct tether_session_info *out)
{
    return tether_session_get(t, k, strlen(k), hash_of(k), out);
}

static int bind_key(struct tether_session_table *t, const char *k, uint32_t b, uint64_t now)
{
    return tether_session_bind(t, k, strlen(k), hash_of(k), b, now);
}

static int end_key(struct tether_session_table *t, const char *k, uint32_t b, uint32_t epoch)
{
    return tether_session_end(t, k, strlen(k), hash_of(k), b, epoch);
}

static int set_state(struct tether_session_table *t, const char *k, uint32_t b, uint32_t epoch,
                     size_t n)
{
    static char blob[4096];
    ck_assert_uint_le(n, sizeof(blob));
    memset(blob, 'x', n);
    return tether_session_set_state(t, k, strlen(k), hash_of(k), b, epoch, blob, n);
}

static struct tether_session_stats stats(struct tether_session_table *t)
{
    struct tether_session_stats st;
    tether_session_stats(t, &st);
    return st;
}

static size_t expire_all(struct tether_session_table *t, uint64_t now)
{
    return tether_session_expire(t, 0, tether_session_shards(t), now);
}

/* One acquire/release round of key at now; returns the acquire's code. */
static int touch_once(struct tether_session_table *t, const char *k, uint64_t now, unsigned flags,
                      struct stub *s)
{
    struct tether_session_info in;
    int rc = acq(t, k, now, flags, s, &in);
    if (rc >= 0)
        rel(t, k, now);
    return rc;
}

/* ---- acquire, release ---- */

START_TEST(test_miss_creates)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 2);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "alpha", 1000, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.last_prefer, -1);
    ck_assert_uint_eq(s.last_hash, hash_of("alpha"));
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_uint_eq(in.epoch, 1);
    ck_assert_uint_eq(in.requests, 1);
    ck_assert_uint_eq(in.inflight, 1);
    ck_assert_uint_eq(in.created_ms, 1000);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(tether_session_load(t, 2), 1);
    for (uint32_t b = 0; b < 8; b++)
        if (b != 2)
            ck_assert_uint_eq(tether_session_load(t, b), 0);

    struct tether_session_info g;
    ck_assert_int_eq(get(t, "alpha", &g), 0);
    ck_assert_uint_eq(g.backend, 2);
    ck_assert_uint_eq(g.inflight, 1);
    ck_assert_int_eq(get(t, "beta", &g), -ENOENT);

    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.live, 1);
    ck_assert_uint_eq(st.provisional, 0);
    ck_assert_uint_eq(st.created, 1);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_hit_found)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 1);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "k", 10, 0, &s, &in), TETHER_SESSION_CREATED);
    s.answer = 3; /* a second placement would go elsewhere: it must not happen */
    ck_assert_int_eq(acq(t, "k", 20, 0, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_uint_eq(in.backend, 1);
    ck_assert_uint_eq(in.requests, 2);
    ck_assert_uint_eq(in.inflight, 2);
    ck_assert_uint_eq(in.last_seen_ms, 20);
    ck_assert_uint_eq(tether_session_load(t, 1), 1); /* one session, however many requests */
    ck_assert_uint_eq(tether_session_load(t, 3), 0);

    rel(t, "k", 30);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(in.inflight, 1);
    ck_assert_uint_eq(in.last_seen_ms, 30);
    rel(t, "k", 40);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(in.inflight, 0);
    ck_assert_uint_eq(in.last_seen_ms, 40);
    ck_assert_uint_eq(in.requests, 2);
    /* a release of a key that is not there changes nothing */
    rel(t, "nobody", 50);
    ck_assert_int_eq(get(t, "nobody", &in), -ENOENT);
    ck_assert_uint_eq(stats(t).live, 1);

    ck_assert_int_eq(acq(t, "k", 60, 0, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_uint_eq(in.requests, 3);
    ck_assert_uint_eq(in.inflight, 1);
    ck_assert_int_eq(s.calls, 1);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_miss_full)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, -1);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &in), TETHER_SESSION_FULL);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(get(t, "k", &in), -ENOENT);
    ck_assert_int_eq(acq(t, "p", 0, TETHER_SESSION_PROVISIONAL, &s, &in), TETHER_SESSION_FULL);
    ck_assert_int_eq(get(t, "p", &in), -ENOENT);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.live + st.provisional, 0);
    ck_assert_uint_eq(st.created, 0);

    /* once a backend has room, the same key is placed normally */
    s.answer = 0;
    ck_assert_int_eq(acq(t, "k", 1, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(tether_session_load(t, 0), 1);
    tether_session_table_free(t);
}
END_TEST

/* ---- provisional sessions ---- */

START_TEST(test_provisional_no_load_until_confirm)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 1);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "minted", 0, TETHER_SESSION_PROVISIONAL, &s, &in),
                     TETHER_SESSION_CREATED);
    ck_assert(in.provisional);
    ck_assert_uint_eq(in.backend, 1);
    ck_assert_uint_eq(tether_session_load(t, 1), 0);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.provisional, 1);
    ck_assert_uint_eq(st.live, 0);
    rel(t, "minted", 1);

    /* a hit without CONFIRM (e.g. the same request's retry) stays provisional */
    ck_assert_int_eq(acq(t, "minted", 2, 0, &s, &in), TETHER_SESSION_FOUND);
    ck_assert(in.provisional);
    ck_assert_int_eq(s.calls, 1);
    rel(t, "minted", 3);

    /* the client brought the key back: place() is asked to keep it where it is */
    ck_assert_int_eq(acq(t, "minted", 4, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_int_eq(s.calls, 2);
    ck_assert_int_eq(s.last_prefer, 1);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(in.backend, 1);
    ck_assert_uint_eq(in.epoch, 1);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    st = stats(t);
    ck_assert_uint_eq(st.provisional, 0);
    ck_assert_uint_eq(st.live, 1);
    rel(t, "minted", 5);

    /* CONFIRM on a live session is an ordinary hit: no placement, no load */
    ck_assert_int_eq(acq(t, "minted", 6, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_int_eq(s.calls, 2);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    rel(t, "minted", 7);

    /* CONFIRM on a miss creates a live session */
    ck_assert_int_eq(acq(t, "fresh", 8, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_CREATED);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(tether_session_load(t, 1), 2);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_confirm_moves)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 1);
    struct tether_session_info in;

    ck_assert_int_eq(touch_once(t, "m", 0, TETHER_SESSION_PROVISIONAL, &s), TETHER_SESSION_CREATED);
    s.confirm = 3; /* backend 1 is full now: place() answers elsewhere */
    ck_assert_int_eq(acq(t, "m", 10, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_int_eq(s.last_prefer, 1);
    ck_assert_uint_eq(in.backend, 3);
    ck_assert_uint_eq(in.epoch, 2);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(tether_session_load(t, 1), 0);
    ck_assert_uint_eq(tether_session_load(t, 3), 1);
    rel(t, "m", 11);

    /* the old home's answer is stale now; the new one's is not */
    ck_assert_int_eq(end_key(t, "m", 1, 1), -ESTALE);
    ck_assert_int_eq(end_key(t, "m", 3, 1), -ESTALE);
    ck_assert_int_eq(end_key(t, "m", 3, 2), 0);
    ck_assert_uint_eq(tether_session_load(t, 3), 0);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_confirm_full_stays_provisional)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 2);
    struct tether_session_info in;

    ck_assert_int_eq(touch_once(t, "m", 0, TETHER_SESSION_PROVISIONAL, &s), TETHER_SESSION_CREATED);
    s.confirm = -1;
    ck_assert_int_eq(acq(t, "m", 10, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FULL);
    ck_assert_int_eq(get(t, "m", &in), 0);
    ck_assert(in.provisional);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_uint_eq(in.epoch, 1);
    ck_assert_uint_eq(in.inflight, 0); /* FULL needs no release */
    ck_assert_uint_eq(in.requests, 1);
    ck_assert_uint_eq(tether_session_load(t, 2), 0);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.provisional, 1);
    ck_assert_uint_eq(st.live, 0);

    /* room again: the next confirmation goes through */
    s.confirm = -2;
    ck_assert_int_eq(acq(t, "m", 20, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FOUND);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(tether_session_load(t, 2), 1);
    tether_session_table_free(t);
}
END_TEST

/* ---- learning ---- */

START_TEST(test_bind)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    /* unbound: bound to the backend that named it, as a live session */
    ck_assert_int_eq(bind_key(t, "mcp-1", 2, 100), 0);
    ck_assert_int_eq(get(t, "mcp-1", &in), 0);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_uint_eq(in.epoch, 1);
    ck_assert_uint_eq(in.inflight, 0);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(tether_session_load(t, 2), 1);

    /* same backend again: touched, nothing else */
    ck_assert_int_eq(bind_key(t, "mcp-1", 2, 200), 0);
    ck_assert_int_eq(get(t, "mcp-1", &in), 0);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_uint_eq(in.last_seen_ms, 200);
    ck_assert_uint_eq(in.created_ms, 100);
    ck_assert_uint_eq(tether_session_load(t, 2), 1);

    /* another backend can never capture it */
    ck_assert_int_eq(bind_key(t, "mcp-1", 0, 300), -EEXIST);
    ck_assert_int_eq(get(t, "mcp-1", &in), 0);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_uint_eq(in.epoch, 1);
    ck_assert_uint_eq(in.last_seen_ms, 200);
    ck_assert_uint_eq(tether_session_load(t, 2), 1);
    ck_assert_uint_eq(tether_session_load(t, 0), 0);

    /* requests then find it where it was bound, without a placement */
    ck_assert_int_eq(acq(t, "mcp-1", 400, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_int_eq(s.calls, 0);
    rel(t, "mcp-1", 401);

    /* a provisional record named by its own backend becomes live */
    ck_assert_int_eq(touch_once(t, "prov", 500, TETHER_SESSION_PROVISIONAL, &s),
                     TETHER_SESSION_CREATED);
    ck_assert_uint_eq(tether_session_load(t, 0), 0);
    ck_assert_int_eq(bind_key(t, "prov", 1, 510), -EEXIST);
    ck_assert_int_eq(get(t, "prov", &in), 0);
    ck_assert(in.provisional);
    ck_assert_uint_eq(in.backend, 0);
    ck_assert_int_eq(bind_key(t, "prov", 0, 520), 0);
    ck_assert_int_eq(get(t, "prov", &in), 0);
    ck_assert(!in.provisional);
    ck_assert_uint_eq(in.backend, 0);
    ck_assert_uint_eq(tether_session_load(t, 0), 1);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.live, 2);
    ck_assert_uint_eq(st.provisional, 0);
    tether_session_table_free(t);
}
END_TEST

/* ---- ending, state ---- */

START_TEST(test_end_fenced)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 1);
    struct tether_session_info in;

    ck_assert_int_eq(touch_once(t, "k", 0, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(end_key(t, "k", 0, 1), -ESTALE); /* wrong backend */
    ck_assert_int_eq(end_key(t, "k", 1, 2), -ESTALE); /* wrong epoch */
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(in.backend, 1);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    ck_assert_uint_eq(stats(t).ended, 0);

    ck_assert_int_eq(end_key(t, "k", 1, 1), 0);
    ck_assert_int_eq(get(t, "k", &in), -ENOENT);
    ck_assert_uint_eq(tether_session_load(t, 1), 0);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.ended, 1);
    ck_assert_uint_eq(st.live, 0);
    ck_assert_int_eq(end_key(t, "k", 1, 1), -ENOENT);

    /* a provisional session ends without touching any load */
    ck_assert_int_eq(touch_once(t, "p", 0, TETHER_SESSION_PROVISIONAL, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "q", 0, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    ck_assert_int_eq(end_key(t, "p", 1, 1), 0);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    st = stats(t);
    ck_assert_uint_eq(st.provisional, 0);
    ck_assert_uint_eq(st.live, 1);

    /* the next request of an ended session is a new session */
    ck_assert_int_eq(acq(t, "k", 5, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(in.requests, 1);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_set_state)
{
    struct tether_session_limits l = limits(100, BIG, BIG, BIG);
    l.max_state_bytes = 100;
    struct tether_session_table *t = tether_session_table_new(&l, 0);
    ck_assert_ptr_nonnull(t);
    struct stub s;
    stub_init(&s, 1);

    ck_assert_int_eq(touch_once(t, "a", 0, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "b", 0, 0, &s), TETHER_SESSION_CREATED);

    ck_assert_int_eq(set_state(t, "nobody", 1, 1, 10), -ENOENT);
    ck_assert_int_eq(set_state(t, "a", 0, 1, 10), -ESTALE);
    ck_assert_int_eq(set_state(t, "a", 1, 7, 10), -ESTALE);
    ck_assert_uint_eq(stats(t).state_bytes, 0);

    ck_assert_int_eq(set_state(t, "a", 1, 1, 60), 0);
    ck_assert_uint_eq(stats(t).state_bytes, 60);
    /* 60 + 50 > 100: refused and counted, nothing stored */
    ck_assert_int_eq(set_state(t, "b", 1, 1, 50), -ENOSPC);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.state_bytes, 60);
    ck_assert_uint_eq(st.state_refused, 1);
    ck_assert_int_eq(set_state(t, "b", 1, 1, 40), 0);
    ck_assert_uint_eq(stats(t).state_bytes, 100);
    /* a replacement is measured against what it replaces */
    ck_assert_int_eq(set_state(t, "a", 1, 1, 20), 0);
    ck_assert_uint_eq(stats(t).state_bytes, 60);
    ck_assert_int_eq(set_state(t, "a", 1, 1, 61), -ENOSPC);
    ck_assert_int_eq(set_state(t, "a", 1, 1, 60), 0);
    ck_assert_uint_eq(stats(t).state_bytes, 100);

    /* ending a session gives its bytes back */
    ck_assert_int_eq(end_key(t, "b", 1, 1), 0);
    ck_assert_uint_eq(stats(t).state_bytes, 60);
    ck_assert_int_eq(end_key(t, "a", 1, 1), 0);
    ck_assert_uint_eq(stats(t).state_bytes, 0);
    tether_session_table_free(t);
}
END_TEST

/* ---- expiry ---- */

START_TEST(test_idle_timeout)
{
    struct tether_session_table *t = table(100, 1000, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    rel(t, "k", 10);
    ck_assert_uint_eq(expire_all(t, 1009), 0);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(expire_all(t, 1010), 1);
    ck_assert_int_eq(get(t, "k", &in), -ENOENT);
    ck_assert_uint_eq(tether_session_load(t, 0), 0);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.expired, 1);
    ck_assert_uint_eq(st.live, 0);

    /* a request on a due record that nobody swept yet is a new session */
    ck_assert_int_eq(touch_once(t, "j", 2000, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "j", 2999, 0, &s), TETHER_SESSION_FOUND);
    ck_assert_int_eq(s.calls, 2);
    ck_assert_int_eq(acq(t, "j", 3999, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(s.calls, 3);
    ck_assert_uint_eq(in.requests, 1);
    ck_assert_uint_eq(in.created_ms, 3999);
    ck_assert_uint_eq(tether_session_load(t, 0), 1);
    ck_assert_uint_eq(stats(t).expired, 2);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_provisional_timeout)
{
    struct tether_session_table *t = table(100, 1000, BIG, 100, 0);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    ck_assert_int_eq(touch_once(t, "minted", 0, TETHER_SESSION_PROVISIONAL, &s),
                     TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "live", 0, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(expire_all(t, 99), 0);
    ck_assert_uint_eq(expire_all(t, 100), 1);
    ck_assert_int_eq(get(t, "minted", &in), -ENOENT);
    ck_assert_int_eq(get(t, "live", &in), 0); /* idle_timeout, not provisional_timeout */
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.provisional, 0);
    ck_assert_uint_eq(st.live, 1);

    /* a minted key that comes back too late is a new, live session */
    ck_assert_int_eq(touch_once(t, "late", 200, TETHER_SESSION_PROVISIONAL, &s),
                     TETHER_SESSION_CREATED);
    ck_assert_int_eq(acq(t, "late", 300, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_CREATED);
    ck_assert(!in.provisional);
    ck_assert_int_eq(s.last_prefer, -1);
    ck_assert_uint_eq(tether_session_load(t, 0), 2);
    rel(t, "late", 300);

    /* a confirmed one lives by idle_timeout */
    ck_assert_int_eq(touch_once(t, "kept", 400, TETHER_SESSION_PROVISIONAL, &s),
                     TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "kept", 450, TETHER_SESSION_CONFIRM, &s), TETHER_SESSION_FOUND);
    ck_assert_uint_eq(expire_all(t, 1000), 1); /* "live", idle since 0 */
    ck_assert_int_eq(get(t, "kept", &in), 0);
    ck_assert_int_eq(get(t, "late", &in), 0);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_max_lifetime)
{
    struct tether_session_table *t = table(100, 1000, 500, 1000, 0);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    /* used every 100 ms, so never idle, but created at 0 */
    for (uint64_t now = 0; now < 500; now += 100) {
        ck_assert_int_eq(touch_once(t, "busy", now, 0, &s),
                         now == 0 ? TETHER_SESSION_CREATED : TETHER_SESSION_FOUND);
        ck_assert_uint_eq(expire_all(t, now + 1), 0);
    }
    ck_assert_int_eq(touch_once(t, "young", 300, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(expire_all(t, 499), 0);
    ck_assert_uint_eq(expire_all(t, 500), 1);
    ck_assert_int_eq(get(t, "busy", &in), -ENOENT);
    ck_assert_int_eq(get(t, "young", &in), 0);
    ck_assert_uint_eq(expire_all(t, 800), 1);
    ck_assert_int_eq(get(t, "young", &in), -ENOENT);
    ck_assert_uint_eq(tether_session_load(t, 0), 0);

    /* acquire on a record past its lifetime is a new session, too */
    ck_assert_int_eq(touch_once(t, "again", 1000, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "again", 1400, 0, &s), TETHER_SESSION_FOUND);
    ck_assert_int_eq(acq(t, "again", 1500, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(in.created_ms, 1500);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_inflight_never_expires)
{
    struct tether_session_table *t = table(100, 1000, 5000, 100, 0);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "live", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(acq(t, "prov", 0, TETHER_SESSION_PROVISIONAL, &s, &in),
                     TETHER_SESSION_CREATED);
    /* far past idle, provisional and lifetime: open requests keep both */
    for (uint64_t now = 1000; now <= 20000; now += 1000)
        ck_assert_uint_eq(expire_all(t, now), 0);
    ck_assert_int_eq(get(t, "live", &in), 0);
    ck_assert_int_eq(get(t, "prov", &in), 0);
    /* and a second request on it is a hit, not a new session */
    ck_assert_int_eq(acq(t, "live", 20000, 0, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_uint_eq(in.created_ms, 0);
    ck_assert_uint_eq(in.inflight, 2);
    ck_assert_int_eq(s.calls, 2);
    rel(t, "live", 20000);

    /* released: past its lifetime already, so it goes with its last request */
    rel(t, "live", 21000);
    rel(t, "prov", 21000);
    ck_assert_uint_eq(expire_all(t, 21001), 0);
    ck_assert_int_eq(get(t, "live", &in), -ENOENT);
    ck_assert_int_eq(get(t, "prov", &in), -ENOENT);
    ck_assert_uint_eq(tether_session_load(t, 0), 0);
    ck_assert_uint_eq(stats(t).expired, 2);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_inflight_idle_then_release)
{
    /* idle expiry counts from the release, not from the acquire */
    struct tether_session_table *t = table(100, 1000, BIG, BIG, 0);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(expire_all(t, 5000), 0);
    rel(t, "k", 6000);
    ck_assert_uint_eq(expire_all(t, 6999), 0);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(expire_all(t, 7000), 1);
    ck_assert_int_eq(get(t, "k", &in), -ENOENT);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_lifetime_after_release_with_younger_neighbour)
{
    /*
     * "old" is busy when its lifetime runs out; "young", created later, is
     * idle. Once "old" is released it is due by max_lifetime and must go at
     * the next sweep, whatever younger records share its shard.
     */
    struct tether_session_table *t = table(100, BIG, 100, BIG, 1);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "old", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "young", 50, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(expire_all(t, 100), 0); /* "old" is busy */
    rel(t, "old", 110);                       /* due already: it goes with its last request */
    ck_assert_int_eq(get(t, "old", &in), -ENOENT);
    ck_assert_uint_eq(stats(t).expired, 1);
    ck_assert_uint_eq(expire_all(t, 120), 0);
    ck_assert_int_eq(get(t, "young", &in), 0);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_release_leaves_a_new_record_alone)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 1);
    struct stub s;
    struct tether_session_info a, b;

    stub_init(&s, 0);
    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &a), TETHER_SESSION_CREATED); /* request A */
    ck_assert_int_eq(tether_session_end(t, "k", 1, hash_of("k"), 0, 1), 0);
    ck_assert_int_eq(acq(t, "k", 5, 0, &s, &b), TETHER_SESSION_CREATED); /* request C */
    /* A ends: it must not count C's request as done */
    tether_session_release(t, "k", 1, hash_of("k"), a.created_ms, 6);
    ck_assert_int_eq(get(t, "k", &b), 0);
    ck_assert_uint_eq(b.inflight, 1);
    tether_session_table_free(t);
}
END_TEST

/* ---- moves ---- */

START_TEST(test_move_backend_moves_only_its_sessions)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 4);
    struct stub s;
    struct tether_session_info in;
    char k[16];

    stub_init(&s, 0);
    for (int i = 0; i < 20; i++) {
        snprintf(k, sizeof(k), "on0-%d", i);
        ck_assert_int_eq(acq(t, k, 0, 0, &s, &in), TETHER_SESSION_CREATED);
        rel(t, k, 0);
    }
    s.answer = 1;
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "on1-%d", i);
        ck_assert_int_eq(acq(t, k, 0, 0, &s, &in), TETHER_SESSION_CREATED);
        rel(t, k, 0);
    }
    ck_assert_int_eq(acq(t, "prov", 0, TETHER_SESSION_PROVISIONAL, &s, &in),
                     TETHER_SESSION_CREATED);
    rel(t, "prov", 0);
    ck_assert_int_eq(tether_session_set_state(t, "on1-3", 5, hash_of("on1-3"), 1, 1, "count=3", 7),
                     0);

    /* backend 1 goes: everything on it lands on 2, nothing else moves */
    s.answer = 2;
    ck_assert_uint_eq(tether_session_move_backend(t, 1, stub_place, &s), 11);
    ck_assert_uint_eq(tether_session_load(t, 0), 20);
    ck_assert_uint_eq(tether_session_load(t, 1), 0);
    ck_assert_uint_eq(tether_session_load(t, 2), 10);
    for (int i = 0; i < 20; i++) {
        snprintf(k, sizeof(k), "on0-%d", i);
        ck_assert_int_eq(get(t, k, &in), 0);
        ck_assert_uint_eq(in.backend, 0);
        ck_assert_uint_eq(in.epoch, 1);
        ck_assert(!in.handoff);
    }
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "on1-%d", i);
        ck_assert_int_eq(get(t, k, &in), 0);
        ck_assert_uint_eq(in.backend, 2);
        ck_assert_uint_eq(in.epoch, 2);
        ck_assert(in.handoff);
        ck_assert_uint_eq(in.moved_from, 1);
    }
    /* a provisional session moves, without a handoff, and still no load */
    ck_assert_int_eq(get(t, "prov", &in), 0);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert(!in.handoff);
    ck_assert(in.provisional);
    /* the state survives the move and is what the new home will get */
    char buf[32];
    ck_assert_int_eq(tether_session_state_copy(t, "on1-3", 5, hash_of("on1-3"), buf, sizeof(buf), NULL),
                     7);
    ck_assert(memcmp(buf, "count=3", 7) == 0);
    size_t need = 0;
    ck_assert_int_eq(tether_session_state_copy(t, "on1-3", 5, hash_of("on1-3"), buf, 3, &need),
                     -ENOSPC);
    ck_assert_uint_eq(need, 7);
    ck_assert_uint_eq(stats(t).moved, 11);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_move_without_a_home_keeps_the_binding)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 1);
    struct stub s;
    struct tether_session_info in;

    stub_init(&s, 3);
    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    rel(t, "k", 0);
    s.answer = -1; /* every backend down */
    ck_assert_uint_eq(tether_session_move_backend(t, 3, stub_place, &s), 0);
    ck_assert_int_eq(tether_session_move(t, "k", 1, hash_of("k"), 3, stub_place, &s, &in), -1);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(in.backend, 3);
    ck_assert_uint_eq(in.epoch, 1);
    ck_assert_uint_eq(tether_session_load(t, 3), 1);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_move_one_is_fenced_and_handoff_completes)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 1);
    struct stub s;
    struct tether_session_info in;

    stub_init(&s, 0);
    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    rel(t, "k", 0);
    /* not on backend 5: nothing moves, the answer is where it is */
    ck_assert_int_eq(tether_session_move(t, "k", 1, hash_of("k"), 5, stub_place, &s, &in), 0);
    ck_assert_uint_eq(in.epoch, 1);
    s.answer = 1;
    ck_assert_int_eq(tether_session_move(t, "k", 1, hash_of("k"), 0, stub_place, &s, &in), 1);
    ck_assert_uint_eq(in.epoch, 2);
    ck_assert(in.handoff);
    ck_assert_int_eq(tether_session_move(t, "nope", 4, hash_of("nope"), 0, stub_place, &s, &in),
                     -ENOENT);
    /* a late answer from the old home (backend 0, epoch 1) changes nothing */
    tether_session_handoff_done(t, "k", 1, hash_of("k"), 0, 1);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert(in.handoff);
    ck_assert_int_eq(tether_session_set_state(t, "k", 1, hash_of("k"), 0, 1, "x", 1), -ESTALE);
    ck_assert_int_eq(tether_session_end(t, "k", 1, hash_of("k"), 0, 1), -ESTALE);
    /* the new home's answer completes it */
    tether_session_handoff_done(t, "k", 1, hash_of("k"), 1, 2);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert(!in.handoff);
    tether_session_table_free(t);
}
END_TEST

/* ---- what a state store sees and does ---- */

/* A watcher that records every notice. */
struct notes {
    int n[6];
    enum tether_session_change last;
    uint32_t last_backend, last_epoch;
};

static void watcher(void *ctx, enum tether_session_change what, const char *key, size_t len,
                    uint64_t hash, const struct tether_session_info *info)
{
    struct notes *w = ctx;
    char k[TETHER_SESSION_MAX_KEY + 1];
    ck_assert(tether_session_key_valid(key, len));
    memcpy(k, key, len); /* the record's key is not terminated */
    k[len] = '\0';
    ck_assert_uint_eq(hash, hash_of(k));
    w->n[what]++;
    w->last = what;
    w->last_backend = info->backend;
    w->last_epoch = info->epoch;
}

START_TEST(test_watch_tells_every_change_once)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 1);
    struct notes w = {0};
    struct stub s;
    struct tether_session_info in;

    tether_session_table_watch(t, watcher, &w, 1000);
    stub_init(&s, 0);
    ck_assert_int_eq(acq(t, "k", 10, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_CREATE], 1);
    /* uses are told at most once per touch_ms */
    rel(t, "k", 20);
    ck_assert_int_eq(acq(t, "k", 500, 0, &s, &in), TETHER_SESSION_FOUND);
    rel(t, "k", 600);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_UPDATE], 0);
    ck_assert_int_eq(acq(t, "k", 1010, 0, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_UPDATE], 1);
    rel(t, "k", 1020);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_UPDATE], 1);
    ck_assert_int_eq(set_state(t, "k", 0, 1, 5), 0);
    ck_assert_int_eq(set_state(t, "k", 0, 9, 5), -ESTALE); /* fenced: not told */
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_STATE], 1);
    s.answer = 2;
    ck_assert_int_eq(tether_session_move(t, "k", 1, hash_of("k"), 0, stub_place, &s, &in), 2);
    ck_assert_int_eq(w.last, TETHER_SESSION_NOTE_MOVE);
    ck_assert_uint_eq(w.last_backend, 2);
    ck_assert_uint_eq(w.last_epoch, 2);
    tether_session_handoff_done(t, "k", 1, hash_of("k"), 2, 2);
    tether_session_handoff_done(t, "k", 1, hash_of("k"), 2, 2); /* done already: not told */
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_UPDATE], 2);
    ck_assert_int_eq(end_key(t, "k", 2, 2), 0);
    ck_assert_int_eq(w.last, TETHER_SESSION_NOTE_END);
    ck_assert_uint_eq(w.last_epoch, 2);
    /* a learned key is a creation; a minted one confirmed on another backend a move */
    ck_assert_int_eq(bind_key(t, "learned", 1, 2000), 0);
    ck_assert_int_eq(w.last, TETHER_SESSION_NOTE_CREATE);
    ck_assert_int_eq(acq(t, "m", 2000, TETHER_SESSION_PROVISIONAL, &s, &in),
                     TETHER_SESSION_CREATED);
    s.confirm = 3;
    ck_assert_int_eq(acq(t, "m", 2001, TETHER_SESSION_CONFIRM, &s, &in), TETHER_SESSION_FOUND);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_MOVE], 2);
    /* expiry is not a change the store must write: its copy expires by itself */
    int before = w.n[TETHER_SESSION_NOTE_END];
    rel(t, "m", 2001);
    rel(t, "m", 2001); /* both requests of it */
    rel(t, "learned", 2001);
    ck_assert_uint_eq(tether_session_expire(t, 0, 1, BIG * 3), 2);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_END], before);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_lookup_and_stale)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 1);
    struct stub s;
    struct tether_session_info in;

    stub_init(&s, 1);
    ck_assert_int_eq(acq(t, "k", 0, TETHER_SESSION_LOOKUP, &s, &in), TETHER_SESSION_MISS);
    ck_assert_int_eq(s.calls, 0);
    ck_assert_int_eq(get(t, "k", &in), -ENOENT);
    ck_assert_int_eq(acq(t, "k", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    rel(t, "k", 0);
    ck_assert_int_eq(acq(t, "k", 1, TETHER_SESSION_LOOKUP, &s, &in), TETHER_SESSION_FOUND);
    rel(t, "k", 1);
    ck_assert_uint_eq(tether_session_mark_stale(t), 1);
    ck_assert_int_eq(acq(t, "k", 2, TETHER_SESSION_LOOKUP, &s, &in), TETHER_SESSION_STALE);
    ck_assert(in.stale);
    ck_assert_uint_eq(in.backend, 1);
    ck_assert_int_eq(get(t, "k", &in), 0);
    ck_assert_uint_eq(in.inflight, 0); /* nothing taken */
    /* without LOOKUP a stale record is served as it is */
    ck_assert_int_eq(acq(t, "k", 3, 0, &s, &in), TETHER_SESSION_FOUND);
    ck_assert(in.stale);
    rel(t, "k", 3);
    /* the store confirms it unchanged: no longer stale, nothing moved */
    struct tether_session_view v = {.key = "k", .key_len = 1};
    v.info.backend = 1;
    v.info.epoch = 1;
    ck_assert_int_eq(tether_session_adopt(t, &v, hash_of("k"), 4), 0);
    ck_assert_int_eq(acq(t, "k", 5, TETHER_SESSION_LOOKUP, &s, &in), TETHER_SESSION_FOUND);
    ck_assert(!in.stale);
    ck_assert(!in.handoff);
    rel(t, "k", 5);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_adopt)
{
    struct tether_session_table *t = table(100, BIG, BIG, BIG, 1);
    struct notes w = {0};
    struct stub s;
    struct tether_session_info in;
    char buf[16];

    tether_session_table_watch(t, watcher, &w, 0);
    stub_init(&s, 0);
    /* absent: inserted as the store has it, counted, not told back */
    struct tether_session_view v = {.key = "a", .key_len = 1, .state = "count=4", .state_len = 7};
    v.info.backend = 2;
    v.info.epoch = 3;
    v.info.requests = 9;
    v.info.created_ms = 5;
    ck_assert_int_eq(tether_session_adopt(t, &v, hash_of("a"), 100), 2);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert_uint_eq(in.backend, 2);
    ck_assert_uint_eq(in.epoch, 3);
    ck_assert_uint_eq(in.requests, 9);
    ck_assert_uint_eq(in.created_ms, 5);
    ck_assert_uint_eq(in.last_seen_ms, 100);
    ck_assert_uint_eq(tether_session_load(t, 2), 1);
    ck_assert_int_eq(tether_session_state_copy(t, "a", 1, hash_of("a"), buf, sizeof(buf), NULL), 7);
    /* present, another binding (a peer moved it): rebound with a handoff from
       the store's moved_from, the store's state, the load follows */
    v.info.backend = 1;
    v.info.epoch = 4;
    v.info.handoff = true;
    v.info.moved_from = 2;
    v.state = "count=5";
    ck_assert_int_eq(tether_session_adopt(t, &v, hash_of("a"), 110), 1);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert_uint_eq(in.backend, 1);
    ck_assert_uint_eq(in.epoch, 4);
    ck_assert(in.handoff);
    ck_assert_uint_eq(in.moved_from, 2);
    ck_assert_uint_eq(tether_session_load(t, 2), 0);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    ck_assert_int_eq(tether_session_state_copy(t, "a", 1, hash_of("a"), buf, sizeof(buf), NULL), 7);
    ck_assert(memcmp(buf, "count=5", 7) == 0);
    /* a local record that lost a claim race: it hands off from where it was,
       keeping its own state when the store gives none */
    ck_assert_int_eq(acq(t, "b", 120, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(set_state(t, "b", 0, 1, 3), 0);
    struct tether_session_view o = {.key = "b", .key_len = 1};
    o.info.backend = 3;
    o.info.epoch = 1;
    ck_assert_int_eq(tether_session_adopt(t, &o, hash_of("b"), 130), 1);
    ck_assert_int_eq(get(t, "b", &in), 0);
    ck_assert_uint_eq(in.backend, 3);
    ck_assert(in.handoff);
    ck_assert_uint_eq(in.moved_from, 0);
    ck_assert_uint_eq(in.state_len, 3);
    ck_assert_uint_eq(in.inflight, 1); /* the request in flight keeps its count */
    rel(t, "b", 131);
    /* a provisional record the store knows as live becomes live */
    ck_assert_int_eq(acq(t, "p", 140, TETHER_SESSION_PROVISIONAL, &s, &in), TETHER_SESSION_CREATED);
    rel(t, "p", 140);
    struct tether_session_view pv = {.key = "p", .key_len = 1};
    pv.info.backend = 0;
    pv.info.epoch = 1;
    ck_assert_int_eq(tether_session_adopt(t, &pv, hash_of("p"), 150), 0);
    ck_assert_int_eq(get(t, "p", &in), 0);
    ck_assert(!in.provisional);
    ck_assert(!in.handoff);
    ck_assert_uint_eq(tether_session_load(t, 0), 1);
    /* adopting tells the watcher nothing; only the local changes above did */
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_CREATE], 2);
    ck_assert_int_eq(w.n[TETHER_SESSION_NOTE_MOVE], 0);
    /* moved from a backend the store knows and this table does not */
    v.info.backend = 0;
    v.info.epoch = 5;
    v.info.moved_from = TETHER_SESSION_NOWHERE;
    ck_assert_int_eq(tether_session_adopt(t, &v, hash_of("a"), 160), 1);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert(in.handoff);
    ck_assert_uint_eq(in.moved_from, TETHER_SESSION_NOWHERE);
    v.info.moved_from = TETHER_SESSION_MAX_BACKENDS;
    ck_assert_int_eq(tether_session_adopt(t, &v, hash_of("a"), 170), -EINVAL);
    v.info.backend = TETHER_SESSION_MAX_BACKENDS;
    v.info.handoff = false;
    ck_assert_int_eq(tether_session_adopt(t, &v, hash_of("a"), 180), -EINVAL);
    tether_session_table_free(t);
}
END_TEST

/* ---- the table budget ---- */

START_TEST(test_budget_evicts_lru_idle)
{
    /* one shard, so "the shard" is the table */
    struct tether_session_table *t = table(3, BIG, BIG, BIG, 1);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;

    ck_assert_int_eq(touch_once(t, "a", 0, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "p", 10, TETHER_SESSION_PROVISIONAL, &s),
                     TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, "b", 20, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_uint_eq(tether_session_load(t, 0), 2);

    /* full: the provisional one goes first, though "a" is older */
    ck_assert_int_eq(touch_once(t, "c", 30, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(get(t, "p", &in), -ENOENT);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert_uint_eq(stats(t).evicted, 1);

    /* then the least recently used live one: "a" was used at 0, so touch it
       and "b" becomes the oldest */
    ck_assert_int_eq(touch_once(t, "a", 40, 0, &s), TETHER_SESSION_FOUND);
    ck_assert_int_eq(touch_once(t, "d", 50, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(get(t, "b", &in), -ENOENT);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert_int_eq(get(t, "c", &in), 0);
    ck_assert_int_eq(get(t, "d", &in), 0);
    ck_assert_uint_eq(tether_session_load(t, 0), 3);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.evicted, 2);
    ck_assert_uint_eq(st.live + st.provisional, 3);

    /* a record with a request open is skipped, even if it is the oldest */
    ck_assert_int_eq(acq(t, "c", 60, 0, &s, &in), TETHER_SESSION_FOUND); /* c: busy */
    ck_assert_int_eq(touch_once(t, "a", 70, 0, &s), TETHER_SESSION_FOUND);
    ck_assert_int_eq(touch_once(t, "d", 80, 0, &s), TETHER_SESSION_FOUND);
    /* use order now: c (60, busy), a (70), d (80) */
    ck_assert_int_eq(touch_once(t, "e", 90, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(get(t, "c", &in), 0);
    ck_assert_int_eq(get(t, "a", &in), -ENOENT);
    ck_assert_uint_eq(stats(t).evicted, 3);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_budget_all_inflight)
{
    struct tether_session_table *t = table(2, BIG, BIG, BIG, 1);
    struct stub s;
    stub_init(&s, 1);
    struct tether_session_info in;

    ck_assert_int_eq(acq(t, "a", 0, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(acq(t, "b", 0, TETHER_SESSION_PROVISIONAL, &s, &in), TETHER_SESSION_CREATED);
    int calls = s.calls;
    ck_assert_int_eq(acq(t, "c", 1, 0, &s, &in), TETHER_SESSION_ENOMEM);
    ck_assert_int_eq(acq(t, "d", 1, TETHER_SESSION_PROVISIONAL, &s, &in), TETHER_SESSION_ENOMEM);
    ck_assert_int_eq(get(t, "c", &in), -ENOENT);
    ck_assert_int_eq(get(t, "d", &in), -ENOENT);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert_int_eq(get(t, "b", &in), 0);
    /* place() ran (it has no side effects) but nothing was evicted or stored */
    ck_assert_int_ge(s.calls, calls);
    ck_assert_uint_eq(tether_session_load(t, 1), 1);
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.live + st.provisional, 2);
    ck_assert_uint_eq(st.evicted, 0);
    /* learning is refused the same way */
    ck_assert_int_eq(bind_key(t, "e", 1, 2), -ENOMEM);
    ck_assert_int_eq(get(t, "e", &in), -ENOENT);

    /* one released: it makes room */
    rel(t, "b", 3);
    ck_assert_int_eq(acq(t, "c", 4, 0, &s, &in), TETHER_SESSION_CREATED);
    ck_assert_int_eq(get(t, "b", &in), -ENOENT);
    ck_assert_uint_eq(stats(t).evicted, 1);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_budget_evicts_in_another_shard)
{
    /* The new key's shard holds only a busy record; an idle one elsewhere goes. */
    struct tether_session_table *t = table(2, BIG, BIG, BIG, 64);
    struct stub s;
    stub_init(&s, 0);
    struct tether_session_info in;
    char same[32] = "", other[32] = "";
    uint64_t shard_a = (hash_of("a") >> 40) & 63;
    for (int i = 0; i < 100000 && (!same[0] || !other[0]); i++) {
        char k[32];
        snprintf(k, sizeof(k), "k%d", i);
        uint64_t sh = (hash_of(k) >> 40) & 63;
        if (sh == shard_a && !same[0])
            snprintf(same, sizeof(same), "%s", k);
        else if (sh != shard_a && !other[0])
            snprintf(other, sizeof(other), "%s", k);
    }
    ck_assert(same[0] && other[0]);
    ck_assert_int_eq(acq(t, "a", 0, 0, &s, &in), TETHER_SESSION_CREATED); /* stays busy */
    ck_assert_int_eq(touch_once(t, other, 1, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(touch_once(t, same, 2, 0, &s), TETHER_SESSION_CREATED);
    ck_assert_int_eq(get(t, other, &in), -ENOENT);
    ck_assert_int_eq(get(t, "a", &in), 0);
    ck_assert_uint_eq(stats(t).evicted, 1);
    tether_session_table_free(t);
}
END_TEST

START_TEST(test_import_keeps_the_budget)
{
    struct tether_session_table *t = table(2, BIG, BIG, BIG, 1);
    const char *keys[] = {"a", "b", "c"};
    for (size_t i = 0; i < 3; i++) {
        struct tether_session_view v = {.key = keys[i], .key_len = 1,
                                        .info = {.backend = 0, .epoch = 1, .created_ms = 1,
                                                 .last_seen_ms = 1}};
        ck_assert_int_eq(tether_session_import(t, &v, hash_of(keys[i])), i < 2 ? 0 : -ENOSPC);
    }
    ck_assert_uint_eq(stats(t).live, 2);
    tether_session_table_free(t);
}
END_TEST

/* ---- stats ---- */

START_TEST(test_stats_add_up)
{
    enum { NKEYS = 300, ROUNDS = 5000 };
    struct tether_session_table *t = table(200, 400, 3000, 100, 4);
    struct stub s;
    stub_init(&s, 0);
    uint64_t rng = 12345;
    char key[32];
    uint64_t now = 0;

    for (int i = 0; i < ROUNDS; i++) {
        uint64_t r = mix(rng++);
        snprintf(key, sizeof(key), "key-%u", (unsigned)(r % NKEYS));
        s.answer = (int)((r >> 20) % 4);
        now += (r >> 32) % 7;
        switch ((r >> 8) % 6) {
        case 0:
            touch_once(t, key, now, TETHER_SESSION_PROVISIONAL, &s);
            break;
        case 1:
            touch_once(t, key, now, TETHER_SESSION_CONFIRM, &s);
            break;
        case 2: {
            struct tether_session_info in;
            if (get(t, key, &in) == 0)
                ck_assert_int_eq(end_key(t, key, in.backend, in.epoch), 0);
            break;
        }
        case 3:
            bind_key(t, key, (uint32_t)s.answer, now);
            break;
        case 4:
            if (i % 50 == 0)
                expire_all(t, now);
            break;
        default:
            touch_once(t, key, now, 0, &s);
            break;
        }
    }

    /* every key, looked up: the records the counters claim are there */
    uint64_t live = 0, prov = 0, load[4] = {0};
    for (unsigned k = 0; k < NKEYS; k++) {
        struct tether_session_info in;
        snprintf(key, sizeof(key), "key-%u", k);
        if (get(t, key, &in) < 0)
            continue;
        ck_assert_uint_eq(in.inflight, 0);
        if (in.provisional) {
            prov++;
        } else {
            live++;
            load[in.backend]++;
        }
    }
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.live, live);
    ck_assert_uint_eq(st.provisional, prov);
    ck_assert_uint_le(live + prov, 200);
    ck_assert_uint_eq(st.created - st.expired - st.evicted - st.ended, live + prov);
    for (uint32_t b = 0; b < 4; b++)
        ck_assert_uint_eq(tether_session_load(t, b), load[b]);
    ck_assert_uint_gt(st.created, 0);
    ck_assert_uint_gt(st.ended, 0);
    tether_session_table_free(t);
}
END_TEST

/* ---- concurrency: check-then-insert is atomic ---- */

#define NTHREADS 4
#define OPS 50000
#define NBACK 8
#define CAP 40
#define NKEYS_MT 4000

struct capped {
    struct tether_session_table *t;
    _Atomic unsigned long placements;
    _Atomic unsigned long violations; /* a cap seen overshot, or about to be */
    _Atomic unsigned long full;
    unsigned seed; /* guarded by the placement lock */
};

/* Runs under the table's placement lock: a backend under its cap, or -1. */
static int capped_place(void *ctx, uint64_t hash, int prefer)
{
    struct capped *c = ctx;
    uint32_t load[NBACK];
    atomic_fetch_add(&c->placements, 1);
    for (uint32_t b = 0; b < NBACK; b++) {
        load[b] = tether_session_load(c->t, b);
        if (load[b] > CAP)
            atomic_fetch_add(&c->violations, 1);
    }
    if (prefer >= 0 && load[prefer] < CAP)
        return prefer;
    /* start the walk at a spot that depends on the key and on the call */
    c->seed = c->seed * 1103515245u + 12345u;
    uint32_t start = (uint32_t)((hash ^ c->seed) % NBACK);
    for (uint32_t i = 0; i < NBACK; i++) {
        uint32_t b = (start + i) % NBACK;
        if (load[b] < CAP) {
            /* the insert's +1 comes after this returns, under the same lock */
            if (tether_session_load(c->t, b) >= CAP)
                atomic_fetch_add(&c->violations, 1);
            return (int)b;
        }
    }
    atomic_fetch_add(&c->full, 1);
    return -1;
}

struct worker {
    struct capped *c;
    uint64_t seed;
    unsigned long created, found, full, other;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    struct tether_session_table *t = w->c->t;
    char key[32];
    for (unsigned long i = 0; i < OPS; i++) {
        uint64_t r = mix(w->seed + i);
        int len = snprintf(key, sizeof(key), "s%u", (unsigned)(r % NKEYS_MT));
        uint64_t h = hash_of(key);
        unsigned flags = (r >> 16) % 3 == 0   ? TETHER_SESSION_PROVISIONAL
                         : (r >> 16) % 3 == 1 ? TETHER_SESSION_CONFIRM
                                              : 0;
        uint64_t now = i;
        struct tether_session_info in;
        int rc =
            tether_session_acquire(t, key, (size_t)len, h, now, flags, capped_place, w->c, &in);
        if (rc == TETHER_SESSION_CREATED)
            w->created++;
        else if (rc == TETHER_SESSION_FOUND)
            w->found++;
        else if (rc == TETHER_SESSION_FULL)
            w->full++;
        else
            w->other++;
        if (rc >= 0) {
            /* some sessions end, so loads go down as well as up */
            if ((r >> 40) % 8 == 0)
                tether_session_end(t, key, (size_t)len, h, in.backend, in.epoch);
            tether_session_release(t, key, (size_t)len, h, in.created_ms, now);
        }
        if ((r >> 48) % 512 == 0) {
            size_t n = tether_session_shards(t);
            size_t from = (size_t)(r % n);
            tether_session_expire(t, from, from + 1, now);
        }
    }
    return NULL;
}

START_TEST(test_concurrent_caps)
{
    /* idle 2000 "ms" of a thread's own clock: sessions come and go */
    struct tether_session_table *t = table(1000000, 2000, BIG, 500, 16);
    struct capped c = {.t = t, .seed = 1};
    struct worker w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){.c = &c, .seed = 0x1000000ULL * (uint64_t)(i + 1)};
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, &w[i]), 0);
    }
    unsigned long created = 0, found = 0, full = 0, other = 0;
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        created += w[i].created;
        found += w[i].found;
        full += w[i].full;
        other += w[i].other;
    }
    unsigned long violations = atomic_load(&c.violations);
    ck_assert_uint_eq(violations, 0);
    ck_assert_uint_eq(other, 0);
    ck_assert_uint_eq(created + found + full, (unsigned long)NTHREADS * OPS);
    /* the caps were really contended: some placements found every backend full */
    ck_assert_uint_gt(full, 0);
    ck_assert_uint_gt(created, 0);

    /* at rest: loads within the caps, and equal to the live records per backend */
    uint64_t load[NBACK] = {0}, live = 0, prov = 0;
    char key[32];
    for (unsigned k = 0; k < NKEYS_MT; k++) {
        struct tether_session_info in;
        snprintf(key, sizeof(key), "s%u", k);
        if (get(t, key, &in) < 0)
            continue;
        ck_assert_uint_eq(in.inflight, 0);
        ck_assert_uint_lt(in.backend, NBACK);
        if (in.provisional) {
            prov++;
        } else {
            live++;
            load[in.backend]++;
        }
    }
    uint64_t sum = 0;
    for (uint32_t b = 0; b < NBACK; b++) {
        ck_assert_uint_le(tether_session_load(t, b), CAP);
        ck_assert_uint_eq(tether_session_load(t, b), load[b]);
        sum += load[b];
    }
    struct tether_session_stats st = stats(t);
    ck_assert_uint_eq(st.live, live);
    ck_assert_uint_eq(st.provisional, prov);
    ck_assert_uint_eq(sum, live);
    tether_session_table_free(t);
}
END_TEST

static Suite *table_suite(void)
{
    Suite *s = suite_create("session/table");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_miss_creates);
    tcase_add_test(tc, test_hit_found);
    tcase_add_test(tc, test_miss_full);
    tcase_add_test(tc, test_provisional_no_load_until_confirm);
    tcase_add_test(tc, test_confirm_moves);
    tcase_add_test(tc, test_confirm_full_stays_provisional);
    tcase_add_test(tc, test_bind);
    tcase_add_test(tc, test_end_fenced);
    tcase_add_test(tc, test_set_state);
    tcase_add_test(tc, test_idle_timeout);
    tcase_add_test(tc, test_provisional_timeout);
    tcase_add_test(tc, test_max_lifetime);
    tcase_add_test(tc, test_inflight_never_expires);
    tcase_add_test(tc, test_inflight_idle_then_release);
    tcase_add_test(tc, test_lifetime_after_release_with_younger_neighbour);
    tcase_add_test(tc, test_budget_evicts_lru_idle);
    tcase_add_test(tc, test_budget_evicts_in_another_shard);
    tcase_add_test(tc, test_import_keeps_the_budget);
    tcase_add_test(tc, test_budget_all_inflight);
    tcase_add_test(tc, test_stats_add_up);
    tcase_add_test(tc, test_release_leaves_a_new_record_alone);
    tcase_add_test(tc, test_move_backend_moves_only_its_sessions);
    tcase_add_test(tc, test_move_without_a_home_keeps_the_binding);
    tcase_add_test(tc, test_move_one_is_fenced_and_handoff_completes);
    tcase_add_test(tc, test_watch_tells_every_change_once);
    tcase_add_test(tc, test_lookup_and_stale);
    tcase_add_test(tc, test_adopt);
    suite_add_tcase(s, tc);

    TCase *mt = tcase_create("threads");
    tcase_set_timeout(mt, 120);
    tcase_add_test(mt, test_concurrent_caps);
    suite_add_tcase(s, mt);
    return s;
}

int main(void)
{
    return unit_run(table_suite());
}
