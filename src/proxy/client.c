/*
 * The client side of the data path: accept, parse each request head,
 * choose its backend, stream its body upstream, and after the response
 * either wait for the next (possibly pipelined) request or close.
 * Errors are answered with a short plain-text response and a lingering
 * close, so the client reads the answer before it sees the connection end.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h> /* BEV_EVENT_* */

#include "tether/lb.h"
#include "tether/net.h"
#include "tether/tls.h"
#include "tether/util.h"
#include "proxy-int.h"

static void on_read(struct tether_stream *bev, void *arg);
static void on_write(struct tether_stream *bev, void *arg);
static void on_event(struct tether_stream *bev, short what, void *arg);
static void parse_next(struct conn *c);

static void arm(struct conn *c, enum conn_timer mode)
{
    const struct tether_config_timeouts *t = &c->w->cfg->timeouts;
    uint64_t ms = mode == T_HEADER   ? t->client_header_ms
                  : mode == T_IDLE   ? t->client_idle_ms
                  : mode == T_TUNNEL ? t->backend_idle_ms
                  : (mode == T_PEEK || mode == T_HANDSHAKE)
                      ? c->handshake_ms
                      : TETHER_PROXY_LINGER_MS;
    struct timeval tv = tether_timeval_ms(ms);
    c->timer_mode = mode;
    event_add(&c->timer, &tv);
}

static void disarm(struct conn *c)
{
    if (c->timer_mode != T_NONE)
        event_del(&c->timer);
    c->timer_mode = T_NONE;
}

/* Expire due sessions in this worker's share of the table's shards. */
static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct tether_proxy_worker *w = arg;
    size_t n = tether_session_shards(w->proxy->sessions), k = w->cfg->workers;
    tether_session_expire(w->proxy->sessions, n * (size_t)w->id / k, n * ((size_t)w->id + 1) / k,
                          tether_now_ms());
}

static void maybe_drained(struct tether_proxy_worker *w)
{
    if (w->stopping && w->nconns == 0 && w->drained) {
        void (*done)(void *) = w->drained;
        w->drained = NULL;
        /* The last requests' changes reach the store before the worker ends. */
        if (w->store)
            tether_store_drain(w->store, done, w->drained_arg);
        else
            done(w->drained_arg);
    }
}

/* The request stops counting as in flight on its backend. */
static void request_end(struct conn *c)
{
    affinity_release(c);
    if (c->backend >= 0) {
        atomic_fetch_sub(&c->w->proxy->backends[c->backend].inflight, 1);
        c->backend = -1;
    }
}

static void conn_free(struct conn *c)
{
    struct tether_proxy_worker *w = c->w;
    if (c->handshaking)
        atomic_fetch_add_explicit(&w->proxy->stats[w->id].tls_handshake_failures, 1,
                                  memory_order_relaxed);
    if (c->up)
        upstream_release(c->up, false);
    request_end(c);
    affinity_cancel(c);
    disarm(c);
    if (c->bev)
        tether_stream_free(c->bev);
    else
        close(c->fd);
    TAILQ_REMOVE(&w->conns, c, link);
    w->nconns--;
    atomic_fetch_sub(&w->proxy->connections, 1);
    free(c->head);
    if (c->held)
        evbuffer_free(c->held);
    free(c);
    maybe_drained(w);
}

/*
 * The exchange cannot go on (a cut response, a body past its limit after
 * the response started): send what is already queued, then close without
 * reading more, so the client sees the response end where it broke.
 */
void conn_abort(struct conn *c)
{
    if (c->up)
        upstream_release(c->up, false);
    request_end(c);
    if (tether_stream_output_pending(c->bev) == 0) {
        conn_free(c);
        return;
    }
    c->state = C_LINGER;
    c->aborting = true;
    tether_stream_disable(c->bev, EV_READ);
    disarm(c);
    arm(c, T_LINGER);
}

/*
 * Output flushed: stop sending, keep reading (and discarding) for a while,
 * so that bytes still coming cannot make the close a reset that destroys
 * the response before the client reads it. After a whole exchange with
 * nothing more received, the close is immediate (its FIN follows the
 * response; on TLS a close_notify goes first).
 */
