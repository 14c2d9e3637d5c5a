/*
 * HTTP/1.1 head parsing (RFC 9112 2-6): request and status lines, header
 * fields, and the framing they imply (RFC 9112 6.3). One pass over the bytes
 * driven by a class table, views into the caller's buffer, no allocation.
 * Also the comma-list token helper and the standard reason phrases.
 */
#include <string.h>

#include "tether/http.h"
#include "chars.h"

/* clang-format off */
const uint8_t tether_http_chars[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x22, 0x2f, 0x06, 0x27, 0x2f, 0x27, 0x2f, 0x2f, 0x2e, 0x2e, 0x2f, 0x2f, 0x2e, 0x2f, 0x2f, 0x26,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x26, 0x2e, 0x26, 0x2e, 0x26, 0x26,
    0x26, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f,
    0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x26, 0x06, 0x26, 0x27, 0x2f,
    0x27, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f,
    0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x26, 0x27, 0x26, 0x2f, 0x00,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
};
/* clang-format on */

/* What the header fields say about framing, gathered while scanning them. */
struct head {
    struct tether_http_header *h; /* caller's array */
    size_t n, max;
    int request; /* Host is only looked at in a request */
    const char *host;
    size_t host_len;
    unsigned hosts; /* Host field lines */
    uint64_t cl;
    unsigned cls;      /* Content-Length field lines */
    unsigned te;       /* Transfer-Encoding field lines */
    unsigned chunked;  /* how many codings are "chunked" */
    int final_chunked; /* the last coding seen is "chunked" */
    unsigned flags;
};

/* A comma-separated list (RFC 9110 5.6.1) being walked element by element. */
struct list {
    const char *p, *end;
    int done;
};

/*
 * The end of the longest run of bytes of class c starting at p, never
 * reading at or past end. Unrolled: this loop is where the time goes.
 */
static inline const char *span(const char *p, const char *end, unsigned c)
{
    while (end - p >= 8) {
        if (!(cls(p[0]) & c))
            return p;
        if (!(cls(p[1]) & c))
            return p + 1;
        if (!(cls(p[2]) & c))
            return p + 2;
        if (!(cls(p[3]) & c))
            return p + 3;
        if (!(cls(p[4]) & c))
            return p + 4;
        if (!(cls(p[5]) & c))
            return p + 5;
        if (!(cls(p[6]) & c))
            return p + 6;
        if (!(cls(p[7]) & c))
            return p + 7;
        p += 8;
    }
    while (p < end && (cls(*p) & c))
        p++;
    return p;
}

static inline int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* 1 if s[0..n) equals the lowercase literal lit, ASCII case-insensitively. */
static int eqi(const char *s, size_t n, const char *lit, size_t lit_len)
{
    size_t i;

    if (n != lit_len)
        return 0;
    for (i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != lit[i])
            return 0;
    return 1;
}

#define EQI(s, n, lit) eqi(s, n, lit, sizeof(lit) - 1)

static inline int ows(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Next element of the list, OWS trimmed; it may be empty ("a, ,b").
 * Commas inside quoted strings are not special: no list tether reads
 * (Connection, Transfer-Encoding, Expect) may carry one.
 * Returns 0 once the list is exhausted.
 */
static int list_next(struct list *l, const char **e, size_t *n)
{
    const char *s = l->p, *c;

    if (l->done)
        return 0;
    c = memchr(s, ',', (size_t)(l->end - s));
    if (c == NULL) {
        c = l->end;
        l->done = 1;
    } else {
        l->p = c + 1;
    }
    while (s < c && ows(*s))
        s++;
    while (c > s && ows(c[-1]))
        c--;
    *e = s;
    *n = (size_t)(c - s);
    return 1;
}

/* Content-Length = 1*DIGIT (RFC 9110 8.6), at most 19 digits and 2^63-1. */
static int content_length(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;
    size_t i;

    if (n == 0 || n > 19)
        return -1;
    for (i = 0; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)v[i] - '0';
        if (d > 9)
            return -1;
        x = x * 10 + d; /* 19 digits never wrap a uint64_t */
    }
    if (x > (uint64_t)INT64_MAX)
        return -1;
    *out = x;
    return 0;
}

/*
 * One Transfer-Encoding field line: a list of codings, appended to those of
 * earlier lines (RFC 9110 5.3). Only bare tokens are accepted: parameters are
 * defined for no coding tether knows, and chunked takes none (RFC 9112 7).
 * A line with no coding at all is an error.
 */
