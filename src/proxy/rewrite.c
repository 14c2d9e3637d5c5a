/*
 * The heads tether sends: the request head for the backend and the
 * response head for the client. Hop-by-hop fields (RFC 9110 7.6.1) and
 * every field the peer named in Connection are dropped; a client can never
 * forge tether's own x-fc-session-* fields, nor X-Forwarded-Proto/-Host;
 * X-Forwarded-For is appended to. A TLS listener with an HSTS policy adds
 * Strict-Transport-Security where the backend did not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h> /* BEV_EVENT_* */

#include "tether/util.h"
#include "proxy-int.h"

#define MAX_CONN_TOKENS 16

struct span {
    const char *p;
    size_t n;
};

static int ieq(const char *a, size_t an, const char *lit)
{
    return tether_strieq(a, an, lit, strlen(lit));
}

int header_is_hop_by_hop(const char *name, size_t len)
{
    return ieq(name, len, "connection") || ieq(name, len, "keep-alive") ||
           ieq(name, len, "proxy-connection") || ieq(name, len, "te") ||
           ieq(name, len, "trailer") || ieq(name, len, "upgrade");
}

/* The field names listed in Connection headers (framing fields never count). */
static size_t connection_tokens(const struct tether_http_header *h, size_t nh, struct span *tok)
{
    size_t n = 0;
    for (size_t i = 0; i < nh; i++) {
        if (!ieq(h[i].name, h[i].name_len, "connection"))
            continue;
        const char *p = h[i].value, *end = p + h[i].value_len;
        while (p < end && n < MAX_CONN_TOKENS) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if (p > s && !ieq(s, (size_t)(p - s), "content-length") &&
                !ieq(s, (size_t)(p - s), "transfer-encoding") && !ieq(s, (size_t)(p - s), "host"))
                tok[n++] = (struct span){s, (size_t)(p - s)};
        }
    }
    return n;
}

static int listed(const struct span *tok, size_t ntok, const char *name, size_t len)
{
    for (size_t i = 0; i < ntok; i++)
        if (tether_strieq(tok[i].p, tok[i].n, name, len))
            return 1;
    return 0;
}

/* '-' and '_' compared alike: CGI-style stacks map both to one variable,
   so an underscore spelling could shadow tether's own field. */
static int name_is(const char *n, size_t nl, const char *lit, size_t litlen, bool prefix)
{
    if (prefix ? nl < litlen : nl != litlen)
        return 0;
    for (size_t i = 0; i < litlen; i++) {
        char a = n[i] == '_' ? '-' : n[i];
        if ((a | 0x20) != (lit[i] | 0x20) && !(a == '-' && lit[i] == '-'))
            return 0;
    }
    return 1;
}

static int is_session_field(const char *name, size_t len)
{
    return name_is(name, len, "x-fc-session-", 13, true);
}

