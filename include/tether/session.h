/*
 * tether session: the session table (key -> backend binding, DESIGN.md
 * "Sessions and their state") and the parsing of session keys from
 * requests. The table is sharded by key hash with one mutex per shard;
 * placement of a new session (check-then-insert against the load bounds)
 * runs under one placement mutex, so no bound or cap is overshot by a race
 * between workers. Lock order: shard, then placement. Callers hold a key,
 * never a record, across callbacks. Pure: no I/O, no logging.
 */
#ifndef TETHER_SESSION_H
#define TETHER_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TETHER_SESSION_MAX_KEY 256
/* Backend slots a table tracks loads for (backend indices are < this). */
#define TETHER_SESSION_MAX_BACKENDS 4096
/* moved_from of a session a state store moved from a backend not configured here. */
#define TETHER_SESSION_NOWHERE UINT32_MAX

struct tether_session_table;

struct tether_session_limits {
    uint64_t max_sessions;          /* live + provisional records; past it LRU idle ones go */
    uint64_t max_state_bytes;       /* all state blobs together */
    uint64_t idle_timeout_ms;
    uint64_t max_lifetime_ms;
    uint64_t provisional_timeout_ms;
};

/* A copy of a record's fields, filled under the shard lock. */
struct tether_session_info {
    uint32_t backend;
    uint32_t epoch;                 /* starts at 1; +1 per move */
    uint64_t created_ms;
    uint64_t last_seen_ms;
    uint64_t requests;
    uint32_t inflight;              /* requests and tunnels open on it */
    bool provisional;               /* minted, not yet seen back: no load */
    bool handoff;                   /* moved, and the new backend has not yet
                                       answered a request with a non-5xx */
    uint32_t moved_from;            /* the backend it last moved from (when handoff);
                                       TETHER_SESSION_NOWHERE: one not known here */
    uint32_t state_len;             /* bytes of the stored state blob */
    bool stale;                     /* marked by tether_session_mark_stale(): the state
                                       store must confirm it before it is trusted */
};

struct tether_session_stats {
    uint64_t live;
    uint64_t provisional;
    uint64_t created;
    uint64_t expired;
    uint64_t evicted;
    uint64_t ended;
    uint64_t state_bytes;           /* all stored blobs */
    uint64_t state_refused;         /* blobs refused for the budget */
    uint64_t moved;
};

/*
 * Placement, called under the placement lock with the key's hash.
 * prefer is -1 for a new session; for a provisional session being
 * confirmed it is its backend, which the callback returns when that
 * backend may take one more live session (usable, under its hard cap; the
 * bound does not apply to a session already placed), else it places anew.
 * Returns a backend index, or -1 when every backend is at its hard cap (or
 * none is up). The callback reads loads with tether_session_load(); it must
 * not call back into the table otherwise.
 */
typedef int (*tether_session_place_fn)(void *ctx, uint64_t hash, int prefer);

/* nshards: a power of two (0 = 64). Returns NULL on allocation failure. */
struct tether_session_table *tether_session_table_new(const struct tether_session_limits *lim,
                                                      size_t nshards);

/* Frees every record; accepts NULL. No other thread may use the table. */
void tether_session_table_free(struct tether_session_table *t);

/* Live (non-provisional) sessions bound to backend b. Lock-free read. */
uint32_t tether_session_load(const struct tether_session_table *t, uint32_t b);

/* The loads of backends [0, n) into out[]: one call for a whole placement. */
void tether_session_loads(const struct tether_session_table *t, uint32_t *out, size_t n);

#define TETHER_SESSION_PROVISIONAL 0x1 /* create as provisional (a minted key) */
#define TETHER_SESSION_CONFIRM 0x2     /* the key came back from the client: a
                                          provisional record becomes live */
#define TETHER_SESSION_LOOKUP 0x4      /* a miss places nothing (MISS) and a stale
                                          record is not taken (STALE): the caller
                                          asks its state store first */

enum {
    TETHER_SESSION_FOUND = 0,
    TETHER_SESSION_CREATED = 1,
    TETHER_SESSION_MISS = 2,        /* LOOKUP: no record */
    TETHER_SESSION_STALE = 3,       /* LOOKUP: a stale record, not taken; *out filled */
    TETHER_SESSION_FULL = -1,       /* a miss and place() found no backend */
    TETHER_SESSION_ENOMEM = -2,
};

/*
 * Start a request on the session of key (len 1..256, hash its ring hash):
 * a hit counts one more request and one more in flight; a miss asks
 * place() for a backend and inserts a record (live unless flags has
 * PROVISIONAL), with one in flight. A hit on a record past its idle or
 * lifetime (and idle) is treated as a miss. With LOOKUP, a miss answers
 * MISS and a stale hit STALE, and neither takes anything. Every FOUND or
 * CREATED must be matched by tether_session_release(). Fills *out then.
 * Returns FOUND, CREATED, MISS, STALE, FULL or ENOMEM. Locks: the key's
 * shard, and the placement lock on a miss.
 */
