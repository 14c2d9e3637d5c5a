/*
 * State shared by every worker: the backends with their live counters, the
 * ring, the access log. Built once from a config and read-only afterwards
 * but for atomic counters, so workers share it without locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tether/lb.h"
#include "tether/session.h"
#include "tether/tls.h"
#include "tether/util.h"
#include "proxy-int.h"

struct retired_tls {
    struct retired_tls *next;
    struct tether_tls_server *srv;
    uint64_t at_ms;
};

static void log_errors(struct tether_config_errors *errs)
{
    for (size_t e = 0; e < errs->n; e++)
        tether_log(errs->items[e].warning ? TETHER_LOG_WARN : TETHER_LOG_ERROR, "%s: %s",
                   errs->items[e].key ? errs->items[e].key : "tls", errs->items[e].message);
}

struct tether_proxy *tether_proxy_new(const struct tether_config *cfg)
{
    struct tether_proxy *p = calloc(1, sizeof(*p));
    struct tether_ring_node *nodes = NULL;
    if (!p)
        return NULL;
    p->cfg = cfg;
    p->access_fd = -1;
    p->nbackends = cfg->nbackends;
    p->backends = calloc(cfg->nbackends, sizeof(*p->backends));
    p->weights = calloc(cfg->nbackends, sizeof(*p->weights));
    nodes = calloc(cfg->nbackends, sizeof(*nodes));
    if (!p->backends || !p->weights || !nodes)
        goto fail;
    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct tether_config_backend *cb = &cfg->backends[i];
        struct tether_backend *b = &p->backends[i];
        b->name = cb->name;
        b->weight = cb->weight;
        p->weights[i] = cb->weight;
        atomic_store(&b->up, 1);
        pthread_mutex_init(&b->state_lock, NULL);
        snprintf(b->reason, sizeof(b->reason), "configured");
        b->changed_ms = tether_wall_ms();
        if (tether_sockaddr_parse(cb->address, &b->addr, &b->addrlen) < 0) {
            tether_log_error("backend %s: cannot use address %s", cb->name, cb->address);
            goto fail;
        }
        nodes[i] = (struct tether_ring_node){.name = cb->name, .weight = cb->weight};
    }
    p->ring = tether_ring_new(nodes, cfg->nbackends, cfg->balance.vnodes);
    if (!p->ring)
        goto fail;
    free(nodes);
    nodes = NULL;
    struct tether_session_limits lim = {
        .max_sessions = cfg->session.max_sessions,
        .max_state_bytes = cfg->session.max_state_bytes,
        .idle_timeout_ms = cfg->session.idle_timeout_ms,
        .max_lifetime_ms = cfg->session.max_lifetime_ms,
        .provisional_timeout_ms = cfg->session.provisional_timeout_ms,
    };
    if (cfg->nbackends > TETHER_SESSION_MAX_BACKENDS) {
        tether_log_error("at most %d backends", TETHER_SESSION_MAX_BACKENDS);
        goto fail;
    }
    p->sessions = tether_session_table_new(&lim, 0);
    if (!p->sessions)
        goto fail;

    p->tls = calloc(cfg->nlistens, sizeof(*p->tls));
    if (!p->tls)
        goto fail;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (!cfg->listens[i].tls)
            continue;
        struct tether_config_errors errs = {0};
        p->tls[i] = tether_tls_server_new(cfg, i, &errs);
        log_errors(&errs);
        tether_config_errors_deinit(&errs);
        if (!p->tls[i])
            goto fail;
    }

    p->tls_backends = calloc(cfg->nbackends, sizeof(*p->tls_backends));
    if (!p->tls_backends)
        goto fail;
    for (size_t i = 0; i < cfg->nbackends; i++) {
        if (!cfg->backends[i].tls)
            continue;
        struct tether_config_errors errs = {0};
        p->tls_backends[i] = tether_tls_client_new(cfg, i, &errs);
        for (size_t e = 0; e < errs.n; e++)
            tether_log_error("%s: %s", errs.items[e].key ? errs.items[e].key : "tls",
                             errs.items[e].message);
        tether_config_errors_deinit(&errs);
        if (!p->tls_backends[i])
            goto fail;
    }

    const char *access = cfg->log.access;
    if (strcmp(access, "stdout") == 0) {
        p->access_fd = dup(STDOUT_FILENO);
    } else if (strcmp(access, "off") != 0) {
        p->access_fd = open(access, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (p->access_fd < 0) {
            tether_log_error("access log %s: %s", access, strerror(errno));
            goto fail;
        }
    }
    return p;
fail:
    free(nodes);
    tether_proxy_free(p);
    return NULL;
}

int tether_proxy_reload_certificates(struct tether_proxy *p)
{
    const struct tether_config *cfg = p->cfg;
    struct tether_tls_server **fresh = calloc(cfg->nlistens, sizeof(*fresh));
    struct tether_config_errors errs = {0};
    if (!fresh)
        return -1;
    uint64_t longest = 0;
    int n = 0, bad = 0;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (!cfg->listens[i].tls)
            continue;
        if (cfg->listens[i].tls->handshake_timeout_ms > longest)
            longest = cfg->listens[i].tls->handshake_timeout_ms;
        fresh[i] = tether_tls_server_new(cfg, i, &errs);
        bad |= !fresh[i];
    }
    log_errors(&errs);
    tether_config_errors_deinit(&errs);
    if (bad) {
        for (size_t i = 0; i < cfg->nlistens; i++)
            tether_tls_server_free(fresh[i]);
        free(fresh);
        return -1;
    }
    /* A handshake reads its context's certificate list (SNI) until it ends:
       an old context goes once every handshake that may use it is over. */
    uint64_t now = tether_now_ms();
    struct retired_tls **rp = &p->retired;
    while (*rp) {
        struct retired_tls *r = *rp;
        if (r->at_ms + 2 * longest + 1000 < now) {
            *rp = r->next;
            tether_tls_server_free(r->srv);
            free(r);
        } else {
            rp = &r->next;
        }
    }
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (!fresh[i])
            continue;
        struct tether_tls_server *old = __atomic_exchange_n(&p->tls[i], fresh[i], __ATOMIC_ACQ_REL);
        struct retired_tls *r = calloc(1, sizeof(*r));
        if (r) {
            *r = (struct retired_tls){.next = p->retired, .srv = old, .at_ms = now};
            p->retired = r;
        }
        /* Without memory to remember it, the old context is kept for good. */
        n++;
    }
    free(fresh);
    return n;
}

