/*
 * Active health checks: one thread with its own event_base sends
 * `GET health.path` to every backend each interval, on a fresh connection,
 * and turns rise passes or fall failures in a row into tether_health_set().
 * The data path never waits on it; stop comes in through a pipe.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "tether/health.h"
#include "tether/http.h"
#include "tether/net.h"
#include "tether/proxy.h"
#include "tether/tls.h"
#include "tether/util.h"

/* Largest response head a check reads before calling the answer malformed. */
#define MAX_HEAD (16 * 1024)

enum phase {
    IDLE,       /* no check in flight */
    CONNECTING, /* TCP connect (and TLS handshake) under way */
    WAITING,    /* request queued, reading the response head */
};

struct check {
    struct tether_health *h;
    uint32_t index;          /* in proxy->backends */
    struct event tick;       /* every interval */
    struct event deadline;   /* the check's timeout, from its start */
    struct tether_stream *s; /* the check in flight, or NULL */
    SSL *ssl;                /* borrowed from s: owned by the stream */
    enum phase phase;
    uint32_t passes; /* in a row, since seen_up last changed */
    uint32_t fails;
    int seen_up; /* backend state when the counters were last updated */
    uint32_t gen; /* the slot's generation the counters are about */
    bool active;  /* its tick is scheduled */
};

struct tether_health {
    struct tether_proxy *proxy;             /* borrowed */
    struct event_base *base;
    struct tether_stream_loop *loop;
    int wake[2]; /* pipe: tether_health_stop() writes one byte */
    struct event wake_ev;
    bool wake_added;
    struct check *checks;
    size_t nchecks;
    pthread_t thread;
    bool started;
};

/* The running config's health settings (a reload may change them). */
static inline const struct tether_config_health *hcfg(const struct tether_health *h)
{
    return &atomic_load(&h->proxy->cfg)->health;
}

/* Short words for the causes an operator sees most; strerror for the rest. */
static const char *errtext(int err)
{
    switch (err) {
    case ECONNREFUSED:
        return "refused";
    case ECONNRESET:
        return "reset";
    case ETIMEDOUT:
        return "timed out";
    case EHOSTUNREACH:
        return "host unreachable";
    case ENETUNREACH:
        return "network unreachable";
    case EPROTO:
        return "TLS handshake failed";
    case 0:
        return "failed";
    default:
        return strerror(err);
    }
}

static void close_check(struct check *c)
{
    event_del(&c->deadline);
    tether_stream_free(c->s);
    c->s = NULL;
    c->ssl = NULL;
    c->phase = IDLE;
}

/*
 * The verdict on one check: record it for the admin API, count it, and make
 * the transition once the threshold is reached. A change of state made
 * elsewhere (passive checks, the admin API) restarts both counts, so a
 * transition always rests on rise or fall checks of its own.
 */
static void verdict(struct check *c, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void verdict(struct check *c, bool ok, const char *fmt, ...)
{
    struct tether_health *h = c->h;
    struct tether_backend *be = &h->proxy->backends[c->index];
    char what[160] = "";
    char reason[192];

    /* Formatted first: an argument may point into the connection's state. */
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
    }
    close_check(c);
    if (!atomic_load(&be->present) || atomic_load(&be->gen) != c->gen)
        return; /* about a backend that is gone from this slot */
    pthread_mutex_lock(&be->state_lock);
    be->last_check_ms = tether_wall_ms();
    be->last_check_ok = ok;
    pthread_mutex_unlock(&be->state_lock);

    int up = atomic_load(&be->up) ? 1 : 0;
    if (up != c->seen_up) {
        c->seen_up = up;
        c->passes = c->fails = 0;
    }
    if (ok) {
        atomic_fetch_add_explicit(&be->checks_ok, 1, memory_order_relaxed);
        c->fails = 0;
        if (c->passes < UINT32_MAX)
            c->passes++;
        if (!up && c->passes >= hcfg(h)->rise) {
            snprintf(reason, sizeof(reason), "active: %u checks passed", c->passes);
            tether_health_set(h->proxy, c->index, true, reason);
            c->seen_up = 1;
            c->passes = 0;
        }
        return;
    }
    atomic_fetch_add_explicit(&be->checks_failed, 1, memory_order_relaxed);
    tether_log_debug("backend %s: health check failed: %s", be->name, what);
    c->passes = 0;
    if (c->fails < UINT32_MAX)
        c->fails++;
    if (up && c->fails >= hcfg(h)->fall) {
        snprintf(reason, sizeof(reason), "active: %s", what);
        tether_health_set(h->proxy, c->index, false, reason);
        c->seen_up = 0;
        c->fails = 0;
    }
}