int tether_session_acquire(struct tether_session_table *t, const char *key, size_t len,
                           uint64_t hash, uint64_t now_ms, unsigned flags,
                           tether_session_place_fn place, void *ctx,
                           struct tether_session_info *out);

/*
 * A request of key ended: one fewer in flight, last_seen = now. created_ms
 * is the record's creation time from acquire: a record ended and made anew
 * meanwhile is another one, and is left alone. Lock: shard.
 */
void tether_session_release(struct tether_session_table *t, const char *key, size_t len,
                            uint64_t hash, uint64_t created_ms, uint64_t now_ms);

/*
 * Learning: bind key to backend b as a live session when the key is not
 * bound, or is bound to b already (then it is only touched; a provisional
 * record becomes live). Returns 0, -EEXIST when bound to another backend
 * (one backend never captures another's session), -ENOMEM.
 * Lock: shard (and the placement lock to count the load).
 */
int tether_session_bind(struct tether_session_table *t, const char *key, size_t len,
                        uint64_t hash, uint32_t b, uint64_t now_ms);

/*
 * End the session of key if it is still at (b, epoch) (fencing: a late
 * answer from an old home changes nothing). Returns 0, -ENOENT, -ESTALE.
 * Lock: shard.
 */
int tether_session_end(struct tether_session_table *t, const char *key, size_t len,
                       uint64_t hash, uint32_t b, uint32_t epoch);

/*
 * Store the handoff state blob of key (copied), if the session is still at
 * (b, epoch). A blob that would take all blobs past max_state_bytes is
 * refused. Returns 0, -ENOENT, -ESTALE, -ENOSPC, -ENOMEM. Lock: shard.
 */
int tether_session_set_state(struct tether_session_table *t, const char *key, size_t len,
                             uint64_t hash, uint32_t b, uint32_t epoch, const void *blob,
                             size_t blob_len);

/*
 * Moves (DESIGN.md "Moves"): re-place sessions of backend `from` with
 * place(ctx, hash, -1); each move bumps the epoch, records `from` and
 * starts a handoff. A session for which place() finds no backend keeps its
 * binding. Provisional sessions move without a handoff.
 * tether_session_move_backend: every session of `from`; returns how many
 * moved. Work is proportional to that backend's sessions. Locks: each
 * shard in turn, and the placement lock per move.
 * tether_session_move: the one session of key, only if it is still on
 * `from`. Returns its backend afterwards (moved or not), -ENOENT, or -1
 * when it had to move and no backend could take it.
 */
size_t tether_session_move_backend(struct tether_session_table *t, uint32_t from,
                                   tether_session_place_fn place, void *ctx);
int tether_session_move(struct tether_session_table *t, const char *key, size_t len,
                        uint64_t hash, uint32_t from, tether_session_place_fn place, void *ctx,
                        struct tether_session_info *out);

/*
 * Copy the stored state blob of key into buf (at most cap bytes). Returns
 * its length, 0 when there is none, or -ENOSPC when it does not fit; then
 * *need (when not NULL) is its length, so the caller can make room once.
 * Lock: shard.
 */
int tether_session_state_copy(struct tether_session_table *t, const char *key, size_t len,
                              uint64_t hash, char *buf, size_t cap, size_t *need);

/*
 * The new backend answered a request sent at (b, epoch) with a non-5xx:
 * the handoff is complete. Fenced like tether_session_end(). Lock: shard.
 */
void tether_session_handoff_done(struct tether_session_table *t, const char *key, size_t len,
                                 uint64_t hash, uint32_t b, uint32_t epoch);

/* One record as snapshots see it: views valid during the callback only. */
struct tether_session_view {
    const char *key;
    size_t key_len;
    struct tether_session_info info;  /* times on the tether_now_ms() clock */
    const void *state;
    size_t state_len;
};

/*
 * Call fn for every record of shard i, under that shard's lock (fn must not
 * call into the table). Stops early and returns fn's value when it is not
 * 0; else returns 0.
 */
int tether_session_export(struct tether_session_table *t, size_t i,
                          int (*fn)(void *ctx, const struct tether_session_view *v), void *ctx);

/*
 * Insert a record as it was (a snapshot being loaded): binding, epoch,
 * times, handoff and state are taken as given; live records count as load.
 * A key already present is left alone. Returns 0, -EEXIST, -ENOMEM.
 * Lock: shard, placement.
 */
int tether_session_import(struct tether_session_table *t, const struct tether_session_view *v,
                          uint64_t hash);

/*
 * A record as a state store holds it (a claim answered, a peer's move):
 * v->info gives the binding (backend, epoch, moved_from, handoff), times on
 * the tether_now_ms() clock, and v->state (NULL: none given).
 * Absent here: inserted as given (the budget makes room as for a new
 * session; live records count as load). Present: its stale mark goes, a
 * provisional record given as live becomes live, and when the binding
 * differs it takes v's backend and epoch, hands off (from v's moved_from
 * when v is handing off, which may be TETHER_SESSION_NOWHERE, else from the
 * backend it leaves; a provisional record hands nothing off) and takes v's
 * state when v has one.
 * The watcher is not told: the store already holds it. Returns 0 (binding
 * unchanged), 1 (rebound), 2 (inserted), -EINVAL, -ENOMEM.
 * Lock: shard, placement.
 */
