/*
 * Unit tests for src/state/lua.c: reading a session record out of an
 * HGETALL reply (anything that is not a record of ours is refused, never
 * taken as data), the scripts' digests, and the clock conversions.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <hiredis/hiredis.h>

#include "tether/util.h"
#include "store-int.h"
#include "../unit.h"

/* A reply built by hand: an array of bulk strings, or one element of another type. */
struct fake {
    redisReply top;
    redisReply el[32];
    redisReply *ptr[32];
};

static redisReply *pairs(struct fake *f, const char *const *kv, size_t n)
{
    memset(f, 0, sizeof(*f));
    f->top.type = REDIS_REPLY_ARRAY;
    f->top.elements = n;
    f->top.element = f->ptr;
    for (size_t i = 0; i < n; i++) {
        f->el[i].type = REDIS_REPLY_STRING;
        f->el[i].str = (char *)kv[i];
        f->el[i].len = strlen(kv[i]);
        f->ptr[i] = &f->el[i];
    }
    return &f->top;
}

static const char *const full[] = {
    "backend",       "fn-2",      "epoch",         "3",        "created",
    "1700000000000", "last_seen", "1700000001000", "requests", "42",
    "provisional",   "0",         "handoff",       "1",        "moved_from",
    "fn-1",          "state",     "Y291bnQ9Mw==",
};

START_TEST(test_parse_full)
{
    struct fake f;
    struct rrecord r;
    ck_assert_int_eq(rrecord_parse(pairs(&f, full, 18), &r), 0);
    ck_assert_uint_eq(r.backend_len, 4);
    ck_assert(memcmp(r.backend, "fn-2", 4) == 0);
    ck_assert_uint_eq(r.epoch, 3);
    ck_assert_uint_eq(r.created, 1700000000000ULL);
    ck_assert_uint_eq(r.last_seen, 1700000001000ULL);
    ck_assert_uint_eq(r.requests, 42);
    ck_assert(!r.provisional);
    ck_assert(r.handoff);
    ck_assert_uint_eq(r.moved_from_len, 4);
    ck_assert_uint_eq(r.state_len, 12);
}
END_TEST

START_TEST(test_parse_minimal_and_unknown_fields)
{
    static const char *const kv[] = {"x-future", "whatever", "epoch", "1", "backend", "b"};
    struct fake f;
    struct rrecord r;
    ck_assert_int_eq(rrecord_parse(pairs(&f, kv, 6), &r), 0);
    ck_assert_ptr_null(r.state); /* none: not an empty one */
    ck_assert_uint_eq(r.moved_from_len, 0);
    ck_assert_uint_eq(r.created, 0);
}
END_TEST

START_TEST(test_parse_refuses_what_is_not_ours)
{
    struct fake f;
    struct rrecord r;
    static const char *const no_backend[] = {"epoch", "1"};
    static const char *const no_epoch[] = {"backend", "b"};
    static const char *const zero_epoch[] = {"backend", "b", "epoch", "0"};
    static const char *const big_epoch[] = {"backend", "b", "epoch", "4294967296"};
    static const char *const signed_epoch[] = {"backend", "b", "epoch", "-1"};
    static const char *const bad_time[] = {"backend", "b", "epoch", "1", "created", "12x"};
    static const char *const empty_backend[] = {"backend", "", "epoch", "1"};
    ck_assert_int_eq(rrecord_parse(pairs(&f, no_backend, 2), &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(pairs(&f, no_epoch, 2), &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(pairs(&f, zero_epoch, 4), &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(pairs(&f, big_epoch, 4), &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(pairs(&f, signed_epoch, 4), &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(pairs(&f, bad_time, 6), &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(pairs(&f, empty_backend, 4), &r), -EINVAL);
    /* an odd count, a non-array, an element that is not a string */
    ck_assert_int_eq(rrecord_parse(pairs(&f, full, 17), &r), -EINVAL);
    pairs(&f, full, 18);
    f.top.type = REDIS_REPLY_STRING;
    ck_assert_int_eq(rrecord_parse(&f.top, &r), -EINVAL);
    pairs(&f, full, 18);
    f.el[3].type = REDIS_REPLY_INTEGER;
    ck_assert_int_eq(rrecord_parse(&f.top, &r), -EINVAL);
    ck_assert_int_eq(rrecord_parse(NULL, &r), -EINVAL);
}
END_TEST

START_TEST(test_script_digests)
{
    char a[41], b[41], c[41];
    ck_assert_int_eq(store_sha1_hex("return 1", a), 0);
    /* SHA1("return 1"), as SCRIPT LOAD answers it */
    ck_assert_str_eq(a, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    ck_assert_int_eq(store_sha1_hex(store_lua_claim, a), 0);
    ck_assert_int_eq(store_sha1_hex(store_lua_sync, b), 0);
    ck_assert_int_eq(store_sha1_hex(store_lua_end, c), 0);
    ck_assert_str_ne(a, b);
    ck_assert_str_ne(b, c);
}
END_TEST

START_TEST(test_clocks)
{
    uint64_t mono = tether_now_ms(), wall = tether_wall_ms();
    uint64_t w = store_to_wall(mono - 5000);
    ck_assert(w + 5000 >= wall && w + 5000 <= wall + 50);
    uint64_t m = store_to_mono(wall - 5000);
    ck_assert(m + 5000 >= mono && m + 5000 <= mono + 50);
    /* another host's clock ahead of ours: now, never the future */
    m = store_to_mono(wall + 3600 * 1000);
    ck_assert(m >= mono && m <= mono + 50);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("state/lua");
    TCase *tc = tcase_create("lua");
    tcase_add_test(tc, test_parse_full);
    tcase_add_test(tc, test_parse_minimal_and_unknown_fields);
    tcase_add_test(tc, test_parse_refuses_what_is_not_ours);
    tcase_add_test(tc, test_script_digests);
    tcase_add_test(tc, test_clocks);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