/* Parse what arrived; a verdict as soon as the final response head is whole. */
static void on_read(struct tether_stream *s, void *arg)
{
    struct check *c = arg;
    const char *path = hcfg(c->h)->path;
    struct evbuffer *in = tether_stream_get_input(s);

    for (size_t len; (len = evbuffer_get_length(in)) > 0;) {
        size_t n = len < MAX_HEAD ? len : MAX_HEAD;
        const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
        struct tether_http_header headers[TETHER_HTTP_MAX_HEADERS];
        struct tether_http_response res = {.headers = headers};
        ssize_t r = tether_http_parse_response(buf, n, &res, TETHER_HTTP_MAX_HEADERS);

        if (r == TETHER_HTTP_PARTIAL && len < MAX_HEAD)
            return;
        if (r == TETHER_HTTP_PARTIAL) {
            verdict(c, false, "GET %s: response head over %d bytes", path, MAX_HEAD);
            return;
        }
        if (r < 0) {
            verdict(c, false, "GET %s: %s", path,
                    r == TETHER_HTTP_ETOOMANY ? "too many header fields" : "invalid response head");
            return;
        }
        /* Interim responses precede the final one (RFC 9110 15.2); 101 is final. */
        if (res.status < 200 && res.status != 101) {
            evbuffer_drain(in, (size_t)r);
            continue;
        }
        if (res.status < 300)
            verdict(c, true, NULL);
        else
            verdict(c, false, "GET %s: %d", path, res.status);
        return;
    }
}

static void on_event(struct tether_stream *s, short what, void *arg)
{
    struct check *c = arg;
    struct tether_health *h = c->h;
    int err = errno;

    if (what & BEV_EVENT_CONNECTED) {
        const char *addr = h->proxy->backends[c->index].address;
        c->phase = WAITING;
        evbuffer_add_printf(tether_stream_get_output(s),
                            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tether-health\r\n"
                            "Connection: close\r\n\r\n",
                            hcfg(h)->path, addr);
        tether_stream_enable(s, EV_READ | EV_WRITE);
        return;
    }
    if (c->phase == CONNECTING) {
        const char *bad = c->ssl ? tether_tls_verify_error(c->ssl) : NULL;
        if (bad)
            verdict(c, false, "connect: TLS certificate verification failed: %s", bad);
        else
            verdict(c, false, "connect: %s", errtext(what & BEV_EVENT_TIMEOUT ? ETIMEDOUT : err));
        return;
    }
    if (what & BEV_EVENT_EOF)
        verdict(c, false, "GET %s: closed before a full response head", hcfg(h)->path);
    else
        verdict(c, false, "GET %s: %s", hcfg(h)->path,
                errtext(what & BEV_EVENT_TIMEOUT ? ETIMEDOUT : err));
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct check *c = arg;
    verdict(c, false, "timeout after %llums", (unsigned long long)hcfg(c->h)->timeout_ms);
}

static void start_check(struct check *c)
{
    struct tether_health *h = c->h;
    struct tether_backend *be = &h->proxy->backends[c->index];
    struct tether_tls_client *tls = __atomic_load_n(&h->proxy->tls_backends[c->index], __ATOMIC_ACQUIRE);

    if (tls) {
        c->ssl = tether_tls_client_ssl(tls);
        c->s = c->ssl ? tether_stream_new_tls(h->loop, -1, c->ssl, 0) : NULL;
        if (!c->s)
            SSL_free(c->ssl);
    } else {
        c->s = tether_stream_new(h->loop, -1);
    }
    if (!c->s) {
        c->ssl = NULL;
        verdict(c, false, "connect: %s", strerror(ENOMEM));
        return;
    }
    c->phase = CONNECTING;
    tether_stream_setcb(c->s, on_read, NULL, on_event, c);
    struct timeval tv = tether_timeval_ms(hcfg(h)->timeout_ms);
    event_add(&c->deadline, &tv);
    int err = tether_stream_connect(c->s, (const struct sockaddr *)&be->addr, be->addrlen);
    if (err < 0)
        verdict(c, false, "connect: %s", errtext(-err));
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct check *c = arg;
    struct tether_backend *be = &c->h->proxy->backends[c->index];
    if (!atomic_load(&be->present)) {
        /* Removed: no more checks; a rescan starts them if the slot is reused. */
        close_check(c);
        c->active = false;
        return;
    }
    uint32_t gen = atomic_load(&be->gen);
    if (gen != c->gen) {
        /* Another backend in this slot: its counts start afresh. */
        close_check(c);
        c->gen = gen;
        c->passes = c->fails = 0;
        c->seen_up = atomic_load(&be->up) ? 1 : 0;
    }
    struct timeval tv = tether_timeval_ms(hcfg(c->h)->interval_ms);
    event_add(&c->tick, &tv);
    /* One check at a time per backend: one still running (a timeout not
       shorter than the interval) has this tick skipped. */
    if (c->s)
        return;
    start_check(c);
}

