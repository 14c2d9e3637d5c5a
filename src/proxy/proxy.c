/*
 * State shared by every worker: the backends with their live counters, the
 * ring, the access log. Built once from a config and read-only afterwards
 * but for atomic counters, so workers share it without locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tether/lb.h"
#include "tether/session.h"
#include "tether/tls.h"
#include "tether/util.h"
#include "proxy-int.h"

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
        for (size_t e = 0; e < errs.n; e++)
            tether_log(errs.items[e].warning ? TETHER_LOG_WARN : TETHER_LOG_ERROR, "%s: %s",
                       errs.items[e].key ? errs.items[e].key : "tls", errs.items[e].message);
        tether_config_errors_deinit(&errs);
        if (!p->tls[i])
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

void tether_proxy_free(struct tether_proxy *p)
{
    if (!p)
        return;
    if (p->access_fd >= 0)
        close(p->access_fd);
    for (size_t i = 0; p->tls && i < p->cfg->nlistens; i++)
        tether_tls_server_free(p->tls[i]);
    free(p->tls);
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