static int transfer_encoding(struct head *hd, const char *v, size_t n)
{
    struct list l = {v, v + n, 0};
    const char *e;
    size_t en;
    int any = 0;

    while (list_next(&l, &e, &en)) {
        if (en == 0)
            continue; /* RFC 9110 5.6.1: empty elements are ignored */
        if (span(e, e + en, C_TOKEN) != e + en)
            return -1;
        any = 1;
        hd->final_chunked = EQI(e, en, "chunked");
        hd->chunked += (unsigned)hd->final_chunked;
    }
    return any ? 0 : -1;
}

static void connection(struct head *hd, const char *v, size_t n)
{
    struct list l = {v, v + n, 0};
    const char *e;
    size_t en;

    while (list_next(&l, &e, &en)) {
        if (EQI(e, en, "close"))
            hd->flags |= TETHER_HTTP_F_CONN_CLOSE;
        else if (EQI(e, en, "keep-alive"))
            hd->flags |= TETHER_HTTP_F_CONN_KEEPALIVE;
        else if (EQI(e, en, "upgrade"))
            hd->flags |= TETHER_HTTP_F_CONN_UPGRADE;
    }
}

/*
 * Host = uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2), kept simple:
 * a reg-name (which covers IPv4) of unreserved, sub-delims and %HH, or an
 * IP-literal of hex digits, ':' and '.', then an optional port of 1 to 5
 * digits up to 65535. An empty value passes here; the caller decides.
 */
static int host_ok(const char *v, size_t n)
{
    const char *p = v, *end = v + n, *s;
    unsigned port = 0;

    if (n == 0)
        return 1;
    if (*p == '[') {
        s = ++p;
        while (p < end && ((cls(*p) & C_HEX) || *p == ':' || *p == '.'))
            p++;
        if (p == s || p == end || *p != ']')
            return 0;
        p++;
    } else {
        s = p;
        while (p < end) {
            if (cls(*p) & C_HOST)
                p++;
            else if (*p == '%' && end - p >= 3 && (cls(p[1]) & C_HEX) && (cls(p[2]) & C_HEX))
                p += 3;
            else
                break;
        }
        if (p == s)
            return 0;
    }
    if (p == end)
        return 1;
    if (*p++ != ':' || p == end || end - p > 5)
        return 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port <= 65535;
}

/*
 * Take note of a field that matters to framing, routing or connection
 * management. Returns -1 when it makes the message invalid.
 */
static int field(struct head *hd, const struct tether_http_header *f)
{
    const char *v = f->value;
    size_t n = f->value_len;

    switch (f->name_len) {
    case 4:
        if (hd->request && EQI(f->name, 4, "host")) {
            /* RFC 9112 3.2: one Host, with a valid value */
            if (hd->hosts++ || !host_ok(v, n))
                return -1;
            hd->host = v;
            hd->host_len = n;
        }
        break;
    case 6:
        if (EQI(f->name, 6, "expect") && tether_http_token_has(v, n, "100-continue"))
            hd->flags |= TETHER_HTTP_F_EXPECT_CONTINUE;
        break;
    case 7:
        if (EQI(f->name, 7, "upgrade"))
            hd->flags |= TETHER_HTTP_F_UPGRADE;
        break;
    case 10:
        if (EQI(f->name, 10, "connection"))
            connection(hd, v, n);
        break;
    case 14:
        /* RFC 9112 6.3 (5): several Content-Length lines are not merged, even equal */
        if (EQI(f->name, 14, "content-length") && (hd->cls++ || content_length(v, n, &hd->cl) < 0))
            return -1;
        break;
    case 17:
        if (EQI(f->name, 17, "transfer-encoding")) {
            hd->te++;
            return transfer_encoding(hd, v, n);
        }
        break;
    }
    return 0;
}

/*
 * The header fields from p up to and including the empty line (RFC 9112 5).
 * Each line is token ":" OWS value OWS CRLF; a line beginning with SP/HTAB
 * (obs-fold, RFC 9112 5.2), whitespace before the colon (5.1), a bare CR or
 * LF (2.2) and a CTL or DEL in a value (RFC 9110 5.5) are errors.
 * Returns the length of the head from buf, or a TETHER_HTTP_* code.
 */
