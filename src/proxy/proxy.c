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

#include "tether/admin.h"
#include "tether/health.h"
#include "tether/lb.h"
#include "tether/session.h"
#include "tether/tls.h"
#include "tether/util.h"
#include "proxy-int.h"

/*
 * Things replaced while other threads may still read them, freed once the
 * longest reader can be done: each is retired with its own grace period
 * (a handshake that began under an old listener's contexts lasts up to
 * that listener's handshake_timeout, twice over for the peek before it).
 */
enum retired_kind { R_RING, R_TLS_SERVER, R_TLS_ARRAY, R_CONFIG, R_TLS_CLIENT, R_FD };

struct retired {
    struct retired *next;
    enum retired_kind kind;
    void *ptr;
    int fd;
    uint64_t free_at_ms;
};

/* A placement, a connect, a health check or an admin call: done in far less. */
#define GRACE_MS 10000
/* Workers take a new config within the reload; other threads read it per call. */
#define CONFIG_GRACE_MS 60000

const double tether_proxy_hist_le[TETHER_PROXY_HIST_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
};

const char *tether_move_reason_name(enum tether_move_reason r)
{
    static const char *const names[] = {"down", "disabled", "removed", "drained", "admin"};
    return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "unknown";
}

static void retired_free_one(struct retired *r)
{
    switch (r->kind) {
    case R_RING:
        tether_ring_free(r->ptr);
        break;
    case R_TLS_SERVER:
        tether_tls_server_free(r->ptr);
        break;
    case R_TLS_ARRAY:
        free(r->ptr);
        break;
    case R_CONFIG:
        tether_config_free(r->ptr);
        break;
    case R_TLS_CLIENT:
        tether_tls_client_free(r->ptr);
        break;
    case R_FD:
        close(r->fd);
        break;
    }
    free(r);
}

/* Keep ptr (or fd) for grace_ms more. Lock: p->lock (or single-threaded). */
static void retire_fd(struct tether_proxy *p, enum retired_kind kind, void *ptr, int fd,
                      uint64_t grace_ms)
{
    if (kind == R_FD ? fd < 0 : !ptr)
        return;
    struct retired *r = calloc(1, sizeof(*r));
    if (!r)
        return; /* without memory to remember it, it is kept for good */
    *r = (struct retired){.next = p->retired, .kind = kind, .ptr = ptr, .fd = fd,
                          .free_at_ms = tether_now_ms() + grace_ms};
    p->retired = r;
}

static void retire(struct tether_proxy *p, enum retired_kind kind, void *ptr, uint64_t grace_ms)
{
    retire_fd(p, kind, ptr, -1, grace_ms);
}

/* Free what is past its grace period. Lock: p->lock. */
static void retired_sweep(struct tether_proxy *p)
{
    uint64_t now = tether_now_ms();
    struct retired **rp = &p->retired;
    while (*rp) {
        struct retired *r = *rp;
        if (r->free_at_ms < now) {
            *rp = r->next;
            retired_free_one(r);
        } else {
            rp = &r->next;
        }
    }
}

static uint64_t longest_handshake(const struct tether_config *cfg)
{
    uint64_t longest = 0;
    for (size_t i = 0; i < cfg->nlistens; i++)
        if (cfg->listens[i].tls && cfg->listens[i].tls->handshake_timeout_ms > longest)
            longest = cfg->listens[i].tls->handshake_timeout_ms;
    return longest;
}

static void log_errors(struct tether_config_errors *errs)
{
    for (size_t e = 0; e < errs->n; e++)
        tether_log(errs->items[e].warning ? TETHER_LOG_WARN : TETHER_LOG_ERROR, "%s: %s",
                   errs->items[e].key ? errs->items[e].key : "tls", errs->items[e].message);
}

/* Build and publish the ring of the present backends. Lock: p->lock. */
static int rebuild_ring(struct tether_proxy *p, uint32_t vnodes)
{
    size_t n = atomic_load(&p->nbackends);
    struct tether_ring_node *nodes = calloc(n ? n : 1, sizeof(*nodes));
    if (!nodes)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const struct tether_backend *b = &p->backends[i];
        bool in = atomic_load(&b->present);
        nodes[i] = (struct tether_ring_node){.name = b->name, .weight = in ? b->weight : 0};
    }
    struct tether_ring *ring = tether_ring_new(nodes, n, vnodes);
    free(nodes);
    if (!ring)
        return -1;
    retire(p, R_RING, atomic_exchange(&p->ring, ring), GRACE_MS);
    return 0;
}

