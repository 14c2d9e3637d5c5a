/*
 * Unit tests of src/http/chunked.c: the chunked body scanner (RFC 9112 7.1),
 * one test per framing rule, and the property the proxy relies on: any
 * split of the input, down to one byte at a time, gives the same answer.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tether/http.h"
#include "../unit.h"

/* What scanning a whole input told us. */
struct outcome {
    int bad;           /* TETHER_HTTP_EBAD seen */
    int done;          /* the body ended */
    size_t used;       /* bytes that belong to the body */
    uint64_t body;     /* data bytes */
};

/* Scan s[0..n) in pieces of step bytes (0: all at once), each piece in its own allocation. */
static struct outcome scan(const char *s, size_t n, size_t step)
{
    struct tether_http_chunked d;
    struct outcome o = {0, 0, 0, 0};
    size_t off = 0;

    tether_http_chunked_init(&d);
    if (step == 0)
        step = n ? n : 1;
    while (off < n && !o.done) {
        size_t k = n - off < step ? n - off : step;
        char *piece = malloc(k);
        ssize_t r;

        memcpy(piece, s + off, k);
        r = tether_http_chunked_scan(&d, piece, k, &o.done);
        free(piece);
        if (r < 0) {
            ck_assert_int_eq(r, TETHER_HTTP_EBAD);
            o.bad = 1;
            break;
        }
        ck_assert_uint_le((size_t)r, k);
        ck_assert_msg(o.done || (size_t)r == k, "stopped early without done");
        o.used += (size_t)r;
        off += k;
    }
    o.body = d.body_bytes;
    return o;
}

static struct outcome scan_str(const char *s)
{
    return scan(s, strlen(s), 0);
}

/* s is a complete chunked body (nothing after it) with body data bytes. */
static void good(const char *s, uint64_t body)
{
    struct outcome o = scan_str(s);

    ck_assert_msg(!o.bad && o.done && o.used == strlen(s), "rejected: \"%s\"", s);
    ck_assert_uint_eq(o.body, body);
}

static void bad(const char *s)
{
    ck_assert_msg(scan_str(s).bad, "accepted: \"%s\"", s);
}

static void bad_all(const char *const *v)
{
    for (; *v; v++)
        bad(*v);
}