static void linger_start(struct conn *c)
{
    if (c->done_reading && tether_stream_input_idle(c->bev)) {
        conn_free(c);
        return;
    }
    tether_stream_shutdown_write(c->bev);
    evbuffer_drain(tether_stream_get_input(c->bev), (size_t)-1);
    tether_stream_setwatermark(c->bev, EV_READ, 0, 0);
    tether_stream_enable(c->bev, EV_READ);
    disarm(c);
    arm(c, T_LINGER);
}

/* Close once everything queued for the client is written. */
static void close_gracefully(struct conn *c)
{
    if (c->up)
        upstream_release(c->up, false);
    request_end(c);
    c->state = C_LINGER;
    disarm(c);
    tether_stream_disable(c->bev, EV_READ);
    if (tether_stream_output_pending(c->bev) == 0)
        linger_start(c);
    else
        tether_stream_close_notify_after_output(c->bev);
}

void conn_error(struct conn *c, int status, const char *what)
{
    if (c->resp_started) {
        /* Part of a response is out: the only honest signal left is the close. */
        conn_abort(c);
        return;
    }
    if (c->up)
        upstream_release(c->up, false);
    c->status = status;
    char buf[512], hsts[TETHER_PROXY_HSTS_MAX];
    hsts[rewrite_hsts(c, hsts)] = '\0';
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "%s%sConnection: close\r\n\r\n%s\n",
                     status, tether_http_reason(status), strlen(what) + 1,
                     status == 503 ? "Retry-After: 1\r\n" : "", hsts, what);
    evbuffer_add(tether_stream_get_output(c->bev), buf, (size_t)n);
    c->bytes_out += (uint64_t)n;
    c->resp_started = true;
    if (c->t_start == 0)
        c->t_start = tether_now_us();
    accesslog_write(c);
    close_gracefully(c);
}

/*
 * A connect failed: try again if allowed, on the request's backend while it
 * is up, else where its session moved (or, without a session, on another).
 */
void conn_retry_elsewhere(struct conn *c, int status, const char *what, bool retryable)
{
    struct tether_proxy *p = c->w->proxy;
    if (c->backend >= 0 && !tether_backend_serves(&p->backends[c->backend]) &&
        c->moves < p->nbackends) {
        /* Following a move is not a retry: the session has a new home. */
        int old = c->backend;
        if (affinity_reroute(c) < 0) {
            conn_error(c, 503, "no backend available");
            return;
        }
        atomic_fetch_sub(&p->backends[old].inflight, 1);
        atomic_fetch_add(&p->backends[c->backend].inflight, 1);
        c->moves++;
        c->attempts = 0;
        retryable = true;
    }
    conn_upstream_failed(c, status, what, retryable);
}

void conn_upstream_failed(struct conn *c, int status, const char *what, bool retryable)
{
    if (retryable && upstream_attach(c) == 0)
        return;
    conn_error(c, status, what);
}

/* Give the connection its stream and start reading requests. Returns 0, or
   -1 after freeing c. */
static int conn_start(struct conn *c, SSL *ssl)
{
    struct tether_proxy_worker *w = c->w;
    /* An unclean TLS close ends the stream like a FIN: the HTTP framing tells
       a cut body from a complete one. */
    c->bev =
        ssl ? tether_stream_new_tls(w->loop, c->fd, ssl, 1) : tether_stream_new(w->loop, c->fd);
    if (!c->bev) {
        SSL_free(ssl);
        conn_free(c);
        return -1;
    }
    c->fd = -1;
    c->ssl = ssl;
    c->handshaking = ssl != NULL;
    tether_stream_setcb(c->bev, on_read, on_write, on_event, c);
    /* The input holds at most one head plus some of what follows it. */
    tether_stream_setwatermark(c->bev, EV_READ, 0, w->cfg->limits.max_header_bytes + 65536);
    tether_stream_setwatermark(c->bev, EV_WRITE, TETHER_PROXY_HIGH_WATER / 4, 0);
    struct timeval wt = tether_timeval_ms(w->cfg->timeouts.client_idle_ms);
    tether_stream_set_timeouts(c->bev, NULL, &wt);
    tether_stream_enable(c->bev, EV_READ);
    arm(c, ssl ? T_HANDSHAKE : T_HEADER);
    return 0;
}