int tether_proxy_backend_find(struct tether_proxy *p, const char *name)
{
    size_t n = atomic_load(&p->nbackends);
    for (size_t i = 0; i < n; i++)
        if (atomic_load(&p->backends[i].present) && strcmp(p->backends[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* A slot nothing refers to any more: empty for a minute, nothing in flight, no session. */
static bool slot_reusable(struct tether_proxy *p, size_t i)
{
    const struct tether_backend *b = &p->backends[i];
    return !atomic_load(&b->present) && atomic_load(&b->inflight) == 0 &&
           tether_session_load(p->sessions, (uint32_t)i) == 0 &&
           tether_now_ms() > b->removed_ms + 60000;
}

static int free_slot(struct tether_proxy *p)
{
    size_t n = atomic_load(&p->nbackends);
    for (size_t i = 0; i < n; i++)
        if (slot_reusable(p, i))
            return (int)i;
    return n < TETHER_PROXY_MAX_BACKENDS ? (int)n : -1;
}

/* Fill a slot and make it present. Lock: p->lock. */
static int slot_fill(struct tether_proxy *p, const struct tether_config *cfg, size_t cfg_index,
                     const char *name, const char *address, uint32_t weight,
                     uint64_t max_sessions, bool runtime, char *err, size_t errlen)
{
    if (!tether_config_backend_name_valid(name)) {
        snprintf(err, errlen, "backend name %s: 1 to %d characters of A-Z a-z 0-9 - _ .", name,
                 TETHER_BACKEND_NAME_MAX - 1);
        return -EINVAL;
    }
    if (strlen(address) >= TETHER_BACKEND_ADDR_MAX) {
        snprintf(err, errlen, "backend %s: address too long", name);
        return -EINVAL;
    }
    if (weight == 0 || weight > 1000) {
        snprintf(err, errlen, "backend %s: weight must be 1..1000", name);
        return -EINVAL;
    }
    if (tether_proxy_backend_find(p, name) >= 0) {
        snprintf(err, errlen, "backend %s exists", name);
        return -EEXIST;
    }
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (tether_sockaddr_parse(address, &ss, &sslen) < 0) {
        snprintf(err, errlen, "backend %s: cannot use address %s (an IP address and port)", name,
                 address);
        return -EINVAL;
    }
    struct tether_tls_client *tls = NULL;
    if (cfg && cfg->backends[cfg_index].tls) {
        struct tether_config_errors errs = {0};
        tls = tether_tls_client_new(cfg, cfg_index, &errs);
        log_errors(&errs);
        tether_config_errors_deinit(&errs);
        if (!tls) {
            snprintf(err, errlen, "backend %s: TLS settings unusable", name);
            return -EINVAL;
        }
    }
    int slot = free_slot(p);
    if (slot < 0) {
        tether_tls_client_free(tls);
        snprintf(err, errlen, "at most %d backends", TETHER_PROXY_MAX_BACKENDS);
        return -ENOSPC;
    }
    struct tether_backend *b = &p->backends[slot];
    if ((size_t)slot == atomic_load(&p->nbackends))
        pthread_mutex_init(&b->state_lock, NULL);
    pthread_mutex_lock(&b->state_lock);
    snprintf(b->name, sizeof(b->name), "%s", name);
    snprintf(b->address, sizeof(b->address), "%s", address);
    b->addr = ss;
    b->addrlen = sslen;
    b->weight = weight;
    b->max_sessions = max_sessions;
    b->runtime = runtime;
    b->drain_since_ms = 0;
    snprintf(b->reason, sizeof(b->reason), runtime ? "added at run time" : "configured");
    b->changed_ms = tether_wall_ms();
    b->last_check_ms = 0;
    b->last_check_ok = false;
    pthread_mutex_unlock(&b->state_lock);
    /* A reused slot starts its figures afresh: they are the new backend's. */
    atomic_store(&b->requests, 0);
    atomic_store(&b->connect_failures, 0);
    atomic_store(&b->moved, 0);
    atomic_store(&b->checks_ok, 0);
    atomic_store(&b->checks_failed, 0);
    for (size_t k = 0; k < 6; k++)
        atomic_store(&b->status[k], 0);
    atomic_store(&b->admin, TETHER_BACKEND_ACTIVE);
    atomic_store(&b->passive_fails, 0);
    atomic_store(&b->up, 1);
    atomic_fetch_add(&b->gen, 1);
    retire(p, R_TLS_CLIENT, p->tls_backends[slot], GRACE_MS);
    __atomic_store_n(&p->tls_backends[slot], tls, __ATOMIC_RELEASE);
    p->weights[slot] = weight;
    atomic_store_explicit(&b->present, 1, memory_order_release);
    if ((size_t)slot == atomic_load(&p->nbackends))
        atomic_store(&p->nbackends, (size_t)slot + 1);
    return slot;
}

/* The descriptor log.access names: -1 for off, or -2 on failure (errno set). */
static int access_open(const char *access)
{
    if (strcmp(access, "off") == 0)
        return -1;
    int fd = strcmp(access, "stdout") == 0
                 ? fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0)
                 : open(access, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    return fd < 0 ? -2 : fd;
}

struct tether_proxy *tether_proxy_new(struct tether_config *cfg)
{
    struct tether_proxy *p = calloc(1, sizeof(*p));
    if (!p) {
        tether_config_free(cfg);
        return NULL;
    }
    atomic_init(&p->cfg, cfg);
    p->access_fd = -1;
    p->started_ms = tether_wall_ms();
    p->wall_minus_mono_ms = (int64_t)p->started_ms - (int64_t)tether_now_ms();
    pthread_mutex_init(&p->lock, NULL);
    p->backends = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*p->backends));
    p->weights = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*p->weights));
    p->tls_backends = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*p->tls_backends));
    p->nstats = cfg->workers ? cfg->workers : 1;
    p->stats = aligned_alloc(64, p->nstats * sizeof(*p->stats));
    if (!p->backends || !p->weights || !p->tls_backends || !p->stats)
        goto fail;
    memset(p->stats, 0, p->nstats * sizeof(*p->stats));
    if (cfg->nbackends > TETHER_PROXY_MAX_BACKENDS) {
        tether_log_error("at most %d backends", TETHER_PROXY_MAX_BACKENDS);
        goto fail;
    }
    struct tether_session_limits lim = {
        .max_sessions = cfg->session.max_sessions,
        .max_state_bytes = cfg->session.max_state_bytes,
        .idle_timeout_ms = cfg->session.idle_timeout_ms,
        .max_lifetime_ms = cfg->session.max_lifetime_ms,
        .provisional_timeout_ms = cfg->session.provisional_timeout_ms,
    };
    p->sessions = tether_session_table_new(&lim, 0);
    if (!p->sessions)
        goto fail;
    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct tether_config_backend *cb = &cfg->backends[i];
        char err[256];
        if (slot_fill(p, cfg, i, cb->name, cb->address, cb->weight, cb->max_sessions, false, err,
                      sizeof(err)) < 0) {
            tether_log_error("%s", err);
            goto fail;
        }
    }
    if (rebuild_ring(p, cfg->balance.vnodes) < 0)
        goto fail;

    struct tether_tls_server **tls = calloc(cfg->nlistens, sizeof(*tls));
    if (!tls)
        goto fail;
    atomic_init(&p->tls, tls);
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (!cfg->listens[i].tls)
            continue;
        struct tether_config_errors errs = {0};
        tls[i] = tether_tls_server_new(cfg, i, &errs);
        log_errors(&errs);
        tether_config_errors_deinit(&errs);
        if (!tls[i])
            goto fail;
    }

    int afd = access_open(cfg->log.access);
    if (afd == -2) {
        tether_log_error("access log %s: %s", cfg->log.access, strerror(errno));
        goto fail;
    }
    atomic_store(&p->access_fd, afd);
    return p;
