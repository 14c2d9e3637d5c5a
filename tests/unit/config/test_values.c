/*
 * Tests for src/config/values.c: the duration, size and address parsers at
 * their edges, and the token, host name and loopback checks.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include <check.h>

#include "tether/config.h"
#include "../../../src/config/internal.h"
#include "../unit.h"

static uint64_t dur(const char *s)
{
    uint64_t v = 12345;

    ck_assert_int_eq(tether_config_parse_duration(s, &v), 0);
    return v;
}

static uint64_t size(const char *s)
{
    uint64_t v = 12345;

    ck_assert_int_eq(tether_config_parse_size(s, &v), 0);
    return v;
}

START_TEST(duration_units)
{
    ck_assert_uint_eq(dur("500ms"), 500);
    ck_assert_uint_eq(dur("10s"), 10000);
    ck_assert_uint_eq(dur("5m"), 300000);
    ck_assert_uint_eq(dur("2h"), 7200000);
    ck_assert_uint_eq(dur("1d"), 86400000);
    ck_assert_uint_eq(dur("30"), 30000);      /* bare integer: seconds */
    ck_assert_uint_eq(dur("0"), 0);
    ck_assert_uint_eq(dur("0ms"), 0);
    ck_assert_uint_eq(dur("007s"), 7000);
    ck_assert_uint_eq(dur("18446744073709551615ms"), UINT64_MAX);
}
END_TEST

START_TEST(duration_rejects)
{
    static const char *const bad[] = {
        "", "-1", "-5s", "+5s", "1.5s", ".5s", "10x", "10sec", "10 s", " 10s", "10s ",
        "10S", "10MS", "s", "ms", "1h30m", "0x10", "1e3", "18446744073709551616ms",
        "18446744073709551615s", "213503982334601d", "∞",
    };
    uint64_t v = 77;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(tether_config_parse_duration(bad[i], &v) == -EINVAL, "%s", bad[i]);
        ck_assert_uint_eq(v, 77);
    }
}
END_TEST

START_TEST(size_units)
{
    ck_assert_uint_eq(size("0"), 0);
    ck_assert_uint_eq(size("123"), 123);
    ck_assert_uint_eq(size("64k"), 65536);
    ck_assert_uint_eq(size("64K"), 65536);
    ck_assert_uint_eq(size("1m"), 1048576);
    ck_assert_uint_eq(size("1g"), 1073741824);
    ck_assert_uint_eq(size("256m"), 268435456);
    ck_assert_uint_eq(size("17179869183g"), 17179869183ull << 30);
}
END_TEST

START_TEST(size_rejects)
{
    static const char *const bad[] = {
        "", "-1", "+1", "1.5m", "64kb", "64 k", "1t", "k", "1mm", "0x10",
        "17179869184g", "18446744073709551616", "1e6",
    };
    uint64_t v = 77;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(tether_config_parse_size(bad[i], &v) == -EINVAL, "%s", bad[i]);
        ck_assert_uint_eq(v, 77);
    }
}
END_TEST

START_TEST(address_split)
{
    char host[256];
    uint16_t port = 0;

    ck_assert_int_eq(tether_config_split_address("127.0.0.1:8080", host, sizeof(host), &port), 0);
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_uint_eq(port, 8080);
    ck_assert_int_eq(tether_config_split_address("[::1]:443", host, sizeof(host), &port), 0);
    ck_assert_str_eq(host, "::1");
    ck_assert_uint_eq(port, 443);
    ck_assert_int_eq(tether_config_split_address("[2001:db8::7]:1", host, sizeof(host), &port),
                     0);
    ck_assert_str_eq(host, "2001:db8::7");
    ck_assert_uint_eq(port, 1);
    ck_assert_int_eq(tether_config_split_address("fn-1.internal:65535", host, sizeof(host),
                                                 &port), 0);
    ck_assert_str_eq(host, "fn-1.internal");
    ck_assert_uint_eq(port, 65535);
    ck_assert_int_eq(tether_config_split_address("localhost:9900", NULL, 0, NULL), 0);
}
END_TEST

START_TEST(address_rejects)
{
    static const char *const bad[] = {
        "127.0.0.1", "127.0.0.1:", ":8080", "127.0.0.1:0", "127.0.0.1:65536",
        "127.0.0.1:99999999999999999999", "127.0.0.1:-1", "127.0.0.1:80x", "::1:80",
        "[::1]", "[::1]80", "[::1:80", "[]:80", "[zz::1]:80", "[127.0.0.1]:80",
        "256.1.1.1:80", "1.2.3:80", "-bad.example:80", "bad-.example:80", "a..b:80",
        "under_score:80", "sp ace:80", "", ":",
    };
    char host[256];
    uint16_t port;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(tether_config_split_address(bad[i], host, sizeof(host), &port) == -EINVAL,
                      "%s", bad[i]);
}
END_TEST