/*
 * First byte on a TLS listener: a TLS record starts with 22 (handshake,
 * RFC 8446 5.1) and no HTTP request does, so plain HTTP gets a plain 400
 * instead of a TLS alert it cannot read.
 */
static void on_peek(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct tether_proxy_worker *w = c->w;
    unsigned char first;
    ssize_t n = (what & EV_TIMEOUT) ? 0 : recv(fd, &first, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        arm(c, T_PEEK);
        return;
    }
    c->timer_mode = T_NONE;
    if (n <= 0) {
        conn_free(c);
        return;
    }
    event_assign(&c->timer, w->base, -1, 0, conn_on_timer, c);
    if (first == 22) {
        SSL *ssl = tether_tls_server_ssl(c->tls_srv);
        if (!ssl) {
            conn_free(c);
            return;
        }
        conn_start(c, ssl);
        return;
    }
    /* Never over plain HTTP (RFC 6797 7.2). */
    c->hsts_s = 0;
    if (conn_start(c, NULL) == 0)
        conn_error(c, 400, "plain HTTP sent to a TLS port");
}

void tether_proxy_accept(struct tether_proxy_worker *w, int fd, const struct sockaddr *sa,
                         socklen_t salen, size_t listen)
{
    struct tether_proxy *p = w->proxy;
    if (w->stopping || atomic_fetch_add(&p->connections, 1) >= w->cfg->limits.max_connections) {
        if (!w->stopping)
            atomic_fetch_sub(&p->connections, 1);
        close(fd);
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        atomic_fetch_sub(&p->connections, 1);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof(c->peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer,
                  sizeof(c->peer));
    else
        strcpy(c->peer, "unix");
    (void)salen;
    c->w = w;
    c->fd = fd;
    c->tls = w->cfg->listens[listen].tls != NULL;
    if (c->tls) {
        /* Taken now: a reload may renumber listeners and replace contexts
           (an old one lives longer than any handshake that uses it). */
        c->handshake_ms = w->cfg->listens[listen].tls->handshake_timeout_ms;
        c->hsts_s = (w->cfg->listens[listen].tls->hsts_ms + 999) / 1000;
        c->hsts_subdomains = w->cfg->listens[listen].tls->hsts_subdomains;
        c->tls_srv = w->tls[listen];
    }
    c->backend = -1;
    c->state = C_HEAD;
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->nconns++;
    if (c->tls) {
        /* A client sends its ClientHello with the connect's last ACK: it is
           usually there already, and waiting for readability would cost a
           loop turn and two epoll changes. */
        event_assign(&c->timer, w->base, fd, EV_READ, on_peek, c);
        on_peek(fd, EV_READ, c);
        return;
    }
    event_assign(&c->timer, w->base, -1, 0, conn_on_timer, c);
    conn_start(c, NULL);
}

void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    enum conn_timer mode = c->timer_mode;
    c->timer_mode = T_NONE;
    switch (mode) {
    case T_HEADER:
        if (c->state == C_HEAD) {
            conn_error(c, 408, "request head not received in time");
            return;
        }
        break;
    case T_IDLE:
        if (tether_stream_output_pending(c->bev) > 0) {
            /* Still writing the last response: the write timeout guards that. */
            arm(c, T_IDLE);
            return;
        }
        conn_free(c);
        return;
    case T_LINGER:
    case T_HANDSHAKE: /* silent clients cost nothing past handshake_timeout */
        conn_free(c);
        return;
    case T_TUNNEL: {
        uint64_t idle = c->w->cfg->timeouts.backend_idle_ms, now = tether_now_ms();
        if (c->state == C_TUNNEL && c->last_io_ms + idle > now) {
            struct timeval tv = tether_timeval_ms(c->last_io_ms + idle - now);
            c->timer_mode = T_TUNNEL;
            event_add(&c->timer, &tv);
            return;
        }
        if (c->state == C_TUNNEL) {
            conn_abort(c);
            return;
        }
        break;
    }
    case T_PEEK:
    case T_NONE:
        break;
    }
}

static bool is_idempotent(const char *m, size_t n)
{
    static const char *const ok[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (n == strlen(ok[i]) && memcmp(m, ok[i], n) == 0)
            return true;
    return false;
}

/* Every Transfer-Encoding element is "chunked" (the parser made sure it is final and single). */
static bool only_chunked(const struct tether_http_request *req)
{
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct tether_http_header *h = &req->headers[i];
        if (!tether_strieq(h->name, h->name_len, "transfer-encoding", 17))
            continue;
        const char *p = h->value, *end = p + h->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *t = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if (p > t && !tether_strieq(t, (size_t)(p - t), "chunked", 7))
                return false;
        }
    }
    return true;
}

