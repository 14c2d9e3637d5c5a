/*
 * The session table: key -> backend, sharded by key hash. Each shard has a
 * mutex, a chained hash, and three intrusive lists: by last use (live and
 * provisional apart, for idle expiry and LRU eviction), by creation (for
 * max_lifetime) and by backend (so moving a backend's sessions costs time
 * in proportion to their number). Loads per backend are atomics written
 * under the placement mutex, so check-then-insert never overshoots.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "tether/session.h"

struct rec {
    struct rec *hnext;           /* hash chain */
    TAILQ_ENTRY(rec) use;        /* shard->live or shard->prov, oldest use first */
    TAILQ_ENTRY(rec) age;        /* shard->age, oldest first */
    TAILQ_ENTRY(rec) by_backend; /* shard->backends[backend] */
    uint64_t hash;
    uint64_t created_ms;
    uint64_t last_seen_ms;
    uint64_t requests;
    uint64_t noted_ms; /* when the watcher was last told of a use */
    void *state;       /* the handoff blob, owned */
    uint32_t state_len;
    uint32_t backend;
    uint32_t epoch;
    uint32_t inflight;
    uint32_t moved_from;
    uint16_t keylen;
    uint8_t provisional;
    uint8_t handoff;
    uint8_t stale;
    char key[];
};

TAILQ_HEAD(rec_list, rec);

/* Everything in a shard is guarded by its lock. */
struct shard {
    pthread_mutex_t lock;
    struct rec **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    struct rec_list live;
    struct rec_list prov;
    struct rec_list age;
    struct rec_list *backends; /* indexed by backend, grown on demand */
    size_t nbackends;
    struct tether_session_stats stats;
} __attribute__((aligned(64)));

struct tether_session_table {
    struct tether_session_limits lim;
    struct shard *shards;
    size_t nshards;
    pthread_mutex_t place_lock;   /* guards placement decisions and load increments */
    _Atomic uint64_t count;       /* records in all shards */
    _Atomic uint64_t state_bytes; /* all blobs together */
    _Atomic uint64_t state_refused;
    tether_session_watch_fn watch; /* set before the table is shared */
    void *watch_ctx;
    uint64_t touch_ms;
    _Atomic uint32_t loads[TETHER_SESSION_MAX_BACKENDS];
    tether_session_observer_fn obs; /* set before the table is shared */
    void *obs_ctx;
};

static void notify(const struct tether_session_table *t, enum tether_session_event ev,
                   const struct rec *r, uint32_t from)
{
    if (t->obs)
        t->obs(t->obs_ctx, ev, r->key, r->keylen, r->backend, from, r->epoch);
}

void tether_session_observe(struct tether_session_table *t, tether_session_observer_fn fn,
                            void *ctx)
{
    t->obs = fn;
    t->obs_ctx = ctx;
}

#define MAX_EXPIRE_PER_SHARD 4096

static struct shard *shard_of(struct tether_session_table *t, uint64_t hash)
{
    return &t->shards[(hash >> 40) & (t->nshards - 1)];
}

struct tether_session_table *tether_session_table_new(const struct tether_session_limits *lim,
                                                      size_t nshards)
{
    if (nshards == 0)
        nshards = 64;
    if (nshards & (nshards - 1))
        return NULL;
    struct tether_session_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->lim = *lim;
    t->nshards = nshards;
    t->shards = aligned_alloc(64, nshards * sizeof(*t->shards));
    if (!t->shards) {
        free(t);
        return NULL;
    }
    memset(t->shards, 0, nshards * sizeof(*t->shards));
    pthread_mutex_init(&t->place_lock, NULL);
    for (size_t i = 0; i < nshards; i++) {
        struct shard *sh = &t->shards[i];
        pthread_mutex_init(&sh->lock, NULL);
        TAILQ_INIT(&sh->live);
        TAILQ_INIT(&sh->prov);
        TAILQ_INIT(&sh->age);
    }
    return t;
}

void tether_session_table_free(struct tether_session_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nshards; i++) {
        struct shard *sh = &t->shards[i];
        for (size_t b = 0; b < sh->nbuckets; b++) {
            struct rec *r = sh->buckets[b];
            while (r) {
                struct rec *next = r->hnext;
                free(r->state);
                free(r);
                r = next;
            }
        }
        free(sh->buckets);
        free(sh->backends);
        pthread_mutex_destroy(&sh->lock);
    }
    pthread_mutex_destroy(&t->place_lock);
    free(t->shards);
    free(t);
}

