/*
 * The redis store (DESIGN.md "The sidecar"): what it shares between
 * workers, each worker's part, the session table's watcher, and the
 * status operators read.
 *
 * Threads. Each worker owns an event_base that no other thread may touch,
 * so each worker has its own Redis connection on its own base: a claim is
 * sent, timed and answered on the thread whose request waits for it, with
 * no lock or hand-off between threads on the data path. Worker 0 also
 * holds the subscription to <prefix>moves (pub/sub needs a connection of
 * its own). A change made on a worker thread goes straight into that
 * worker's write-behind queue; one made elsewhere (a health check moving a
 * dead backend's sessions, the admin API) goes into the inbox of the
 * worker the key hashes to, behind a mutex and a wake-up pipe.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/rand.h>

#include "tether/proxy.h"
#include "tether/util.h"
#include "store-int.h"

_Thread_local struct tether_store_worker *store_current;

bool store_log_limited(struct tether_store_worker *sw, enum store_limit which)
{
    uint64_t now = tether_now_ms();
    if (sw->logged_ms[which] && now - sw->logged_ms[which] < 1000)
        return false;
    sw->logged_ms[which] = now;
    return true;
}

void store_set_error(struct tether_store *st, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&st->detail_lock);
    va_start(ap, fmt);
    vsnprintf(st->error, sizeof(st->error), fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&st->detail_lock);
    atomic_store(&st->error_ms, tether_wall_ms());
}

int store_state_copy(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash)
{
    struct tether_session_table *t = sw->st->table;
    for (int tries = 0; tries < 3; tries++) {
        size_t need;
        int n = tether_session_state_copy(t, key, len, hash, sw->state_buf, sw->state_cap - 1,
                                          &need);
        if (n != -ENOSPC)
            return n;
        /* Stored under a larger state_max_bytes than the running one. */
        char *nb = realloc(sw->state_buf, need + 1);
        if (!nb)
            return -ENOMEM;
        sw->state_buf = nb;
        sw->state_cap = need + 1;
    }
    return -ENOSPC;
}

int store_backend_index(const struct tether_store *st, const char *name, size_t len)
{
    const struct tether_proxy *p = st->proxy;
    for (size_t i = 0; i < p->nbackends; i++) {
        if (!atomic_load(&p->backends[i].present))
            continue; /* a removed backend's slot keeps its name a while */
        const char *n = p->backends[i].name;
        if (n[0] == name[0] && strlen(n) == len && memcmp(n, name, len) == 0)
            return (int)i;
    }
    return -1;
}

const char *store_backend_name(const struct tether_store *st, uint32_t b)
{
    return b < st->proxy->nbackends ? st->proxy->backends[b].name : NULL;
}

uint64_t store_ttl_ms(const struct tether_store *st, const struct tether_session_info *in,
                      uint64_t now_ms)
{
    const struct tether_config_session *s = &store_cfg(st)->session;
    uint64_t ttl = in->provisional ? s->provisional_timeout_ms : s->idle_timeout_ms;
    uint64_t end = in->created_ms + s->max_lifetime_ms;
    if (end <= now_ms)
        return 1;
    return end - now_ms < ttl ? end - now_ms : ttl;
}

/* ---- the table's watcher ---- */

static void inbox_push(struct tether_store_worker *sw, enum tether_session_change what,
                       const char *key, size_t len, uint64_t hash,
                       const struct tether_session_info *info)
{
    struct tether_store *st = sw->st;
    bool wake = false, dropped = false;
    pthread_mutex_lock(&sw->inbox_lock);
    size_t max = store_cfg(st)->state.redis.queue_max;
    if (sw->ninbox == sw->inbox_cap && sw->inbox_cap < max) {
        size_t cap = sw->inbox_cap ? sw->inbox_cap * 2 : 64;
        if (cap > max)
            cap = max;
        struct inbox_note *n = realloc(sw->inbox, cap * sizeof(*n));
        if (n) {
            sw->inbox = n;
            sw->inbox_cap = cap;
        }
    }
    if (sw->ninbox < sw->inbox_cap) {
        struct inbox_note *n = &sw->inbox[sw->ninbox++];
        n->what = what;
        n->hash = hash;
        n->info = *info;
        n->len = (uint16_t)len;
        memcpy(n->key, key, len);
        wake = sw->ninbox == 1;
    } else {
        dropped = true;
    }
    pthread_mutex_unlock(&sw->inbox_lock);
    if (dropped)
        atomic_fetch_add(&st->dropped, 1);
    if (wake) {
        char b = 1;
        ssize_t n = write(sw->inbox_fd[1], &b, 1);
        (void)n;
    }
}