fail:
    tether_proxy_free(p);
    return NULL;
}

/* Contexts for every TLS listener of cfg, all or nothing. */
static struct tether_tls_server **tls_build(const struct tether_config *cfg,
                                            struct tether_config_errors *errs)
{
    struct tether_tls_server **fresh = calloc(cfg->nlistens ? cfg->nlistens : 1, sizeof(*fresh));
    bool bad = !fresh;
    for (size_t i = 0; fresh && i < cfg->nlistens; i++) {
        if (!cfg->listens[i].tls)
            continue;
        fresh[i] = tether_tls_server_new(cfg, i, errs);
        bad |= !fresh[i];
    }
    if (bad && fresh) {
        for (size_t i = 0; i < cfg->nlistens; i++)
            tether_tls_server_free(fresh[i]);
        free(fresh);
        fresh = NULL;
    }
    return fresh;
}

/*
 * Publish a new array of TLS contexts. The old ones go once no connection
 * accepted under them can still be peeking or in its handshake: twice the
 * old listeners' longest handshake_timeout, and a margin.
 */
static void tls_swap(struct tether_proxy *p, const struct tether_config *old_cfg,
                     struct tether_tls_server **fresh)
{
    struct tether_tls_server **old = atomic_exchange(&p->tls, fresh);
    uint64_t grace = 2 * longest_handshake(old_cfg) + GRACE_MS;
    for (size_t i = 0; old && i < old_cfg->nlistens; i++)
        retire(p, R_TLS_SERVER, old[i], grace);
    retire(p, R_TLS_ARRAY, old, grace);
}

void tether_proxy_free(struct tether_proxy *p)
{
    if (!p)
        return;
    const struct tether_config *cfg = atomic_load(&p->cfg);
    while (p->retired) {
        struct retired *r = p->retired;
        p->retired = r->next;
        retired_free_one(r);
    }
    if (atomic_load(&p->access_fd) >= 0)
        close(atomic_load(&p->access_fd));
    struct tether_tls_server **tls = atomic_load(&p->tls);
    for (size_t i = 0; tls && i < cfg->nlistens; i++)
        tether_tls_server_free(tls[i]);
    free(tls);
    for (size_t i = 0; p->tls_backends && i < TETHER_PROXY_MAX_BACKENDS; i++)
        tether_tls_client_free(p->tls_backends[i]);
    free(p->tls_backends);
    tether_ring_free(atomic_load(&p->ring));
    tether_session_table_free(p->sessions);
    for (size_t i = 0; p->backends && i < atomic_load(&p->nbackends); i++)
        pthread_mutex_destroy(&p->backends[i].state_lock);
    free(p->backends);
    free(p->weights);
    free(p->stats);
    pthread_mutex_destroy(&p->lock);
    tether_config_free((struct tether_config *)cfg);
    free(p);
}

