/*
 * GET /metrics: the Prometheus text exposition format (version 0.0.4).
 * Every figure is read from counters the data path keeps anyway (relaxed
 * atomics, per worker where they are hot), so a scrape costs the data path
 * nothing but a few shard locks for the session totals.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/util.h"
#include "server-int.h"

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

static void head(struct evbuffer *b, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(struct evbuffer *b, const char *name, const char *type, const char *help,
                unsigned long long v)
{
    head(b, name, type, help);
    evbuffer_add_printf(b, "%s %llu\n", name, v);
}

/* One value per present backend. */
typedef unsigned long long (*backend_value_fn)(const struct tether_proxy *p, uint32_t b);

static void per_backend(struct evbuffer *b, const struct tether_proxy *p, size_t n,
                        const char *name, const char *type, const char *help,
                        backend_value_fn value)
{
    head(b, name, type, help);
    for (size_t i = 0; i < n; i++)
        if (LOAD(p->backends[i].present))
            evbuffer_add_printf(b, "%s{backend=\"%s\"} %llu\n", name, p->backends[i].name,
                                value(p, (uint32_t)i));
}

static unsigned long long sessions_of(const struct tether_proxy *p, uint32_t b)
{
    return tether_session_load(p->sessions, b);
}

static unsigned long long up_of(const struct tether_proxy *p, uint32_t b)
{
    return LOAD(p->backends[b].up) ? 1 : 0;
}

static unsigned long long inflight_of(const struct tether_proxy *p, uint32_t b)
{
    return LOAD(p->backends[b].inflight);
}

static unsigned long long connect_failures_of(const struct tether_proxy *p, uint32_t b)
{
    return LOAD(p->backends[b].connect_failures);
}

/* Sum one counter over the workers. */
#define SUM(p, field)                                                                              \
    ({                                                                                             \
        unsigned long long s_ = 0;                                                                 \
        for (size_t w_ = 0; w_ < (p)->nstats; w_++)                                                \
            s_ += LOAD((p)->stats[w_].field);                                                      \
        s_;                                                                                        \
    })