static void start_request(struct conn *c, const struct tether_http_request *req, size_t head_len)
{
    struct tether_proxy_worker *w = c->w;
    const struct tether_config *cfg = w->cfg;
    struct evbuffer *in = tether_stream_get_input(c->bev);

    disarm(c);
    c->state = C_ACTIVE;
    if (!c->claimed) /* a request back from a claim keeps its start */
        c->t_start = tether_now_us();
    c->t_upstream = c->t_first_byte = 0;
    c->status = 0;
    c->bytes_out = 0;
    c->resp_started = c->resp_done = c->close_after = false;
    c->attempts = 0;
    c->retried_reuse = false;
    c->moves = 0;
    c->interim = 0;
    c->hold_body = false;
    if (c->held)
        evbuffer_drain(c->held, evbuffer_get_length(c->held));
    size_t ml = req->method_len < sizeof(c->method) - 1 ? req->method_len : sizeof(c->method) - 1;
    memcpy(c->method, req->method, ml);
    c->method[ml] = '\0';
    c->path_len = req->target_len < sizeof(c->path) ? req->target_len : sizeof(c->path);
    memcpy(c->path, req->target, c->path_len);
    c->minor = req->minor_version;
    c->head_method = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    c->idempotent = is_idempotent(req->method, req->method_len);
    if (c->minor == 1)
        c->keepalive = !(req->flags & TETHER_HTTP_F_CONN_CLOSE);
    else
        c->keepalive =
            (req->flags & TETHER_HTTP_F_CONN_KEEPALIVE) && !(req->flags & TETHER_HTTP_F_CONN_CLOSE);
    if (w->stopping)
        c->keepalive = false;
    c->upgrade = c->minor == 1 && (req->flags & TETHER_HTTP_F_UPGRADE) &&
                 (req->flags & TETHER_HTTP_F_CONN_UPGRADE);

    if (req->method_len == 7 && memcmp(req->method, "CONNECT", 7) == 0) {
        conn_error(c, 501, "CONNECT is not supported");
        return;
    }
    if (req->body == TETHER_HTTP_BODY_CHUNKED && !only_chunked(req)) {
        /* Forwarded as written, a coding tether does not decode could read
           differently at the backend; nginx refuses them the same way. */
        conn_error(c, 501, "transfer coding other than chunked is not supported");
        return;
    }
    if (req->body == TETHER_HTTP_BODY_LENGTH && req->content_length > cfg->limits.max_body_bytes) {
        conn_error(c, 413, "request body larger than the limit");
        return;
    }
    const char *why = NULL;
    int b = affinity_route(c, req, &why);
    if (b == AFFINITY_WAIT)
        return; /* the head stays in the input until conn_resume_request() */
    if (b < 0) {
        conn_error(c, -b, why);
        return;
    }
    c->backend = b;
    atomic_fetch_add(&w->proxy->backends[b].inflight, 1);
    if (rewrite_request(c, req) < 0) {
        conn_error(c, 500, "out of memory");
        return;
    }
    evbuffer_drain(in, head_len);
    c->head_scanned = 0;

    c->req_body = req->body;
    c->req_left = req->content_length;
    tether_http_chunked_init(&c->req_chunk);
    c->req_done = req->body == TETHER_HTTP_BODY_NONE;
    c->hold_body =
        c->idempotent && !c->req_done && cfg->retry_body_bytes > 0 &&
        (req->body == TETHER_HTTP_BODY_CHUNKED || req->content_length <= cfg->retry_body_bytes);
    if (upstream_attach(c) < 0)
        conn_error(c, 502, "backend connection failed");
}

/* The claim a request waited for has ended: route it again, from its head. */
void conn_resume_request(struct conn *c)
{
    if (c->state == C_ACTIVE && !c->up)
        parse_next(c);
}

