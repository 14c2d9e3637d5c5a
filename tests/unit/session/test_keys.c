/*
 * Unit tests for src/session/keys.c: which keys are usable, and the lookup of
 * one cookie in a Cookie header (RFC 6265) over the edge cases a client can
 * send. Every header is placed just before an unmapped page, so reading one
 * byte past its end crashes the test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <check.h>

#include "tether/session.h"
#include "../unit.h"

#define NAME "fc_session"

static char *guard; /* two pages for the header, then an unmapped one */
static size_t page;

static void guard_setup(void)
{
    page = (size_t)sysconf(_SC_PAGESIZE);
    guard = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(guard, MAP_FAILED);
    ck_assert_int_eq(mprotect(guard + 2 * page, page, PROT_NONE), 0);
}

static void guard_teardown(void)
{
    munmap(guard, 3 * page);
}

/* s[0..len) copied to end right at the unmapped page. */
static const char *place(const char *s, size_t len)
{
    ck_assert_uint_le(len, 2 * page);
    char *at = guard + 2 * page - len;
    memcpy(at, s, len);
    return at;
}

struct found {
    int r;
    const char *val;
    size_t vlen;
    char copy[8192];
};

/* Looks NAME up in hdr and checks the answer is a view into the header. */
static struct found *find(const char *hdr, const char *name)
{
    static struct found f;
    size_t len = strlen(hdr);
    const char *at = place(hdr, len);
    f.val = NULL;
    f.vlen = 12345;
    f.r = tether_session_cookie_find(at, len, name, strlen(name), &f.val, &f.vlen);
    f.copy[0] = '\0';
    if (f.r == 1) {
        ck_assert_ptr_nonnull(f.val);
        ck_assert(f.val >= at && f.val + f.vlen <= at + len);
        ck_assert_uint_lt(f.vlen, sizeof(f.copy));
        memcpy(f.copy, f.val, f.vlen);
        f.copy[f.vlen] = '\0';
    } else {
        /* Nothing is written unless found. */
        ck_assert_ptr_null(f.val);
        ck_assert_uint_eq(f.vlen, 12345);
    }
    return &f;
}

static void found(const char *hdr, const char *want)
{
    struct found *f = find(hdr, NAME);
    ck_assert_msg(f->r == 1, "%s: %d", hdr, f->r);
    ck_assert_str_eq(f->copy, want);
}

static void answer(const char *hdr, int want)
{
    struct found *f = find(hdr, NAME);
    ck_assert_msg(f->r == want, "%s: %d, want %d", hdr, f->r, want);
}

START_TEST(test_key_valid)
{
    char buf[TETHER_SESSION_MAX_KEY + 2];
    memset(buf, 'k', sizeof(buf));
    ck_assert_int_eq(tether_session_key_valid(buf, 0), 0);
    ck_assert_int_eq(tether_session_key_valid(buf, 1), 1);
    ck_assert_int_eq(tether_session_key_valid(buf, TETHER_SESSION_MAX_KEY), 1);
    ck_assert_int_eq(tether_session_key_valid(buf, TETHER_SESSION_MAX_KEY + 1), 0);
    ck_assert_int_eq(tether_session_key_valid("!~", 2), 1);
    ck_assert_int_eq(tether_session_key_valid("a\"b;c,d\\e", 9), 1);

    /* Every byte outside 0x21..0x7e spoils a key wherever it is. */
    for (unsigned ch = 0; ch < 256; ch++) {
        if (ch >= 0x21 && ch <= 0x7e)
            continue;
        for (size_t at = 0; at < 3; at++) {
            char k[3] = {'a', 'b', 'c'};
            k[at] = (char)ch;
            ck_assert_int_eq(tether_session_key_valid(k, 3), 0);
        }
    }
    /* The guard page catches a read past len. */
    const char *at = place("abc", 3);
    ck_assert_int_eq(tether_session_key_valid(at, 3), 1);
}
END_TEST