uint32_t tether_session_load(const struct tether_session_table *t, uint32_t b)
{
    return b < TETHER_SESSION_MAX_BACKENDS
               ? atomic_load_explicit(&t->loads[b], memory_order_relaxed)
               : 0;
}

void tether_session_loads(const struct tether_session_table *t, uint32_t *out, size_t n)
{
    if (n > TETHER_SESSION_MAX_BACKENDS)
        n = TETHER_SESSION_MAX_BACKENDS;
    for (size_t i = 0; i < n; i++)
        out[i] = atomic_load_explicit(&t->loads[i], memory_order_relaxed);
}

size_t tether_session_shards(const struct tether_session_table *t)
{
    return t->nshards;
}

static struct rec *find(struct shard *sh, const char *key, size_t len, uint64_t hash)
{
    if (!sh->nbuckets)
        return NULL;
    for (struct rec *r = sh->buckets[hash & (sh->nbuckets - 1)]; r; r = r->hnext)
        if (r->hash == hash && r->keylen == len && memcmp(r->key, key, len) == 0)
            return r;
    return NULL;
}

/* Double the buckets when the chains would pass one record on average. */
static int grow(struct shard *sh)
{
    size_t n = sh->nbuckets ? sh->nbuckets * 2 : 64;
    struct rec **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return -ENOMEM;
    for (size_t i = 0; i < sh->nbuckets; i++) {
        struct rec *r = sh->buckets[i];
        while (r) {
            struct rec *next = r->hnext;
            size_t j = r->hash & (n - 1);
            r->hnext = nb[j];
            nb[j] = r;
            r = next;
        }
    }
    free(sh->buckets);
    sh->buckets = nb;
    sh->nbuckets = n;
    return 0;
}

static struct rec_list *backend_list(struct shard *sh, uint32_t b)
{
    if (b >= sh->nbackends) {
        size_t n = sh->nbackends ? sh->nbackends : 8;
        while (n <= b)
            n *= 2;
        struct rec_list *nl = malloc(n * sizeof(*nl));
        if (!nl)
            return NULL;
        /* TAILQ heads hold a pointer to their last element's next field:
           rebuild each list into the new array rather than copying heads. */
        for (size_t i = 0; i < n; i++)
            TAILQ_INIT(&nl[i]);
        for (size_t i = 0; i < sh->nbackends; i++) {
            struct rec *r;
            while ((r = TAILQ_FIRST(&sh->backends[i]))) {
                TAILQ_REMOVE(&sh->backends[i], r, by_backend);
                TAILQ_INSERT_TAIL(&nl[i], r, by_backend);
            }
        }
        free(sh->backends);
        sh->backends = nl;
        sh->nbackends = n;
    }
    return &sh->backends[b];
}

static void unlink_rec(struct tether_session_table *t, struct shard *sh, struct rec *r,
                       enum tether_session_event ev)
{
    notify(t, ev, r, r->backend);
    struct rec **pp = &sh->buckets[r->hash & (sh->nbuckets - 1)];
    while (*pp != r)
        pp = &(*pp)->hnext;
    *pp = r->hnext;
    TAILQ_REMOVE(r->provisional ? &sh->prov : &sh->live, r, use);
    TAILQ_REMOVE(&sh->age, r, age);
    TAILQ_REMOVE(&sh->backends[r->backend], r, by_backend);
    if (r->provisional) {
        sh->stats.provisional--;
    } else {
        sh->stats.live--;
        atomic_fetch_sub(&t->loads[r->backend], 1);
    }
    sh->count--;
    atomic_fetch_sub(&t->count, 1);
    atomic_fetch_sub(&t->state_bytes, r->state_len);
    free(r->state);
    free(r);
}

static int evict_in(struct tether_session_table *t, struct shard *sh);

/*
 * Make room under the table budget: the least recently used idle record of
 * this shard goes, provisional ones first; when this shard has none, one of
 * another shard whose lock is free right now (trylock: the caller holds its
 * own shard's, so waiting could deadlock). Returns 0 or -ENOSPC.
 */
static int evict_one(struct tether_session_table *t, struct shard *sh)
{
    if (evict_in(t, sh) == 0)
        return 0;
    size_t start = (size_t)(sh - t->shards);
    for (size_t k = 1; k < t->nshards; k++) {
        struct shard *o = &t->shards[(start + k) & (t->nshards - 1)];
        if (pthread_mutex_trylock(&o->lock) != 0)
            continue;
        int rc = evict_in(t, o);
        pthread_mutex_unlock(&o->lock);
        if (rc == 0)
            return 0;
    }
    return -ENOSPC;
}

