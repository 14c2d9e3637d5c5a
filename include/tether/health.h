/*
 * tether health: active checks (GET health.path every interval on their
 * own connections, 2xx passes, rise/fall thresholds) on a thread of their
 * own, and the passive verdicts the data path reports (consecutive connect
 * failures, resets, timeouts; 5xx only with passive_5xx). A backend that
 * goes down has its sessions moved (DESIGN.md "Moves"); one that comes
 * back takes new sessions only.
 */
#ifndef TETHER_HEALTH_H
#define TETHER_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

struct tether_proxy;
struct tether_health;

/*
 * Start the checker thread for every backend of proxy (borrowed; must
 * outlive the checker). Returns NULL on failure, after logging why.
 */
struct tether_health *tether_health_start(struct tether_proxy *proxy);

/* Backends were added: start checking them. Thread: any; accepts NULL. */
void tether_health_rescan(struct tether_health *h);

/* Stop the thread and free everything; accepts NULL. */
void tether_health_stop(struct tether_health *h);

/*
 * Mark backend b down or up from any thread (first caller of a transition
 * wins; the others change nothing). reason is copied into the backend's
 * record for the admin API. Going down moves the backend's sessions (in the
 * caller's thread). Returns 1 when this call made the transition.
 */
int tether_health_set(struct tether_proxy *proxy, uint32_t b, bool up, const char *reason);

/* The data path's verdict on one exchange with backend b. Thread: any. */
void tether_health_passive_failure(struct tether_proxy *proxy, uint32_t b, const char *what);
void tether_health_passive_success(struct tether_proxy *proxy, uint32_t b);

#endif
