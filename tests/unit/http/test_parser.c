/*
 * Unit tests of src/http/parser.c: request and response heads, one test per
 * RFC 9112 / 9110 rule the parser enforces, the partial-input contract, the
 * derived framing and flags, the list-token helper and reason phrases.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tether/http.h"
#include "../unit.h"

#define H "Host: a\r\n"

static struct tether_http_header hdrs[TETHER_HTTP_MAX_HEADERS];
static struct tether_http_request req;
static struct tether_http_response res;

static ssize_t preqn(const char *s, size_t n, size_t max)
{
    memset(&req, 0, sizeof(req));
    req.headers = hdrs;
    return tether_http_parse_request(s, n, &req, max);
}

static ssize_t preq(const char *s)
{
    return preqn(s, strlen(s), TETHER_HTTP_MAX_HEADERS);
}

static ssize_t presn(const char *s, size_t n, size_t max)
{
    memset(&res, 0, sizeof(res));
    res.headers = hdrs;
    return tether_http_parse_response(s, n, &res, max);
}

static ssize_t pres(const char *s)
{
    return presn(s, strlen(s), TETHER_HTTP_MAX_HEADERS);
}

/* Each of the NULL-terminated requests is rejected as malformed. */
static void bad_reqs(const char *const *v)
{
    for (; *v; v++)
        ck_assert_msg(preq(*v) == TETHER_HTTP_EBAD, "accepted: \"%s\"", *v);
}

static void good_reqs(const char *const *v)
{
    for (; *v; v++)
        ck_assert_msg(preq(*v) == (ssize_t)strlen(*v), "rejected: \"%s\"", *v);
}

static void bad_ress(const char *const *v)
{
    for (; *v; v++)
        ck_assert_msg(pres(*v) == TETHER_HTTP_EBAD, "accepted: \"%s\"", *v);
}

/* A test that each of the requests given is rejected as malformed. */
#define REJECT_REQUESTS(name, ...)                                                                 \
    START_TEST(name)                                                                               \
    {                                                                                              \
        static const char *const v[] = {__VA_ARGS__, NULL};                                        \
        bad_reqs(v);                                                                               \
    }                                                                                              \
    END_TEST

#define REJECT_RESPONSES(name, ...)                                                                \
    START_TEST(name)                                                                               \
    {                                                                                              \
        static const char *const v[] = {__VA_ARGS__, NULL};                                        \
        bad_ress(v);                                                                               \
    }                                                                                              \
    END_TEST