static int evict_in(struct tether_session_table *t, struct shard *sh)
{
    struct rec_list *lists[2] = {&sh->prov, &sh->live};
    for (size_t i = 0; i < 2; i++) {
        struct rec *r;
        TAILQ_FOREACH(r, lists[i], use)
        {
            if (r->inflight == 0) {
                unlink_rec(t, sh, r, TETHER_SESSION_EV_EVICTED);
                sh->stats.evicted++;
                return 0;
            }
        }
    }
    return -ENOSPC;
}

static bool due(const struct tether_session_table *t, const struct rec *r, uint64_t now)
{
    uint64_t idle = r->provisional ? t->lim.provisional_timeout_ms : t->lim.idle_timeout_ms;
    return r->last_seen_ms + idle <= now || r->created_ms + t->lim.max_lifetime_ms <= now;
}

static void fill(const struct rec *r, struct tether_session_info *out);

/* Tell the watcher; the caller holds the record's shard lock. */
static void note(const struct tether_session_table *t, struct rec *r,
                 enum tether_session_change what, uint64_t now)
{
    if (!t->watch)
        return;
    struct tether_session_info info;
    fill(r, &info);
    r->noted_ms = now;
    t->watch(t->watch_ctx, what, r->key, r->keylen, r->hash, &info);
}

static void touch(const struct tether_session_table *t, struct shard *sh, struct rec *r,
                  uint64_t now)
{
    r->last_seen_ms = now;
    struct rec_list *l = r->provisional ? &sh->prov : &sh->live;
    if (TAILQ_NEXT(r, use)) {
        TAILQ_REMOVE(l, r, use);
        TAILQ_INSERT_TAIL(l, r, use);
    }
    /* Uses are many; the store needs them only to keep its copy alive. */
    if (t->watch && now >= r->noted_ms + t->touch_ms)
        note(t, r, TETHER_SESSION_NOTE_UPDATE, now);
}

static void fill(const struct rec *r, struct tether_session_info *out)
{
    if (!out)
        return;
    out->backend = r->backend;
    out->epoch = r->epoch;
    out->created_ms = r->created_ms;
    out->last_seen_ms = r->last_seen_ms;
    out->requests = r->requests;
    out->inflight = r->inflight;
    out->provisional = r->provisional;
    out->handoff = r->handoff;
    out->moved_from = r->moved_from;
    out->state_len = r->state_len;
    out->stale = r->stale;
}

/* Insert a new record; the caller holds the shard lock and has counted its load. */
static struct rec *insert(struct tether_session_table *t, struct shard *sh, const char *key,
                          size_t len, uint64_t hash, uint32_t b, bool provisional, uint64_t now)
{
    struct rec_list *bl = backend_list(sh, b);
    if (!bl || (sh->count >= sh->nbuckets && grow(sh) < 0))
        return NULL;
    struct rec *r = calloc(1, sizeof(*r) + len);
    if (!r)
        return NULL;
    memcpy(r->key, key, len);
    r->keylen = (uint16_t)len;
    r->hash = hash;
    r->backend = b;
    r->epoch = 1;
    r->created_ms = r->last_seen_ms = r->noted_ms = now;
    r->provisional = provisional;
    size_t i = hash & (sh->nbuckets - 1);
    r->hnext = sh->buckets[i];
    sh->buckets[i] = r;
    TAILQ_INSERT_TAIL(provisional ? &sh->prov : &sh->live, r, use);
    TAILQ_INSERT_TAIL(&sh->age, r, age);
    TAILQ_INSERT_TAIL(bl, r, by_backend);
    sh->count++;
    atomic_fetch_add(&t->count, 1);
    sh->stats.created++;
    if (provisional)
        sh->stats.provisional++;
    else
        sh->stats.live++;
    return r;
}

/* A provisional record becomes live on backend b (its own or a new one). */
static int make_live(struct shard *sh, struct rec *r, uint32_t b)
{
    if (b != r->backend) {
        struct rec_list *bl = backend_list(sh, b);
        if (!bl)
            return -ENOMEM;
        TAILQ_REMOVE(&sh->backends[r->backend], r, by_backend);
        TAILQ_INSERT_TAIL(bl, r, by_backend);
        r->backend = b;
        r->epoch++;
    }
    TAILQ_REMOVE(&sh->prov, r, use);
    TAILQ_INSERT_TAIL(&sh->live, r, use);
    r->provisional = 0;
    sh->stats.provisional--;
    sh->stats.live++;
    return 0;
}

