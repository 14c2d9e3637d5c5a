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

/* A backend's identity and live counters. */
struct tether_backend {
    const char *name;            /* borrowed: lives as long as the config */
    uint32_t weight;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    _Atomic uint32_t inflight;   /* requests sent and not yet answered */
    _Atomic int up;              /* 1 = may receive requests */
    _Atomic uint64_t requests;
    _Atomic uint64_t connect_failures;
    _Atomic uint32_t passive_fails; /* consecutive failures seen by the data path */
    _Atomic uint64_t moved;      /* sessions moved away from it */
    /* Last transition, for operators; guarded by state_lock. */
    pthread_mutex_t state_lock;
    char reason[128];
    uint64_t changed_ms;         /* wall clock */
    uint64_t last_check_ms;      /* wall clock of the last active check */
    bool last_check_ok;
};

struct tether_proxy {
    const struct tether_config *cfg; /* borrowed */
    struct tether_backend *backends;
    size_t nbackends;
    uint32_t *weights;           /* backends[i].weight, as one array for the lb */
    struct tether_ring *ring;
    struct tether_session_table *sessions;
    struct tether_store *store;  /* borrowed: the redis store; NULL with the memory store */
    _Atomic uint64_t state_dropped; /* state blobs over state_max_bytes */
    struct tether_tls_server **tls; /* per listen entry; NULL for plain TCP */
    struct tether_tls_client **tls_backends; /* per backend; NULL for plain TCP */
    struct retired_tls *retired; /* replaced TLS contexts, freed once no handshake can use them */
    int access_fd;               /* -1 when the access log is off */
    _Atomic uint64_t connections; /* open client connections, all workers */
    _Atomic uint32_t rr;         /* rotation for least-in-flight ties */
};

struct tether_proxy_worker;

/*
 * Build the shared proxy state from a config: resolve backend addresses,
 * build the ring, open the access log. cfg is borrowed and must outlive the
 * proxy. Returns NULL on failure, after logging why.
 */
struct tether_proxy *tether_proxy_new(const struct tether_config *cfg);

/*
 * Read every TLS listener's certificates and keys again (SIGHUP). All or
 * nothing: on any error the running contexts stay and the problems are
 * logged. Open connections keep the context they started with. Returns the
 * number of listeners reloaded, or -1. Thread: any (one caller at a time).
 */
int tether_proxy_reload_certificates(struct tether_proxy *proxy);

/*
 * A placer: what the bounded-load pick needs (candidate scratch), usable
 * from any one thread at a time. tether_placer_place is a
 * tether_session_place_fn with the placer as ctx.
 */
struct tether_placer;
struct tether_placer *tether_placer_new(struct tether_proxy *proxy);
void tether_placer_free(struct tether_placer *pl);
int tether_placer_place(void *placer, uint64_t hash, int prefer);

/* Frees the proxy; accepts NULL. Every worker must be freed first. */
void tether_proxy_free(struct tether_proxy *proxy);

/* Per-thread state on base (borrowed). Returns NULL on allocation failure. */
struct tether_proxy_worker *tether_proxy_worker_new(struct tether_proxy *proxy,
                                                    struct event_base *base, int id);

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