/* tether_session_watch_fn: runs under the record's shard lock, on any thread. */
static void on_change(void *ctx, enum tether_session_change what, const char *key, size_t len,
                      uint64_t hash, const struct tether_session_info *info)
{
    struct tether_store *st = ctx;
    if (atomic_load_explicit(&st->closing, memory_order_relaxed))
        return;
    struct tether_store_worker *sw = store_current;
    if (sw && sw->st == st) {
        write_note(sw, what, key, len, hash, info);
        return;
    }
    sw = st->workers[hash % st->nworkers];
    if (sw)
        inbox_push(sw, what, key, len, hash, info);
    else
        atomic_fetch_add(&st->dropped, 1);
}

static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    struct tether_store_worker *sw = arg;
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    pthread_mutex_lock(&sw->inbox_lock);
    struct inbox_note *notes = sw->inbox;
    size_t n = sw->ninbox;
    sw->inbox = NULL;
    sw->ninbox = sw->inbox_cap = 0;
    pthread_mutex_unlock(&sw->inbox_lock);
    for (size_t i = 0; i < n; i++)
        write_note(sw, notes[i].what, notes[i].key, notes[i].len, notes[i].hash, &notes[i].info);
    free(notes);
}

/* ---- the store ---- */

static char *read_password(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        tether_log_error("state.redis.password_file %s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    bool more = !feof(f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    if (more || n == 0) {
        tether_log_error("state.redis.password_file %s: %s", path,
                         more ? "longer than 1023 bytes" : "empty");
        return NULL;
    }
    char *pw = strdup(buf);
    OPENSSL_cleanse(buf, sizeof(buf));
    return pw;
}

struct tether_store *tether_store_new(struct tether_proxy *proxy)
{
    const struct tether_config *cfg = proxy->cfg;
    const struct tether_config_redis *rc = &cfg->state.redis;
    struct tether_store *st = calloc(1, sizeof(*st));
    if (!st)
        goto nomem;
    st->proxy = proxy;
    st->table = proxy->sessions;
    pthread_mutex_init(&st->detail_lock, NULL);
    uint16_t port;
    if (tether_config_split_address(rc->address, st->host, sizeof(st->host), &port) < 0) {
        tether_log_error("state.redis.address %s: not host:port", rc->address);
        goto fail;
    }
    st->port = port;
    if (rc->password_file[0] && !(st->password = read_password(rc->password_file)))
        goto fail;
    st->prefix = rc->prefix;
    st->prefix_len = strlen(rc->prefix);
    snprintf(st->channel, sizeof(st->channel), "%smoves", rc->prefix);
    unsigned char id[8];
    if (RAND_bytes(id, sizeof(id)) != 1)
        goto fail;
    for (size_t i = 0; i < sizeof(id); i++)
        snprintf(st->origin + 2 * i, 3, "%02x", id[i]);
    if (store_sha1_hex(store_lua_claim, st->sha_claim) < 0 ||
        store_sha1_hex(store_lua_sync, st->sha_sync) < 0 ||
        store_sha1_hex(store_lua_end, st->sha_end) < 0)
        goto fail;
    /* A used session's TTL is refreshed well before it could lapse. */
    uint64_t touch = cfg->session.idle_timeout_ms / 4;
    st->touch_ms = touch > 60000 ? 60000 : touch < 10 ? 10 : touch;
    st->nworkers = cfg->workers;
    st->workers = calloc(st->nworkers, sizeof(*st->workers));
    /* Every slot a table can load: backends added at run time count too. */
    st->nreserved = TETHER_SESSION_MAX_BACKENDS;
    st->reserved = calloc(st->nreserved, sizeof(*st->reserved));
    if (!st->workers || !st->reserved)
        goto nomem;
    tether_session_table_watch(proxy->sessions, on_change, st, st->touch_ms);
    tether_log_info("state: redis at %s, keys %ss:*, moves on %s, claims wait at most %llums",
                    rc->address, st->prefix, st->channel, (unsigned long long)rc->claim_timeout_ms);
    return st;
nomem:
    tether_log_error("state: redis: out of memory");
fail:
    tether_store_free(st);
    return NULL;
}

