/*
 * Unit tests for src/lb/bounded.c. Every answer is checked against a
 * reference that walks the ring by hand and computes the bound in long
 * double; long runs of placements check the load bound after every step,
 * caps and unusable backends, and that a loose bound is the plain ring.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tether/lb.h"
#include "../unit.h"

#define MAXN 32
#define NAMELEN 32

struct pool {
    char names[MAXN][NAMELEN];
    struct tether_ring_node nodes[MAXN];
    struct tether_lb_candidate cands[MAXN];
    size_t n;
    struct tether_ring *ring;
};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t key(uint64_t i)
{
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "session-%llu", (unsigned long long)i);
    return tether_ring_hash(buf, (size_t)len);
}

/* n usable, uncapped nodes of the given weights (NULL: all 1), on a ring of vnodes. */
static void pool_init(struct pool *p, size_t n, const uint32_t *weights, uint32_t vnodes)
{
    ck_assert_uint_le(n, MAXN);
    memset(p, 0, sizeof(*p));
    p->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(p->names[i], NAMELEN, "fn-%zu", i);
        p->nodes[i].name = p->names[i];
        p->nodes[i].weight = weights != NULL ? weights[i] : 1;
        p->cands[i].weight = p->nodes[i].weight;
        p->cands[i].usable = 1;
    }
    p->ring = tether_ring_new(p->nodes, n, vnodes);
    ck_assert_ptr_nonnull(p->ring);
}

static void pool_deinit(struct pool *p)
{
    tether_ring_free(p->ring);
    p->ring = NULL;
}

/* The distinct nodes of p in ring order from h, walked point by point; returns how many. */
static size_t ring_order(const struct pool *pl, uint64_t h, int *order)
{
    const struct tether_ring *ring = pl->ring;
    unsigned char seen[MAXN] = {0};
    size_t live = 0;
    for (size_t i = 0; i < pl->n; i++)
        live += pl->nodes[i].weight > 0;
    size_t k = 0, p = tether_ring_first(ring, h);
    for (size_t i = 0; i < tether_ring_points(ring) && k < live; i++) {
        uint32_t node = tether_ring_node(ring, p);
        if (!seen[node]) {
            seen[node] = 1;
            order[k++] = (int)node;
        }
        p = tether_ring_next(ring, p);
    }
    return k;
}

static long long c_millis(double c)
{
    return llround(c * 1e6);
}

/* ceil(c * (T + 1) * w / W) in long double, c in millionths as the pick takes it. */
static long double ref_bound(long long cm, uint64_t total, uint32_t w, uint64_t weights)
{
    return ceill((long double)cm * (long double)(total + 1) * w / (1e6L * (long double)weights));
}

/*
 * What the pick must answer, and which rule gave it: 0 the first eligible,
 * 1 the lowest-ratio fallback, 2 none.
 */
static int reference(const struct pool *p, uint64_t h, double c, int *rule)
{
    uint64_t total = 0, weights = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (p->cands[i].usable && p->cands[i].weight > 0) {
            total += p->cands[i].load;
            weights += p->cands[i].weight;
        }
    }
    int order[MAXN];
    size_t k = ring_order(p, h, order);
    int best = -1;
    for (size_t j = 0; j < k; j++) {
        const struct tether_lb_candidate *x = &p->cands[order[j]];
        if (!x->usable || x->weight == 0 || (x->cap != 0 && x->load >= x->cap))
            continue;
        if ((long double)x->load < ref_bound(c_millis(c), total, x->weight, weights)) {
            *rule = 0;
            return order[j];
        }
        if (best < 0 || (long double)x->load / x->weight <
                            (long double)p->cands[best].load / p->cands[best].weight)
            best = order[j];
    }
    *rule = best >= 0 ? 1 : 2;
    return best;
}

