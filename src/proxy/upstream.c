/*
 * The backend side of the data path: connections to backends, a pool of
 * idle keep-alive connections per backend and worker, and the relay of a
 * response (1xx, head, body, or a tunnel after 101) to the client.
 * A connection goes back to the pool only when the response ended on its
 * own framing and the whole request was sent.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h> /* BEV_EVENT_* */

#include "tether/health.h"
#include "tether/net.h"
#include "tether/util.h"
#include "proxy-int.h"

/* Most connects one request makes to a backend that refuses them. */
#define MAX_REFUSED 16

static void on_read(struct tether_stream *bev, void *arg);
static void on_write(struct tether_stream *bev, void *arg);
static void on_event(struct tether_stream *bev, short what, void *arg);

static void upstream_free(struct upstream *u)
{
    if (u->c)
        u->c->up = NULL;
    tether_stream_free(u->bev);
    free(u);
}

static void pool_remove(struct upstream *u)
{
    struct pool *pl = &u->w->pools[u->backend];
    TAILQ_REMOVE(&pl->idle, u, link);
    pl->nidle--;
    upstream_free(u);
}

/* A pooled connection must stay silent; anything it says ends it. */
static void on_pool_read(struct tether_stream *bev, void *arg)
{
    pool_remove(arg);
}

static void on_pool_event(struct tether_stream *bev, short what, void *arg)
{
    pool_remove(arg);
}

/*
 * Nothing more may come from a connection going back to the pool: bytes
 * past the response (a HEAD answered with a body, say) would be taken for
 * the answer to the next request sent on it.
 */