static void parse_next(struct conn *c)
{
    struct evbuffer *in = tether_stream_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return;
    size_t max = c->w->cfg->limits.max_header_bytes;
    /* A head dripped in small pieces is parsed again only once a line has
       ended (a parse checks whole lines): not once per byte. */
    if (c->head_scanned > 0 && c->head_scanned < len && len < max) {
        struct evbuffer_ptr from;
        evbuffer_ptr_set(in, &from, c->head_scanned, EVBUFFER_PTR_SET);
        struct evbuffer_ptr nl = evbuffer_search(in, "\n", 1, &from);
        if (nl.pos < 0) {
            c->head_scanned = len;
            return;
        }
    }
    c->head_scanned = len;
    size_t n = len < max ? len : max;
    const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
    struct tether_http_header headers[TETHER_HTTP_MAX_HEADERS];
    struct tether_http_request req = {.headers = headers};
    ssize_t r = tether_http_parse_request(buf, n, &req, TETHER_HTTP_MAX_HEADERS);
    if (r == TETHER_HTTP_PARTIAL) {
        if (len >= max)
            conn_error(c, 431, "request head larger than the limit");
        return;
    }
    if (r == TETHER_HTTP_ETOOMANY) {
        conn_error(c, 431, "too many header fields");
        return;
    }
    if (r < 0) {
        conn_error(c, 400, "malformed request");
        return;
    }
    start_request(c, &req, (size_t)r);
}

/*
 * Keep a copy of the next n body bytes while the request could still be
 * replayed (an idempotent method, at most retry_body_bytes in all): a
 * pooled connection the backend closed as we reused it is retried once.
 */
static void hold(struct conn *c, struct evbuffer *in, size_t n)
{
    if (!c->hold_body || n == 0)
        return;
    if (!c->held)
        c->held = evbuffer_new();
    if (!c->held || evbuffer_get_length(c->held) + n > c->w->cfg->retry_body_bytes) {
        c->hold_body = false;
        if (c->held)
            evbuffer_drain(c->held, evbuffer_get_length(c->held));
        return;
    }
    char buf[4096];
    struct evbuffer_ptr at;
    evbuffer_ptr_set(in, &at, 0, EVBUFFER_PTR_SET);
    while (n > 0) {
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        ev_ssize_t got = evbuffer_copyout_from(in, &at, buf, k);
        if (got <= 0)
            break;
        evbuffer_add(c->held, buf, (size_t)got);
        evbuffer_ptr_set(in, &at, (size_t)got, EVBUFFER_PTR_ADD);
        n -= (size_t)got;
    }
}

void conn_forward_request_body(struct conn *c)
{
    if (c->req_done || !c->up)
        return;
    struct evbuffer *in = tether_stream_get_input(c->bev);
    struct evbuffer *out = tether_stream_get_output(c->up->bev);
    if (c->req_body == TETHER_HTTP_BODY_LENGTH) {
        size_t n = evbuffer_get_length(in);
        if (n > c->req_left)
            n = (size_t)c->req_left;
        hold(c, in, n);
        evbuffer_remove_buffer(in, out, n);
        c->req_left -= n;
        c->req_done = c->req_left == 0;
    } else {
        while (!c->req_done && evbuffer_get_length(in) > 0) {
            struct evbuffer_iovec v[16];
            int nv = evbuffer_peek(in, -1, NULL, v, 16);
            if (nv > 16)
                nv = 16;
            size_t take = 0;
            int done = 0;
            for (int i = 0; i < nv && !done; i++) {
                ssize_t r =
                    tether_http_chunked_scan(&c->req_chunk, v[i].iov_base, v[i].iov_len, &done);
                if (r < 0) {
                    conn_error(c, 400, "malformed chunked request body");
                    return;
                }
                take += (size_t)r;
            }
            if (c->req_chunk.body_bytes > c->w->cfg->limits.max_body_bytes) {
                conn_error(c, 413, "request body larger than the limit");
                return;
            }
            hold(c, in, take);
            evbuffer_remove_buffer(in, out, take);
            c->req_done = done;
        }
    }
    if (c->req_done) {
        struct timeval rt = tether_timeval_ms(c->w->cfg->timeouts.backend_response_ms),
                       wt = tether_timeval_ms(c->w->cfg->timeouts.backend_idle_ms);
        if (c->up->state == U_HEAD)
            tether_stream_set_timeouts(c->up->bev, &rt, &wt);
        if (c->read_eof)
            c->close_after = true;
    } else if (c->read_eof && evbuffer_get_length(in) == 0) {
        /* The client closed before its body was complete. */
        conn_abort(c);
        return;
    }
    /* Backpressure: stop reading the client while the backend is behind. */
    if (!c->req_done && evbuffer_get_length(out) > TETHER_PROXY_HIGH_WATER)
        tether_stream_disable(c->bev, EV_READ);
}

