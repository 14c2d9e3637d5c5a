/*
 * Unit tests for src/util/time.c: the monotonic clocks never go back and
 * agree with each other and with the wall clock; tether_strieq folds ASCII
 * letters only, over byte ranges.
 */
#include <stdlib.h>
#include <time.h>

#include <check.h>

#include "tether/util.h"
#include "../unit.h"

START_TEST(test_monotonic)
{
    uint64_t ms = tether_now_ms(), us = tether_now_us();
    for (int i = 0; i < 100000; i++) {
        uint64_t ms2 = tether_now_ms(), us2 = tether_now_us();
        ck_assert_uint_ge(ms2, ms);
        ck_assert_uint_ge(us2, us);
        ms = ms2;
        us = us2;
    }
}
END_TEST

START_TEST(test_units_agree)
{
    uint64_t ms0 = tether_now_ms();
    uint64_t us0 = tether_now_us();
    struct timespec nap = {0, 30 * 1000 * 1000};
    nanosleep(&nap, NULL);
    uint64_t us1 = tether_now_us();
    uint64_t ms1 = tether_now_ms();

    ck_assert_uint_ge(us1 - us0, 30000);
    ck_assert_uint_ge(ms1 - ms0, 30);
    /* One clock in two units, read in this order: ms0 <= us0 <= us1 <= ms1. */
    ck_assert_uint_le(ms0, us0 / 1000);
    ck_assert_uint_le(us1 / 1000, ms1);
}
END_TEST

START_TEST(test_wall_clock)
{
    uint64_t before = (uint64_t)time(NULL) * 1000;
    uint64_t wall = tether_wall_ms();
    uint64_t after = (uint64_t)time(NULL) * 1000;
    ck_assert_uint_ge(wall, before);
    ck_assert_uint_lt(wall, after + 1000);
}
END_TEST

START_TEST(test_strieq)
{
    ck_assert_int_eq(tether_strieq("Content-Length", 14, "content-length", 14), 1);
    ck_assert_int_eq(tether_strieq("X-FC-SESSION-ID", 15, "x-fc-session-id", 15), 1);
    ck_assert_int_eq(tether_strieq("abc", 3, "abd", 3), 0);
    ck_assert_int_eq(tether_strieq("abc", 3, "abcd", 4), 0);
    ck_assert_int_eq(tether_strieq("abc", 2, "abX", 2), 1);
    ck_assert_int_eq(tether_strieq("", 0, "", 0), 1);
    ck_assert_int_eq(tether_strieq(NULL, 0, NULL, 0), 1);
    ck_assert_int_eq(tether_strieq("a\0b", 3, "A\0B", 3), 1);
    ck_assert_int_eq(tether_strieq("a\0b", 3, "a\0c", 3), 0);

    /* Only A-Z fold: neighbours one bit 0x20 apart are different bytes. */
    const char *upper = "@[\\]^\xc0\xc9";
    const char *lower = "`{|}~\xe0\xe9";
    for (size_t i = 0; upper[i] != '\0'; i++)
        ck_assert_int_eq(tether_strieq(&upper[i], 1, &lower[i], 1), 0);
    for (int c = 0; c < 256; c++) {
        char a = (char)c;
        char b = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        ck_assert_int_eq(tether_strieq(&a, 1, &b, 1), 1);
        ck_assert_int_eq(tether_strieq(&b, 1, &a, 1), 1);
    }
}
END_TEST

static Suite *time_suite(void)
{
    Suite *s = suite_create("util/time");
    TCase *tc = tcase_create("clocks");
    tcase_add_test(tc, test_monotonic);
    tcase_add_test(tc, test_units_agree);
    tcase_add_test(tc, test_wall_clock);
    suite_add_tcase(s, tc);
    tc = tcase_create("strings");
    tcase_add_test(tc, test_strieq);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(time_suite());
}