static bool quiet(struct upstream *u)
{
    char b;
    if (u->ssl && SSL_pending(u->ssl) > 0)
        return false;
    ssize_t n = recv(tether_stream_getfd(u->bev), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void upstream_release(struct upstream *u, bool reusable)
{
    struct tether_proxy_worker *w = u->w;
    struct pool *pl = &w->pools[u->backend];
    if (u->c)
        u->c->up = NULL;
    u->c = NULL;
    if (!reusable || w->stopping || pl->nidle >= TETHER_PROXY_POOL_MAX ||
        u->gen != atomic_load_explicit(&w->proxy->backends[u->backend].gen, memory_order_relaxed) ||
        evbuffer_get_length(tether_stream_get_input(u->bev)) > 0 || !quiet(u)) {
        upstream_free(u);
        return;
    }
    u->state = U_IDLE;
    tether_stream_setcb(u->bev, on_pool_read, NULL, on_pool_event, u);
    struct timeval tv = tether_timeval_ms(TETHER_PROXY_POOL_IDLE_MS);
    tether_stream_set_timeouts(u->bev, &tv, NULL);
    tether_stream_setwatermark(u->bev, EV_READ, 0, 0);
    tether_stream_enable(u->bev, EV_READ);
    /* Most recently used first: the warmest connection is reused next. */
    TAILQ_INSERT_HEAD(&pl->idle, u, link);
    pl->nidle++;
}

void upstream_pool_free(struct tether_proxy_worker *w)
{
    for (size_t i = 0; i < TETHER_PROXY_MAX_BACKENDS; i++)
        while (!TAILQ_EMPTY(&w->pools[i].idle))
            pool_remove(TAILQ_FIRST(&w->pools[i].idle));
}

void upstream_start_request(struct upstream *u)
{
    struct conn *c = u->c;
    const struct tether_config_timeouts *t = &u->w->cfg->timeouts;
    u->state = U_HEAD;
    u->got_bytes = false;
    tether_stream_setcb(u->bev, on_read, on_write, on_event, u);
    /* The wait for the head starts when the request is sent; while the body
       still streams, only silence counts (backend_idle). */
    struct timeval rt = tether_timeval_ms(t->backend_response_ms), wt = tether_timeval_ms(t->backend_idle_ms);
    tether_stream_set_timeouts(u->bev, c->req_done ? &rt : &wt, &wt);
    tether_stream_setwatermark(u->bev, EV_READ, 0, 0);
    tether_stream_setwatermark(u->bev, EV_WRITE, TETHER_PROXY_HIGH_WATER / 4, 0);
    struct evbuffer *out = tether_stream_get_output(u->bev);
    evbuffer_add(out, c->head, c->head_len);
    affinity_write_headers(c, out);
    /* A replay after a reused connection died: the body sent so far first. */
    if (c->held && evbuffer_get_length(c->held) > 0)
        evbuffer_add_buffer(out, c->held);
    tether_stream_enable(u->bev, EV_READ | EV_WRITE);
    c->t_upstream = tether_now_us();
    atomic_fetch_add(&u->w->proxy->backends[u->backend].requests, 1);
    conn_forward_request_body(c);
}

int upstream_attach(struct conn *c)
{
    struct tether_proxy_worker *w = c->w;
    struct pool *pl = &w->pools[c->backend];
    const struct tether_backend *be = &w->proxy->backends[c->backend];
    uint32_t gen = atomic_load_explicit(&be->gen, memory_order_relaxed);
    struct upstream *u = c->retried_reuse ? NULL : TAILQ_FIRST(&pl->idle);
    /* A connection to what the slot held before (a removed backend) is no use. */
    while (u && u->gen != gen) {
        pool_remove(u);
        u = TAILQ_FIRST(&pl->idle);
    }
    if (u) {
        atomic_fetch_add_explicit(&w->proxy->stats[w->id].upstream_reused, 1,
                                  memory_order_relaxed);
        TAILQ_REMOVE(&pl->idle, u, link);
        pl->nidle--;
        u->c = c;
        u->reused = true;
        c->up = u;
        upstream_start_request(u);
        return 0;
    }
    c->attempts++;
    u = calloc(1, sizeof(*u));
    if (!u)
        return -1;
    u->w = w;
    u->backend = c->backend;
    u->gen = gen;
    atomic_fetch_add_explicit(&w->proxy->stats[w->id].upstream_connects, 1, memory_order_relaxed);
    struct tether_tls_client *tls =
        __atomic_load_n(&w->proxy->tls_backends[c->backend], __ATOMIC_ACQUIRE);
    if (tls) {
        u->ssl = tether_tls_client_ssl(tls);
        u->bev = u->ssl ? tether_stream_new_tls(w->loop, -1, u->ssl, 0) : NULL;
        if (!u->bev)
            SSL_free(u->ssl);
    } else {
        u->bev = tether_stream_new(w->loop, -1);
    }
    if (!u->bev) {
        free(u);
        return -1;
    }
    u->c = c;
    c->up = u;
    u->state = U_CONNECTING;
    tether_stream_setcb(u->bev, on_read, on_write, on_event, u);
    struct timeval ct = tether_timeval_ms(w->cfg->timeouts.backend_connect_ms);
    tether_stream_set_timeouts(u->bev, NULL, &ct);
    if (tether_stream_connect(u->bev, (struct sockaddr *)&be->addr, be->addrlen) < 0) {
        upstream_free(u);
        return -1;
    }
    return 0;
}

/* The response is complete: give the connection back and move the client on. */
static void response_complete(struct upstream *u)
{
    struct conn *c = u->c;
    upstream_release(u, u->keepalive && c->req_done);
    conn_response_done(c);
}

static void relay_body(struct upstream *u)
{
    struct conn *c = u->c;
    struct evbuffer *in = tether_stream_get_input(u->bev);
    struct evbuffer *out = tether_stream_get_output(c->bev);
    size_t before = evbuffer_get_length(out);
    int done = 0;

    switch (u->body) {
    case TETHER_HTTP_BODY_NONE:
        done = 1;
        break;
    case TETHER_HTTP_BODY_LENGTH: {
        size_t n = evbuffer_get_length(in);
        if (n > u->left)
            n = (size_t)u->left;
        evbuffer_remove_buffer(in, out, n);
        u->left -= n;
        done = u->left == 0;
        break;
    }
    case TETHER_HTTP_BODY_CHUNKED:
        while (!done && evbuffer_get_length(in) > 0) {
            struct evbuffer_iovec v[16];
            int nv = evbuffer_peek(in, -1, NULL, v, 16);
            if (nv > 16)
                nv = 16;
            size_t take = 0;
            for (int i = 0; i < nv && !done; i++) {
                ssize_t r = tether_http_chunked_scan(&u->chunk, v[i].iov_base, v[i].iov_len, &done);
                if (r < 0) {
                    tether_log_warn("backend %s: malformed chunked response body",
                                    u->w->proxy->backends[u->backend].name);
                    conn_abort(c);
                    return;
                }
                take += (size_t)r;
            }
            evbuffer_remove_buffer(in, out, take);
        }
        break;
    case TETHER_HTTP_BODY_EOF: {
        size_t len = evbuffer_get_length(in);
        if (u->rechunk && len > 0) {
            evbuffer_add_printf(out, "%zx\r\n", len);
            evbuffer_add_buffer(out, in);
            evbuffer_add(out, "\r\n", 2);
        } else {
            evbuffer_add_buffer(out, in);
        }
        break;
    }
    }
    c->bytes_out += evbuffer_get_length(out) - before;
    if (done) {
        response_complete(u);
        return;
    }
    if (evbuffer_get_length(out) > TETHER_PROXY_HIGH_WATER)
        tether_stream_disable(u->bev, EV_READ);
}

/* A body with transfer codings but no final chunked (RFC 9112 6.3): keep it as it is. */
static bool has_transfer_encoding(const struct tether_http_response *res)
{
    for (size_t i = 0; i < res->num_headers; i++)
        if (tether_strieq(res->headers[i].name, res->headers[i].name_len, "transfer-encoding", 17))
            return true;
    return false;
}

static void start_tunnel(struct upstream *u)
{
    struct conn *c = u->c;
    u->state = U_TUNNEL;
    struct timeval tv = tether_timeval_ms(u->w->cfg->timeouts.backend_idle_ms);
    tether_stream_set_timeouts(u->bev, NULL, &tv);
    tether_stream_setwatermark(u->bev, EV_WRITE, TETHER_PROXY_HIGH_WATER / 4, 0);
    evbuffer_add_buffer(tether_stream_get_output(c->bev), tether_stream_get_input(u->bev));
    conn_start_tunnel(c);
}

/* Parse response heads: any number of 1xx, then the final one. */
static void read_head(struct upstream *u)
{
    struct conn *c = u->c;
    struct evbuffer *in = tether_stream_get_input(u->bev);
    struct evbuffer *out = tether_stream_get_output(c->bev);

    while (evbuffer_get_length(in) > 0) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < TETHER_PROXY_MAX_RESPONSE_HEAD ? len : TETHER_PROXY_MAX_RESPONSE_HEAD;
        const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
        struct tether_http_header headers[TETHER_HTTP_MAX_HEADERS];
        struct tether_http_response res = {.headers = headers};
        ssize_t r = tether_http_parse_response(buf, n, &res, TETHER_HTTP_MAX_HEADERS);
        if (r == TETHER_HTTP_PARTIAL && len < TETHER_PROXY_MAX_RESPONSE_HEAD)
            return;
        if (r < 0) {
            tether_log_warn("backend %s: invalid response head",
                            u->w->proxy->backends[u->backend].name);
            upstream_release(u, false);
            conn_error(c, 502, "invalid response from the backend");
            return;
        }
        if (res.status < 200) {
            if (res.status == 101) {
                if (!c->upgrade) {
                    upstream_release(u, false);
                    conn_error(c, 502, "unexpected 101 from the backend");
                    return;
                }
                c->status = 101;
                c->t_first_byte = tether_now_us();
                rewrite_response(c, u, &res, out);
                evbuffer_drain(in, (size_t)r);
                c->resp_started = true;
                start_tunnel(u);
                return;
            }
            if (++c->interim > TETHER_PROXY_MAX_INTERIM) {
                upstream_release(u, false);
                conn_error(c, 502, "too many interim responses from the backend");
                return;
            }
            /* Interim responses go to HTTP/1.1 clients only (RFC 9110 15.2). */
            if (c->minor == 1) {
                rewrite_response(c, u, &res, out);
                c->resp_started = true;
            }
            evbuffer_drain(in, (size_t)r);
            continue;
        }

        c->status = res.status;
        c->t_first_byte = tether_now_us();
        if (res.status >= 500 && u->w->cfg->health.passive_5xx)
            tether_health_passive_failure(u->w->proxy, (uint32_t)u->backend, "5xx response");
        else
            tether_health_passive_success(u->w->proxy, (uint32_t)u->backend);
        affinity_on_response(c, u->backend, &res);
        u->body = res.body;
        if (c->head_method || res.status == 204 || res.status == 304)
            u->body = TETHER_HTTP_BODY_NONE;
        u->left = res.content_length;
        tether_http_chunked_init(&u->chunk);
        if (res.minor_version == 1)
            u->keepalive = !(res.flags & TETHER_HTTP_F_CONN_CLOSE);
        else
            u->keepalive = (res.flags & TETHER_HTTP_F_CONN_KEEPALIVE) &&
                           !(res.flags & TETHER_HTTP_F_CONN_CLOSE);
        /* A body that ends with the backend's connection goes to an HTTP/1.1
           client chunked: the client can then tell its end from a cut, and
           keep its connection. Without such framing (HTTP/1.0), or with the
           request still streaming, the response ends the client connection. */
        u->rechunk = u->body == TETHER_HTTP_BODY_EOF && c->minor == 1 &&
                     !has_transfer_encoding(&res);
        if ((u->body == TETHER_HTTP_BODY_EOF && !u->rechunk) || !c->req_done ||
            (c->minor == 0 && u->body == TETHER_HTTP_BODY_CHUNKED))
            c->close_after = true;
        size_t before = evbuffer_get_length(out);
        rewrite_response(c, u, &res, out);
        c->bytes_out += evbuffer_get_length(out) - before;
        evbuffer_drain(in, (size_t)r);
        c->resp_started = true;
        u->state = U_BODY;
        struct timeval rt = tether_timeval_ms(u->w->cfg->timeouts.backend_idle_ms);
        tether_stream_set_timeouts(u->bev, &rt, &rt);
        relay_body(u);
        return;
    }
}

static void on_read(struct tether_stream *bev, void *arg)
{
    struct upstream *u = arg;
    struct conn *c = u->c;
    if (!c)
        return;
    u->got_bytes = true;
    switch (u->state) {
    case U_HEAD:
        read_head(u);
        break;
    case U_BODY:
        relay_body(u);
        break;
    case U_TUNNEL: {
        c->last_io_ms = tether_now_ms();
        struct evbuffer *out = tether_stream_get_output(c->bev);
        evbuffer_add_buffer(out, tether_stream_get_input(bev));
        if (evbuffer_get_length(out) > TETHER_PROXY_HIGH_WATER)
            tether_stream_disable(bev, EV_READ);
        break;
    }
    case U_CONNECTING:
    case U_IDLE:
        break;
    }
}

/* The backend took some of what we queued: read more from the client. */
static void on_write(struct tether_stream *bev, void *arg)
{
    struct upstream *u = arg;
    struct conn *c = u->c;
    if (!c)
        return;
    if (c->state == C_TUNNEL) {
        if (c->close_after && tether_stream_output_pending(bev) == 0) {
            conn_abort(c);
            return;
        }
        tether_stream_enable(c->bev, EV_READ);
        return;
    }
    if (!c->req_done && u->state != U_CONNECTING) {
        tether_stream_enable(c->bev, EV_READ);
        conn_forward_request_body(c);
    }
}

void upstream_resume(struct upstream *u)
{
    if ((u->state == U_BODY || u->state == U_TUNNEL) &&
        !(tether_stream_get_enabled(u->bev) & EV_READ)) {
        tether_stream_enable(u->bev, EV_READ);
        if (evbuffer_get_length(tether_stream_get_input(u->bev)) > 0)
            on_read(u->bev, u);
    }
}

void upstream_tunnel_client_closed(struct upstream *u)
{
    struct conn *c = u->c;
    c->close_after = true;
    evbuffer_add_buffer(tether_stream_get_output(u->bev), tether_stream_get_input(c->bev));
    if (tether_stream_output_pending(u->bev) == 0)
        conn_abort(c);
}

static void on_event(struct tether_stream *bev, short what, void *arg)
{
    struct upstream *u = arg;
    struct conn *c = u->c;
    struct tether_backend *be = &u->w->proxy->backends[u->backend];

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(tether_stream_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        upstream_start_request(u);
        return;
    }
    if (!c) {
        upstream_free(u);
        return;
    }
    switch (u->state) {
    case U_CONNECTING: {
        bool timeout = what & BEV_EVENT_TIMEOUT;
        const char *bad = u->ssl ? tether_tls_verify_error(u->ssl) : NULL;
        if (bad) {
            /* Trying again cannot help, and plaintext is never an option. */
            tether_log_warn("backend %s: TLS certificate verification failed: %s", be->name, bad);
            upstream_free(u);
            conn_error(c, 502, "backend certificate verification failed");
            return;
        }
        int err = EVUTIL_SOCKET_ERROR();
        bool refused = !timeout && (err == ECONNREFUSED || err == ECONNRESET);
        atomic_fetch_add(&be->connect_failures, 1);
        tether_log_debug("backend %s: connect %s", be->name,
                         timeout   ? "timed out"
                         : refused ? "refused"
                                   : "failed");
        upstream_free(u);
        tether_health_passive_failure(c->w->proxy, (uint32_t)c->backend,
                                      timeout   ? "connect timed out"
                                      : refused ? "connect refused"
                                                : "connect failed");
        /*
         * Nothing reached the backend: any method may be tried again, on the
         * same backend while it is up, else where its session moved. A
         * refusal is quick and says nothing listens, so the request keeps
         * trying until the passive verdict (each refusal counts toward it)
         * moves its session: up to retries + passive_failures attempts, and
         * never more than MAX_REFUSED.
         */
        const struct tether_config *cfg = c->w->cfg;
        unsigned verdict = cfg->retries + cfg->health.passive_failures;
        bool again = c->attempts <= cfg->retries ||
                     (refused && c->attempts < (verdict < MAX_REFUSED ? verdict : MAX_REFUSED));
        conn_retry_elsewhere(c, timeout ? 503 : 502,
                             timeout ? "backend connect timed out" : "backend connection failed",
                             again);
        return;
    }
    case U_HEAD:
        if (what & BEV_EVENT_TIMEOUT) {
            upstream_free(u);
            tether_health_passive_failure(c->w->proxy, (uint32_t)c->backend, "response timed out");
            conn_error(c, 504, "backend response timed out");
            return;
        }
        /* A pooled connection the backend closed as we reused it: once, for
           a request that is safe to repeat and that we still hold whole. */
        if (u->reused && !u->got_bytes && c->idempotent &&
            (c->req_body == TETHER_HTTP_BODY_NONE || c->hold_body) && !c->retried_reuse) {
            /* Its pooled siblings may be just as dead: a new connection. */
            c->retried_reuse = true;
            upstream_free(u);
            conn_upstream_failed(c, 502, "backend closed the connection", true);
            return;
        }
        upstream_free(u);
        tether_health_passive_failure(c->w->proxy, (uint32_t)c->backend,
                                      "closed before responding");
        conn_error(c, 502, "backend closed the connection before responding");
        return;
    case U_BODY:
        /* A body that ends with the connection is whole only if the close is
           clean: over TLS, without close_notify it may have been cut. */
        if (!(what & BEV_EVENT_TIMEOUT) && u->body == TETHER_HTTP_BODY_EOF &&
            !tether_stream_unclean_eof(bev)) {
            relay_body(u);
            if (c->up == u) {
                if (u->rechunk)
                    evbuffer_add(tether_stream_get_output(c->bev), "0\r\n\r\n", 5);
                u->keepalive = false;
                response_complete(u);
            }
            return;
        }
        /* Truncated: never let a cut body pass for a complete one. */
        tether_log_debug("backend %s: response cut short (%s)", be->name,
                         (what & BEV_EVENT_TIMEOUT) ? "idle timeout"
                         : tether_stream_unclean_eof(bev) ? "TLS closed without close_notify"
                                                          : "closed");
        conn_abort(c);
        return;
    case U_TUNNEL:
        evbuffer_add_buffer(tether_stream_get_output(c->bev), tether_stream_get_input(bev));
        upstream_free(u);
        c->close_after = true;
        c->state = C_ACTIVE;
        c->req_done = true;
        conn_response_done(c);
        return;
    case U_IDLE:
        return;
    }
}