void conn_start_tunnel(struct conn *c)
{
    c->state = C_TUNNEL;
    c->req_done = true;
    /* One inactivity timer for both directions (bytes either way keep a
       tunnel alive); only a stuck write is bounded per side. */
    struct timeval tv = tether_timeval_ms(c->w->cfg->timeouts.backend_idle_ms);
    tether_stream_set_timeouts(c->bev, NULL, &tv);
    c->last_io_ms = tether_now_ms();
    disarm(c);
    arm(c, T_TUNNEL);
    tether_stream_setwatermark(c->bev, EV_READ, 0, TETHER_PROXY_HIGH_WATER);
    tether_stream_enable(c->bev, EV_READ);
    on_read(c->bev, c);
}

void conn_response_done(struct conn *c)
{
    c->resp_done = true;
    accesslog_write(c);
    request_end(c);
    if (!c->req_done || c->close_after || !c->keepalive ||
        (c->read_eof && evbuffer_get_length(tether_stream_get_input(c->bev)) == 0)) {
        /* A tunnel's client may be sending still: it always lingers. */
        c->done_reading = c->req_done && c->status != 101;
        close_gracefully(c);
        return;
    }
    c->state = C_HEAD;
    c->resp_started = c->resp_done = false;
    c->t_start = 0;
    c->method[0] = '\0';
    c->path_len = 0;
    c->has_key = false;
    tether_stream_enable(c->bev, EV_READ);
    if (evbuffer_get_length(tether_stream_get_input(c->bev)) > 0) {
        arm(c, T_HEADER);
        parse_next(c);
    } else {
        arm(c, T_IDLE);
    }
}

/*
 * What follows a complete request is the next requests (pipelining): read
 * no further once max_pipelined heads wait behind the one in progress.
 * Reading resumes when the response is done. A body in the queue may hold
 * a blank line and count as a head: that only stops reading sooner.
 */
static void limit_pipeline(struct conn *c)
{
    struct evbuffer *in = tether_stream_get_input(c->bev);
    uint32_t max = c->w->cfg->limits.max_pipelined, n = 0;
    struct evbuffer_ptr at = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    while (at.pos >= 0 && n < max) {
        n++;
        if (evbuffer_ptr_set(in, &at, 4, EVBUFFER_PTR_ADD) < 0)
            break;
        at = evbuffer_search(in, "\r\n\r\n", 4, &at);
    }
    if (n >= max)
        tether_stream_disable(c->bev, EV_READ);
}

static void on_read(struct tether_stream *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = tether_stream_get_input(bev);
    switch (c->state) {
    case C_HEAD:
        if (c->timer_mode == T_IDLE) {
            disarm(c);
            arm(c, T_HEADER);
        }
        parse_next(c);
        break;
    case C_ACTIVE:
        if (c->up && c->up->state != U_CONNECTING)
            conn_forward_request_body(c);
        if (c->state == C_ACTIVE && c->req_done)
            limit_pipeline(c);
        break;
    case C_TUNNEL:
        c->last_io_ms = tether_now_ms();
        if (c->up) {
            struct evbuffer *out = tether_stream_get_output(c->up->bev);
            evbuffer_add_buffer(out, in);
            if (evbuffer_get_length(out) > TETHER_PROXY_HIGH_WATER)
                tether_stream_disable(bev, EV_READ);
        }
        break;
    case C_LINGER:
        evbuffer_drain(in, evbuffer_get_length(in));
        break;
    }
}

static void on_write(struct tether_stream *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state == C_LINGER) {
        if (tether_stream_output_pending(bev) > 0)
            return;
        if (c->aborting)
            conn_free(c);
        else if (c->timer_mode != T_LINGER)
            linger_start(c);
        return;
    }
    if (c->up)
        upstream_resume(c->up);
}