START_TEST(test_edges)
{
    struct pool p;
    pool_init(&p, 4, NULL, 50);
    uint64_t h = key(1);
    int owner = tether_ring_pick(p.ring, h, NULL, NULL);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1.25), owner);

    /* Nothing usable, or weight 0, or everything at its cap: -1. */
    for (size_t i = 0; i < 4; i++)
        p.cands[i].usable = 0;
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1.25), -1);
    for (size_t i = 0; i < 4; i++) {
        p.cands[i].usable = 1;
        p.cands[i].weight = 0;
    }
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1.25), -1);
    for (size_t i = 0; i < 4; i++) {
        p.cands[i].weight = 1;
        p.cands[i].load = 7;
        p.cands[i].cap = 7;
    }
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1.25), -1);

    /* One under its cap but far over the bound: the fallback takes it. */
    p.cands[2].cap = 1000;
    p.cands[2].load = 900;
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1.25), 2);

    /*
     * Two at their cap with load 1, two uncapped at 10: the bound ceil(23 / 4) = 6
     * leaves none eligible, and of the tie 10 / 1 the first in ring order wins.
     */
    for (size_t i = 0; i < 4; i++)
        p.cands[i] = (struct tether_lb_candidate){.weight = 1, .usable = 1, .load = 10};
    p.cands[1].load = p.cands[1].cap = 1;
    p.cands[3].load = p.cands[3].cap = 1;
    size_t ties[4] = {0};
    for (uint64_t i = 0; i < 1000; i++) {
        int order[MAXN];
        ring_order(&p, key(i), order);
        size_t j = 0;
        while (order[j] != 0 && order[j] != 2)
            j++;
        int first = order[j];
        int got = tether_lb_bounded_pick(p.ring, key(i), p.cands, 4, 1.0);
        ck_assert_int_eq(got, first);
        ties[got]++;
    }
    ck_assert_uint_gt(ties[0], 100);
    ck_assert_uint_gt(ties[2], 100);

    /* Nodes past n are never chosen, even as the ring's owner. */
    for (size_t i = 0; i < 4; i++)
        p.cands[i] = (struct tether_lb_candidate){.weight = 1, .usable = 1};
    for (uint64_t i = 0; i < 1000; i++) {
        int got = tether_lb_bounded_pick(p.ring, key(i), p.cands, 2, 1.25);
        ck_assert(got == 0 || got == 1);
    }
    pool_deinit(&p);

    /* A usable node without a point on the ring is never chosen. */
    uint32_t w[3] = {1, 0, 1};
    pool_init(&p, 3, w, 50);
    p.cands[1].weight = 1;
    p.cands[0].load = p.cands[2].load = 100;
    for (uint64_t i = 0; i < 1000; i++)
        ck_assert_int_ne(tether_lb_bounded_pick(p.ring, key(i), p.cands, 3, 1.0), 1);
    pool_deinit(&p);
}
END_TEST

/*
 * Loads near 2^32 and weights of 2^32 - 1 keep the bound exact: with two
 * equal weights and c = 1 a node is eligible exactly when its load is not
 * above the other's. c beyond 9.2e12 overflows 128 bits and means no bound;
 * c below 1 or NaN means 1.
 */
START_TEST(test_exact_extremes)
{
    struct pool p;
    pool_init(&p, 2, NULL, 50);
    uint64_t h = 0;
    while (tether_ring_pick(p.ring, h, NULL, NULL) != 0)
        h = key(h + 1);
    for (size_t i = 0; i < 2; i++)
        p.cands[i].weight = UINT32_MAX;

    p.cands[0].load = UINT32_MAX;
    p.cands[1].load = UINT32_MAX - 1;
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, 1.0), 1);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, 0.5), 1);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, NAN), 1);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, 1e300), 0);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, INFINITY), 0);
    p.cands[1].load = UINT32_MAX;
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, 1.0), 0);

    /* 1 + 1e-6 is the smallest c above 1: load 1000001 of T + 1 = 2000001 at share 1/2. */
    p.cands[0].weight = p.cands[1].weight = 1;
    p.cands[0].load = 1000001;
    p.cands[1].load = 999999;
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, 1.0), 1);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 2, 1.000001), 0);
    pool_deinit(&p);

    /* Loads 5, 3, 7: bound ceil(16 / 3) = 6 at c = 1 takes the owner, 0; c = 0.9 would not. */
    pool_init(&p, 3, NULL, 50);
    while (tether_ring_pick(p.ring, h, NULL, NULL) != 0)
        h = key(h + 1);
    p.cands[0].load = 5;
    p.cands[1].load = 3;
    p.cands[2].load = 7;
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 3, 1.0), 0);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 3, 0.9), 0);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 3, -1.0), 0);
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 3, NAN), 0);
    pool_deinit(&p);

    /* c_millis * (T + 1) * w past 2^128: eligible, not wrapped into a small number. */
    pool_init(&p, 4, NULL, 50);
    while (tether_ring_pick(p.ring, h, NULL, NULL) != 0)
        h = key(h + 1);
    for (size_t i = 0; i < 4; i++) {
        p.cands[i].weight = UINT32_MAX;
        p.cands[i].load = i == 0 ? UINT32_MAX : UINT32_MAX - 1000;
    }
    ck_assert_int_eq(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1e300), 0);
    ck_assert_int_ne(tether_lb_bounded_pick(p.ring, h, p.cands, 4, 1.0), 0);
    pool_deinit(&p);
}
END_TEST