void tether_proxy_free(struct tether_proxy *p)
{
    if (!p)
        return;
    while (p->retired) {
        struct retired_tls *r = p->retired;
        p->retired = r->next;
        tether_tls_server_free(r->srv);
        free(r);
    }
    if (p->access_fd >= 0)
        close(p->access_fd);
    for (size_t i = 0; p->tls && i < p->cfg->nlistens; i++)
        tether_tls_server_free(p->tls[i]);
    free(p->tls);
    for (size_t i = 0; p->tls_backends && i < p->nbackends; i++)
        tether_tls_client_free(p->tls_backends[i]);
    free(p->tls_backends);
    tether_ring_free(p->ring);
    tether_session_table_free(p->sessions);
    free(p->backends);
    free(p->weights);
    free(p);
}

/* A request without a key: the up backend with the fewest requests in flight for its weight. */
int proxy_pick_least(struct tether_proxy_worker *w)
{
    struct tether_proxy *p = w->proxy;
    for (size_t i = 0; i < p->nbackends; i++) {
        w->scratch_inflight[i] = atomic_load(&p->backends[i].inflight);
        w->scratch_up[i] = (unsigned char)atomic_load(&p->backends[i].up);
    }
    size_t start = atomic_fetch_add(&p->rr, 1) % p->nbackends;
    return tether_lb_least_inflight(w->scratch_inflight, p->weights, w->scratch_up, p->nbackends,
                                    start);
}
