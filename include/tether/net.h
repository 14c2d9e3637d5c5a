/*
 * tether net: worker threads and listeners. Each worker runs its own
 * event_base and its own SO_REUSEPORT listening socket per `listen` entry,
 * so the kernel spreads connections across workers with no hand-off.
 * Accepted sockets are given to the proxy of that worker.
 */
#ifndef TETHER_NET_H
#define TETHER_NET_H

#include <stddef.h>

struct event_base;
struct tether_proxy;
struct tether_net;

/*
 * Create cfg->workers workers, each with its event_base, a proxy worker and
 * its listeners (bound now, so errors such as EADDRINUSE surface before
 * tetherd reports itself started). proxy is borrowed and must outlive net.
 * Returns NULL on failure, after logging why.
 */
struct tether_net *tether_net_new(struct tether_proxy *proxy);

/* Start the worker threads. Returns 0 or -errno. */
int tether_net_start(struct tether_net *net);

/*
 * Begin a graceful stop from any thread: every worker closes its listeners
 * (new connections are refused), closes idle client connections and lets
 * in-flight requests finish; a worker's loop ends when it has no
 * connection left. Thread: any (wakes the workers through their bases).
 */
void tether_net_stop(struct tether_net *net);

/* Force every worker loop to end now (shutdown_timeout expired). Thread: any. */
void tether_net_break(struct tether_net *net);

/* Wait for the worker threads; returns when all have ended. */
void tether_net_join(struct tether_net *net);

/*
 * Wait for the worker threads until the CLOCK_REALTIME deadline. Returns 0
 * when all have ended, -ETIMEDOUT otherwise (those still running are left
 * for tether_net_break() and tether_net_join()).
 */
struct timespec;
int tether_net_join_until(struct tether_net *net, const struct timespec *deadline);

/* Frees a joined (or never started) net; accepts NULL. */
void tether_net_free(struct tether_net *net);

#endif