/* A request without a key: the up backend with the fewest requests in flight for its weight. */
int proxy_pick_least(struct tether_proxy_worker *w)
{
    struct tether_proxy *p = w->proxy;
    size_t n = atomic_load_explicit(&p->nbackends, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        w->scratch_inflight[i] = atomic_load(&p->backends[i].inflight);
        w->scratch_up[i] = (unsigned char)tether_backend_takes_new(&p->backends[i]);
    }
    size_t start = atomic_fetch_add(&p->rr, 1) % n;
    return tether_lb_least_inflight(w->scratch_inflight, p->weights, w->scratch_up, n, start);
}

/*
 * Moves. The reason of the moves a thread is making, for the observer
 * (the session table calls it under a shard lock, in the mover's thread).
 */
static __thread int move_reason = TETHER_MOVE_DOWN;

static void observe(void *ctx, enum tether_session_event ev, const char *key, size_t len,
                    uint32_t backend, uint32_t from, uint32_t epoch)
{
    struct tether_proxy *p = ctx;
    static const char *const types[] = {
        [TETHER_SESSION_EV_CREATED] = "session.created",
        [TETHER_SESSION_EV_MOVED] = "session.moved",
        [TETHER_SESSION_EV_EXPIRED] = "session.expired",
        [TETHER_SESSION_EV_EVICTED] = "session.expired",
        [TETHER_SESSION_EV_ENDED] = "session.ended",
        [TETHER_SESSION_EV_FORGOTTEN] = "session.ended",
    };
    if (ev == TETHER_SESSION_EV_MOVED)
        atomic_fetch_add_explicit(&p->moves_by_reason[move_reason], 1, memory_order_relaxed);
    if (!tether_events_wanted())
        return;
    const char *name = p->backends[backend].name;
    if (ev == TETHER_SESSION_EV_MOVED)
        tether_events_publishf(types[ev], "{s:s%,s:s,s:s,s:i,s:s}", "key", key, len, "from",
                               p->backends[from].name, "to", name, "epoch", (int)epoch,
                               "reason", tether_move_reason_name(move_reason));
    else if (ev == TETHER_SESSION_EV_EVICTED || ev == TETHER_SESSION_EV_FORGOTTEN)
        tether_events_publishf(types[ev], "{s:s%,s:s,s:s}", "key", key, len, "backend", name,
                               "why", ev == TETHER_SESSION_EV_EVICTED ? "evicted" : "forgotten");
    else
        tether_events_publishf(types[ev], "{s:s%,s:s}", "key", key, len, "backend", name);
}

void tether_proxy_move_reason(enum tether_move_reason why)
{
    move_reason = why;
}

void tether_proxy_observe_sessions(struct tether_proxy *p)
{
    tether_session_observe(p->sessions, observe, p);
}

size_t tether_proxy_move_backend(struct tether_proxy *p, uint32_t b, enum tether_move_reason why)
{
    struct tether_placer *pl = tether_placer_new(p);
    if (!pl)
        return 0;
    int saved = move_reason;
    move_reason = why;
    size_t n = tether_session_move_backend(p->sessions, b, tether_placer_place, pl);
    move_reason = saved;
    tether_placer_free(pl);
    atomic_fetch_add(&p->backends[b].moved, n);
    return n;
}

/* tether_session_place_fn for a move to one chosen backend. */
static int place_on(void *ctx, uint64_t hash, int prefer)
{
    (void)hash;
    (void)prefer;
    return *(const int *)ctx;
}

int tether_proxy_move_session(struct tether_proxy *p, const char *key, size_t len, uint32_t to,
                              struct tether_session_info *out)
{
    uint64_t hash = tether_ring_hash(key, len);
    struct tether_session_info info;
    if (tether_session_get(p->sessions, key, len, hash, &info) < 0)
        return -ENOENT;
    if (info.backend == to) {
        *out = info;
        return 0;
    }
    int target = (int)to;
    int saved = move_reason;
    move_reason = TETHER_MOVE_ADMIN;
    /* Under the backend set's lock: the target cannot be removed meanwhile. */
    pthread_mutex_lock(&p->lock);
    int rc = tether_backend_serves(&p->backends[to])
                 ? tether_session_move(p->sessions, key, len, hash, info.backend, place_on,
                                       &target, out)
                 : -EAGAIN;
    pthread_mutex_unlock(&p->lock);
    move_reason = saved;
    if (rc == -ENOENT)
        return -ENOENT;
    if (rc != (int)to)
        return -EAGAIN; /* it moved meanwhile */
    atomic_fetch_add(&p->backends[info.backend].moved, 1);
    return 0;
}