void admin_metrics(struct tether_proxy *p, struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        admin_error(req, 503, "out of memory");
        return;
    }
    size_t n = atomic_load(&p->nbackends);

    head(b, "tether_build_info", "gauge", "Version of the running tetherd.");
    evbuffer_add_printf(b, "tether_build_info{version=\"%s\"} 1\n", TETHER_VERSION_STRING);
    one(b, "tether_uptime_seconds", "gauge", "Seconds since tetherd started.",
        (tether_wall_ms() - p->started_ms) / 1000);
    one(b, "tether_connections", "gauge", "Open client connections.", LOAD(p->connections));

    head(b, "tether_requests_total", "counter",
         "Requests answered, by backend and the status class the client got.");
    static const char *const cls[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (size_t i = 0; i < n; i++) {
        const struct tether_backend *be = &p->backends[i];
        if (!LOAD(be->present))
            continue;
        for (size_t c = 0; c < 6; c++)
            evbuffer_add_printf(b, "tether_requests_total{backend=\"%s\",class=\"%s\"} %llu\n",
                                be->name, cls[c], (unsigned long long)LOAD(be->status[c]));
    }
    one(b, "tether_requests_rejected_total", "counter",
        "Requests tether answered itself with a 4xx (malformed, too large, timed out).",
        SUM(p, rejected));

    head(b, "tether_request_duration_seconds", "histogram",
         "Time from the first byte of a request to the end of its response.");
    unsigned long long cum = 0;
    for (size_t k = 0; k <= TETHER_PROXY_HIST_BUCKETS; k++) {
        cum += SUM(p, hist[k]);
        if (k < TETHER_PROXY_HIST_BUCKETS)
            evbuffer_add_printf(b, "tether_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                                tether_proxy_hist_le[k], cum);
        else
            evbuffer_add_printf(b, "tether_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                                cum);
    }
    evbuffer_add_printf(b, "tether_request_duration_seconds_sum %.6f\n",
                        (double)SUM(p, hist_sum_us) / 1e6);
    evbuffer_add_printf(b, "tether_request_duration_seconds_count %llu\n", cum);

    struct tether_session_stats st;
    tether_session_stats(p->sessions, &st);
    per_backend(b, p, n, "tether_sessions", "gauge", "Live sessions bound to each backend.",
                sessions_of);
    one(b, "tether_sessions_live", "gauge", "Live sessions in the table.", st.live);
    one(b, "tether_sessions_provisional", "gauge",
        "Minted sessions not yet seen back from their client.", st.provisional);
    one(b, "tether_sessions_created_total", "counter", "Sessions created.", st.created);
    one(b, "tether_sessions_expired_total", "counter", "Sessions expired (idle or lifetime).",
        st.expired);
    one(b, "tether_sessions_evicted_total", "counter",
        "Idle sessions evicted for the table's budget.", st.evicted);
    one(b, "tether_sessions_ended_total", "counter",
        "Sessions ended by their instance or forgotten through the admin API.", st.ended);
    one(b, "tether_session_placements_total", "counter",
        "Placements made by the bounded-load pick.", SUM(p, placements));
    head(b, "tether_session_moves_total", "counter", "Sessions moved, by reason.");
    for (int r = TETHER_MOVE_DOWN; r <= TETHER_MOVE_ADMIN; r++)
        evbuffer_add_printf(b, "tether_session_moves_total{reason=\"%s\"} %llu\n",
                            tether_move_reason_name((enum tether_move_reason)r),
                            (unsigned long long)LOAD(p->moves_by_reason[r]));
    one(b, "tether_session_state_bytes", "gauge", "Bytes of handoff state stored.",
        st.state_bytes);
    one(b, "tether_session_state_dropped_total", "counter",
        "State blobs dropped for being over state_max_bytes or the budget.",
        LOAD(p->state_dropped) + st.state_refused);

    per_backend(b, p, n, "tether_backend_up", "gauge",
                "1 when the backend passes its health checks.", up_of);
    head(b, "tether_backend_state", "gauge", "The backend's state: 1 for the current one.");
    static const char *const states[] = {"up", "down", "draining", "disabled"};
    for (size_t i = 0; i < n; i++) {
        const struct tether_backend *be = &p->backends[i];
        if (!LOAD(be->present))
            continue;
        const char *cur = tether_backend_state_name(be);
        for (size_t s = 0; s < 4; s++)
            evbuffer_add_printf(b, "tether_backend_state{backend=\"%s\",state=\"%s\"} %d\n",
                                be->name, states[s], strcmp(cur, states[s]) == 0);
    }
    per_backend(b, p, n, "tether_backend_inflight", "gauge",
                "Requests sent to the backend and not answered.", inflight_of);
    per_backend(b, p, n, "tether_backend_connect_failures_total", "counter",
                "Connections to the backend that failed.", connect_failures_of);
    head(b, "tether_health_checks_total", "counter", "Active health checks, by result.");
    for (size_t i = 0; i < n; i++) {
        const struct tether_backend *be = &p->backends[i];
        if (!LOAD(be->present))
            continue;
        evbuffer_add_printf(b, "tether_health_checks_total{backend=\"%s\",result=\"pass\"} %llu\n",
                            be->name, (unsigned long long)LOAD(be->checks_ok));
        evbuffer_add_printf(b, "tether_health_checks_total{backend=\"%s\",result=\"fail\"} %llu\n",
                            be->name, (unsigned long long)LOAD(be->checks_failed));
    }
    head(b, "tether_upstream_connections_total", "counter",
         "Requests sent upstream, by whether the connection was new or reused from the pool.");
    evbuffer_add_printf(b, "tether_upstream_connections_total{kind=\"new\"} %llu\n",
                        SUM(p, upstream_connects));
    evbuffer_add_printf(b, "tether_upstream_connections_total{kind=\"reused\"} %llu\n",
                        SUM(p, upstream_reused));
    head(b, "tether_tls_handshakes_total", "counter", "TLS handshakes with clients, by result.");
    /* Resumed first: a handshake is counted before its resumption, so the
       total read after it is never smaller. */
    unsigned long long resumed = SUM(p, tls_resumed), all = SUM(p, tls_handshakes);
    evbuffer_add_printf(b, "tether_tls_handshakes_total{result=\"full\"} %llu\n",
                        all > resumed ? all - resumed : 0);
    evbuffer_add_printf(b, "tether_tls_handshakes_total{result=\"resumed\"} %llu\n", resumed);
    evbuffer_add_printf(b, "tether_tls_handshakes_total{result=\"failed\"} %llu\n",
                        SUM(p, tls_handshake_failures));
    struct tether_store_status ss;
    tether_store_status(p->store, &ss);
    const char *kind = ss.kind == TETHER_STORE_REDIS ? "redis" : "memory";
    head(b, "tether_store_healthy", "gauge", "1 when the state store is reachable and answering.");
    evbuffer_add_printf(b, "tether_store_healthy{store=\"%s\"} %d\n", kind, ss.healthy ? 1 : 0);
    one(b, "tether_store_queue_length", "gauge", "Writes waiting for the state store.", ss.queue);
    one(b, "tether_store_claims_total", "counter", "New keys asked of the store before placing.",
        ss.claims);
    one(b, "tether_store_claim_timeouts_total", "counter",
        "Claims not answered within claim_timeout: placed locally.", ss.claim_timeouts);
    one(b, "tether_store_reconciles_total", "counter",
        "Local bindings that gave way to the one the store holds.", ss.reconciles);
    one(b, "tether_store_errors_total", "counter", "Error replies from the store.",
        ss.write_errors);
    one(b, "tether_store_reconnects_total", "counter", "Connections to the store lost.",
        ss.reconnects);
    one(b, "tether_store_dropped_total", "counter", "Changes not written: the queue was full.",
        ss.dropped);
    one(b, "tether_admin_requests_total", "counter", "Requests to the admin API.",
        LOAD(p->admin_requests));

    struct evkeyvalq *hd = evhttp_request_get_output_headers(req);
    evhttp_add_header(hd, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}