int tether_session_acquire(struct tether_session_table *t, const char *key, size_t len,
                           uint64_t hash, uint64_t now_ms, unsigned flags,
                           tether_session_place_fn place, void *ctx,
                           struct tether_session_info *out)
{
    struct shard *sh = shard_of(t, hash);
    int rc;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r && r->inflight == 0 && due(t, r, now_ms)) {
        unlink_rec(t, sh, r, TETHER_SESSION_EV_EXPIRED);
        sh->stats.expired++;
        r = NULL;
    }
    if (r && r->stale && (flags & TETHER_SESSION_LOOKUP)) {
        fill(r, out);
        rc = TETHER_SESSION_STALE;
        goto out;
    }
    if (r) {
        if (r->provisional && (flags & TETHER_SESSION_CONFIRM)) {
            pthread_mutex_lock(&t->place_lock);
            uint32_t was = r->backend;
            int b = place(ctx, hash, (int)r->backend);
            if (b < 0 || b >= TETHER_SESSION_MAX_BACKENDS || make_live(sh, r, (uint32_t)b) < 0) {
                pthread_mutex_unlock(&t->place_lock);
                rc = b < 0 ? TETHER_SESSION_FULL : TETHER_SESSION_ENOMEM;
                goto out;
            }
            atomic_fetch_add(&t->loads[b], 1);
            pthread_mutex_unlock(&t->place_lock);
            note(t, r, r->backend != was ? TETHER_SESSION_NOTE_MOVE : TETHER_SESSION_NOTE_UPDATE,
                 now_ms);
        }
        r->requests++;
        r->inflight++;
        touch(t, sh, r, now_ms);
        fill(r, out);
        rc = TETHER_SESSION_FOUND;
        goto out;
    }
    if (flags & TETHER_SESSION_LOOKUP) {
        rc = TETHER_SESSION_MISS;
        goto out;
    }

    bool provisional = flags & TETHER_SESSION_PROVISIONAL;
    pthread_mutex_lock(&t->place_lock);
    int b = place(ctx, hash, -1);
    if (b < 0 || b >= TETHER_SESSION_MAX_BACKENDS) {
        pthread_mutex_unlock(&t->place_lock);
        rc = TETHER_SESSION_FULL;
        goto out;
    }
    /* Only a session that has a home makes room: a refusal evicts nothing. */
    if (atomic_load(&t->count) >= t->lim.max_sessions && evict_one(t, sh) < 0) {
        pthread_mutex_unlock(&t->place_lock);
        rc = TETHER_SESSION_ENOMEM;
        goto out;
    }
    r = insert(t, sh, key, len, hash, (uint32_t)b, provisional, now_ms);
    if (r && !provisional)
        atomic_fetch_add(&t->loads[b], 1);
    pthread_mutex_unlock(&t->place_lock);
    if (!r) {
        rc = TETHER_SESSION_ENOMEM;
        goto out;
    }
    r->requests = 1;
    r->inflight = 1;
    note(t, r, TETHER_SESSION_NOTE_CREATE, now_ms);
    fill(r, out);
    notify(t, TETHER_SESSION_EV_CREATED, r, r->backend);
    rc = TETHER_SESSION_CREATED;
out:
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

void tether_session_release(struct tether_session_table *t, const char *key, size_t len,
                            uint64_t hash, uint64_t created_ms, uint64_t now_ms)
{
    struct shard *sh = shard_of(t, hash);
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r && r->created_ms == created_ms) {
        if (r->inflight)
            r->inflight--;
        /* Past its lifetime while busy: it goes with its last request. */
        if (r->inflight == 0 && r->created_ms + t->lim.max_lifetime_ms <= now_ms) {
            unlink_rec(t, sh, r, TETHER_SESSION_EV_EXPIRED);
            sh->stats.expired++;
        } else {
            touch(t, sh, r, now_ms);
        }
    }
    pthread_mutex_unlock(&sh->lock);
}