/* Random loads, weights, caps, usable flags and c: every answer is the reference's. */
START_TEST(test_random_rule)
{
    static const double cs[] = {1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.3333333};
    uint64_t seed = 42;
    size_t wrong = 0, rules[3] = {0};
    for (int r = 0; r < 60; r++) {
        size_t n = 1 + splitmix(&seed) % 24;
        uint32_t w[MAXN];
        for (size_t i = 0; i < n; i++)
            w[i] = 1 + (uint32_t)(splitmix(&seed) % 8);
        struct pool p;
        pool_init(&p, n, w, 1 + (uint32_t)(splitmix(&seed) % 40));
        for (int s = 0; s < 500; s++) {
            uint64_t density = splitmix(&seed) % 5, capping = splitmix(&seed) % 4;
            for (size_t i = 0; i < n; i++) {
                struct tether_lb_candidate *x = &p.cands[i];
                x->load = (uint32_t)(splitmix(&seed) % 60);
                x->usable = splitmix(&seed) % 4 < density;
                x->cap = splitmix(&seed) % 4 < capping ? splitmix(&seed) % 70 : 0;
            }
            double c = splitmix(&seed) % 3 != 0 ? cs[splitmix(&seed) % 7]
                                                : 1.0 + (double)(splitmix(&seed) % 2000000) / 1e6;
            uint64_t h = splitmix(&seed);
            int rule;
            int want = reference(&p, h, c, &rule);
            wrong += tether_lb_bounded_pick(p.ring, h, p.cands, n, c) != want;
            rules[rule]++;
        }
        pool_deinit(&p);
    }
    ck_assert_uint_eq(wrong, 0);
    /* Each rule was exercised. */
    ck_assert_uint_gt(rules[0], 1000);
    ck_assert_uint_gt(rules[1], 100);
    ck_assert_uint_gt(rules[2], 100);
}
END_TEST

/*
 * 100k sessions placed one by one on 20 nodes of random weights: after each
 * placement the chosen node holds at most ceil(c * T * w / W) (the others'
 * bounds only grow with T), so max load_i / (T * w_i / W) never passes
 * c + W / (T * w_i) and ends within c + 0.01.
 */
static void spread(double c, uint64_t seed)
{
    enum { N = 20, SESSIONS = 100000 };
    uint32_t w[N];
    uint64_t weights = 0;
    for (size_t i = 0; i < N; i++) {
        w[i] = 1 + (uint32_t)(splitmix(&seed) % 10);
        weights += w[i];
    }
    struct pool p;
    pool_init(&p, N, w, 100);
    size_t over = 0, wrong = 0, fallbacks = 0;
    for (uint64_t t = 1; t <= SESSIONS; t++) {
        uint64_t h = key(seed + t);
        int rule;
        int want = reference(&p, h, c, &rule);
        int got = tether_lb_bounded_pick(p.ring, h, p.cands, N, c);
        wrong += got != want;
        fallbacks += rule != 0;
        if (got < 0)
            break;
        uint32_t load = ++p.cands[got].load;
        /* T is now t. */
        over += (long double)load > ref_bound(c_millis(c), t - 1, w[got], weights);
    }
    ck_assert_uint_eq(wrong, 0);
    ck_assert_uint_eq(fallbacks, 0);
    ck_assert_uint_eq(over, 0);

    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        double fair = (double)SESSIONS * w[i] / (double)weights;
        double ratio = p.cands[i].load / fair;
        ck_assert_double_le(ratio, c + (double)weights / ((double)SESSIONS * w[i]));
        if (ratio > worst)
            worst = ratio;
    }
    ck_assert_double_le(worst, c + 0.01);
    pool_deinit(&p);
}

