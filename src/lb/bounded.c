/*
 * The bounded-load pick for new sessions: a walk of the consistent-hash ring
 * that passes over backends already holding more than c times their fair
 * share, so the ring keeps its stability while no backend's load runs away.
 * Pure: reads the candidates it is given, allocates nothing, takes no lock.
 */
#include <math.h>
#include <stdint.h>

#include "tether/lb.h"

__extension__ typedef unsigned __int128 u128;

/* c is capped at this many millionths (about 9.2e12), far looser than any useful bound. */
#define C_MILLIS_MAX 9200000000000000000ULL

/* State of one walk: the bound's constant factors and the fallback so far. */
struct walk {
    const struct tether_lb_candidate *cands;
    size_t n;
    u128 lhs; /* 1e6 * W: load_i is eligible while load_i * lhs < rhs * w_i */
    u128 rhs; /* c_millis * (T + 1) */
    int best; /* usable, under its cap, lowest load / weight so far */
};

static int usable(const struct tether_lb_candidate *x)
{
    return x->usable && x->weight > 0;
}

static int under_cap(const struct tether_lb_candidate *x)
{
    return x->cap == 0 || x->load < x->cap;
}

/*
 * load < ceil(q) holds exactly when load < q for an integer load, so the
 * test needs no division: load * 1e6 * W < c_millis * (T + 1) * w. The left
 * side stays below 2^115; a right side past 2^128 is larger still.
 */
static int eligible(const struct walk *w, const struct tether_lb_candidate *x)
{
    u128 right;
    if (__builtin_mul_overflow(w->rhs, (u128)x->weight, &right))
        return 1;
    return (u128)x->load * w->lhs < right;
}

/* Nodes come in ring order: keeping only a strictly lower ratio keeps the first of a tie. */
static int accept(void *ctx, uint32_t node)
{
    struct walk *w = ctx;
    if (node >= w->n)
        return 0;
    const struct tether_lb_candidate *x = &w->cands[node];
    if (!usable(x) || !under_cap(x))
        return 0;
    if (eligible(w, x))
        return 1;
    if (w->best < 0) {
        w->best = (int)node;
    } else {
        const struct tether_lb_candidate *b = &w->cands[w->best];
        /* Both factors are below 2^32: the products are exact in 64 bits. */
        if ((uint64_t)x->load * b->weight < (uint64_t)b->load * x->weight)
            w->best = (int)node;
    }
    return 0;
}

int tether_lb_bounded_pick(const struct tether_ring *ring, uint64_t h,
                           const struct tether_lb_candidate *cands, size_t n, double c)
{
    /*
     * Branch-free: this pass over every backend is most of a pick's cost.
     * Whether any backend has room is left to the walk, which learns it
     * anyway (the fallback), so only a full pool pays for a whole turn.
     */
    uint64_t total = 0, weights = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t mask = -(uint64_t)usable(&cands[i]);
        total += cands[i].load & mask;
        weights += cands[i].weight & mask;
    }

    uint64_t c_millis;
    if (!(c >= 1.0)) /* NaN too */
        c_millis = 1000000;
    else if (c >= (double)C_MILLIS_MAX / 1e6)
        c_millis = C_MILLIS_MAX;
    else
        c_millis = (uint64_t)llround(c * 1e6);

    struct walk w = {
        .cands = cands,
        .n = n,
        .lhs = (u128)1000000 * weights,
        .rhs = (u128)c_millis * ((u128)total + 1),
        .best = -1,
    };
    int got = tether_ring_pick(ring, h, accept, &w);
    return got >= 0 ? got : w.best;
}