static ssize_t fields(const char *buf, const char *p, const char *end, struct head *hd)
{
    for (;;) {
        struct tether_http_header f;
        const char *vend;

        if (p == end)
            return TETHER_HTTP_PARTIAL;
        if (*p == '\r') {
            if (++p == end)
                return TETHER_HTTP_PARTIAL;
            return *p == '\n' ? p + 1 - buf : TETHER_HTTP_EBAD;
        }
        f.name = p;
        p = span(p, end, C_TOKEN);
        if (p == end)
            return TETHER_HTTP_PARTIAL;
        if (p == f.name || *p != ':')
            return TETHER_HTTP_EBAD;
        f.name_len = (size_t)(p - f.name);
        for (p++; p < end && ows(*p); p++)
            ;
        f.value = p;
        p = span(p, end, C_VALUE);
        if (p == end)
            return TETHER_HTTP_PARTIAL;
        if (*p != '\r')
            return TETHER_HTTP_EBAD;
        for (vend = p; vend > f.value && ows(vend[-1]); vend--)
            ;
        f.value_len = (size_t)(vend - f.value);
        if (++p == end)
            return TETHER_HTTP_PARTIAL;
        if (*p++ != '\n')
            return TETHER_HTTP_EBAD;
        if (hd->n == hd->max)
            return TETHER_HTTP_ETOOMANY;
        hd->h[hd->n++] = f;
        if (field(hd, &f) < 0)
            return TETHER_HTTP_EBAD;
    }
}

/*
 * "HTTP/1.0" or "HTTP/1.1" at *pp, advanced past it. HTTP-version is
 * case-sensitive (RFC 9112 2.3); tether speaks only HTTP/1.x, and a second
 * minor digit ("HTTP/1.10") is left for the caller to trip on.
 */
static int version(const char **pp, const char *end, int *minor)
{
    static const char lit[] = "HTTP/1.";
    const char *p = *pp;
    size_t i;

    for (i = 0; i < sizeof(lit) - 1; i++, p++) {
        if (p == end)
            return TETHER_HTTP_PARTIAL;
        if (*p != lit[i])
            return TETHER_HTTP_EBAD;
    }
    if (p == end)
        return TETHER_HTTP_PARTIAL;
    if (*p != '0' && *p != '1')
        return TETHER_HTTP_EBAD;
    *minor = *p - '0';
    *pp = p + 1;
    return 0;
}

/* CRLF at *pp, advanced past it. */
static int crlf(const char **pp, const char *end)
{
    const char *p = *pp;

    if (p == end)
        return TETHER_HTTP_PARTIAL;
    if (*p != '\r')
        return TETHER_HTTP_EBAD;
    if (++p == end)
        return TETHER_HTTP_PARTIAL;
    if (*p != '\n')
        return TETHER_HTTP_EBAD;
    *pp = p + 1;
    return 0;
}

static void head_init(struct head *hd, struct tether_http_header *h, size_t max, int request)
{
    memset(hd, 0, sizeof(*hd));
    hd->h = h;
    hd->max = max;
    hd->request = request;
}

ssize_t tether_http_parse_request(const char *buf, size_t len, struct tether_http_request *req,
                                  size_t max_headers)
{
    const char *p = buf, *end;
    struct head hd;
    ssize_t r;
    int authority;

    if (len == 0)
        return TETHER_HTTP_PARTIAL;
    end = buf + len;

    /*
     * request-line = method SP request-target SP HTTP-version CRLF, single
     * spaces only (RFC 9112 3). A leading empty line fails here too: strict
     * reading of RFC 9112 2.2, which only permits ignoring it.
     */
    p = span(p, end, C_TOKEN);
    if (p == end)
        return TETHER_HTTP_PARTIAL;
    if (p == buf || *p != ' ')
        return TETHER_HTTP_EBAD;
    req->method = buf;
    req->method_len = (size_t)(p - buf);
    req->target = ++p;
    p = span(p, end, C_TARGET);
    if (p == end)
        return TETHER_HTTP_PARTIAL;
    if (p == req->target || *p != ' ')
        return TETHER_HTTP_EBAD;
    req->target_len = (size_t)(p - req->target);
    p++;
    if ((r = version(&p, end, &req->minor_version)) < 0 || (r = crlf(&p, end)) < 0)
        return r;

    head_init(&hd, req->headers, max_headers, 1);
    if ((r = fields(buf, p, end, &hd)) < 0)
        return r;

    /* RFC 9112 6.1: TE in HTTP/1.0 means faulty framing; CL beside TE is smuggling */
    if (hd.te && (req->minor_version == 0 || hd.cls))
        return TETHER_HTTP_EBAD;
    /* RFC 9112 6.3 (4): a request's final coding must be chunked, applied once (6.1) */
    if (hd.te && (!hd.final_chunked || hd.chunked != 1))
        return TETHER_HTTP_EBAD;
    /*
     * RFC 9112 3.2: exactly one Host in HTTP/1.1 (a second one failed in
     * field()). It may be empty only when the target has no authority
     * (origin or asterisk form, RFC 9110 7.2).
     */
    if (req->minor_version == 1 && hd.hosts == 0)
        return TETHER_HTTP_EBAD;
    authority = req->target[0] != '/' && !(req->target_len == 1 && req->target[0] == '*');
    if (hd.hosts && hd.host_len == 0 && authority)
        return TETHER_HTTP_EBAD;

    req->num_headers = hd.n;
    req->host = hd.host;
    req->host_len = hd.host_len;
    req->flags = hd.flags;
    req->content_length = hd.cl;
    if (hd.te)
        req->body = TETHER_HTTP_BODY_CHUNKED;
    else if (hd.cls && hd.cl > 0)
        req->body = TETHER_HTTP_BODY_LENGTH;
    else
        req->body = TETHER_HTTP_BODY_NONE;
    return r;
}

