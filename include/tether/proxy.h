/*
 * tether proxy: the HTTP/1.1 data path. A client connection is parsed
 * request by request (keep-alive, pipelined requests answered in order),
 * each request is sent to the backend the lb module picks, over a pooled
 * keep-alive upstream connection, and bodies stream both ways with
 * backpressure; `Upgrade` is tunnelled after 101.
 *
 * struct tether_proxy is shared by all workers (immutable after creation
 * but for atomic counters); struct tether_proxy_worker is owned by one
 * worker thread and never touched from another.
 */
#ifndef TETHER_PROXY_H
#define TETHER_PROXY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <pthread.h>

#include "tether/config.h"

struct event_base;
struct tether_ring;
struct tether_session_table;
struct tether_store;
struct tether_tls_server;
struct tether_tls_client;
struct tether_health;

/* Backend slots: indices are stable for a backend's life, and a slot is
   reused only once nothing refers to it (DESIGN.md: backends come and go
   at run time and on reload). */
#define TETHER_PROXY_MAX_BACKENDS 1024
#define TETHER_BACKEND_NAME_MAX 64   /* with the NUL */
#define TETHER_BACKEND_ADDR_MAX 128

/* What an operator asked of a backend (health is separate: `up`). */
enum tether_backend_admin {
    TETHER_BACKEND_ACTIVE = 0,
    TETHER_BACKEND_DRAINING,     /* no new sessions; moved after drain_timeout */
    TETHER_BACKEND_DISABLED,     /* no traffic; its sessions were moved */
};

/* A backend's identity and live counters. */
struct tether_backend {
    char name[TETHER_BACKEND_NAME_MAX];
    char address[TETHER_BACKEND_ADDR_MAX];
    _Atomic int present;         /* the slot holds a configured backend */
    _Atomic uint32_t gen;        /* +1 whenever the slot changes hands or address */
    _Atomic int admin;           /* enum tether_backend_admin */
    bool runtime;                /* added through the admin API, not the file */
    uint32_t weight;
    uint64_t max_sessions;       /* 0 = no cap */
    uint64_t drain_since_ms;     /* monotonic, while DRAINING */
    uint64_t removed_ms;         /* monotonic, once not present: the slot is reused later */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    _Atomic uint32_t inflight;   /* requests sent and not yet answered */
    _Atomic int up;              /* health: 1 = passes its checks */
    _Atomic uint64_t requests;
    _Atomic uint64_t connect_failures;
    _Atomic uint32_t passive_fails; /* consecutive failures seen by the data path */
    _Atomic uint64_t moved;      /* sessions moved away from it */
    _Atomic uint64_t status[6];  /* responses by class: [0] none (502/504 made here), [1..5] 1xx..5xx */
    _Atomic uint64_t checks_ok, checks_failed;
    /* Last transition, for operators; guarded by state_lock. */
    pthread_mutex_t state_lock;
    char reason[128];
    uint64_t changed_ms;         /* wall clock */
    uint64_t last_check_ms;      /* wall clock of the last active check */
    bool last_check_ok;
};

/* May carry requests of its existing sessions. */
static inline bool tether_backend_serves(const struct tether_backend *b)
{
    return atomic_load_explicit(&b->present, memory_order_acquire) &&
           atomic_load_explicit(&b->up, memory_order_relaxed) &&
           atomic_load_explicit(&b->admin, memory_order_relaxed) != TETHER_BACKEND_DISABLED;
}

/* May take new sessions. */
static inline bool tether_backend_takes_new(const struct tether_backend *b)
{
    return tether_backend_serves(b) &&
           atomic_load_explicit(&b->admin, memory_order_relaxed) == TETHER_BACKEND_ACTIVE;
}

/* What operators see: up, down, draining or disabled. */
static inline const char *tether_backend_state_name(const struct tether_backend *b)
{
    switch (atomic_load_explicit(&b->admin, memory_order_relaxed)) {
    case TETHER_BACKEND_DISABLED:
        return "disabled";
    case TETHER_BACKEND_DRAINING:
        return "draining";
    default:
        return atomic_load_explicit(&b->up, memory_order_relaxed) ? "up" : "down";
    }
}