/* Start the ticks of backends added since the last look; the first check at once. */
static void rescan(struct tether_health *h)
{
    size_t n = atomic_load(&h->proxy->nbackends);
    for (size_t i = 0; i < n && i < h->nchecks; i++) {
        struct check *c = &h->checks[i];
        if (c->active || !atomic_load(&h->proxy->backends[i].present))
            continue;
        c->active = true;
        c->gen = atomic_load(&h->proxy->backends[i].gen);
        c->passes = c->fails = 0;
        c->seen_up = atomic_load(&h->proxy->backends[i].up) ? 1 : 0;
        struct timeval now = {0, 0};
        event_add(&c->tick, &now);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct tether_health *h = arg;
    char buf[16];
    ssize_t n = read(fd, buf, sizeof(buf));
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == 'q') {
            event_base_loopbreak(h->base);
            return;
        }
    }
    rescan(h);
}

void tether_health_rescan(struct tether_health *h)
{
    if (!h)
        return;
    char cmd = 'n';
    ssize_t n = write(h->wake[1], &cmd, 1);
    (void)n;
}

static void *run(void *arg)
{
    struct tether_health *h = arg;
    event_base_dispatch(h->base);
    return NULL;
}

static void health_free(struct tether_health *h)
{
    for (size_t i = 0; h->checks && i < h->nchecks; i++) {
        struct check *c = &h->checks[i];
        if (!c->h)
            continue;
        close_check(c);
        event_del(&c->tick);
    }
    free(h->checks);
    tether_stream_loop_free(h->loop);
    if (h->wake_added)
        event_del(&h->wake_ev);
    if (h->wake[0] >= 0) {
        close(h->wake[0]);
        close(h->wake[1]);
    }
    if (h->base)
        event_base_free(h->base);
    free(h);
}

struct tether_health *tether_health_start(struct tether_proxy *proxy)
{
    const struct tether_config_health *cfg = &atomic_load(&proxy->cfg)->health;
    struct tether_health *h = calloc(1, sizeof(*h));
    if (!h) {
        tether_log_error("health checks: out of memory");
        return NULL;
    }
    h->proxy = proxy;
    h->wake[0] = h->wake[1] = -1;

    struct event_config *ec = event_config_new();
    if (ec) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        h->base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    h->loop = h->base ? tether_stream_loop_new(h->base) : NULL;
    h->nchecks = TETHER_PROXY_MAX_BACKENDS;
    h->checks = calloc(h->nchecks, sizeof(*h->checks));
    if (!h->loop || !h->checks)
        goto nomem;
    if (pipe2(h->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
        tether_log_error("health checks: pipe: %s", strerror(errno));
        goto fail;
    }
    event_assign(&h->wake_ev, h->base, h->wake[0], EV_READ | EV_PERSIST, on_wake, h);
    if (event_add(&h->wake_ev, NULL) < 0)
        goto nomem;
    h->wake_added = true;

    size_t n = atomic_load(&proxy->nbackends);
    for (size_t i = 0; i < h->nchecks; i++) {
        struct check *c = &h->checks[i];
        c->h = h;
        c->index = (uint32_t)i;
        event_assign(&c->tick, h->base, -1, 0, on_tick, c);
        event_assign(&c->deadline, h->base, -1, 0, on_deadline, c);
        if (i >= n || !atomic_load(&proxy->backends[i].present))
            continue;
        c->seen_up = atomic_load(&proxy->backends[i].up) ? 1 : 0;
        c->gen = atomic_load(&proxy->backends[i].gen);
        c->active = true;
        /* Spread the first checks over the first interval. */
        struct timeval tv = tether_timeval_ms(cfg->interval_ms * i / n);
        if (event_add(&c->tick, &tv) < 0)
            goto nomem;
    }

    int err = pthread_create(&h->thread, NULL, run, h);
    if (err) {
        tether_log_error("health checks: cannot start the thread: %s", strerror(err));
        goto fail;
    }
    h->started = true;
    return h;
nomem:
    tether_log_error("health checks: out of memory");
fail:
    health_free(h);
    return NULL;
}

void tether_health_stop(struct tether_health *h)
{
    if (!h)
        return;
    if (h->started) {
        char cmd = 'q';
        ssize_t n = write(h->wake[1], &cmd, 1);
        (void)n;
        pthread_join(h->thread, NULL);
        h->started = false;
    }
    health_free(h);
}