static int is_forwarded_field(const char *name, size_t len)
{
    return name_is(name, len, "x-forwarded-proto", 17, false) ||
           name_is(name, len, "x-forwarded-host", 16, false) ||
           (memchr(name, '_', len) && name_is(name, len, "x-forwarded-for", 15, false));
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

int rewrite_request(struct conn *c, const struct tether_http_request *req)
{
    const struct tether_http_header *h = req->headers;
    size_t nh = req->num_headers;
    size_t need = req->method_len + req->target_len + req->host_len * 2 + 288;
    for (size_t i = 0; i < nh; i++)
        need += h[i].name_len + h[i].value_len + 4;
    if (need > c->head_cap) {
        size_t cap = need < 1024 ? 1024 : need;
        char *nb = realloc(c->head, cap);
        if (!nb)
            return -1;
        c->head = nb;
        c->head_cap = cap;
    }

    struct span tok[MAX_CONN_TOKENS];
    size_t ntok = connection_tokens(h, nh, tok);
    char *p = c->head;
    p = put(p, req->method, req->method_len);
    *p++ = ' ';
    p = put(p, req->target, req->target_len);
    p = c->minor == 1 ? PUTS(p, " HTTP/1.1\r\n") : PUTS(p, " HTTP/1.0\r\n");

    const struct tether_http_header *xff[8];
    size_t nxff = 0;
    for (size_t i = 0; i < nh; i++) {
        const char *n = h[i].name;
        size_t nl = h[i].name_len;
        if (ieq(n, nl, "upgrade") && c->upgrade)
            goto keep;
        /* Transfer-Encoding is written anew below: one canonical form. */
        if (header_is_hop_by_hop(n, nl) || is_session_field(n, nl) || is_forwarded_field(n, nl) ||
            ieq(n, nl, "transfer-encoding") || listed(tok, ntok, n, nl))
            continue;
        if (ieq(n, nl, "x-forwarded-for")) {
            if (nxff < sizeof(xff) / sizeof(xff[0]))
                xff[nxff++] = &h[i];
            continue;
        }
    keep:
        p = put(p, n, nl);
        p = PUTS(p, ": ");
        p = put(p, h[i].value, h[i].value_len);
        p = PUTS(p, "\r\n");
    }
    if (req->body == TETHER_HTTP_BODY_CHUNKED)
        p = PUTS(p, "Transfer-Encoding: chunked\r\n");
    if (c->upgrade)
        p = PUTS(p, "Connection: upgrade\r\n");
    else if (c->minor == 0)
        /* An HTTP/1.0 request keeps its connection only when it asks to
           (RFC 9112 C.2.2): the upstream one is tether's, for the pool,
           whatever the client wants of its own. */
        p = PUTS(p, "Connection: keep-alive\r\n");
    p = PUTS(p, "X-Forwarded-For: ");
    for (size_t i = 0; i < nxff; i++) {
        p = put(p, xff[i]->value, xff[i]->value_len);
        p = PUTS(p, ", ");
    }
    p = put(p, c->peer, strlen(c->peer));
    p = c->tls ? PUTS(p, "\r\nX-Forwarded-Proto: https\r\n")
               : PUTS(p, "\r\nX-Forwarded-Proto: http\r\n");
    if (req->host && req->host_len) {
        p = PUTS(p, "X-Forwarded-Host: ");
        p = put(p, req->host, req->host_len);
        p = PUTS(p, "\r\n");
    }
    /* The session lines and the final CRLF are added per attempt
       (affinity_write_headers): a retry may go to another backend. */
    c->head_len = (size_t)(p - c->head);
    return 0;
}

size_t rewrite_hsts(const struct conn *c, char *buf)
{
    if (!c->hsts_s)
        return 0;
    int n = snprintf(buf, TETHER_PROXY_HSTS_MAX, "Strict-Transport-Security: max-age=%llu%s\r\n",
                     (unsigned long long)c->hsts_s,
                     c->hsts_subdomains ? "; includeSubDomains" : "");
    return n > 0 && n < TETHER_PROXY_HSTS_MAX ? (size_t)n : 0;
}

int rewrite_response(struct conn *c, struct upstream *u, const struct tether_http_response *res,
                     struct evbuffer *out)
{
    const struct tether_http_header *h = res->headers;
    size_t nh = res->num_headers;
    size_t need = res->reason_len + 128 + TETHER_PROXY_HSTS_MAX + (c->minted ? 512 : 0);
    for (size_t i = 0; i < nh; i++)
        need += h[i].name_len + h[i].value_len + 4;

    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) < 1 || v.iov_len < need)
        return -1;
    struct span tok[MAX_CONN_TOKENS];
    size_t ntok = connection_tokens(h, nh, tok);
    char *p = v.iov_base;
    char code[4] = {(char)('0' + res->status / 100), (char)('0' + res->status / 10 % 10),
                    (char)('0' + res->status % 10), ' '};
    p = PUTS(p, "HTTP/1.1 ");
    p = put(p, code, 4);
    p = put(p, res->reason, res->reason_len);
    p = PUTS(p, "\r\n");
    bool switching = res->status == 101, has_sts = false;
    for (size_t i = 0; i < nh; i++) {
        const char *n = h[i].name;
        size_t nl = h[i].name_len;
        if (!(switching && ieq(n, nl, "upgrade")) &&
            (header_is_hop_by_hop(n, nl) || listed(tok, ntok, n, nl)))
            continue;
        /* Meant for tether alone (DESIGN.md "State handoff"). */
        if (ieq(n, nl, "x-fc-session-state") || ieq(n, nl, "x-fc-session-end"))
            continue;
        has_sts = has_sts || ieq(n, nl, "strict-transport-security");
        p = put(p, n, nl);
        p = PUTS(p, ": ");
        p = put(p, h[i].value, h[i].value_len);
        p = PUTS(p, "\r\n");
    }
    if (c->minted && res->status >= 200)
        p += affinity_set_cookie(c, p, 512);
    if (u && u->rechunk && res->status >= 200)
        p = PUTS(p, "Transfer-Encoding: chunked\r\n");
    /* The listener's HSTS policy, unless the backend states its own
       (a client heeds only the first, RFC 6797 8.1). */
    if (res->status >= 200 && !switching && !has_sts)
        p += rewrite_hsts(c, p);
    if (switching)
        p = PUTS(p, "Connection: upgrade\r\n");
    else if (res->status >= 200) {
        if (c->close_after || !c->keepalive ||
            (c->read_eof && evbuffer_get_length(tether_stream_get_input(c->bev)) == 0))
            p = PUTS(p, "Connection: close\r\n");
        else if (c->minor == 0)
            p = PUTS(p, "Connection: keep-alive\r\n");
    }
    p = PUTS(p, "\r\n");
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    return evbuffer_commit_space(out, &v, 1);
}