/* Request duration histogram bounds (seconds), for the metrics. */
#define TETHER_PROXY_HIST_BUCKETS 12
extern const double tether_proxy_hist_le[TETHER_PROXY_HIST_BUCKETS];

/* Counters one worker writes and the admin thread reads (relaxed). */
struct tether_proxy_stats {
    _Atomic uint64_t hist[TETHER_PROXY_HIST_BUCKETS + 1]; /* last: +Inf */
    _Atomic uint64_t hist_sum_us;
    _Atomic uint64_t requests;
    _Atomic uint64_t tls_handshakes, tls_handshake_failures, tls_resumed;
    _Atomic uint64_t upstream_connects, upstream_reused;
    _Atomic uint64_t placements;
    _Atomic uint64_t rejected;   /* 400/408/413/431 answered by tether */
} __attribute__((aligned(64)));

struct tether_proxy {
    _Atomic(const struct tether_config *) cfg; /* the running config; old ones stay in retired_cfg */
    struct tether_backend *backends; /* TETHER_PROXY_MAX_BACKENDS slots */
    _Atomic size_t nbackends;    /* slots in use or once used: [0, nbackends) */
    uint32_t *weights;           /* per slot: weight, 0 when the slot is empty */
    _Atomic(struct tether_ring *) ring;
    struct tether_session_table *sessions;
    struct tether_store *store;  /* borrowed: the redis store; NULL with the memory store */
    _Atomic uint64_t state_dropped; /* state blobs over state_max_bytes */
    _Atomic(struct tether_tls_server **) tls; /* per listen entry of cfg; NULL for plain TCP */
    struct tether_tls_client **tls_backends; /* per slot; NULL for plain TCP */
    struct retired *retired;     /* replaced rings, TLS contexts and configs */
    pthread_mutex_t lock;        /* serialises changes to the backend set and config */
    _Atomic int access_fd;       /* -1 when the access log is off */
    _Atomic uint64_t connections; /* open client connections, all workers */
    _Atomic uint32_t rr;         /* rotation for least-in-flight ties */
    struct tether_proxy_stats *stats; /* one per worker */
    size_t nstats;
    _Atomic uint64_t moves_by_reason[5]; /* enum tether_move_reason */
    _Atomic uint64_t admin_requests;
    _Atomic int stopping;
    struct tether_health *health; /* set once the checker runs: told of new backends */
    uint64_t started_ms;         /* wall clock */
    int64_t wall_minus_mono_ms;  /* tether_wall_ms() - tether_now_ms() at start */
};

/* Why sessions moved, for the metrics and the event stream. */
enum tether_move_reason {
    TETHER_MOVE_DOWN = 0, TETHER_MOVE_DISABLED, TETHER_MOVE_REMOVED, TETHER_MOVE_DRAINED,
    TETHER_MOVE_ADMIN,
};
const char *tether_move_reason_name(enum tether_move_reason r);

struct tether_proxy_worker;

/*
 * Build the shared proxy state from a config: resolve backend addresses,
 * build the ring, open the access log. The proxy owns cfg from here on
 * (freed with it, or at once on failure). Returns NULL on failure, after
 * logging why.
 */
struct tether_proxy *tether_proxy_new(struct tether_config *cfg);

/* Send session changes to the event stream and the move counters. */
void tether_proxy_observe_sessions(struct tether_proxy *proxy);

/*
 * The backend set at run time (the admin API and reloads). Every change
 * runs under proxy->lock; readers on the data path use the atomics of the
 * slots and never wait.
 * _find: the slot of a present backend by name, or -1.
 * _add: a runtime backend (no TLS); returns its slot, or -EEXIST/-EINVAL/
 *   -ENOSPC/-ENOMEM with a message in err.
 * _remove: its sessions move; returns how many, or -ENOENT.
 * _admin: drain (no new sessions), disable (moves its sessions now) or
 *   enable; returns sessions moved, or -ENOENT.
 * _move_backend: move every session of slot b (the reason is counted).
 * _move_session: move one session to backend `to` (an admin move); 0,
 *   -ENOENT, or -EAGAIN when it moved meanwhile.
 * _drain_tick: once a second: draining backends past drain_timeout have
 *   their sessions moved; replaced rings and contexts are freed.
 */