static int view_is(const char *p, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

START_TEST(test_req_simple)
{
    const char *s = "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";

    ck_assert_int_eq(preq(s), (ssize_t)strlen(s));
    ck_assert(view_is(req.method, req.method_len, "GET"));
    ck_assert(view_is(req.target, req.target_len, "/a?b=c"));
    ck_assert_int_eq(req.minor_version, 1);
    ck_assert_uint_eq(req.num_headers, 2);
    ck_assert(view_is(hdrs[0].name, hdrs[0].name_len, "Host"));
    ck_assert(view_is(hdrs[1].value, hdrs[1].value_len, "*/*"));
    ck_assert(view_is(req.host, req.host_len, "example.com"));
    ck_assert_int_eq(req.body, TETHER_HTTP_BODY_NONE);
    ck_assert_uint_eq(req.flags, 0);
}
END_TEST

/* Every strict prefix of a valid head is PARTIAL (and read within its length). */
START_TEST(test_req_prefixes_partial)
{
    const char *s = "POST /x HTTP/1.1\r\nHost: a:8080\r\nContent-Length: 3\r\nX-Y:\tz \r\n\r\n";
    size_t n = strlen(s), i;

    for (i = 0; i < n; i++) {
        char *copy = malloc(i ? i : 1);
        memcpy(copy, s, i);
        ck_assert_msg(preqn(copy, i, TETHER_HTTP_MAX_HEADERS) == TETHER_HTTP_PARTIAL, "%zu", i);
        free(copy);
    }
    ck_assert_int_eq(preq(s), (ssize_t)n);
}
END_TEST

START_TEST(test_req_pipelined)
{
    const char *s = "GET / HTTP/1.1\r\n" H "\r\nGET /2 HTTP/1.1\r\n" H "\r\n";

    ck_assert_int_eq(preq(s), (ssize_t)strlen("GET / HTTP/1.1\r\n" H "\r\n"));
}
END_TEST

/* RFC 9110 5.5: OWS around the value is not part of it; obs-text is allowed. */
START_TEST(test_req_values)
{
    const char *s =
        "GET / HTTP/1.1\r\n" H "A: \t x \t y\t \r\nB:\r\nC:   \r\nD: caf\xc3\xa9\r\n\r\n";

    ck_assert_int_eq(preq(s), (ssize_t)strlen(s));
    ck_assert(view_is(hdrs[1].value, hdrs[1].value_len, "x \t y"));
    ck_assert_uint_eq(hdrs[2].value_len, 0);
    ck_assert_uint_eq(hdrs[3].value_len, 0);
    ck_assert(view_is(hdrs[4].value, hdrs[4].value_len, "caf\xc3\xa9"));
}
END_TEST

START_TEST(test_req_http10)
{
    ck_assert_int_eq(preq("GET / HTTP/1.0\r\n\r\n"), 18);
    ck_assert_int_eq(req.minor_version, 0);
    ck_assert_ptr_null(req.host);
}
END_TEST

START_TEST(test_req_content_length)
{
    ck_assert_int_gt(preq("POST / HTTP/1.1\r\n" H "Content-Length: 42\r\n\r\n"), 0);
    ck_assert_int_eq(req.body, TETHER_HTTP_BODY_LENGTH);
    ck_assert_uint_eq(req.content_length, 42);
    ck_assert_int_gt(preq("POST / HTTP/1.1\r\n" H "content-length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(req.body, TETHER_HTTP_BODY_NONE);
    ck_assert_int_gt(preq("POST / HTTP/1.1\r\n" H "Content-Length: 0007\r\n\r\n"), 0);
    ck_assert_uint_eq(req.content_length, 7);
    ck_assert_int_gt(preq("POST / HTTP/1.1\r\n" H "Content-Length:  9223372036854775807 \r\n\r\n"),
                     0);
    ck_assert_uint_eq(req.content_length, 9223372036854775807ULL);
}
END_TEST

/* RFC 9112 6.1 / 6.3 (3): both framings in one message is request smuggling. */
REJECT_REQUESTS(test_req_cl_with_te,
    "POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n")

REJECT_REQUESTS(test_req_cl_duplicate,
    "POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nContent-Length: 5\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 0\r\ncontent-length: 0\r\n\r\n")

REJECT_REQUESTS(test_req_cl_malformed,
    "POST / HTTP/1.1\r\n" H "Content-Length: +5\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: -5\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 0x10\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 1a\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 5, 5\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 5,5\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: \r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 1 2\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 1.0\r\n\r\n")

REJECT_REQUESTS(test_req_cl_overflow,
    "POST / HTTP/1.1\r\n" H "Content-Length: 9223372036854775808\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 18446744073709551616\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 00000000000000000001\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Content-Length: 99999999999999999999999\r\n\r\n")

START_TEST(test_req_te_chunked)
{
    static const char *const v[] = {
        "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\n" H "Transfer-Encoding: Chunked\r\n\r\n",
        "POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip,chunked \r\n\r\n",
        "POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        NULL,
    };
    good_reqs(v);
    ck_assert_int_eq(req.body, TETHER_HTTP_BODY_CHUNKED);
}
END_TEST

/* RFC 9112 6.3 (4): a request whose final coding is not chunked cannot be framed. */
REJECT_REQUESTS(test_req_te_not_final,
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked, gzip\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: identity\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunkedx\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked;q=1\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: \"chunked\"\r\n\r\n")

/* Codings are bare tokens: parameters or junk are refused wherever they are. */
REJECT_REQUESTS(test_req_te_not_token,
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip;q=1, chunked\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: x y, chunked\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: x@y\r\nTransfer-Encoding: chunked\r\n\r\n")

/* RFC 9112 6.1: chunked is applied once. */
REJECT_REQUESTS(test_req_te_twice,
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked, chunked\r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")

REJECT_REQUESTS(test_req_te_empty,
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: \r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: , \r\n\r\n",
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n")

/* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty. */
REJECT_REQUESTS(test_req_te_http10,
    "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST / HTTP/1.0\r\n" H "Transfer-Encoding: chunked\r\n\r\n")

/* RFC 9112 5.2: obs-fold is rejected, as is whitespace before the first field. */
REJECT_REQUESTS(test_req_obs_fold,
    "GET / HTTP/1.1\r\n" H "A: b\r\n c\r\n\r\n",
    "GET / HTTP/1.1\r\n" H "A: b\r\n\tc\r\n\r\n",
    "GET / HTTP/1.1\r\n " H "\r\n")

/* RFC 9112 2.2: a lone LF is not a line ending here. */
REJECT_REQUESTS(test_req_bare_lf,
    "GET / HTTP/1.1\n" H "\r\n",
    "GET / HTTP/1.1\r\nHost: a\n\r\n",
    "GET / HTTP/1.1\r\n" H "\n",
    "GET / HTTP/1.1\r\n" H "\n\n",
    "GET / HTTP/1.1\r\n" H "A: b\nc\r\n\r\n",
    "GET /\n HTTP/1.1\r\n" H "\r\n",
    "GET / HTTP/1.1\r\n" H "A\n: b\r\n\r\n")

REJECT_REQUESTS(test_req_bare_cr,
    "GET / HTTP/1.1\r" H "\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    "GET / HTTP/1.1\r\n" H "\rX\r\n",
    "GET / HTTP/1.1\r\n" H "A: b\rc\r\n\r\n",
    "GET /\r HTTP/1.1\r\n" H "\r\n",
    "GET / HTTP/1.1\r\n" H "A\r: b\r\n\r\n")

/* RFC 9112 5.1: no whitespace between the field name and the colon. */
REJECT_REQUESTS(test_req_space_before_colon,
    "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "GET / HTTP/1.1\r\n" H "Content-Length\t: 0\r\n\r\n",
    "GET / HTTP/1.1\r\n" H "Transfer-Encoding : chunked\r\n\r\n")

REJECT_REQUESTS(test_req_empty_name,
    "GET / HTTP/1.1\r\n" H ": b\r\n\r\n",
    "GET / HTTP/1.1\r\n" H ":\r\n\r\n")

/* RFC 9110 5.1: field-name = token. */
START_TEST(test_req_name_not_token)
{
    static const char *const v[] = {
        "GET / HTTP/1.1\r\n" H "A(b: c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A b: c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A/b: c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "\"A\": c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A\xc3\xa9: c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A\x7f: c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "no colon\r\n\r\n",
        NULL,
    };
    bad_reqs(v);
    ck_assert_int_gt(preq("GET / HTTP/1.1\r\n" H "!#$%&'*+-.^_`|~09az: c\r\n\r\n"), 0);
}
END_TEST

/* RFC 9110 5.5: values hold VCHAR, obs-text, SP and HTAB; no other CTL, no DEL. */
START_TEST(test_req_value_ctl)
{
    static const char *const v[] = {
        "GET / HTTP/1.1\r\n" H "A: b\x01\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A: \x1b[0m\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A: b\x7f\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A: \x0b\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A: \x0c\r\n\r\n",
        "GET / HTTP/1.1\r\n" H "A: b\x01\n\r\n",
        "GET / HTTP/1.1\r\n" H "A: b\x7f\n\r\n",
        NULL,
    };
    static const char nul[] = "GET / HTTP/1.1\r\n" H "A: b\0c\r\n\r\n";

    bad_reqs(v);
    ck_assert_int_eq(preqn(nul, sizeof(nul) - 1, 10), TETHER_HTTP_EBAD);
    ck_assert_int_gt(preq("GET / HTTP/1.1\r\n" H "A: b\tc\r\n\r\n"), 0);
}
END_TEST

/* RFC 9112 3: method SP request-target SP HTTP-version, single spaces. */
REJECT_REQUESTS(test_req_line_spaces,
    "GET  / HTTP/1.1\r\n" H "\r\n",
    "GET /  HTTP/1.1\r\n" H "\r\n",
    "GET / HTTP/1.1 \r\n" H "\r\n",
    " GET / HTTP/1.1\r\n" H "\r\n",
    "GET\t/ HTTP/1.1\r\n" H "\r\n",
    "GET /\tHTTP/1.1\r\n" H "\r\n")

REJECT_REQUESTS(test_req_line_missing_parts,
    "GET\r\n" H "\r\n",
    "GET /\r\n" H "\r\n",
    "GET / \r\n" H "\r\n",
    "GET HTTP/1.1\r\n" H "\r\n",
    "GET  HTTP/1.1\r\n" H "\r\n",
    " / HTTP/1.1\r\n" H "\r\n",
    "\r\n\r\n")

/* RFC 9112 2.3: HTTP-version is case-sensitive; tether takes HTTP/1.0 and 1.1. */
REJECT_REQUESTS(test_req_version,
    "GET / http/1.1\r\n" H "\r\n",
    "GET / HTTP/1.2\r\n" H "\r\n",
    "GET / HTTP/2.0\r\n" H "\r\n",
    "GET / HTTP/1.10\r\n" H "\r\n",
    "GET / HTTP/1\r\n" H "\r\n",
    "GET / HTTP/1.\r\n" H "\r\n",
    "GET / HTTP/0.9\r\n" H "\r\n",
    "GET / HTTPS/1.1\r\n" H "\r\n",
    "GET / HTTP/1.1x\n" H "\r\n")

START_TEST(test_req_target_chars)
{
    static const char *const v[] = {
        "GET /a\x01 HTTP/1.1\r\n" H "\r\n",
        "GET /a\x7f HTTP/1.1\r\n" H "\r\n",
        "GET /caf\xc3\xa9 HTTP/1.1\r\n" H "\r\n",
        "GET /\x80 HTTP/1.1\r\n" H "\r\n",
        "GET /a\tb HTTP/1.1\r\n" H "\r\n",
        "GET /a b HTTP/1.1\r\n" H "\r\n",
        NULL,
    };
    static const char nul[] = "GET /a\0 HTTP/1.1\r\n" H "\r\n";

    bad_reqs(v);
    ck_assert_int_eq(preqn(nul, sizeof(nul) - 1, 10), TETHER_HTTP_EBAD);
}
END_TEST

/* RFC 9110 9.1: method = token. */
START_TEST(test_req_method_token)
{
    static const char *const v[] = {
        "GE(T / HTTP/1.1\r\n" H "\r\n",
        "G\"T / HTTP/1.1\r\n" H "\r\n",
        "GE/T / HTTP/1.1\r\n" H "\r\n",
        "G\x01T / HTTP/1.1\r\n" H "\r\n",
        "G\xc3\xa9T / HTTP/1.1\r\n" H "\r\n",
        NULL,
    };
    bad_reqs(v);
    ck_assert_int_gt(preq("M-SEARCH * HTTP/1.1\r\n" H "\r\n"), 0);
}
END_TEST

/* RFC 9112 3.2: an HTTP/1.1 request without Host gets a 400. */
REJECT_REQUESTS(test_req_host_missing,
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\nHostname: a\r\n\r\n")

REJECT_REQUESTS(test_req_host_duplicate,
    "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n")

REJECT_REQUESTS(test_req_host_invalid,
    "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a/\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a:b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a:\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a:000080\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: []\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: ex%4\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: ex%zz.com\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a?b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a#b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n")

START_TEST(test_req_host_valid)
{
    static const char *const v[] = {
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 10.0.0.1:65535\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [2001:db8::7]:443\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::ffff:10.0.0.1]\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: ex%41mple_~-!$&'()*+,;=\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:   a.b  \r\n\r\n",
        NULL,
    };
    good_reqs(v);
    ck_assert(view_is(req.host, req.host_len, "a.b"));
}
END_TEST

/* RFC 9110 7.2: Host may be empty only when the target carries no authority. */
START_TEST(test_req_host_empty)
{
    static const char *const good[] = {
        "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: \r\n\r\n",
        NULL,
    };
    static const char *const bad[] = {
        "GET http://a/ HTTP/1.1\r\nHost:\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost:\r\n\r\n",
        NULL,
    };

    good_reqs(good);
    ck_assert_ptr_nonnull(req.host);
    ck_assert_uint_eq(req.host_len, 0);
    bad_reqs(bad);
    ck_assert_int_gt(preq("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), 0);
}
END_TEST

/* RFC 9112 2.2 permits ignoring empty lines before the request line; tether refuses them. */
REJECT_REQUESTS(test_req_leading_empty_line,
    "\r\nGET / HTTP/1.1\r\n" H "\r\n",
    "\nGET / HTTP/1.1\r\n" H "\r\n",
    "\r\n")

START_TEST(test_req_too_many)
{
    const char *s = "GET / HTTP/1.1\r\n" H "A: 1\r\nB: 2\r\n\r\n";

    ck_assert_int_eq(preqn(s, strlen(s), 2), TETHER_HTTP_ETOOMANY);
    ck_assert_int_eq(preqn(s, strlen(s), 3), (ssize_t)strlen(s));
    ck_assert_uint_eq(req.num_headers, 3);
    ck_assert_int_eq(preqn(s, strlen(s), 0), TETHER_HTTP_ETOOMANY);
}
END_TEST

START_TEST(test_req_too_many_cap)
{
    char buf[4096];
    size_t n = 0;
    int i;

    n += (size_t)sprintf(buf + n, "GET / HTTP/1.1\r\n" H);
    for (i = 0; i < TETHER_HTTP_MAX_HEADERS; i++)
        n += (size_t)sprintf(buf + n, "X-%d: %d\r\n", i, i);
    n += (size_t)sprintf(buf + n, "\r\n");
    ck_assert_int_eq(preqn(buf, n, TETHER_HTTP_MAX_HEADERS), TETHER_HTTP_ETOOMANY);
}
END_TEST

/* RFC 9110 7.6.1: Connection is a list, possibly over several lines. */
START_TEST(test_req_connection_flags)
{
    ck_assert_int_gt(preq("GET / HTTP/1.1\r\n" H "Connection: close\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_CONN_CLOSE);
    ck_assert_int_gt(preq("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_CONN_KEEPALIVE);
    ck_assert_int_gt(preq("GET / HTTP/1.1\r\n" H "Connection: foo ,UPGRADE, keep-alive\r\n"
                          "Upgrade: websocket\r\n\r\n"),
                     0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_CONN_UPGRADE | TETHER_HTTP_F_CONN_KEEPALIVE |
                                     TETHER_HTTP_F_UPGRADE);
    ck_assert_int_gt(
        preq("GET / HTTP/1.1\r\n" H "Connection: upgrade\r\nConnection: close\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_CONN_UPGRADE | TETHER_HTTP_F_CONN_CLOSE);
    ck_assert_int_gt(preq("GET / HTTP/1.1\r\n" H "Connection: closed, keep-alive2\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, 0);
}
END_TEST

START_TEST(test_req_upgrade_flag)
{
    ck_assert_int_gt(preq("GET / HTTP/1.1\r\n" H "upgrade: h2c\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_UPGRADE);
}
END_TEST

/* RFC 9110 10.1.1: 100-continue is the only expectation, case-insensitive. */
START_TEST(test_req_expect_flag)
{
    ck_assert_int_gt(preq("PUT / HTTP/1.1\r\n" H "Expect: 100-Continue\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_EXPECT_CONTINUE);
    ck_assert_int_gt(preq("PUT / HTTP/1.1\r\n" H "expect:100-continue \r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, TETHER_HTTP_F_EXPECT_CONTINUE);
    ck_assert_int_gt(preq("PUT / HTTP/1.1\r\n" H "Expect: 200-ok\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, 0);
    ck_assert_int_gt(preq("PUT / HTTP/1.1\r\n" H "Expect: 100-continued\r\n\r\n"), 0);
    ck_assert_uint_eq(req.flags, 0);
}
END_TEST

/* Arbitrary bytes of any length give an answer, never a crash or over-read. */
START_TEST(test_req_noise)
{
    static const char set[] = "GET /HTP1.\r\n:a \t\x80\x00";
    unsigned seed = 12345;
    char buf[512];
    int round;
    size_t i;

    for (round = 0; round < 2000; round++) {
        size_t n = (size_t)(round % (int)sizeof(buf));
        for (i = 0; i < n; i++) {
            seed = seed * 1103515245 + 12345;
            buf[i] = set[(seed >> 16) % (sizeof(set) - 1)];
        }
        char *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        ssize_t r = preqn(copy, n, 8);
        ck_assert(r == TETHER_HTTP_PARTIAL || r == TETHER_HTTP_EBAD ||
                  r == TETHER_HTTP_ETOOMANY || (r > 0 && (size_t)r <= n));
        r = presn(copy, n, 8);
        ck_assert(r == TETHER_HTTP_PARTIAL || r == TETHER_HTTP_EBAD ||
                  r == TETHER_HTTP_ETOOMANY || (r > 0 && (size_t)r <= n));
        free(copy);
    }
}
END_TEST

START_TEST(test_res_simple)
{
    const char *s = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nServer: x\r\n\r\nnot found";

    ck_assert_int_eq(pres(s), (ssize_t)(strlen(s) - 9));
    ck_assert_int_eq(res.minor_version, 1);
    ck_assert_int_eq(res.status, 404);
    ck_assert(view_is(res.reason, res.reason_len, "Not Found"));
    ck_assert_uint_eq(res.num_headers, 2);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_LENGTH);
    ck_assert_uint_eq(res.content_length, 9);
}
END_TEST

START_TEST(test_res_prefixes_partial)
{
    const char *s = "HTTP/1.0 200 OK\r\nA: b\r\n\r\n";
    size_t n = strlen(s), i;

    for (i = 0; i < n; i++) {
        char *copy = malloc(i ? i : 1);
        memcpy(copy, s, i);
        ck_assert_msg(presn(copy, i, 10) == TETHER_HTTP_PARTIAL, "%zu", i);
        free(copy);
    }
    ck_assert_int_eq(pres(s), (ssize_t)n);
    ck_assert_int_eq(res.minor_version, 0);
}
END_TEST

/* RFC 9112 4: the SP after the status code is required, the reason may be empty. */
START_TEST(test_res_reason)
{
    ck_assert_int_gt(pres("HTTP/1.1 204 \r\n\r\n"), 0);
    ck_assert_uint_eq(res.reason_len, 0);
    ck_assert_int_gt(pres("HTTP/1.1 200 tr\xc3\xa8s  bien\t\r\n\r\n"), 0);
    ck_assert(view_is(res.reason, res.reason_len, "tr\xc3\xa8s  bien\t"));
    ck_assert_int_eq(pres("HTTP/1.1 204\r\n\r\n"), TETHER_HTTP_EBAD);
    ck_assert_int_eq(pres("HTTP/1.1 200 O\x01K\r\n\r\n"), TETHER_HTTP_EBAD);
    ck_assert_int_eq(pres("HTTP/1.1 200 OK\x7f\r\n\r\n"), TETHER_HTTP_EBAD);
    ck_assert_int_eq(pres("HTTP/1.1 200 OK\n\r\n"), TETHER_HTTP_EBAD);
}
END_TEST

START_TEST(test_res_status)
{
    static const char *const v[] = {
        "HTTP/1.1 099 X\r\n\r\n",
        "HTTP/1.1 600 X\r\n\r\n",
        "HTTP/1.1 20 X\r\n\r\n",
        "HTTP/1.1 2000 X\r\n\r\n",
        "HTTP/1.1 2x0 X\r\n\r\n",
        "HTTP/1.1  200 X\r\n\r\n",
        "HTTP/1.1 -20 X\r\n\r\n",
        NULL,
    };
    bad_ress(v);
    ck_assert_int_gt(pres("HTTP/1.1 100 Continue\r\n\r\n"), 0);
    ck_assert_int_eq(res.status, 100);
    ck_assert_int_gt(pres("HTTP/1.1 599 X\r\n\r\n"), 0);
    ck_assert_int_eq(res.status, 599);
}
END_TEST

REJECT_RESPONSES(test_res_version,
    "HTTP/1.2 200 OK\r\n\r\n",
    "HTTP/2.0 200 OK\r\n\r\n",
    "http/1.1 200 OK\r\n\r\n",
    "HTTP/1.10 200 OK\r\n\r\n",
    "\r\nHTTP/1.1 200 OK\r\n\r\n")

/* RFC 9112 6.3: framing of a response from its header alone. */
START_TEST(test_res_framing)
{
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_NONE);
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_CHUNKED);
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_CHUNKED);
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_EOF);
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_EOF);
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_EOF);
    ck_assert_int_gt(pres("HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\n"), 0);
    ck_assert_int_eq(res.body, TETHER_HTTP_BODY_LENGTH);
    ck_assert_uint_eq(res.content_length, 12);
}
END_TEST

REJECT_RESPONSES(test_res_cl_with_te,
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n")

REJECT_RESPONSES(test_res_cl_bad,
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n")

REJECT_RESPONSES(test_res_te_bad,
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
    "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: a b\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;q=1\r\n\r\n")

START_TEST(test_res_field_rules)
{
    static const char *const v[] = {
        "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\r\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA@: b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: \x7f\r\n\r\n",
        NULL,
    };
    bad_ress(v);
    /* Host means nothing in a response: no Host rules there */
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nHost: a b\r\nHost: c\r\n\r\n"), 0);
}
END_TEST

START_TEST(test_res_flags)
{
    ck_assert_int_gt(pres("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                          "Upgrade: websocket\r\n\r\n"),
                     0);
    ck_assert_uint_eq(res.flags, TETHER_HTTP_F_CONN_UPGRADE | TETHER_HTTP_F_UPGRADE);
    ck_assert_int_gt(pres("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"), 0);
    ck_assert_uint_eq(res.flags, TETHER_HTTP_F_CONN_CLOSE);
}
END_TEST

START_TEST(test_res_too_many)
{
    const char *s = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n";

    ck_assert_int_eq(presn(s, strlen(s), 1), TETHER_HTTP_ETOOMANY);
    ck_assert_int_eq(presn(s, strlen(s), 2), (ssize_t)strlen(s));
}
END_TEST

START_TEST(test_token_has)
{
    const char *v = " keep-alive ,\tUpgrade,, x ";

    ck_assert_int_eq(tether_http_token_has(v, strlen(v), "upgrade"), 1);
    ck_assert_int_eq(tether_http_token_has(v, strlen(v), "KEEP-ALIVE"), 1);
    ck_assert_int_eq(tether_http_token_has(v, strlen(v), "x"), 1);
    ck_assert_int_eq(tether_http_token_has(v, strlen(v), "keep"), 0);
    ck_assert_int_eq(tether_http_token_has(v, strlen(v), "close"), 0);
    ck_assert_int_eq(tether_http_token_has("close", 5, "close"), 1);
    ck_assert_int_eq(tether_http_token_has("closed", 6, "close"), 0);
    ck_assert_int_eq(tether_http_token_has("closed", 4, "clos"), 1);
    ck_assert_int_eq(tether_http_token_has("", 0, "close"), 0);
    ck_assert_int_eq(tether_http_token_has(NULL, 0, "close"), 0);
}
END_TEST

START_TEST(test_reason)
{
    ck_assert_str_eq(tether_http_reason(200), "OK");
    ck_assert_str_eq(tether_http_reason(400), "Bad Request");
    ck_assert_str_eq(tether_http_reason(413), "Content Too Large");
    ck_assert_str_eq(tether_http_reason(431), "Request Header Fields Too Large");
    ck_assert_str_eq(tether_http_reason(502), "Bad Gateway");
    ck_assert_str_eq(tether_http_reason(299), "");
    ck_assert_str_eq(tether_http_reason(-1), "");
}
END_TEST

static Suite *parser_suite(void)
{
    Suite *s = suite_create("http/parser");
    TCase *rq = tcase_create("request");
    TCase *rs = tcase_create("response");
    TCase *ut = tcase_create("util");

    tcase_add_test(rq, test_req_simple);
    tcase_add_test(rq, test_req_prefixes_partial);
    tcase_add_test(rq, test_req_pipelined);
    tcase_add_test(rq, test_req_values);
    tcase_add_test(rq, test_req_http10);
    tcase_add_test(rq, test_req_content_length);
    tcase_add_test(rq, test_req_cl_with_te);
    tcase_add_test(rq, test_req_cl_duplicate);
    tcase_add_test(rq, test_req_cl_malformed);
    tcase_add_test(rq, test_req_cl_overflow);
    tcase_add_test(rq, test_req_te_chunked);
    tcase_add_test(rq, test_req_te_not_final);
    tcase_add_test(rq, test_req_te_not_token);
    tcase_add_test(rq, test_req_te_twice);
    tcase_add_test(rq, test_req_te_empty);
    tcase_add_test(rq, test_req_te_http10);
    tcase_add_test(rq, test_req_obs_fold);
    tcase_add_test(rq, test_req_bare_lf);
    tcase_add_test(rq, test_req_bare_cr);
    tcase_add_test(rq, test_req_space_before_colon);
    tcase_add_test(rq, test_req_empty_name);
    tcase_add_test(rq, test_req_name_not_token);
    tcase_add_test(rq, test_req_value_ctl);
    tcase_add_test(rq, test_req_line_spaces);
    tcase_add_test(rq, test_req_line_missing_parts);
    tcase_add_test(rq, test_req_version);
    tcase_add_test(rq, test_req_target_chars);
    tcase_add_test(rq, test_req_method_token);
    tcase_add_test(rq, test_req_host_missing);
    tcase_add_test(rq, test_req_host_duplicate);
    tcase_add_test(rq, test_req_host_invalid);
    tcase_add_test(rq, test_req_host_valid);
    tcase_add_test(rq, test_req_host_empty);
    tcase_add_test(rq, test_req_leading_empty_line);
    tcase_add_test(rq, test_req_too_many);
    tcase_add_test(rq, test_req_too_many_cap);
    tcase_add_test(rq, test_req_connection_flags);
    tcase_add_test(rq, test_req_upgrade_flag);
    tcase_add_test(rq, test_req_expect_flag);
    tcase_add_test(rq, test_req_noise);
    suite_add_tcase(s, rq);

    tcase_add_test(rs, test_res_simple);
    tcase_add_test(rs, test_res_prefixes_partial);
    tcase_add_test(rs, test_res_reason);
    tcase_add_test(rs, test_res_status);
    tcase_add_test(rs, test_res_version);
    tcase_add_test(rs, test_res_framing);
    tcase_add_test(rs, test_res_cl_with_te);
    tcase_add_test(rs, test_res_cl_bad);
    tcase_add_test(rs, test_res_te_bad);
    tcase_add_test(rs, test_res_field_rules);
    tcase_add_test(rs, test_res_flags);
    tcase_add_test(rs, test_res_too_many);
    suite_add_tcase(s, rs);

    tcase_add_test(ut, test_token_has);
    tcase_add_test(ut, test_reason);
    suite_add_tcase(s, ut);
    return s;
}

int main(void)
{
    return unit_run(parser_suite());
}