static void set_reason(struct tether_backend *b, const char *reason)
{
    pthread_mutex_lock(&b->state_lock);
    snprintf(b->reason, sizeof(b->reason), "%s", reason);
    b->changed_ms = tether_wall_ms();
    pthread_mutex_unlock(&b->state_lock);
}

int tether_proxy_backend_add(struct tether_proxy *p, const char *name, const char *address,
                             uint32_t weight, char *err, size_t errlen)
{
    pthread_mutex_lock(&p->lock);
    const struct tether_config *cfg = atomic_load(&p->cfg);
    int slot = slot_fill(p, NULL, 0, name, address, weight, 0, true, err, errlen);
    if (slot >= 0 && rebuild_ring(p, cfg->balance.vnodes) < 0) {
        atomic_store(&p->backends[slot].present, 0);
        snprintf(err, errlen, "out of memory");
        slot = -ENOMEM;
    }
    pthread_mutex_unlock(&p->lock);
    if (slot >= 0) {
        /* Checked at once, like every backend, so a dead one goes down after fall. */
        tether_health_rescan(p->health);
        tether_log_info("backend %s (%s) added at run time", name, address);
        tether_events_publishf("backend.added", "{s:s,s:s}", "backend", name, "address", address);
    }
    return slot;
}

/* Take slot b out and move its sessions. Lock: p->lock. */
static size_t slot_remove(struct tether_proxy *p, uint32_t b, const struct tether_config *cfg)
{
    struct tether_backend *be = &p->backends[b];
    atomic_store(&be->present, 0);
    p->weights[b] = 0;
    be->removed_ms = tether_now_ms(); /* the slot is reused a while after */
    set_reason(be, "removed");
    rebuild_ring(p, cfg->balance.vnodes);
    size_t n = tether_proxy_move_backend(p, b, TETHER_MOVE_REMOVED);
    tether_log_info("backend %s removed; %zu session%s moved", be->name, n, n == 1 ? "" : "s");
    tether_events_publishf("backend.removed", "{s:s,s:i}", "backend", be->name, "moved", (int)n);
    return n;
}

long tether_proxy_backend_remove(struct tether_proxy *p, const char *name)
{
    pthread_mutex_lock(&p->lock);
    int b = tether_proxy_backend_find(p, name);
    long n = b < 0 ? -ENOENT : (long)slot_remove(p, (uint32_t)b, atomic_load(&p->cfg));
    pthread_mutex_unlock(&p->lock);
    return n;
}

long tether_proxy_backend_admin(struct tether_proxy *p, const char *name,
                                enum tether_backend_admin to)
{
    static const char *const what[] = {"enabled", "draining", "disabled"};
    pthread_mutex_lock(&p->lock);
    int b = tether_proxy_backend_find(p, name);
    if (b < 0) {
        pthread_mutex_unlock(&p->lock);
        return -ENOENT;
    }
    struct tether_backend *be = &p->backends[b];
    int from = atomic_exchange(&be->admin, (int)to);
    long moved = 0;
    if (from != (int)to) {
        char reason[64];
        snprintf(reason, sizeof(reason), "%s by the admin API", what[to]);
        set_reason(be, reason);
        if (to == TETHER_BACKEND_DRAINING)
            be->drain_since_ms = tether_now_ms();
        tether_log_info("backend %s %s", be->name, reason);
        if (to == TETHER_BACKEND_DISABLED)
            moved = (long)tether_proxy_move_backend(p, (uint32_t)b, TETHER_MOVE_DISABLED);
        const char *ev = to == TETHER_BACKEND_ACTIVE     ? "backend.enabled"
                         : to == TETHER_BACKEND_DRAINING ? "backend.draining"
                                                         : "backend.disabled";
        tether_events_publishf(ev, "{s:s,s:s,s:i}", "backend", be->name, "reason", reason,
                               "moved", (int)moved);
    }
    pthread_mutex_unlock(&p->lock);
    return moved;
}

void tether_proxy_drain_tick(struct tether_proxy *p)
{
    pthread_mutex_lock(&p->lock);
    const struct tether_config *cfg = atomic_load(&p->cfg);
    uint64_t now = tether_now_ms();
    size_t n = atomic_load(&p->nbackends);
    for (size_t i = 0; i < n; i++) {
        struct tether_backend *be = &p->backends[i];
        if (!atomic_load(&be->present) || atomic_load(&be->admin) != TETHER_BACKEND_DRAINING ||
            be->drain_since_ms + cfg->drain_timeout_ms > now ||
            tether_session_load(p->sessions, (uint32_t)i) == 0)
            continue;
        size_t moved = tether_proxy_move_backend(p, (uint32_t)i, TETHER_MOVE_DRAINED);
        if (moved)
            tether_log_info("backend %s: drain_timeout passed; %zu session%s moved", be->name,
                            moved, moved == 1 ? "" : "s");
    }
    retired_sweep(p);
    pthread_mutex_unlock(&p->lock);
}