START_TEST(test_simple)
{
    good("5\r\nhello\r\n0\r\n\r\n", 5);
    good("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 11);
    good("0\r\n\r\n", 0);
    good("A\r\n0123456789\r\nb\r\n0123456789a\r\n000\r\n\r\n", 21);
}
END_TEST

/* The body ends at the final CRLF; what follows is the next message. */
START_TEST(test_next_message)
{
    const char *s = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    struct tether_http_chunked d;
    int done = 0;

    tether_http_chunked_init(&d);
    ck_assert_int_eq(tether_http_chunked_scan(&d, s, strlen(s), &done), 13);
    ck_assert_int_eq(done, 1);
    ck_assert_uint_eq(d.body_bytes, 3);
}
END_TEST

START_TEST(test_partial)
{
    struct outcome o = scan_str("5\r\nhel");

    ck_assert(!o.bad && !o.done);
    ck_assert_uint_eq(o.used, 6);
    ck_assert_uint_eq(o.body, 3);
    o = scan_str("5\r\nhello\r\n0\r\n\r");
    ck_assert(!o.bad && !o.done);
}
END_TEST

/* Any split of the input gives the same result as scanning it at once. */
START_TEST(test_split_property)
{
    static const char *const v[] = {
        "5\r\nhello\r\n0\r\n\r\nNEXT",
        "1;a=b;c=\"d\\\"e\"\r\nx\r\n0 ; z\r\nT: v\r\nU:\r\n\r\n",
        "10\r\n0123456789abcdef\r\n0\r\n\r\n",
        "5\r\nhelloX\r\n",
        "5\r\nhello\r\n0\r\n\n",
        "0\r\n T: v\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "1;a=\"\x01\"\r\nx\r\n0\r\n\r\n",
        "00000000000000001\r\nx\r\n",
        "g\r\n",
        "5\r\nhel",
        NULL,
    };
    const char *const *p;

    for (p = v; *p; p++) {
        size_t n = strlen(*p), step, cut;
        struct outcome once = scan(*p, n, 0);

        for (step = 1; step <= n; step++) {
            struct outcome o = scan(*p, n, step);
            ck_assert_msg(o.bad == once.bad && o.done == once.done, "\"%s\" by %zu", *p, step);
            if (!o.bad)
                ck_assert(o.used == once.used && o.body == once.body);
        }
        /* two pieces cut at every position */
        for (cut = 0; cut <= n; cut++) {
            struct tether_http_chunked d;
            struct outcome o = {0, 0, 0, 0};
            ssize_t r;

            tether_http_chunked_init(&d);
            r = tether_http_chunked_scan(&d, *p, cut, &o.done);
            if (r >= 0 && !o.done) {
                o.used = (size_t)r;
                r = tether_http_chunked_scan(&d, *p + cut, n - cut, &o.done);
            }
            o.bad = r < 0;
            if (!o.bad)
                o.used += (size_t)r;
            ck_assert_msg(o.bad == once.bad && o.done == once.done, "\"%s\" cut %zu", *p, cut);
            if (!o.bad)
                ck_assert_uint_eq(o.used, once.used);
        }
    }
}
END_TEST

/* RFC 9112 7.1.1: chunk-ext with token or quoted-string values, BWS around ';' and '='. */
START_TEST(test_extensions)
{
    good("5;name\r\nhello\r\n0\r\n\r\n", 5);
    good("5;a=b;c=d\r\nhello\r\n0\r\n\r\n", 5);
    good("5 ;\ta = b ; c\r\nhello\r\n0\r\n\r\n", 5);
    good("5;a=\"q s\\\"\\\\\"\r\nhello\r\n0\r\n\r\n", 5);
    good("5;a=\"\"\r\nhello\r\n0\r\n\r\n", 5);
    good("5;a=\"x\" ;b=\"caf\xc3\xa9\"\r\nhello\r\n0;last\r\n\r\n", 5);
    good("5;a= \"x\"\r\nhello\r\n0\r\n\r\n", 5);
}
END_TEST

START_TEST(test_extensions_bad)
{
    static const char *const v[] = {
        "5;\r\nhello\r\n0\r\n\r\n",
        "5;=b\r\nhello\r\n0\r\n\r\n",
        "5;a=\r\nhello\r\n0\r\n\r\n",
        "5;a b\r\nhello\r\n0\r\n\r\n",
        "5;a=b c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\"c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n",
        "5;a@=b\r\nhello\r\n0\r\n\r\n",
        "5;a=b@\r\nhello\r\n0\r\n\r\n",
        "5,a\r\nhello\r\n0\r\n\r\n",
        "5;;a\r\nhello\r\n0\r\n\r\n",
        "5;a==b\r\nhello\r\n0\r\n\r\n",
        "5;a=b =c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\" =c\r\nhello\r\n0\r\n\r\n",
        "5 =c\r\nhello\r\n0\r\n\r\n",
        NULL,
    };
    bad_all(v);
}
END_TEST

/* BWS is only allowed before ';' and around '=', never before the CRLF. */
START_TEST(test_trailing_whitespace)
{
    static const char *const v[] = {
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\t\r\nhello\r\n0\r\n\r\n",
        "5;a \r\nhello\r\n0\r\n\r\n",
        "5;a=b \r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\" \r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        NULL,
    };
    bad_all(v);
}
END_TEST

/* chunk-size = 1*HEXDIG: no sign, no prefix, not empty. */
START_TEST(test_size_not_hex)
{
    static const char *const v[] = {
        "g\r\n", "\r\nhello\r\n", "+5\r\nhello\r\n", "-5\r\nhello\r\n", "0x5\r\nhello\r\n",
        "5h\r\nhello\r\n", ";a\r\n", "\x80\r\n", NULL,
    };
    struct outcome o = scan_str("aBcD\r\n");

    bad_all(v);
    ck_assert(!o.bad && !o.done);
}
END_TEST

START_TEST(test_size_digits)
{
    struct outcome o = scan_str("0000000000000005\r\nhello\r\n0\r\n\r\n");

    ck_assert(!o.bad && o.done);
    ck_assert_uint_eq(o.body, 5);
    /* the count starts again on each size line */
    good("0000000000000001\r\nx\r\n0000000000000001\r\ny\r\n0000000000000000\r\n\r\n", 2);
    bad("00000000000000005\r\nhello\r\n0\r\n\r\n");
    bad("00000000000000000\r\n\r\n");
}
END_TEST

/* Sizes above 2^63-1 are refused. */
START_TEST(test_size_overflow)
{
    struct outcome o = scan_str("7fffffffffffffff\r\nab");

    ck_assert(!o.bad && !o.done);
    ck_assert_uint_eq(o.body, 2);
    bad("8000000000000000\r\n");
    bad("ffffffffffffffff\r\n");
    bad("10000000000000000\r\n");
}
END_TEST

/* RFC 9112 7.1: lines end in CRLF; a lone CR or LF is an error. */
START_TEST(test_bare_cr_lf)
{
    static const char *const v[] = {
        "5\nhello\r\n0\r\n\r\n",
        "5\rhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r0\r\n\r\n",
        "5\r\nhello\r\n0\n\r\n",
        "5\r\nhello\r\n0\r\n\n",
        "5\r\nhello\r\n0\r\n\r\r",
        "5;a\nhello\r\n0\r\n\r\n",
        "0\r\nT: v\n\r\n",
        "0\r\nT: v\rx\r\n\r\n",
        NULL,
    };
    bad_all(v);
}
END_TEST

/* RFC 9112 7.1: chunk-data is followed by exactly CRLF. */
START_TEST(test_data_not_crlf)
{
    static const char *const v[] = {
        "5\r\nhelloX\r\n0\r\n\r\n",
        "5\r\nhello!\r\n",
        "5\r\nhello\r\r\n0\r\n\r\n",
        "5\r\nhello \r\n0\r\n\r\n",
        "3\r\nhello\r\n0\r\n\r\n",
        NULL,
    };
    bad_all(v);
}
END_TEST

/* RFC 9112 7.1.2: trailer fields follow the header field rules. */
START_TEST(test_trailers)
{
    good("0\r\nExpires: never\r\nX-Sum:  abc \t\r\n\r\n", 0);
    good("1\r\nx\r\n0\r\nT:\r\nU: caf\xc3\xa9\r\n\r\n", 1);
}
END_TEST

START_TEST(test_trailers_bad)
{
    static const char *const v[] = {
        "0\r\nT: v\r\n w\r\n\r\n",
        "0\r\n T: v\r\n\r\n",
        "0\r\nT : v\r\n\r\n",
        "0\r\n: v\r\n\r\n",
        "0\r\nT@: v\r\n\r\n",
        "0\r\nT v\r\n\r\n",
        "0\r\nT: \x01\r\n\r\n",
        "0\r\nT: \x7f\r\n\r\n",
        "0\r\nT\r\n\r\n",
        NULL,
    };
    bad_all(v);
}
END_TEST

/* Size and trailer lines are capped at 4096 bytes, CRLF excluded. */
START_TEST(test_line_length)
{
    char *s = malloc(16384);
    size_t n;

    n = (size_t)sprintf(s, "1;a=");
    memset(s + n, 'b', 4096 - n);
    n = 4096;
    n += (size_t)sprintf(s + n, "\r\nx\r\n0\r\n\r\n");
    s[n] = '\0';
    good(s, 1);

    /* the count starts again on each line */
    n = (size_t)sprintf(s, "1;a=");
    memset(s + n, 'b', 4096 - n);
    memcpy(s + 4096, "\r\nx\r\n", 5);
    memcpy(s + 4101, s, 4096);
    n = 4101 + 4096;
    n += (size_t)sprintf(s + n, "\r\ny\r\n0\r\n\r\n");
    good(s, 2);

    n = (size_t)sprintf(s, "1;a=");
    memset(s + n, 'b', 4097 - n);
    n = 4097;
    n += (size_t)sprintf(s + n, "\r\nx\r\n0\r\n\r\n");
    s[n] = '\0';
    bad(s);

    n = (size_t)sprintf(s, "0\r\nT: ");
    memset(s + n, 'v', 4096 + 3 - n);
    n = 4096 + 3;
    n += (size_t)sprintf(s + n, "\r\n\r\n");
    s[n] = '\0';
    good(s, 0);

    n = (size_t)sprintf(s, "0\r\nT: ");
    memset(s + n, 'v', 4096 + 3 - n);
    memcpy(s + 4099, "\r\nU: ", 5);
    memset(s + 4104, 'v', 4096 - 3);
    n = 4104 + 4096 - 3;
    n += (size_t)sprintf(s + n, "\r\n\r\n");
    good(s, 0);

    n = (size_t)sprintf(s, "0\r\nT: ");
    memset(s + n, 'v', 4097 + 3 - n);
    n = 4097 + 3;
    n += (size_t)sprintf(s + n, "\r\n\r\n");
    s[n] = '\0';
    bad(s);
    free(s);
}
END_TEST

/* Trailer fields are capped like header fields. */
START_TEST(test_trailer_count)
{
    char *s = malloc(16384);
    size_t n;
    int i;

    n = (size_t)sprintf(s, "0\r\n");
    for (i = 0; i < TETHER_HTTP_MAX_HEADERS; i++)
        n += (size_t)sprintf(s + n, "T%d: v\r\n", i);
    strcpy(s + n, "\r\n");
    good(s, 0);
    n += (size_t)sprintf(s + n, "Tmore: v\r\n\r\n");
    bad(s);
    free(s);
}
END_TEST

/* Data bytes are counted across chunks and pieces, for max_body_bytes. */
START_TEST(test_body_bytes)
{
    struct tether_http_chunked d;
    int done;

    tether_http_chunked_init(&d);
    ck_assert_int_eq(tether_http_chunked_scan(&d, "100\r\n", 5, &done), 5);
    ck_assert_uint_eq(d.body_bytes, 0);
    ck_assert_int_eq(tether_http_chunked_scan(&d, "0123456789", 10, &done), 10);
    ck_assert_uint_eq(d.body_bytes, 10);
    ck_assert_int_eq(done, 0);
}
END_TEST

START_TEST(test_done_and_error_stick)
{
    struct tether_http_chunked d;
    int done = 0;

    tether_http_chunked_init(&d);
    ck_assert_int_eq(tether_http_chunked_scan(&d, "0\r\n\r\n", 5, &done), 5);
    ck_assert_int_eq(done, 1);
    ck_assert_int_eq(tether_http_chunked_scan(&d, "5\r\n", 3, &done), 0);
    ck_assert_int_eq(done, 1);

    tether_http_chunked_init(&d);
    ck_assert_int_eq(tether_http_chunked_scan(&d, "z", 1, &done), TETHER_HTTP_EBAD);
    ck_assert_int_eq(done, 0);
    ck_assert_int_eq(tether_http_chunked_scan(&d, "0\r\n\r\n", 5, &done), TETHER_HTTP_EBAD);

    tether_http_chunked_init(&d);
    ck_assert_int_eq(tether_http_chunked_scan(&d, NULL, 0, &done), 0);
    ck_assert_int_eq(done, 0);
}
END_TEST

static Suite *chunked_suite(void)
{
    Suite *s = suite_create("http/chunked");
    TCase *tc = tcase_create("scan");

    tcase_add_test(tc, test_simple);
    tcase_add_test(tc, test_next_message);
    tcase_add_test(tc, test_partial);
    tcase_add_test(tc, test_split_property);
    tcase_add_test(tc, test_extensions);
    tcase_add_test(tc, test_extensions_bad);
    tcase_add_test(tc, test_trailing_whitespace);
    tcase_add_test(tc, test_size_not_hex);
    tcase_add_test(tc, test_size_digits);
    tcase_add_test(tc, test_size_overflow);
    tcase_add_test(tc, test_bare_cr_lf);
    tcase_add_test(tc, test_data_not_crlf);
    tcase_add_test(tc, test_trailers);
    tcase_add_test(tc, test_trailers_bad);
    tcase_add_test(tc, test_line_length);
    tcase_add_test(tc, test_trailer_count);
    tcase_add_test(tc, test_body_bytes);
    tcase_add_test(tc, test_done_and_error_stick);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(chunked_suite());
}
