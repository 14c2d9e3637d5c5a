/*
 * Tests for src/config/walk.c: how each kind of value is typed and how
 * mappings are walked (unknown, repeated and missing keys), each problem
 * checked for its exact line:col and key path.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <check.h>

#include "common.h"
#include "../unit.h"

START_TEST(unknown_keys)
{
    ck_assert_one_error(MINIMAL "bogus: 1\n", 6, 1, "bogus", "unknown key");
    ck_assert_one_error(MINIMAL "session:\n  cookies: x\n", 7, 3, "session.cookies",
                        "unknown key (did you mean cookie?)");
    ck_assert_one_error("listen:\n  - address: 127.0.0.1:8080\n    port: 1\n"
                        "backends:\n  - name: a\n    address: 127.0.0.1:1\n",
                        3, 5, "listen[0].port", "unknown key");
    ck_assert_one_error(MINIMAL "    wieght: 2\n", 6, 5, "backends[0].wieght",
                        "did you mean weight?");
    ck_assert_one_error(MINIMAL "state:\n  redis:\n    pasword_file: x\n", 8, 5,
                        "state.redis.pasword_file", "unknown key");
}
END_TEST

START_TEST(duplicate_keys)
{
    ck_assert_one_error(MINIMAL "retries: 1\nretries: 2\n", 7, 1, "retries",
                        "duplicate key (first at line 6)");
    ck_assert_one_error(MINIMAL "    weight: 1\n    weight: 2\n", 7, 5, "backends[0].weight",
                        "duplicate key");
}
END_TEST

START_TEST(required_keys)
{
    ck_assert_one_error("backends:\n  - name: a\n    address: 127.0.0.1:1\n", 1, 1, "listen",
                        "required key is missing");
    ck_assert_one_error("listen:\n  - address: 127.0.0.1:1\nbackends:\n  - name: a\n", 4, 5,
                        "backends[0].address", "required key is missing");
    ck_assert_one_error(MINIMAL "  - address: 127.0.0.1:9002\n", 6, 5, "backends[1].name",
                        "required key is missing");
}
END_TEST

START_TEST(container_types)
{
    ck_assert_one_error(MINIMAL "session: [1]\n", 6, 10, "session",
                        "expected a mapping, got a sequence");
    ck_assert_one_error(MINIMAL "health: on\n", 6, 9, "health",
                        "expected a mapping, got a plain value");
    ck_assert_one_error(MINIMAL "log:\n  access: {a: 1}\n", 7, 11, "log.access",
                        "expected a string, got a mapping");
    ck_assert_one_error(MINIMAL "session:\n  sources: header\n", 7, 12, "session.sources",
                        "expected a sequence, got a plain value");
    ck_assert_one_error("listen: 127.0.0.1:8080\nbackends:\n  - name: a\n    address: 127.0.0.1:1\n", 1, 9,
                        "listen", "expected a sequence");
    ck_assert_one_error("listen:\n  - 127.0.0.1:8080\nbackends:\n  - name: a\n    address: 127.0.0.1:1\n",
                        2, 5, "listen[0]", "expected a mapping, got a plain value");
    ck_assert_one_error(MINIMAL "? [a]\n: 1\n", 6, 3, "", "a key must be a string");
}
END_TEST

START_TEST(numbers)
{
    ck_assert_one_error(MINIMAL "    weight: \"2\"\n", 6, 13, "backends[0].weight",
                        "expected an integer, got a quoted string");
    ck_assert_one_error(MINIMAL "    weight: '2'\n", 6, 13, "backends[0].weight",
                        "quoted string");
    ck_assert_one_error(MINIMAL "    weight: 2.5\n", 6, 13, "backends[0].weight",
                        "expected an integer, got \"2.5\"");
    ck_assert_one_error(MINIMAL "    weight: 0x10\n", 6, 13, "backends[0].weight",
                        "expected an integer");
    ck_assert_one_error(MINIMAL "    weight: -1\n", 6, 13, "backends[0].weight",
                        "must be between 1 and 1000");
    ck_assert_one_error(MINIMAL "    weight: 99999999999999999999999\n", 6, 13,
                        "backends[0].weight", "must be between 1 and 1000");
    ck_assert_one_error(MINIMAL "    weight: [1]\n", 6, 13, "backends[0].weight",
                        "expected an integer, got a sequence");
    ck_assert_one_error(MINIMAL "    weight:\n", 6, 12, "backends[0].weight",
                        "expected an integer");
}
END_TEST

START_TEST(booleans)
{
    ck_assert_one_error(MINIMAL "health:\n  passive_5xx: yes\n", 7, 16, "health.passive_5xx",
                        "expected true or false, got \"yes\"");
    ck_assert_one_error(MINIMAL "health:\n  passive_5xx: \"true\"\n", 7, 16,
                        "health.passive_5xx", "got a quoted string");
    ck_assert_one_error(MINIMAL "health:\n  passive_5xx: 1\n", 7, 16, "health.passive_5xx",
                        "expected true or false");
}
END_TEST

START_TEST(durations_and_sizes)
{
    ck_assert_one_error(MINIMAL "drain_timeout: 10x\n", 6, 16, "drain_timeout",
                        "invalid duration \"10x\"");
    ck_assert_one_error(MINIMAL "drain_timeout: -10s\n", 6, 16, "drain_timeout",
                        "cannot be negative");
    ck_assert_one_error(MINIMAL "drain_timeout: 1.5m\n", 6, 16, "drain_timeout",
                        "invalid duration");
    ck_assert_one_error(MINIMAL "drain_timeout:\n", 6, 15, "drain_timeout",
                        "expected a duration, got nothing");
    ck_assert_one_error(MINIMAL "drain_timeout: 0\n", 6, 16, "drain_timeout",
                        "must be between 1ms and 365d");
    ck_assert_one_error(MINIMAL "drain_timeout: 999999999999999999999d\n", 6, 16,
                        "drain_timeout", "invalid duration");
    ck_assert_one_error(MINIMAL "retry_body_bytes: 1.5k\n", 6, 19, "retry_body_bytes",
                        "invalid size");
    ck_assert_one_error(MINIMAL "retry_body_bytes: 65m\n", 6, 19, "retry_body_bytes",
                        "must be between 0 and 64m");
}
END_TEST

START_TEST(quoted_units_accepted)
{
    struct tether_config_errors e;
    struct tether_config *cfg = load_text(MINIMAL "drain_timeout: \"5m\"\n"
                                                  "retry_body_bytes: '1k'\n", &e);

    ck_assert_ptr_nonnull(cfg);
    ck_assert_uint_eq(cfg->drain_timeout_ms, 300000);
    ck_assert_uint_eq(cfg->retry_body_bytes, 1024);
    tether_config_free(cfg);
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(strings)
{
    struct tether_config_errors e;
    struct tether_config *cfg;

    ck_assert_one_error(MINIMAL "log:\n  access: \"\"\n", 7, 11, "log.access",
                        "must not be empty");
    ck_assert_one_error(MINIMAL "log:\n  access: \"a\\0b\"\n", 7, 11, "log.access",
                        "contains a NUL byte");
    ck_assert_one_error(MINIMAL "log:\n  level: loud\n", 7, 10, "log.level",
                        "must be one of error, warn, info, debug (got \"loud\")");
    /* an empty plain value is "", where "" means off */
    cfg = load_text(MINIMAL "state:\n  snapshot:\n  redis:\n    prefix: ~\n", &e);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_str_eq(cfg->state.snapshot, "");
    ck_assert_str_eq(cfg->state.redis.prefix, "");
    tether_config_free(cfg);
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(null_section_is_empty)
{
    struct tether_config_errors e;
    struct tether_config *cfg = load_text(MINIMAL "session:\nhealth: ~\nlimits: {}\n", &e);

    ck_assert_ptr_nonnull(cfg);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_str_eq(cfg->session.header, "x-fc-session-id");
    ck_assert_uint_eq(cfg->health.rise, 2);
    ck_assert_uint_eq(cfg->limits.max_pipelined, 16);
    tether_config_free(cfg);
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(marks)
{
    struct tether_config_errors e;
    struct tether_config *cfg = load_text(MINIMAL "    weight: 3\nsession:\n  sources: [cookie]\n",
                                          &e);
    int line = 0, col = 0;

    ck_assert_ptr_nonnull(cfg);
    ck_assert_int_eq(tether_config_where(cfg, "backends[0].weight", &line, &col), 0);
    ck_assert_int_eq(line, 6);
    ck_assert_int_eq(col, 13);
    ck_assert_int_eq(tether_config_where(cfg, "backends[0]", &line, &col), 0);
    ck_assert_int_eq(line, 4);
    ck_assert_int_eq(col, 5);
    ck_assert_int_eq(tether_config_where(cfg, "session.sources[0]", &line, &col), 0);
    ck_assert_int_eq(line, 8);
    ck_assert_int_eq(col, 13);
    ck_assert_int_eq(tether_config_where(cfg, "health.rise", &line, &col), -ENOENT);
    tether_config_free(cfg);
    tether_config_errors_deinit(&e);
}
END_TEST

static Suite *walk_suite(void)
{
    Suite *s = suite_create("config/walk");
    TCase *tc = tcase_create("walk");

    tcase_add_test(tc, unknown_keys);
    tcase_add_test(tc, duplicate_keys);
    tcase_add_test(tc, required_keys);
    tcase_add_test(tc, container_types);
    tcase_add_test(tc, numbers);
    tcase_add_test(tc, booleans);
    tcase_add_test(tc, durations_and_sizes);
    tcase_add_test(tc, quoted_units_accepted);
    tcase_add_test(tc, strings);
    tcase_add_test(tc, null_section_is_empty);
    tcase_add_test(tc, marks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(walk_suite());
}