/* Is backend b (present) as the file's entry cb says? */
static bool same_address(const struct tether_backend *b, const struct tether_config_backend *cb)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return tether_sockaddr_parse(cb->address, &ss, &len) == 0 && len == b->addrlen &&
           memcmp(&ss, &b->addr, len) == 0;
}

static void add_errors(struct tether_strlist *to, struct tether_config_errors *errs)
{
    for (size_t e = 0; e < errs->n; e++)
        if (!errs->items[e].warning)
            tether_strlist_addf(to, "%s: %s", errs->items[e].key ? errs->items[e].key : "tls",
                                errs->items[e].message);
    tether_config_errors_deinit(errs);
}

/* What a reload does with one backend entry of the new file. */
enum entry_plan { P_KEEP, P_ADOPT, P_ADD };

/*
 * Everything a reload could trip on, checked before anything changes:
 * certificates, backend addresses and TLS settings, room for new backends.
 * Fills plan[] (per entry of ncfg) and *fresh. Returns 0 or -1 with errors.
 */
static int reload_check(struct tether_proxy *p, const struct tether_config *ncfg,
                        enum entry_plan *plan, int *slot, struct tether_tls_server ***fresh,
                        int *access, struct tether_reload_report *rep)
{
    struct tether_config_errors errs = {0};
    *fresh = tls_build(ncfg, &errs);
    add_errors(rep->errors, &errs);
    *access = -3; /* unchanged */
    if (strcmp(ncfg->log.access, atomic_load(&p->cfg)->log.access) != 0) {
        *access = access_open(ncfg->log.access);
        if (*access == -2)
            tether_strlist_addf(rep->errors, "log.access: %s: %s", ncfg->log.access,
                                strerror(errno));
    }
    size_t adds = 0;
    for (size_t j = 0; j < ncfg->nbackends; j++) {
        const struct tether_config_backend *cb = &ncfg->backends[j];
        struct sockaddr_storage ss;
        socklen_t len;
        if (tether_sockaddr_parse(cb->address, &ss, &len) < 0) {
            tether_strlist_addf(rep->errors, "backends[%zu].address: %s: not an IP address and port",
                                j, cb->address);
            continue;
        }
        if (cb->tls) {
            struct tether_tls_client *probe = tether_tls_client_new(ncfg, j, &errs);
            add_errors(rep->errors, &errs);
            if (!probe)
                continue;
            tether_tls_client_free(probe);
        }
        slot[j] = tether_proxy_backend_find(p, cb->name);
        const struct tether_backend *b = slot[j] >= 0 ? &p->backends[slot[j]] : NULL;
        if (b && same_address(b, cb))
            plan[j] = b->runtime ? P_ADOPT : P_KEEP;
        else
            plan[j] = P_ADD, adds++;
    }
    size_t room = TETHER_PROXY_MAX_BACKENDS - atomic_load(&p->nbackends);
    for (size_t i = 0; room < adds && i < atomic_load(&p->nbackends); i++)
        room += slot_reusable(p, i);
    if (adds > room)
        tether_strlist_addf(rep->errors, "backends: room for %zu more, the file adds %zu", room,
                            adds);
    if (*fresh && rep->errors->n == 0)
        return 0;
    if (*access >= 0)
        close(*access);
    for (size_t i = 0; *fresh && i < ncfg->nlistens; i++)
        tether_tls_server_free((*fresh)[i]);
    free(*fresh);
    *fresh = NULL;
    return -1;
}

/* A restart-only string key: the running value stays, and the reload says so. */
static void keep_running(char **nv, const char *ov, const char *key,
                         struct tether_reload_report *rep)
{
    if (strcmp(*nv ? *nv : "", ov ? ov : "") == 0)
        return;
    char *dup = ov ? strdup(ov) : NULL;
    if (ov && !dup)
        return;
    tether_strlist_addf(rep->restart_required, "%s: takes effect on restart", key);
    free(*nv);
    *nv = dup;
}

int tether_proxy_reload(struct tether_proxy *p, struct tether_config *ncfg,
                        struct tether_reload_report *rep)
{
    pthread_mutex_lock(&p->lock);
    const struct tether_config *ocfg = atomic_load(&p->cfg);
    enum entry_plan *plan = calloc(ncfg->nbackends + 1, sizeof(*plan));
    int *slot = calloc(ncfg->nbackends + 1, sizeof(*slot));
    unsigned char *keep = calloc(TETHER_PROXY_MAX_BACKENDS, 1);
    struct tether_tls_server **fresh = NULL;
    int access;
    if (!plan || !slot || !keep) {
        tether_strlist_addf(rep->errors, "out of memory");
        goto fail;
    }
    if (reload_check(p, ncfg, plan, slot, &fresh, &access, rep) < 0)
        goto fail;