int tether_session_adopt(struct tether_session_table *t, const struct tether_session_view *v,
                         uint64_t hash, uint64_t now_ms);

/*
 * Mark every record stale (a state store may have missed changes made
 * elsewhere, e.g. while it was disconnected): acquire with LOOKUP answers
 * STALE for them until tether_session_adopt() confirms them. Returns how
 * many were marked. Lock: each shard in turn.
 */
size_t tether_session_mark_stale(struct tether_session_table *t);

/*
 * Changes as the table's watcher (a state store) sees them, told under the
 * record's shard lock (the watcher must not call into the table):
 *   CREATE  inserted by acquire or bind;
 *   UPDATE  used (at most once per touch_ms per record), confirmed, or its
 *           handoff completed;
 *   STATE   a new state blob;
 *   MOVE    a new backend at epoch + 1 (info->epoch - 1 is the one it left);
 *   END     ended (info: the binding it had).
 * Expiry, eviction, import and adopt are not told.
 */
enum tether_session_change {
    TETHER_SESSION_NOTE_CREATE = 1,
    TETHER_SESSION_NOTE_UPDATE = 2,
    TETHER_SESSION_NOTE_STATE = 3,
    TETHER_SESSION_NOTE_MOVE = 4,
    TETHER_SESSION_NOTE_END = 5,
};

typedef void (*tether_session_watch_fn)(void *ctx, enum tether_session_change what,
                                        const char *key, size_t len, uint64_t hash,
                                        const struct tether_session_info *info);

/* Set the table's one watcher (fn NULL: none). Before any other thread uses the table. */
void tether_session_table_watch(struct tether_session_table *t, tether_session_watch_fn fn,
                                void *ctx, uint64_t touch_ms);

/* Read one session. Returns 0 and fills *out, or -ENOENT. Lock: shard. */
int tether_session_get(struct tether_session_table *t, const char *key, size_t len,
                       uint64_t hash, struct tether_session_info *out);

/*
 * Expire what is due in shards [from, to): idle past idle_timeout (or
 * provisional past provisional_timeout) with nothing in flight, or older
 * than max_lifetime with nothing in flight. Work is proportional to what
 * expires: the shard lists are in last-use and creation order. Returns the
 * number expired. Lock: each shard in turn.
 */
size_t tether_session_expire(struct tether_session_table *t, size_t from, size_t to,
                             uint64_t now_ms);

size_t tether_session_shards(const struct tether_session_table *t);

/* Counters, summed over shards. Lock: each shard in turn. */
void tether_session_stats(struct tether_session_table *t, struct tether_session_stats *out);

/*
 * Forget the session of key whatever its state (the admin API): requests in
 * flight on it finish, and the key is placed anew on its next request.
 * Returns 0 or -ENOENT. Lock: shard.
 */
int tether_session_forget(struct tether_session_table *t, const char *key, size_t len,
                          uint64_t hash);

/* Change the budget and timeouts (a reload). Locks: every shard. */
void tether_session_set_limits(struct tether_session_table *t,
                               const struct tether_session_limits *lim);

/*
 * Changes to records, for the event stream and the sidecar. The observer is
 * called under the record's shard lock (and must not call into the table),
 * with the record's backend after the change; `from` is the old one for a
 * move. Set it before the table is shared between threads.
 */
enum tether_session_event {
    TETHER_SESSION_EV_CREATED,
    TETHER_SESSION_EV_MOVED,
    TETHER_SESSION_EV_EXPIRED,
    TETHER_SESSION_EV_EVICTED,
    TETHER_SESSION_EV_ENDED,
    TETHER_SESSION_EV_FORGOTTEN,
};
typedef void (*tether_session_observer_fn)(void *ctx, enum tether_session_event ev,
                                           const char *key, size_t len, uint32_t backend,
                                           uint32_t from, uint32_t epoch);
void tether_session_observe(struct tether_session_table *t, tether_session_observer_fn fn,
                            void *ctx);

/*
 * Keys in requests.
 * tether_session_key_valid: 1 when s[0..len) is a usable key: 1..256
 * bytes of printable ASCII (0x21..0x7e).
 */
int tether_session_key_valid(const char *s, size_t len);

/*
 * Find cookie `name` in one Cookie header value (RFC 6265 5.4 / 4.2.1:
 * "a=b; c=d", OWS tolerated around ';' and '=', a DQUOTE-wrapped value is
 * unwrapped). Sets *val and *vlen to a view into value. Returns 1 found, 0 not
 * found, -1 when the header is malformed badly enough that no pair can be
 * trusted (a pair without '='), or the cookie appears twice in it.
 */
int tether_session_cookie_find(const char *value, size_t len, const char *name, size_t name_len,
                               const char **val, size_t *vlen);

#endif