START_TEST(test_pairs)
{
    found(NAME "=abc", "abc");
    found("a=1; " NAME "=abc; b=2", "abc");
    found("a=1;" NAME "=abc;b=2", "abc");
    found("a=1; b=2; " NAME "=abc", "abc");
    found(NAME "=YWJj==", "YWJj=="); /* '=' is a cookie-octet: only the first splits */
    answer("a=1; b=2", 0);
    answer("", 0);
    answer("   ", 0);
    answer(";", 0);
    answer("; ;", 0);
}
END_TEST

START_TEST(test_ows)
{
    found(" " NAME "=abc", "abc");
    found("\t" NAME " \t= \tabc\t ;b=2", "abc");
    found("a=1 ;  " NAME "  =  abc  ", "abc");
    found("a = 1 ; " NAME "= abc", "abc");
}
END_TEST

START_TEST(test_quoted)
{
    found(NAME "=\"abc\"", "abc");
    found(NAME "= \"abc\" ; a=1", "abc");
    found(NAME "=\"\"", "");
    answer(NAME "=\"abc", -1);
    answer(NAME "=abc\"", -1);
    answer(NAME "=\"", -1);
    answer(NAME "=a\"b\"", -1);
    answer(NAME "=\"a\"b\"", -1);
    answer(NAME "=\"a b\"", -1);
    /* A foreign quoted value is its own business. */
    found("x=\"a b\"; " NAME "=abc", "abc");
}
END_TEST

/* Found with an empty value: the caller rejects it as a key. */
START_TEST(test_empty_value)
{
    struct found *f = find(NAME "=", NAME);
    ck_assert_int_eq(f->r, 1);
    ck_assert_uint_eq(f->vlen, 0);
    found(NAME "= ; a=1", "");
    found("a=1; " NAME "=;", "");
    found("a=; " NAME "=x; b=", "x");
}
END_TEST

START_TEST(test_names)
{
    found(NAME "2=x; " NAME "=y", "y");
    found(NAME "=y; " NAME "2=x", "y");
    found("x" NAME "=z; " NAME "=y; " NAME "_=w", "y");
    answer(NAME "2=x", 0);
    answer("x" NAME "=x", 0);
    answer("fc_sessio=x", 0);
    answer("fc_sessio n=x", 0);

    /* Case-sensitive. */
    answer("FC_SESSION=x", 0);
    answer("Fc_session=x", 0);
    found("FC_SESSION=x; " NAME "=y; Fc_Session=z", "y");

    /* Another name, asked for. */
    struct found *f = find("a=1; sid=42; " NAME "=y", "sid");
    ck_assert_int_eq(f->r, 1);
    ck_assert_str_eq(f->copy, "42");
    ck_assert_int_eq(find("a=1", "")->r, 0);
}
END_TEST

START_TEST(test_malformed)
{
    /* A pair without '=' anywhere spoils the header. */
    answer(NAME, -1);
    answer("junk", -1);
    answer("a=1; junk; " NAME "=x", -1);
    answer(NAME "=x; junk", -1);
    answer(NAME "=x; a=1; b", -1);

    /* The same name twice, whatever the values. */
    answer(NAME "=a; " NAME "=a", -1);
    answer(NAME "=a; b=c; " NAME "=d", -1);
    answer(NAME "=; " NAME "=d", -1);
    answer(NAME "=a;" NAME "=\"a\"", -1);

    /* Trailing and doubled ';' are tolerated. */
    found(NAME "=abc;", "abc");
    found(NAME "=abc; ", "abc");
    found(";;" NAME "=abc;;", "abc");
    found("a=1;; ;" NAME "=abc", "abc");
}
END_TEST

/*
 * Strict cookie-octets for our value (RFC 6265 4.1.1): whitespace inside,
 * comma, backslash, a CTL or a non-ASCII byte make it -1. Others' values
 * are not ours to judge.
 */