    /* From here on nothing fails. Restart-only settings keep their running values. */
    if (ncfg->workers != ocfg->workers) {
        tether_strlist_addf(rep->restart_required, "workers: %u stays until a restart (file: %u)",
                            ocfg->workers, ncfg->workers);
        ncfg->workers = ocfg->workers;
    }
    if (ncfg->state.store != ocfg->state.store) {
        tether_strlist_addf(rep->restart_required, "state.store: takes effect on restart");
        ncfg->state.store = ocfg->state.store;
    }
    keep_running(&ncfg->admin.listen, ocfg->admin.listen, "admin.listen", rep);

    /* Backends, matched by name. A backend whose address changed leaves
       first (not present: its name is free), the new entries come in, the
       ring is rebuilt, then the leaving and unlisted ones have their
       sessions moved, onto the new set. */
    bool ring_dirty = ncfg->balance.vnodes != ocfg->balance.vnodes;
    for (size_t j = 0; j < ncfg->nbackends; j++) {
        const struct tether_config_backend *cb = &ncfg->backends[j];
        if (plan[j] == P_ADD && slot[j] >= 0) {
            struct tether_backend *old = &p->backends[slot[j]];
            tether_strlist_addf(rep->changes, "backend %s: address %s -> %s (removed and added)",
                                cb->name, old->address, cb->address);
            if (old->runtime)
                tether_strlist_addf(rep->dropped, "backend %s added at run time (%s)", cb->name,
                                    old->address);
            atomic_store(&old->present, 0);
            old->removed_ms = tether_now_ms(); /* not reusable by the entry replacing it */
            ring_dirty = true;
            continue;
        }
        if (plan[j] == P_ADD)
            continue;
        struct tether_backend *be = &p->backends[slot[j]];
        keep[slot[j]] = 1;
        if (plan[j] == P_ADOPT) {
            be->runtime = false;
            tether_strlist_addf(rep->changes, "backend %s: added at run time, now from the file",
                                cb->name);
        }
        if (be->weight != cb->weight) {
            tether_strlist_addf(rep->changes, "backend %s: weight %u -> %u", cb->name, be->weight,
                                cb->weight);
            be->weight = cb->weight;
            p->weights[slot[j]] = cb->weight;
            ring_dirty = true;
        }
        be->max_sessions = cb->max_sessions;
        int adm = atomic_load(&be->admin);
        if (adm != TETHER_BACKEND_ACTIVE) {
            tether_strlist_addf(rep->dropped, "backend %s: %s set at run time", cb->name,
                                adm == TETHER_BACKEND_DRAINING ? "drain" : "disable");
            atomic_store(&be->admin, TETHER_BACKEND_ACTIVE);
            set_reason(be, "reload: as the file says");
            tether_events_publishf("backend.enabled", "{s:s,s:s}", "backend", cb->name, "reason",
                                   "reload: as the file says");
        }
        /* Backend TLS: a fresh client context whenever the file has one. */
        struct tether_config_errors errs = {0};
        struct tether_tls_client *tls = cb->tls ? tether_tls_client_new(ncfg, j, &errs) : NULL;
        tether_config_errors_deinit(&errs);
        if (tls || !cb->tls) {
            retire(p, R_TLS_CLIENT, p->tls_backends[slot[j]], GRACE_MS);
            __atomic_store_n(&p->tls_backends[slot[j]], tls, __ATOMIC_RELEASE);
        }
    }
    for (size_t j = 0; j < ncfg->nbackends; j++) {
        if (plan[j] != P_ADD)
            continue;
        const struct tether_config_backend *cb = &ncfg->backends[j];
        char err[256];
        int s = slot_fill(p, ncfg, j, cb->name, cb->address, cb->weight, cb->max_sessions, false,
                          err, sizeof(err));
        if (s < 0) { /* checked above: only memory can fail here */
            tether_log_error("reload: %s", err);
            continue;
        }
        keep[s] = 1;
        ring_dirty = true;
        if (slot[j] < 0)
            tether_strlist_addf(rep->changes, "backend %s added (%s)", cb->name, cb->address);
        tether_events_publishf("backend.added", "{s:s,s:s}", "backend", cb->name, "address",
                               cb->address);
    }
    if (ring_dirty)
        rebuild_ring(p, ncfg->balance.vnodes);
    size_t n = atomic_load(&p->nbackends);
    for (size_t b = 0; b < n; b++) {
        struct tether_backend *be = &p->backends[b];
        bool leaving = false;
        for (size_t j = 0; j < ncfg->nbackends; j++)
            leaving |= plan[j] == P_ADD && slot[j] == (int)b;
        if (keep[b] || (!atomic_load(&be->present) && !leaving))
            continue;
        if (!leaving)
            tether_strlist_addf(be->runtime ? rep->dropped : rep->changes, "backend %s %s",
                                be->name, be->runtime ? "added at run time: not in the file"
                                                      : "removed");
        size_t moved = slot_remove(p, (uint32_t)b, ncfg);
        if (moved)
            tether_strlist_addf(rep->changes, "%zu session%s moved off %s (%s)", moved,
                                moved == 1 ? "" : "s", be->name, be->address);
    }