int tether_session_bind(struct tether_session_table *t, const char *key, size_t len, uint64_t hash,
                        uint32_t b, uint64_t now_ms)
{
    if (b >= TETHER_SESSION_MAX_BACKENDS)
        return -EINVAL;
    struct shard *sh = shard_of(t, hash);
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r && r->inflight == 0 && due(t, r, now_ms)) {
        unlink_rec(t, sh, r, TETHER_SESSION_EV_EXPIRED);
        sh->stats.expired++;
        r = NULL;
    }
    if (r) {
        if (r->backend != b) {
            rc = -EEXIST;
        } else {
            if (r->provisional) {
                pthread_mutex_lock(&t->place_lock);
                rc = make_live(sh, r, b);
                if (rc == 0)
                    atomic_fetch_add(&t->loads[b], 1);
                pthread_mutex_unlock(&t->place_lock);
                if (rc == 0)
                    note(t, r, TETHER_SESSION_NOTE_UPDATE, now_ms);
            }
            touch(t, sh, r, now_ms);
        }
        goto out;
    }
    /* The backend named the session itself: it is its own to take, so the
       placement bound does not apply, only the count (checked under the
       placement lock, like a placement's, so racing workers cannot both
       take the last place). */
    pthread_mutex_lock(&t->place_lock);
    if (atomic_load(&t->count) >= t->lim.max_sessions && evict_one(t, sh) < 0) {
        pthread_mutex_unlock(&t->place_lock);
        rc = -ENOMEM;
        goto out;
    }
    r = insert(t, sh, key, len, hash, b, false, now_ms);
    if (r)
        atomic_fetch_add(&t->loads[b], 1);
    pthread_mutex_unlock(&t->place_lock);
    if (r)
        notify(t, TETHER_SESSION_EV_CREATED, r, b);
    if (r)
        note(t, r, TETHER_SESSION_NOTE_CREATE, now_ms);
    rc = r ? 0 : -ENOMEM;
out:
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