START_TEST(address_messages)
{
    char small[4];

    ck_assert_str_eq(tether_config_addr_check("127.0.0.1", NULL, 0, NULL),
                     "missing :port (write host:port)");
    ck_assert_str_eq(tether_config_addr_check("127.0.0.1:0", NULL, 0, NULL),
                     "port must be a number from 1 to 65535");
    ck_assert_str_eq(tether_config_addr_check("::1:80", NULL, 0, NULL),
                     "an IPv6 address goes in brackets, e.g. [::1]:8080");
    ck_assert_str_eq(tether_config_addr_check("example.com:80", small, sizeof(small), NULL),
                     "host name too long");
}
END_TEST

START_TEST(hostnames_tokens_loopback)
{
    char label[70];

    ck_assert(tether_config_is_hostname("fn-1"));
    ck_assert(tether_config_is_hostname("a.b.c"));
    ck_assert(!tether_config_is_hostname("a.b."));
    ck_assert(!tether_config_is_hostname(""));
    memset(label, 'a', 64);
    label[64] = '\0';
    ck_assert(!tether_config_is_hostname(label));
    label[63] = '\0';
    ck_assert(tether_config_is_hostname(label));

    ck_assert(tether_config_is_token("x-fc-session-id"));
    ck_assert(tether_config_is_token("fc_session"));
    ck_assert(tether_config_is_token("!#$%&'*+-.^_`|~"));
    ck_assert(!tether_config_is_token(""));
    ck_assert(!tether_config_is_token("a b"));
    ck_assert(!tether_config_is_token("a;b"));
    ck_assert(!tether_config_is_token("a=b"));
    ck_assert(!tether_config_is_token("caf\xc3\xa9"));

    ck_assert(tether_config_is_loopback("127.0.0.1"));
    ck_assert(tether_config_is_loopback("127.255.0.9"));
    ck_assert(tether_config_is_loopback("::1"));
    ck_assert(tether_config_is_loopback("LocalHost"));
    ck_assert(!tether_config_is_loopback("128.0.0.1"));
    ck_assert(!tether_config_is_loopback("0.0.0.0"));
    ck_assert(!tether_config_is_loopback("::"));
    ck_assert(!tether_config_is_loopback("localhost.example"));
}
END_TEST

START_TEST(same_address)
{
    ck_assert(tether_config_addr_same("127.0.0.1:80", "127.0.0.1:80"));
    ck_assert(tether_config_addr_same("[::1]:80", "[0:0::1]:80"));
    ck_assert(tether_config_addr_same("Example.COM:80", "example.com:80"));
    ck_assert(!tether_config_addr_same("127.0.0.1:80", "127.0.0.1:81"));
    ck_assert(!tether_config_addr_same("127.0.0.1:80", "127.0.0.2:80"));
    ck_assert(!tether_config_addr_same("bad", "bad"));
}
END_TEST

START_TEST(formatting)
{
    char b[32];

    tether_config_fmt_duration(0, b, sizeof(b));
    ck_assert_str_eq(b, "0ms");
    tether_config_fmt_duration(1500, b, sizeof(b));
    ck_assert_str_eq(b, "1500ms");
    tether_config_fmt_duration(90000, b, sizeof(b));
    ck_assert_str_eq(b, "90s");
    tether_config_fmt_duration(365ull * 86400000, b, sizeof(b));
    ck_assert_str_eq(b, "365d");
    tether_config_fmt_size(16384, b, sizeof(b));
    ck_assert_str_eq(b, "16k");
    tether_config_fmt_size(1536, b, sizeof(b));
    ck_assert_str_eq(b, "1536");
    tether_config_fmt_size(1ull << 40, b, sizeof(b));
    ck_assert_str_eq(b, "1024g");
}
END_TEST

static Suite *values_suite(void)
{
    Suite *s = suite_create("config/values");
    TCase *tc = tcase_create("values");

    tcase_add_test(tc, duration_units);
    tcase_add_test(tc, duration_rejects);
    tcase_add_test(tc, size_units);
    tcase_add_test(tc, size_rejects);
    tcase_add_test(tc, address_split);
    tcase_add_test(tc, address_rejects);
    tcase_add_test(tc, address_messages);
    tcase_add_test(tc, hostnames_tokens_loopback);
    tcase_add_test(tc, same_address);
    tcase_add_test(tc, formatting);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(values_suite());
}