    /* Settings: the session table's budget and timeouts, the access log, the config. */
    struct tether_session_limits lim = {
        .max_sessions = ncfg->session.max_sessions,
        .max_state_bytes = ncfg->session.max_state_bytes,
        .idle_timeout_ms = ncfg->session.idle_timeout_ms,
        .max_lifetime_ms = ncfg->session.max_lifetime_ms,
        .provisional_timeout_ms = ncfg->session.provisional_timeout_ms,
    };
    tether_session_set_limits(p->sessions, &lim);
    if (access != -3) {
        /* Writers load the descriptor per line: the old one closes after a grace. */
        retire_fd(p, R_FD, NULL, atomic_exchange(&p->access_fd, access), GRACE_MS);
        tether_strlist_addf(rep->changes, "log.access: %s", ncfg->log.access);
    }
    retired_sweep(p);
    tls_swap(p, ocfg, fresh);
    atomic_store(&p->cfg, ncfg);
    retire(p, R_CONFIG, (void *)ocfg, CONFIG_GRACE_MS);
    free(plan);
    free(slot);
    free(keep);
    pthread_mutex_unlock(&p->lock);
    return 0;
fail:
    free(plan);
    free(slot);
    free(keep);
    pthread_mutex_unlock(&p->lock);
    return -1;
}

/* The sessions of one backend, copied out of the table for a plan. */
struct plan_rec {
    char *key;
    size_t len;
    uint64_t hash;
    bool provisional;
};

struct plan {
    uint32_t from;
    struct plan_rec *v;
    size_t n, cap;
    bool nomem;
};

static int plan_collect(void *ctx, const struct tether_session_view *v)
{
    struct plan *pl = ctx;
    if (v->info.backend != pl->from)
        return 0;
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? 2 * pl->cap : 64;
        struct plan_rec *nv = realloc(pl->v, cap * sizeof(*nv));
        if (!nv) {
            pl->nomem = true;
            return 1;
        }
        pl->v = nv;
        pl->cap = cap;
    }
    char *key = malloc(v->key_len);
    if (!key) {
        pl->nomem = true;
        return 1;
    }
    memcpy(key, v->key, v->key_len);
    pl->v[pl->n++] = (struct plan_rec){key, v->key_len, tether_ring_hash(v->key, v->key_len),
                                       v->info.provisional};
    return 0;
}

long tether_proxy_plan_moves(struct tether_proxy *p, uint32_t b,
                             void (*fn)(void *ctx, const char *key, size_t len, int to), void *ctx)
{
    struct plan pl = {.from = b};
    for (size_t i = 0; i < tether_session_shards(p->sessions) && !pl.nomem; i++)
        tether_session_export(p->sessions, i, plan_collect, &pl);
    long rc = pl.nomem ? -ENOMEM : (long)pl.n;
    size_t n = atomic_load(&p->nbackends);
    uint32_t *loads = calloc(n ? n : 1, sizeof(*loads));
    struct tether_lb_candidate *cands = calloc(n ? n : 1, sizeof(*cands));
    if (!loads || !cands)
        rc = -ENOMEM;
    if (rc >= 0) {
        /* What the mover would do: the bounded pick among the others, with
           each move counted in the loads the next pick sees. */
        tether_session_loads(p->sessions, loads, n);
        for (size_t i = 0; i < n; i++) {
            const struct tether_backend *be = &p->backends[i];
            cands[i] = (struct tether_lb_candidate){loads[i], be->weight, be->max_sessions,
                                                    (unsigned char)(i != b &&
                                                                    tether_backend_takes_new(be))};
        }
        const struct tether_ring *ring = atomic_load(&p->ring);
        size_t nodes = tether_ring_nodes(ring);
        double c = atomic_load(&p->cfg)->balance.load_factor;
        for (size_t k = 0; k < pl.n; k++) {
            int to = tether_lb_bounded_pick(ring, pl.v[k].hash, cands, nodes < n ? nodes : n, c);
            if (to >= 0 && !pl.v[k].provisional)
                cands[to].load++;
            fn(ctx, pl.v[k].key, pl.v[k].len, to);
        }
    }
    for (size_t k = 0; k < pl.n; k++)
        free(pl.v[k].key);
    free(pl.v);
    free(loads);
    free(cands);
    return rc;
}

int tether_proxy_reopen_logs(struct tether_proxy *p)
{
    pthread_mutex_lock(&p->lock);
    const char *access = atomic_load(&p->cfg)->log.access;
    int rc = 0;
    int cur = atomic_load(&p->access_fd);
    if (cur >= 0 && strcmp(access, "stdout") != 0 && strcmp(access, "off") != 0) {
        int fd = open(access, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        /* dup2 swaps the file under the same descriptor: a worker's write
           goes wholly to the old file or wholly to the new one. */
        if (fd < 0 || dup3(fd, cur, O_CLOEXEC) < 0) {
            tether_log_error("access log %s: cannot reopen: %s", access, strerror(errno));
            rc = -1;
        }
        if (fd >= 0)
            close(fd);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}
