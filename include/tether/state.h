/*
 * tether state: sessions that outlive the process (DESIGN.md "The
 * sidecar"). The memory store keeps the table in the process and, with
 * state.snapshot set, saves it to a file (every snapshot_interval and at
 * shutdown) and loads it at start. The redis store writes every change of
 * the session table behind to a Redis beside tetherd, asks it before
 * placing a locally unknown key, and follows the moves other tetherd make.
 * Backends are recorded by name, so state survives a reordered or
 * changed backend list.
 */
#ifndef TETHER_STATE_H
#define TETHER_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "tether/config.h"

struct event_base;
struct tether_proxy;
struct tether_session_table;

/*
 * Save every session of t to path: written shard by shard (each shard's
 * lock held only while its records are copied out) to a temporary file in
 * the same directory, mode 0600, fsynced, then renamed over path. names[i]
 * is backend i's name. Returns the number of sessions saved, or -errno.
 * Thread: any one at a time.
 */
long tether_state_snapshot_save(const char *path, struct tether_session_table *t,
                                const char *const *names, size_t nnames);

/*
 * Load a snapshot into t. Returns the number of sessions loaded, 0 when
 * there is no file, or a negative value for a damaged or unreadable file
 * (bad magic, version, checksum or framing), with the reason in why: the
 * caller reports it and starts empty; nothing of a damaged file is used.
 */
long tether_state_snapshot_load(const char *path, struct tether_session_table *t,
                                const char *const *names, size_t nnames, char *why,
                                size_t whylen);

/*
 * The redis store. One per process, shared by the workers; each worker
 * has a tether_store_worker on its own event_base, with its own
 * connection to Redis (worker 0 also holds the subscription to
 * <prefix>moves).
 */
struct tether_store;
struct tether_store_worker;

/*
 * Create the redis store for proxy (borrowed; cfg->state.store must be
 * redis): reads the password file, watches proxy->sessions. Connects
 * nothing yet (the workers do). Returns NULL on failure, after logging why.
 * Thread: main, before the workers start.
 */
struct tether_store *tether_store_new(struct tether_proxy *proxy);

/* Frees the store; accepts NULL. Every store worker must be freed first. */
void tether_store_free(struct tether_store *st);

/*
 * The store's part of worker id, on base (borrowed); it starts connecting
 * at once. Returns NULL on allocation failure. Thread: main, before the
 * worker starts; freed on the main thread after it stopped (accepts NULL).
 */
struct tether_store_worker *tether_store_worker_new(struct tether_store *st,
                                                    struct event_base *base, int id);
void tether_store_worker_free(struct tether_store_worker *sw);

/*
 * A request waiting for a claim; embedded in the caller's structure.
 * done is called on the worker's thread, from its event loop, once Redis
 * answered (the table then holds Redis' binding) or claim_timeout passed
 * (the table may hold nothing: place locally, preferring `proposal` when
 * it is >= 0).
 */
struct tether_store_waiter {
    TAILQ_ENTRY(tether_store_waiter) link;
    void (*done)(struct tether_store_waiter *w);
    int proposal;
    /* private */
    struct tether_store_worker *sw;
    void *claim;                 /* the claim waited on, NULL once it ended */
    bool queued;                 /* on the worker's list of waiters to resume */
};

/*
 * Ask Redis before placing key (len 1..256, hash its ring hash): a key the
 * table does not hold (stale NULL), or a stale record (*stale, as the
 * table's lookup filled it). Redis answers with the binding it holds, or
 * takes ours (a new key gets the local bounded-load pick) atomically.
 * Returns 1 when w waits (see struct tether_store_waiter), 0 when the
 * caller should go on now (Redis down, slow or behind: no request waits
 * on a store that cannot answer). Waiters for one key on one worker share
 * one claim. Thread: sw's.
 */
int tether_store_claim(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash,
                       const struct tether_session_info *stale, struct tether_store_waiter *w);

/* Stop waiting (the request went away); accepts a waiter that is not waiting. */
void tether_store_cancel(struct tether_store_waiter *w);

/*
 * Graceful stop: send what is queued and wait for Redis to acknowledge it,
 * then call done(arg) (at once when Redis is unreachable; the caller
 * bounds the wait by shutdown_timeout). Thread: sw's.
 */
void tether_store_drain(struct tether_store_worker *sw, void (*done)(void *), void *arg);

/*
 * Add to loads[0..n) the sessions proposed to each backend by claims in
 * flight, so a burst of new keys is spread as if they were placed already.
 * Lock-free. Thread: any.
 */
void tether_store_add_reserved(const struct tether_store *st, uint32_t *loads, size_t n);

/* For operators (the admin API, metrics). */
struct tether_store_status {
    enum tether_store_kind kind;
    bool healthy;            /* memory: true; redis: every connection up and answering,
                                no error reply in the last 10 s */
    char detail[256];        /* one line: where it stands and why */
    uint64_t queue;          /* writes waiting to be sent */
    uint64_t queue_max;
    uint64_t claims;         /* keys asked of Redis before placing */
    uint64_t claim_timeouts; /* ... not answered within claim_timeout: placed locally */
    uint64_t reconciles;     /* local bindings that gave way to the one Redis holds */
    uint64_t write_errors;   /* error replies, each treated as Redis being down */
    uint64_t reconnects;     /* connections lost (and retried with backoff) */
    uint64_t dropped;        /* changes not written: the queue was full */
    uint64_t writes;         /* writes acknowledged */
    uint64_t moves_applied;  /* moves made by other tetherd, applied here */
    uint64_t unknown_backends; /* records naming a backend not configured here */
};

/*
 * Fill *out. st NULL is the memory store. Thread: any (atomics, and one
 * short lock for the detail text).
 */
void tether_store_status(const struct tether_store *st, struct tether_store_status *out);

#endif