void tether_store_free(struct tether_store *st)
{
    if (!st)
        return;
    if (st->ran) {
        struct tether_store_status s;
        tether_store_status(st, &s);
        tether_log_info("redis: claims %" PRIu64 " (%" PRIu64
                        " past claim_timeout), reconciles %" PRIu64 ", writes %" PRIu64
                        ", error replies %" PRIu64 ", reconnects %" PRIu64
                        ", changes dropped %" PRIu64 ", moves applied %" PRIu64,
                        s.claims, s.claim_timeouts, s.reconciles, s.writes, s.write_errors,
                        s.reconnects, s.dropped, s.moves_applied);
    }
    if (st->table)
        tether_session_table_watch(st->table, NULL, NULL, 0);
    if (st->password) {
        OPENSSL_cleanse(st->password, strlen(st->password));
        free(st->password);
    }
    free(st->workers);
    free(st->reserved);
    pthread_mutex_destroy(&st->detail_lock);
    free(st);
}

void tether_store_add_reserved(const struct tether_store *st, uint32_t *loads, size_t n)
{
    if (n > st->nreserved)
        n = st->nreserved;
    for (size_t i = 0; i < n; i++)
        loads[i] += atomic_load_explicit(&st->reserved[i], memory_order_relaxed);
}

/* ---- a worker's part ---- */

/* First thing on the worker's thread: changes made there go straight to its queue. */
static void on_start(evutil_socket_t fd, short what, void *arg)
{
    store_current = arg;
}

struct tether_store_worker *tether_store_worker_new(struct tether_store *st,
                                                    struct event_base *base, int id)
{
    struct tether_store_worker *sw = calloc(1, sizeof(*sw));
    if (!sw)
        return NULL;
    sw->st = st;
    sw->base = base;
    sw->id = id;
    sw->inbox_fd[0] = sw->inbox_fd[1] = -1;
    pthread_mutex_init(&sw->inbox_lock, NULL);
    TAILQ_INIT(&sw->order);
    TAILQ_INIT(&sw->ready);
    link_init(&sw->data, sw, false);
    if (id == 0) {
        sw->sub = calloc(1, sizeof(*sw->sub));
        if (!sw->sub)
            goto fail;
        link_init(sw->sub, sw, true);
    }
    sw->placer = tether_placer_new(st->proxy);
    sw->state_cap = store_cfg(st)->session.state_max_bytes + 1;
    sw->state_buf = malloc(sw->state_cap);
    if (!sw->placer || !sw->state_buf || !sw->data.retry || !sw->data.watchdog ||
        (sw->sub && (!sw->sub->retry || !sw->sub->watchdog)))
        goto fail;
    if (pipe2(sw->inbox_fd, O_NONBLOCK | O_CLOEXEC) < 0)
        goto fail;
    sw->flush_ev = event_new(base, -1, 0, write_on_flush, sw);
    sw->resume_ev = event_new(base, -1, 0, claim_on_resume, sw);
    sw->inbox_ev = event_new(base, sw->inbox_fd[0], EV_READ | EV_PERSIST, on_inbox, sw);
    sw->start_ev = evtimer_new(base, on_start, sw);
    struct timeval zero = {0, 0};
    if (!sw->flush_ev || !sw->resume_ev || !sw->inbox_ev || !sw->start_ev ||
        event_add(sw->inbox_ev, NULL) < 0 || evtimer_add(sw->start_ev, &zero) < 0)
        goto fail;
    if ((size_t)id < st->nworkers)
        st->workers[id] = sw;
    st->ran = true;
    /* Connecting now, before the worker accepts anything, lets the first
       requests' claims wait for the connection rather than skip Redis.
       The worker's thread does not run yet: its base is ours until then. */
    link_start(&sw->data);
    if (sw->sub)
        link_start(sw->sub);
    return sw;
fail:
    tether_store_worker_free(sw);
    return NULL;
}

void tether_store_worker_free(struct tether_store_worker *sw)
{
    if (!sw)
        return;
    struct tether_store *st = sw->st;
    /* Workers go away one by one from here: nothing more is queued. */
    atomic_store(&st->closing, true);
    if ((size_t)sw->id < st->nworkers && st->workers[sw->id] == sw)
        st->workers[sw->id] = NULL;
    size_t left = sw->dirty.n;
    if (left)
        tether_log_warn("redis: worker %d: %zu session change%s not written to Redis", sw->id, left,
                        left == 1 ? "" : "s");
    sw->closing = true;
    link_deinit(&sw->data);
    if (sw->sub) {
        link_deinit(sw->sub);
        free(sw->sub);
    }
    claim_deinit(sw);
    write_deinit(sw);
    free(sw->inbox);
    if (sw->inbox_fd[0] >= 0) {
        close(sw->inbox_fd[0]);
        close(sw->inbox_fd[1]);
    }
    if (sw->flush_ev)
        event_free(sw->flush_ev);
    if (sw->resume_ev)
        event_free(sw->resume_ev);
    if (sw->inbox_ev)
        event_free(sw->inbox_ev);
    if (sw->start_ev)
        event_free(sw->start_ev);
    pthread_mutex_destroy(&sw->inbox_lock);
    tether_placer_free(sw->placer);
    free(sw->state_buf);
    if (store_current == sw)
        store_current = NULL;
    free(sw);
}