ssize_t tether_http_parse_response(const char *buf, size_t len, struct tether_http_response *res,
                                   size_t max_headers)
{
    const char *p = buf, *end;
    struct head hd;
    ssize_t r;
    int i;

    if (len == 0)
        return TETHER_HTTP_PARTIAL;
    end = buf + len;

    /* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF (RFC 9112 4) */
    if ((r = version(&p, end, &res->minor_version)) < 0)
        return r;
    /* " DDD ": the SP before the reason is required even when the reason is empty */
    res->status = 0;
    for (i = 0; i < 5; i++, p++) {
        if (p == end)
            return TETHER_HTTP_PARTIAL;
        if (i == 0 || i == 4) {
            if (*p != ' ')
                return TETHER_HTTP_EBAD;
            continue;
        }
        if (*p < (i == 1 ? '1' : '0') || *p > (i == 1 ? '5' : '9'))
            return TETHER_HTTP_EBAD; /* 100..599 only */
        res->status = res->status * 10 + (*p - '0');
    }
    res->reason = p;
    p = span(p, end, C_VALUE);
    res->reason_len = (size_t)(p - res->reason);
    if ((r = crlf(&p, end)) < 0)
        return r;

    head_init(&hd, res->headers, max_headers, 0);
    if ((r = fields(buf, p, end, &hd)) < 0)
        return r;

    /* RFC 9112 6.1: TE in HTTP/1.0 is faulty framing, so is CL beside TE (6.3 (3)) */
    if (hd.te && (res->minor_version == 0 || hd.cls))
        return TETHER_HTTP_EBAD;
    /* RFC 9112 6.1: chunked must not be applied twice */
    if (hd.chunked > 1)
        return TETHER_HTTP_EBAD;

    res->num_headers = hd.n;
    res->flags = hd.flags;
    res->content_length = hd.cl;
    /* RFC 9112 6.3 (4): a final coding other than chunked runs until close */
    if (hd.te)
        res->body = hd.final_chunked ? TETHER_HTTP_BODY_CHUNKED : TETHER_HTTP_BODY_EOF;
    else if (hd.cls)
        res->body = hd.cl > 0 ? TETHER_HTTP_BODY_LENGTH : TETHER_HTTP_BODY_NONE;
    else
        res->body = TETHER_HTTP_BODY_EOF;
    return r;
}

int tether_http_token_has(const char *value, size_t len, const char *tok)
{
    struct list l = {value, value + len, 0};
    size_t tok_len = strlen(tok);
    const char *e;
    size_t en, i;

    if (len == 0)
        return 0;
    while (list_next(&l, &e, &en)) {
        if (en != tok_len)
            continue;
        for (i = 0; i < en; i++)
            if (lower((unsigned char)e[i]) != lower((unsigned char)tok[i]))
                break;
        if (i == en)
            return 1;
    }
    return 0;
}

/* Reason phrases of RFC 9110 15, plus 103 (RFC 8297), 429 and 431 (RFC 6585). */
const char *tether_http_reason(int status)
{
    /* clang-format off */
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
    /* clang-format on */
}
