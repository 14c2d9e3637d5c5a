/*
 * tether lb: backend choice. A consistent-hash ring on XXH3 whose points
 * derive from each backend's name alone (vnodes x weight points), so adding
 * or removing one backend never moves a key between two others; and the
 * least-in-flight choice for requests that carry no session key.
 * Pure and immutable once built: a ring is shared read-only by all workers
 * and replaced whole when the backend set changes.
 */
#ifndef TETHER_LB_H
#define TETHER_LB_H

#include <stddef.h>
#include <stdint.h>

struct tether_ring;

struct tether_ring_node {
    const char *name;            /* borrowed during tether_ring_new() only */
    uint32_t weight;             /* >= 1; 0 = not on the ring */
};

/*
 * Build a ring over n nodes (node i is identified by its index i in the
 * answers). Each node gets vnodes x weight points at XXH3_64("name#j") for
 * j in [0, vnodes x weight), sorted; ties broken by node name so the order
 * never depends on the node's index.
 * Returns a new ring (tether_ring_free) or NULL on allocation failure,
 * when no node has a point, or when n > INT_MAX or the ring would have
 * more than UINT32_MAX points. Thread: any; the ring is then read-only and
 * every lookup below may run in any number of threads without a lock.
 */
struct tether_ring *tether_ring_new(const struct tether_ring_node *nodes, size_t n,
                                    uint32_t vnodes);

void tether_ring_free(struct tether_ring *ring);

/* Number of points on the ring. */
size_t tether_ring_points(const struct tether_ring *ring);

/* The n given to tether_ring_new(): node indexes are below it. */
size_t tether_ring_nodes(const struct tether_ring *ring);

/* Hash of a session key, the ring's coordinate (XXH3_64, seed 0). */
uint64_t tether_ring_hash(const void *key, size_t len);

/*
 * Index of the first point whose hash is >= h (wrapping to 0). Binary
 * search, no allocation. Walk on with tether_ring_next().
 */
size_t tether_ring_first(const struct tether_ring *ring, uint64_t h);
size_t tether_ring_next(const struct tether_ring *ring, size_t point);

/* The node (index given to tether_ring_new) owning a point. */
uint32_t tether_ring_node(const struct tether_ring *ring, size_t point);

/* Rings of up to this many nodes are walked with an exact on-stack bitmap. */
#define TETHER_RING_PICK_EXACT 4096

/*
 * Walk the ring from h and return the first node for which accept(ctx,
 * node) returns non-zero, each node offered at most once; -1 if none
 * accepts. accept == NULL accepts every node. No allocation.
 * The walk stops once every node with a point has been offered. On a ring
 * of more than TETHER_RING_PICK_EXACT nodes only consecutive points of one
 * node are skipped, so accept may be asked about a node again (harmless
 * for a pure test); the walk then stops after one full turn.
 */
int tether_ring_pick(const struct tether_ring *ring, uint64_t h,
                     int (*accept)(void *ctx, uint32_t node), void *ctx);

/*
 * Least-in-flight choice: among the n candidates for which up[i] is
 * non-zero, the one with the smallest inflight[i] / weight[i] (ties: lowest
 * index after a rotation by `start`, so equal backends share the work).
 * A candidate of weight 0 counts as not up. Ratios are compared exactly
 * (cross-multiplied in 64 bits). n <= INT_MAX.
 * Returns the index or -1 when none is up.
 */
int tether_lb_least_inflight(const uint32_t *inflight, const uint32_t *weight,
                             const unsigned char *up, size_t n, size_t start);

/* One backend as the bounded-load pick sees it, indexed like the ring's nodes. */
struct tether_lb_candidate {
    uint32_t load;        /* live sessions bound to it */
    uint32_t weight;      /* >= 1; 0 counts as not usable */
    uint64_t cap;         /* max_sessions, 0 = no cap */
    unsigned char usable; /* up, not draining, not disabled */
};

/*
 * Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam),
 * applied to sessions: walk the ring from h and return the first node that
 * is usable, under its cap (load < cap), and eligible:
 *   load_i < ceil(c * (T + 1) * w_i / W)
 * with T = sum of load and W = sum of weight over the usable nodes and
 * c = load_factor (>= 1.0). If none is eligible but some usable node is
 * under its cap: the one with the lowest load_i / w_i (ties: first in ring
 * order from h). If all usable nodes are at their cap, or none is usable: -1.
 * cands has n entries indexed like the ring's nodes (n = tether_ring_nodes);
 * a node without a point on the ring, or at an index >= n, is never chosen.
 * c is taken in millionths (llround(c * 1e6); below 1.0 counts as 1.0, above
 * 9.2e12 as 9.2e12) and the bound is computed exactly in 128-bit integers,
 * the fallback ratios in 64-bit. No allocation, no lock: thread any.
 */
int tether_lb_bounded_pick(const struct tether_ring *ring, uint64_t h,
                           const struct tether_lb_candidate *cands, size_t n, double c);

#endif