int tether_session_end(struct tether_session_table *t, const char *key, size_t len, uint64_t hash,
                       uint32_t b, uint32_t epoch)
{
    struct shard *sh = shard_of(t, hash);
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (!r) {
        rc = -ENOENT;
    } else if (r->backend != b || r->epoch != epoch) {
        rc = -ESTALE;
    } else {
        note(t, r, TETHER_SESSION_NOTE_END, r->last_seen_ms);
        unlink_rec(t, sh, r, TETHER_SESSION_EV_ENDED);
        sh->stats.ended++;
    }
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

/* Re-place r (on `from`) with place(); the caller holds the shard lock. 1 moved, 0 stayed. */
static int move_rec(struct tether_session_table *t, struct shard *sh, struct rec *r,
                    tether_session_place_fn place, void *ctx)
{
    pthread_mutex_lock(&t->place_lock);
    int b = place(ctx, r->hash, -1);
    struct rec_list *bl = (b >= 0 && b < TETHER_SESSION_MAX_BACKENDS && (uint32_t)b != r->backend)
                              ? backend_list(sh, (uint32_t)b)
                              : NULL;
    if (!bl) {
        pthread_mutex_unlock(&t->place_lock);
        return 0;
    }
    if (!r->provisional) {
        atomic_fetch_sub(&t->loads[r->backend], 1);
        atomic_fetch_add(&t->loads[b], 1);
        r->handoff = 1;
    }
    pthread_mutex_unlock(&t->place_lock);
    TAILQ_REMOVE(&sh->backends[r->backend], r, by_backend);
    TAILQ_INSERT_TAIL(bl, r, by_backend);
    r->moved_from = r->backend;
    r->backend = (uint32_t)b;
    r->epoch++;
    sh->stats.moved++;
    notify(t, TETHER_SESSION_EV_MOVED, r, r->moved_from);
    note(t, r, TETHER_SESSION_NOTE_MOVE, r->last_seen_ms);
    return 1;
}

size_t tether_session_move_backend(struct tether_session_table *t, uint32_t from,
                                   tether_session_place_fn place, void *ctx)
{
    size_t moved = 0;
    for (size_t i = 0; i < t->nshards; i++) {
        struct shard *sh = &t->shards[i];
        pthread_mutex_lock(&sh->lock);
        if (from < sh->nbackends) {
            /* Each record either leaves the list or stays put: walk with a saved next. */
            struct rec *r = TAILQ_FIRST(&sh->backends[from]);
            while (r) {
                struct rec *next = TAILQ_NEXT(r, by_backend);
                moved += (size_t)move_rec(t, sh, r, place, ctx);
                r = next;
            }
        }
        pthread_mutex_unlock(&sh->lock);
    }
    return moved;
}

int tether_session_move(struct tether_session_table *t, const char *key, size_t len, uint64_t hash,
                        uint32_t from, tether_session_place_fn place, void *ctx,
                        struct tether_session_info *out)
{
    struct shard *sh = shard_of(t, hash);
    int rc;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (!r) {
        rc = -ENOENT;
    } else if (r->backend != from || move_rec(t, sh, r, place, ctx)) {
        rc = (int)r->backend;
        fill(r, out);
    } else {
        rc = -1;
    }
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

int tether_session_state_copy(struct tether_session_table *t, const char *key, size_t len,
                              uint64_t hash, char *buf, size_t cap, size_t *need)
{
    struct shard *sh = shard_of(t, hash);
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r && r->state_len) {
        if (r->state_len > cap) {
            rc = -ENOSPC;
            if (need)
                *need = r->state_len;
        } else {
            memcpy(buf, r->state, r->state_len);
            rc = (int)r->state_len;
        }
    }
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

void tether_session_handoff_done(struct tether_session_table *t, const char *key, size_t len,
                                 uint64_t hash, uint32_t b, uint32_t epoch)
{
    struct shard *sh = shard_of(t, hash);
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r && r->backend == b && r->epoch == epoch && r->handoff) {
        r->handoff = 0;
        note(t, r, TETHER_SESSION_NOTE_UPDATE, r->last_seen_ms);
    }
    pthread_mutex_unlock(&sh->lock);
}

int tether_session_set_state(struct tether_session_table *t, const char *key, size_t len,
                             uint64_t hash, uint32_t b, uint32_t epoch, const void *blob,
                             size_t blob_len)
{
    struct shard *sh = shard_of(t, hash);
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (!r) {
        rc = -ENOENT;
    } else if (r->backend != b || r->epoch != epoch) {
        rc = -ESTALE;
    } else if (atomic_load(&t->state_bytes) - r->state_len + blob_len > t->lim.max_state_bytes) {
        atomic_fetch_add(&t->state_refused, 1);
        rc = -ENOSPC;
    } else {
        void *copy = blob_len ? malloc(blob_len) : NULL;
        if (blob_len && !copy) {
            rc = -ENOMEM;
        } else {
            if (blob_len)
                memcpy(copy, blob, blob_len);
            atomic_fetch_sub(&t->state_bytes, r->state_len);
            atomic_fetch_add(&t->state_bytes, blob_len);
            free(r->state);
            r->state = copy;
            r->state_len = (uint32_t)blob_len;
            note(t, r, TETHER_SESSION_NOTE_STATE, r->last_seen_ms);
        }
    }
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

int tether_session_export(struct tether_session_table *t, size_t i,
                          int (*fn)(void *ctx, const struct tether_session_view *v), void *ctx)
{
    struct shard *sh = &t->shards[i];
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    struct rec *r;
    TAILQ_FOREACH(r, &sh->age, age)
    {
        struct tether_session_view v = {
            .key = r->key, .key_len = r->keylen, .state = r->state, .state_len = r->state_len};
        fill(r, &v.info);
        rc = fn(ctx, &v);
        if (rc)
            break;
    }
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

int tether_session_import(struct tether_session_table *t, const struct tether_session_view *v,
                          uint64_t hash)
{
    const struct tether_session_info *in = &v->info;
    if (in->backend >= TETHER_SESSION_MAX_BACKENDS || v->key_len == 0 ||
        v->key_len > TETHER_SESSION_MAX_KEY)
        return -EINVAL;
    struct shard *sh = shard_of(t, hash);
    int rc = 0;
    void *state = NULL;
    if (v->state_len) {
        state = malloc(v->state_len);
        if (!state)
            return -ENOMEM;
        memcpy(state, v->state, v->state_len);
    }
    pthread_mutex_lock(&sh->lock);
    if (find(sh, v->key, v->key_len, hash)) {
        rc = -EEXIST;
        goto out;
    }
    pthread_mutex_lock(&t->place_lock);
    /* The budget holds for a snapshot too (it may come from a bigger one). */
    if (atomic_load(&t->count) >= t->lim.max_sessions ||
        atomic_load(&t->state_bytes) + v->state_len > t->lim.max_state_bytes) {
        pthread_mutex_unlock(&t->place_lock);
        rc = -ENOSPC;
        goto out;
    }
    struct rec *r =
        insert(t, sh, v->key, v->key_len, hash, in->backend, in->provisional, in->created_ms);
    if (r && !in->provisional)
        atomic_fetch_add(&t->loads[in->backend], 1);
    pthread_mutex_unlock(&t->place_lock);
    if (!r) {
        rc = -ENOMEM;
        goto out;
    }
    r->last_seen_ms = in->last_seen_ms;
    r->requests = in->requests;
    r->epoch = in->epoch;
    r->handoff = in->handoff;
    r->moved_from = in->moved_from;
    r->state = state;
    r->state_len = (uint32_t)v->state_len;
    atomic_fetch_add(&t->state_bytes, v->state_len);
    state = NULL;
out:
    pthread_mutex_unlock(&sh->lock);
    free(state);
    return rc;
}

/* Rebind r to b (under the shard and placement locks), moving its load along. */
static int rebind(struct tether_session_table *t, struct shard *sh, struct rec *r, uint32_t b)
{
    struct rec_list *bl = backend_list(sh, b);
    if (!bl)
        return -ENOMEM;
    if (!r->provisional) {
        atomic_fetch_sub(&t->loads[r->backend], 1);
        atomic_fetch_add(&t->loads[b], 1);
    }
    TAILQ_REMOVE(&sh->backends[r->backend], r, by_backend);
    TAILQ_INSERT_TAIL(bl, r, by_backend);
    r->backend = b;
    return 0;
}

/* Replace r's blob by a copy of v's, within the budget; the caller holds the shard lock. */
static void take_state(struct tether_session_table *t, struct rec *r,
                       const struct tether_session_view *v)
{
    if (atomic_load(&t->state_bytes) - r->state_len + v->state_len > t->lim.max_state_bytes) {
        atomic_fetch_add(&t->state_refused, 1);
        return;
    }
    void *copy = v->state_len ? malloc(v->state_len) : NULL;
    if (v->state_len && !copy)
        return;
    if (v->state_len)
        memcpy(copy, v->state, v->state_len);
    atomic_fetch_sub(&t->state_bytes, r->state_len);
    atomic_fetch_add(&t->state_bytes, v->state_len);
    free(r->state);
    r->state = copy;
    r->state_len = (uint32_t)v->state_len;
}

int tether_session_adopt(struct tether_session_table *t, const struct tether_session_view *v,
                         uint64_t hash, uint64_t now_ms)
{
    const struct tether_session_info *in = &v->info;
    if (in->backend >= TETHER_SESSION_MAX_BACKENDS || v->key_len == 0 ||
        v->key_len > TETHER_SESSION_MAX_KEY ||
        (in->handoff && in->moved_from >= TETHER_SESSION_MAX_BACKENDS &&
         in->moved_from != TETHER_SESSION_NOWHERE))
        return -EINVAL;
    struct shard *sh = shard_of(t, hash);
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, v->key, v->key_len, hash);
    if (r && r->inflight == 0 && due(t, r, now_ms)) {
        unlink_rec(t, sh, r, TETHER_SESSION_EV_EXPIRED);
        sh->stats.expired++;
        r = NULL;
    }
    pthread_mutex_lock(&t->place_lock);
    if (!r) {
        if (atomic_load(&t->count) >= t->lim.max_sessions && evict_one(t, sh) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        r = insert(t, sh, v->key, v->key_len, hash, in->backend, in->provisional, in->created_ms);
        if (!r) {
            rc = -ENOMEM;
            goto out;
        }
        if (!in->provisional)
            atomic_fetch_add(&t->loads[in->backend], 1);
        /* Adopted because it is in use: idle from now, whatever the store said. */
        r->last_seen_ms = r->noted_ms = now_ms;
        r->requests = in->requests;
        r->epoch = in->epoch;
        r->handoff = in->handoff;
        r->moved_from = in->moved_from;
        if (v->state)
            take_state(t, r, v);
        rc = 2;
        goto out;
    }
    r->stale = 0;
    if (r->provisional && !in->provisional && make_live(sh, r, r->backend) == 0)
        atomic_fetch_add(&t->loads[r->backend], 1);
    if (r->backend != in->backend || r->epoch != in->epoch) {
        uint32_t was = r->backend;
        if (r->backend != in->backend && rebind(t, sh, r, in->backend) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        r->epoch = in->epoch;
        if (!r->provisional && (in->handoff || was != in->backend)) {
            r->handoff = 1;
            r->moved_from = in->handoff ? in->moved_from : was;
        }
        if (v->state)
            take_state(t, r, v);
        rc = 1;
    }
out:
    pthread_mutex_unlock(&t->place_lock);
    pthread_mutex_unlock(&sh->lock);
    return rc;
}

size_t tether_session_mark_stale(struct tether_session_table *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->nshards; i++) {
        struct shard *sh = &t->shards[i];
        pthread_mutex_lock(&sh->lock);
        struct rec *r;
        TAILQ_FOREACH(r, &sh->age, age)
        {
            r->stale = 1;
            n++;
        }
        pthread_mutex_unlock(&sh->lock);
    }
    return n;
}

void tether_session_table_watch(struct tether_session_table *t, tether_session_watch_fn fn,
                                void *ctx, uint64_t touch_ms)
{
    t->watch = fn;
    t->watch_ctx = ctx;
    t->touch_ms = touch_ms;
}

int tether_session_get(struct tether_session_table *t, const char *key, size_t len, uint64_t hash,
                       struct tether_session_info *out)
{
    struct shard *sh = shard_of(t, hash);
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r)
        fill(r, out);
    pthread_mutex_unlock(&sh->lock);
    return r ? 0 : -ENOENT;
}

/* Expire from the head of one list while its records are due. */
static size_t sweep_use(struct tether_session_table *t, struct shard *sh, struct rec_list *l,
                        uint64_t timeout, uint64_t now, size_t budget)
{
    size_t n = 0, busy = 0;
    struct rec *r;
    while (n < budget && busy < sh->count && (r = TAILQ_FIRST(l)) &&
           r->last_seen_ms + timeout <= now) {
        if (r->inflight) {
            /* In use: not idle. Its release touches it again anyway. */
            TAILQ_REMOVE(l, r, use);
            TAILQ_INSERT_TAIL(l, r, use);
            r->last_seen_ms = now;
            busy++;
            continue;
        }
        unlink_rec(t, sh, r, TETHER_SESSION_EV_EXPIRED);
        n++;
    }
    return n;
}

size_t tether_session_expire(struct tether_session_table *t, size_t from, size_t to,
                             uint64_t now_ms)
{
    size_t total = 0;
    if (to > t->nshards)
        to = t->nshards;
    for (size_t i = from; i < to; i++) {
        struct shard *sh = &t->shards[i];
        size_t n = 0;
        pthread_mutex_lock(&sh->lock);
        n += sweep_use(t, sh, &sh->prov, t->lim.provisional_timeout_ms, now_ms,
                       MAX_EXPIRE_PER_SHARD);
        n += sweep_use(t, sh, &sh->live, t->lim.idle_timeout_ms, now_ms, MAX_EXPIRE_PER_SHARD - n);
        /* Creation order never changes: step over busy records (their
           release removes them) and stop at the first that is not due. */
        struct rec *r = TAILQ_FIRST(&sh->age);
        while (n < MAX_EXPIRE_PER_SHARD && r && r->created_ms + t->lim.max_lifetime_ms <= now_ms) {
            struct rec *next = TAILQ_NEXT(r, age);
            if (r->inflight == 0) {
                unlink_rec(t, sh, r, TETHER_SESSION_EV_EXPIRED);
                n++;
            }
            r = next;
        }
        sh->stats.expired += n;
        pthread_mutex_unlock(&sh->lock);
        total += n;
    }
    return total;
}

void tether_session_stats(struct tether_session_table *t, struct tether_session_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < t->nshards; i++) {
        struct shard *sh = &t->shards[i];
        pthread_mutex_lock(&sh->lock);
        out->live += sh->stats.live;
        out->provisional += sh->stats.provisional;
        out->created += sh->stats.created;
        out->expired += sh->stats.expired;
        out->evicted += sh->stats.evicted;
        out->ended += sh->stats.ended;
        out->moved += sh->stats.moved;
        pthread_mutex_unlock(&sh->lock);
    }
    out->state_bytes = atomic_load(&t->state_bytes);
    out->state_refused = atomic_load(&t->state_refused);
}

int tether_session_forget(struct tether_session_table *t, const char *key, size_t len,
                          uint64_t hash)
{
    struct shard *sh = shard_of(t, hash);
    pthread_mutex_lock(&sh->lock);
    struct rec *r = find(sh, key, len, hash);
    if (r) {
        /* The store forgets it too: another tetherd must not bring it back. */
        note(t, r, TETHER_SESSION_NOTE_END, r->last_seen_ms);
        unlink_rec(t, sh, r, TETHER_SESSION_EV_FORGOTTEN);
        sh->stats.ended++;
    }
    pthread_mutex_unlock(&sh->lock);
    return r ? 0 : -ENOENT;
}

void tether_session_set_limits(struct tether_session_table *t,
                               const struct tether_session_limits *lim)
{
    /* Every reader of the limits holds a shard lock: take them all. */
    for (size_t i = 0; i < t->nshards; i++)
        pthread_mutex_lock(&t->shards[i].lock);
    t->lim = *lim;
    for (size_t i = t->nshards; i-- > 0;)
        pthread_mutex_unlock(&t->shards[i].lock);
}