void tether_store_drain(struct tether_store_worker *sw, void (*done)(void *), void *arg)
{
    sw->drained = done;
    sw->drained_arg = arg;
    write_schedule(sw);
    store_check_drained(sw);
}

void store_check_drained(struct tether_store_worker *sw)
{
    if (!sw->drained)
        return;
    int state = atomic_load(&sw->data.state);
    pthread_mutex_lock(&sw->inbox_lock);
    bool empty = TAILQ_EMPTY(&sw->order) && sw->data.nsent == 0 && sw->ninbox == 0;
    pthread_mutex_unlock(&sw->inbox_lock);
    if (!empty && state != L_DOWN)
        return;
    if (!empty)
        tether_log_warn("redis: worker %d: Redis unreachable at stop: %zu session change%s not "
                        "written",
                        sw->id, sw->dirty.n, sw->dirty.n == 1 ? "" : "s");
    void (*done)(void *) = sw->drained;
    sw->drained = NULL;
    done(sw->drained_arg);
}

/* ---- status ---- */

void tether_store_status(const struct tether_store *st, struct tether_store_status *out)
{
    memset(out, 0, sizeof(*out));
    if (!st) {
        out->kind = TETHER_STORE_MEMORY;
        out->healthy = true;
        snprintf(out->detail, sizeof(out->detail), "in process");
        return;
    }
    struct tether_store *s = (struct tether_store *)st;
    out->kind = TETHER_STORE_REDIS;
    out->queue = atomic_load(&s->queue);
    out->queue_max = store_cfg(s)->state.redis.queue_max;
    out->claims = atomic_load(&s->claims);
    out->claim_timeouts = atomic_load(&s->claim_timeouts);
    out->reconciles = atomic_load(&s->reconciles);
    out->write_errors = atomic_load(&s->write_errors);
    out->reconnects = atomic_load(&s->reconnects);
    out->dropped = atomic_load(&s->dropped);
    out->writes = atomic_load(&s->writes);
    out->moves_applied = atomic_load(&s->moves_applied);
    out->unknown_backends = atomic_load(&s->unknown_backends);

    size_t links = 0, down = 0, connecting = 0, slow = 0;
    uint64_t now = tether_wall_ms(), down_since = now;
    for (size_t i = 0; i < s->nworkers; i++) {
        const struct tether_store_worker *sw = s->workers[i];
        const struct link *ls[2] = {sw ? &sw->data : NULL, sw ? sw->sub : NULL};
        for (size_t j = 0; j < 2; j++) {
            if (!ls[j])
                continue;
            links++;
            int state = atomic_load(&ls[j]->state);
            uint64_t since = atomic_load(&ls[j]->since_ms);
            if (state == L_DOWN) {
                down++;
                if (since < down_since)
                    down_since = since;
            } else if (state == L_CONNECTING) {
                connecting++;
            } else if (atomic_load(&ls[j]->stalled)) {
                slow++;
            }
        }
    }
    char error[sizeof(s->error)];
    pthread_mutex_lock(&s->detail_lock);
    memcpy(error, s->error, sizeof(error));
    pthread_mutex_unlock(&s->detail_lock);
    uint64_t err_ms = atomic_load(&s->error_ms);
    bool recent = err_ms && now - err_ms < STORE_ERROR_HOLD_MS;
    out->healthy = links > 0 && !down && !connecting && !slow && !recent;
    if (down)
        snprintf(out->detail, sizeof(out->detail),
                 "down for %llus (%zu of %zu connections): %.80s; serving from the local table",
                 (unsigned long long)((now - down_since) / 1000), down, links, error);
    else if (connecting)
        snprintf(out->detail, sizeof(out->detail), "connecting to %.100s:%d", s->host, s->port);
    else if (slow)
        snprintf(out->detail, sizeof(out->detail),
                 "slow: Redis at %.100s:%d is not answering; new keys are placed without waiting",
                 s->host, s->port);
    else if (recent)
        snprintf(out->detail, sizeof(out->detail), "error replies, treated as down: %.150s", error);
    else if (links)
        snprintf(out->detail, sizeof(out->detail), "connected to %.100s:%d", s->host, s->port);
    else
        snprintf(out->detail, sizeof(out->detail), "not started");
}