START_TEST(test_octets)
{
    answer(NAME "=abc def", -1);
    answer(NAME "=abc\tdef; a=1", -1);
    answer(NAME "=a,b", -1);
    answer(NAME "=a\\b", -1);
    answer(NAME "=a\001b", -1);
    answer(NAME "=a\x7f", -1);
    answer(NAME "=caf\xc3\xa9", -1);
    found("x=a b; " NAME "=abc", "abc");
    found("x=a,b\\c; " NAME "=abc", "abc");
    found(NAME "=!#$%&'()*+-./09:<=>?@AZ[]^_`az{|}~", "!#$%&'()*+-./09:<=>?@AZ[]^_`az{|}~");
}
END_TEST

START_TEST(test_big_header)
{
    char hdr[4200];
    size_t at = 0;
    for (int i = 0; at < 4000; i++)
        at += (size_t)snprintf(hdr + at, sizeof(hdr) - at, "c%03d=vvvvvvvvvvvvvvv; ", i);
    snprintf(hdr + at, sizeof(hdr) - at, NAME "=tail");
    ck_assert_uint_gt(strlen(hdr), 4000);
    found(hdr, "tail");

    /* At the front, then twice at both ends. */
    char front[4300];
    snprintf(front, sizeof(front), NAME "=head; %s", hdr);
    answer(front, -1);
    snprintf(front, sizeof(front), NAME "=head; %.*s", (int)at - 2, hdr);
    found(front, "head");

    /* A 4k value of our cookie is found whole; the key check is the caller's. */
    char big[4200];
    size_t prefix = strlen(NAME "=");
    memcpy(big, NAME "=", prefix);
    memset(big + prefix, 'x', 4096);
    big[prefix + 4096] = '\0';
    struct found *f = find(big, NAME);
    ck_assert_int_eq(f->r, 1);
    ck_assert_uint_eq(f->vlen, 4096);
    ck_assert_int_eq(tether_session_key_valid(f->val, f->vlen), 0);
}
END_TEST

/*
 * Random headers of pairs drawn from near-miss names, values, OWS and
 * quotes: the answer is 1 with the value when the name occurs once, 0 when
 * never, -1 when twice.
 */
START_TEST(test_random_headers)
{
    static const char *names[] = {NAME, NAME "2", "FC_SESSION", "fc_sessio", "x", "_ga"};
    static const char *ws[] = {"", " ", "  ", "\t", " \t"};
    uint64_t s = 1;
    size_t wrong = 0;
    for (int round = 0; round < 20000; round++) {
        char hdr[1024] = "", want[64] = "";
        size_t at = 0;
        int count = 0;
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int pairs = (int)(s >> 60) % 8;
        for (int i = 0; i < pairs; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            const char *name = names[(s >> 33) % 6];
            const char *w1 = ws[(s >> 40) % 5], *w2 = ws[(s >> 44) % 5];
            int quoted = (s >> 50) & 1;
            char v[32];
            snprintf(v, sizeof(v), "v%llu", (unsigned long long)(s >> 54));
            at += (size_t)snprintf(hdr + at, sizeof(hdr) - at, "%s%s%s=%s%s%s%s%s%s", i ? ";" : "",
                                   w1, name, w2, quoted ? "\"" : "", v, quoted ? "\"" : "", w1, w2);
            if (strcmp(name, NAME) == 0) {
                count++;
                strcpy(want, v);
            }
        }
        struct found *f = find(hdr, NAME);
        if (count == 0)
            wrong += f->r != 0;
        else if (count == 1)
            wrong += f->r != 1 || strcmp(f->copy, want) != 0;
        else
            wrong += f->r != -1;
    }
    ck_assert_uint_eq(wrong, 0);
}
END_TEST

static Suite *keys_suite(void)
{
    Suite *s = suite_create("session/keys");
    TCase *tc = tcase_create("keys");
    tcase_add_checked_fixture(tc, guard_setup, guard_teardown);
    tcase_add_test(tc, test_key_valid);
    tcase_add_test(tc, test_pairs);
    tcase_add_test(tc, test_ows);
    tcase_add_test(tc, test_quoted);
    tcase_add_test(tc, test_empty_value);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_octets);
    tcase_add_test(tc, test_big_header);
    tcase_add_test(tc, test_random_headers);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(keys_suite());
}