static void on_event(struct tether_stream *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        struct tether_proxy_stats *st = &c->w->proxy->stats[c->w->id];
        if (c->handshaking) {
            c->handshaking = false;
            atomic_fetch_add_explicit(&st->tls_handshakes, 1, memory_order_relaxed);
            if (SSL_session_reused(c->ssl))
                atomic_fetch_add_explicit(&st->tls_resumed, 1, memory_order_relaxed);
        }
        /* TLS handshake done: now the request head has client_header. */
        if (c->timer_mode == T_HANDSHAKE) {
            disarm(c);
            arm(c, T_HEADER);
        }
        return;
    }
    if (c->state == C_LINGER) {
        conn_free(c);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
        /* A half-close after a request still gets its response (and the
           body still buffered goes on); what is queued still goes out. */
        if (c->state == C_ACTIVE) {
            c->read_eof = true;
            if (!c->req_done && c->up && c->up->state != U_CONNECTING)
                conn_forward_request_body(c);
            return;
        }
        if (c->state == C_HEAD && tether_stream_output_pending(bev) > 0) {
            close_gracefully(c);
            return;
        }
        if (c->state == C_TUNNEL && c->up) {
            upstream_tunnel_client_closed(c->up);
            return;
        }
    }
    conn_free(c);
}

struct tether_proxy_worker *tether_proxy_worker_new(struct tether_proxy *proxy,
                                                    struct event_base *base, int id)
{
    struct tether_proxy_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->proxy = proxy;
    tether_proxy_worker_reload(w);
    w->base = base;
    w->id = id;
    w->loop = tether_stream_loop_new(base);
    TAILQ_INIT(&w->conns);
    w->pools = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*w->pools));
    w->scratch_inflight = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*w->scratch_inflight));
    w->scratch_up = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*w->scratch_up));
    w->placer = tether_placer_new(proxy);
    w->sweep = event_new(base, -1, EV_PERSIST, on_sweep, w);
    if (proxy->store)
        w->store = tether_store_worker_new(proxy->store, base, id);
    struct timeval second = {1, 0};
    if (!w->loop || !w->pools || !w->scratch_inflight || !w->scratch_up || !w->placer ||
        !w->sweep || (proxy->store && !w->store) || event_add(w->sweep, &second) < 0) {
        tether_proxy_worker_free(w);
        return NULL;
    }
    for (size_t i = 0; i < TETHER_PROXY_MAX_BACKENDS; i++)
        TAILQ_INIT(&w->pools[i].idle);
    return w;
}

void tether_proxy_worker_reload(struct tether_proxy_worker *w)
{
    /* The config and its listeners' contexts as one: listener numbers index both. */
    pthread_mutex_lock(&w->proxy->lock);
    w->cfg = atomic_load(&w->proxy->cfg);
    w->tls = atomic_load(&w->proxy->tls);
    pthread_mutex_unlock(&w->proxy->lock);
}

void tether_proxy_worker_free(struct tether_proxy_worker *w)
{
    if (!w)
        return;
    w->drained = NULL;
    while (!TAILQ_EMPTY(&w->conns))
        conn_free(TAILQ_FIRST(&w->conns));
    if (w->pools)
        upstream_pool_free(w);
    free(w->pools);
    free(w->scratch_inflight);
    free(w->scratch_up);
    tether_store_worker_free(w->store);
    tether_placer_free(w->placer);
    if (w->sweep)
        event_free(w->sweep);
    tether_stream_loop_free(w->loop);
    free(w);
}

void tether_proxy_worker_stop(struct tether_proxy_worker *w, void (*done)(void *), void *arg)
{
    w->stopping = true;
    if (w->sweep)
        event_del(w->sweep);
    w->drained = done;
    w->drained_arg = arg;
    upstream_pool_free(w);
    struct conn *c = TAILQ_FIRST(&w->conns);
    while (c) {
        struct conn *next = TAILQ_NEXT(c, link);
        /* Between requests: closed now, or once its last response is out. */
        bool idle = c->bev && c->state == C_HEAD &&
                    evbuffer_get_length(tether_stream_get_input(c->bev)) == 0;
        if (!c->bev || (idle && tether_stream_output_pending(c->bev) == 0))
            conn_free(c);
        else if (idle)
            close_gracefully(c);
        else
            c->keepalive = false;
        c = next;
    }
    maybe_drained(w);
}