START_TEST(test_spread_bound)
{
    spread(1.25, 1);
    spread(1.05, 2);
    spread(1.0, 3);
    spread(2.0, 4);
}
END_TEST

/* Capped nodes fill up to their cap and no further; then the pick says -1. */
START_TEST(test_caps)
{
    enum { N = 12 };
    uint64_t seed = 9;
    struct pool p;
    pool_init(&p, N, NULL, 60);
    uint64_t room = 0;
    for (size_t i = 0; i < N; i++) {
        p.cands[i].cap = 1 + splitmix(&seed) % 300;
        p.cands[i].usable = i != 5;
        if (p.cands[i].usable)
            room += p.cands[i].cap;
    }
    size_t placed = 0, bad = 0;
    for (uint64_t t = 0; t < 10000; t++) {
        int got = tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1.25);
        if (got < 0)
            break;
        bad += !p.cands[got].usable || p.cands[got].load >= p.cands[got].cap;
        p.cands[got].load++;
        placed++;
    }
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_eq(placed, room);
    ck_assert_uint_eq(p.cands[5].load, 0);
    for (uint64_t t = 0; t < 100; t++)
        ck_assert_int_eq(tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1.25), -1);

    /* Freeing one slot anywhere makes that node the only answer. */
    p.cands[7].load--;
    for (uint64_t t = 0; t < 100; t++)
        ck_assert_int_eq(tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1.25), 7);
    pool_deinit(&p);
}
END_TEST

/* Unusable nodes are never chosen, however light. */
START_TEST(test_unusable)
{
    enum { N = 16 };
    struct pool p;
    pool_init(&p, N, NULL, 80);
    for (size_t i = 0; i < N; i += 3)
        p.cands[i].usable = 0;
    size_t bad = 0;
    for (uint64_t t = 0; t < 20000; t++) {
        int got = tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1.1);
        ck_assert_int_ge(got, 0);
        bad += !p.cands[got].usable;
        p.cands[got].load++;
    }
    ck_assert_uint_eq(bad, 0);
    for (size_t i = 0; i < N; i += 3)
        ck_assert_uint_eq(p.cands[i].load, 0);
    pool_deinit(&p);
}
END_TEST

static int is_usable(void *ctx, uint32_t node)
{
    const struct tether_lb_candidate *cands = ctx;
    return cands[node].usable;
}

/* Far from any bound, the pick is the plain ring: the first usable owner from h. */
START_TEST(test_loose_is_ring)
{
    enum { N = 30 };
    uint64_t seed = 77;
    struct pool p;
    pool_init(&p, N, NULL, 100);
    for (size_t i = 0; i < N; i++)
        p.cands[i].load = (uint32_t)(splitmix(&seed) % 1000);
    size_t wrong = 0;
    for (uint64_t t = 0; t < 50000; t++)
        wrong += tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1e9) !=
                 tether_ring_pick(p.ring, key(t), NULL, NULL);
    for (size_t i = 0; i < N; i += 4)
        p.cands[i].usable = 0;
    for (uint64_t t = 0; t < 50000; t++)
        wrong += tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1e9) !=
                 tether_ring_pick(p.ring, key(t), is_usable, p.cands);

    /* Equal loads well under the bound: every node is eligible, so c = 1.25 is the ring too. */
    for (size_t i = 0; i < N; i++) {
        p.cands[i].load = 100;
        p.cands[i].usable = 1;
    }
    for (uint64_t t = 0; t < 50000; t++)
        wrong += tether_lb_bounded_pick(p.ring, key(t), p.cands, N, 1.25) !=
                 tether_ring_pick(p.ring, key(t), NULL, NULL);
    ck_assert_uint_eq(wrong, 0);
    pool_deinit(&p);
}
END_TEST

static Suite *bounded_suite(void)
{
    Suite *s = suite_create("lb/bounded");
    TCase *tc = tcase_create("rule");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_edges);
    tcase_add_test(tc, test_exact_extremes);
    tcase_add_test(tc, test_random_rule);
    suite_add_tcase(s, tc);

    tc = tcase_create("placement");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_spread_bound);
    tcase_add_test(tc, test_caps);
    tcase_add_test(tc, test_unusable);
    tcase_add_test(tc, test_loose_is_ring);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(bounded_suite());
}
