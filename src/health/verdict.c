/*
 * Backend state transitions, from the active checker or the data path,
 * and what follows them: a backend that goes down has its sessions moved
 * at once, in the thread that saw it go. The first caller of a transition
 * wins (compare-and-swap on `up`), so a move is never started twice.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tether/admin.h"
#include "tether/health.h"
#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/util.h"

int tether_health_set(struct tether_proxy *p, uint32_t b, bool up, const char *reason)
{
    struct tether_backend *be = &p->backends[b];
    int expect = up ? 0 : 1;
    if (!atomic_compare_exchange_strong(&be->up, &expect, up ? 1 : 0))
        return 0;
    pthread_mutex_lock(&be->state_lock);
    snprintf(be->reason, sizeof(be->reason), "%s", reason);
    be->changed_ms = tether_wall_ms();
    pthread_mutex_unlock(&be->state_lock);
    atomic_store(&be->passive_fails, 0);
    if (up) {
        tether_log_info("backend %s is up: %s", be->name, reason);
        tether_events_publishf("backend.up", "{s:s,s:s}", "backend", be->name, "reason", reason);
        return 1;
    }
    tether_events_publishf("backend.down", "{s:s,s:s}", "backend", be->name, "reason", reason);
    size_t n = tether_proxy_move_backend(p, b, TETHER_MOVE_DOWN);
    tether_log_warn("backend %s is down: %s; %zu session%s moved", be->name, reason, n,
                    n == 1 ? "" : "s");
    return 1;
}

void tether_health_passive_failure(struct tether_proxy *p, uint32_t b, const char *what)
{
    struct tether_backend *be = &p->backends[b];
    uint32_t n = atomic_fetch_add(&be->passive_fails, 1) + 1;
    uint32_t limit = p->cfg->health.passive_failures;
    if (n >= limit && atomic_load(&be->up)) {
        char reason[128];
        snprintf(reason, sizeof(reason), "passive: %u consecutive failures, last: %s", n, what);
        tether_health_set(p, b, false, reason);
    }
}

void tether_health_passive_success(struct tether_proxy *p, uint32_t b)
{
    if (atomic_load_explicit(&p->backends[b].passive_fails, memory_order_relaxed))
        atomic_store(&p->backends[b].passive_fails, 0);
}