int tether_proxy_backend_find(struct tether_proxy *proxy, const char *name);
int tether_proxy_backend_add(struct tether_proxy *proxy, const char *name, const char *address,
                             uint32_t weight, char *err, size_t errlen);
long tether_proxy_backend_remove(struct tether_proxy *proxy, const char *name);
long tether_proxy_backend_admin(struct tether_proxy *proxy, const char *name,
                                enum tether_backend_admin to);
size_t tether_proxy_move_backend(struct tether_proxy *proxy, uint32_t b,
                                 enum tether_move_reason why);
struct tether_session_info;
int tether_proxy_move_session(struct tether_proxy *proxy, const char *key, size_t len,
                              uint32_t to, struct tether_session_info *out);
void tether_proxy_drain_tick(struct tether_proxy *proxy);

/* The reason counted for the moves this thread makes next (a data-path reroute). */
void tether_proxy_move_reason(enum tether_move_reason why);

/*
 * A dry run of moving every session of backend b: fn(ctx, key, len, to)
 * per session, with the backend the mover would pick now (-1: none, the
 * binding would stay). Changes nothing. Returns the count or -ENOMEM.
 */
long tether_proxy_plan_moves(struct tether_proxy *proxy, uint32_t b,
                             void (*fn)(void *ctx, const char *key, size_t len, int to),
                             void *ctx);

/*
 * Apply a new configuration (SIGHUP, POST /api/v1/reload): certificates,
 * backends matched by name, settings. All checks come first: on an error
 * nothing changes, the errors are in rep->errors and -1 is returned. On
 * success the proxy owns ncfg (the old one is kept until the end, since
 * connections hold pointers into it), restart-only keys keep their running
 * values and are listed, and workers must be told (tether_net_reload).
 */
struct tether_reload_report;
int tether_proxy_reload(struct tether_proxy *proxy, struct tether_config *ncfg,
                        struct tether_reload_report *rep);

/*
 * A placer: what the bounded-load pick needs (candidate scratch), usable
 * from any one thread at a time. tether_placer_place is a
 * tether_session_place_fn with the placer as ctx.
 */
struct tether_placer;
struct tether_placer *tether_placer_new(struct tether_proxy *proxy);
void tether_placer_free(struct tether_placer *pl);
int tether_placer_place(void *placer, uint64_t hash, int prefer);

/* SIGUSR1: open the access log file again (after it was rotated). 0 or -1. */
int tether_proxy_reopen_logs(struct tether_proxy *proxy);

/* Frees the proxy; accepts NULL. Every worker must be freed first. */
void tether_proxy_free(struct tether_proxy *proxy);

/* Per-thread state on base (borrowed). Returns NULL on allocation failure. */
struct tether_proxy_worker *tether_proxy_worker_new(struct tether_proxy *proxy,
                                                    struct event_base *base, int id);

/* Take the proxy's current config (after a reload). Thread: the worker's. */
void tether_proxy_worker_reload(struct tether_proxy_worker *w);

/* Frees every connection of the worker and the worker; accepts NULL. */
void tether_proxy_worker_free(struct tether_proxy_worker *w);

/*
 * Take a socket accepted on cfg->listens[listen] (ownership of fd passes
 * to the proxy; it is closed on any failure). Thread: the worker's.
 */
void tether_proxy_accept(struct tether_proxy_worker *w, int fd, const struct sockaddr *sa,
                         socklen_t salen, size_t listen);

/*
 * Graceful stop of one worker: idle client connections are closed now,
 * the others after their current response; done(arg) is called once the
 * worker has no client connection left. Thread: the worker's.
 */
void tether_proxy_worker_stop(struct tether_proxy_worker *w, void (*done)(void *), void *arg);

#endif
