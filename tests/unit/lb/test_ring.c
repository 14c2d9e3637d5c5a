/*
 * Unit tests for src/lb/ring.c. They check the ring's promises as
 * invariants over many keys (lookup agrees with a reference search, removal
 * moves only the removed node's keys, weights and spread hold) rather than
 * a fixed sequence of answers. Loops over many keys count violations and
 * assert once, since every ck_assert costs a write to the runner.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <xxhash.h>

#include "tether/lb.h"
#include "../unit.h"

#define NAMELEN 32

struct pool {
    char names[64][NAMELEN];
    struct tether_ring_node nodes[64];
    size_t n;
};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The coordinate of the i-th test key, hashed as a session key would be. */
static uint64_t key(uint64_t i)
{
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "session-%llu", (unsigned long long)i);
    return tether_ring_hash(buf, (size_t)len);
}

static void pool_init(struct pool *p, size_t n, const char *prefix)
{
    ck_assert_uint_le(n, 64);
    p->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(p->names[i], NAMELEN, "%s-%zu", prefix, i);
        p->nodes[i].name = p->names[i];
        p->nodes[i].weight = 1;
    }
}

/* Name of the node owning h ("" if none, which never matches a node). */
static const char *owner(const struct tether_ring *ring, const struct tether_ring_node *nodes,
                         uint64_t h)
{
    int node = tether_ring_pick(ring, h, NULL, NULL);
    return node >= 0 ? nodes[node].name : "";
}

static int cmp_u64(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return (a > b) - (a < b);
}

/* All the ring's point hashes, recomputed from the names, sorted. */
static uint64_t *reference_points(const struct tether_ring_node *nodes, size_t n, uint32_t vnodes,
                                  size_t *count)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (size_t)vnodes * nodes[i].weight;
    uint64_t *pts = malloc(total * sizeof(*pts));
    ck_assert_ptr_nonnull(pts);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < vnodes * nodes[i].weight; j++) {
            char buf[64];
            int len = snprintf(buf, sizeof(buf), "%s#%u", nodes[i].name, j);
            pts[at++] = XXH3_64bits(buf, (size_t)len);
        }
    }
    qsort(pts, total, sizeof(*pts), cmp_u64);
    *count = total;
    return pts;
}

START_TEST(test_new_rejects)
{
    struct pool p;
    pool_init(&p, 3, "b");
    ck_assert_ptr_null(tether_ring_new(p.nodes, 0, 100));
    ck_assert_ptr_null(tether_ring_new(p.nodes, 3, 0));
    for (size_t i = 0; i < 3; i++)
        p.nodes[i].weight = 0;
    ck_assert_ptr_null(tether_ring_new(p.nodes, 3, 100));
    tether_ring_free(NULL);
}
END_TEST

START_TEST(test_points_and_weights)
{
    struct pool p;
    pool_init(&p, 4, "b");
    p.nodes[1].weight = 3;
    p.nodes[2].weight = 0;
    p.nodes[2].name = NULL; /* a node off the ring needs no name */
    struct tether_ring *ring = tether_ring_new(p.nodes, 4, 50);
    ck_assert_ptr_nonnull(ring);
    ck_assert_uint_eq(tether_ring_points(ring), 50 * (1 + 3 + 0 + 1));
    ck_assert_uint_eq(tether_ring_nodes(ring), 4);

    size_t per[4] = {0};
    for (size_t i = 0; i < tether_ring_points(ring); i++) {
        uint32_t node = tether_ring_node(ring, i);
        ck_assert_uint_lt(node, 4);
        per[node]++;
    }
    ck_assert_uint_eq(per[0], 50);
    ck_assert_uint_eq(per[1], 150);
    ck_assert_uint_eq(per[2], 0);
    ck_assert_uint_eq(per[3], 50);
    tether_ring_free(ring);
}
END_TEST

/* first() is lower_bound over the points "name#j", wrapping past the last. */
START_TEST(test_first_matches_reference)
{
    struct pool p;
    pool_init(&p, 7, "node");
    p.nodes[5].weight = 2;
    const uint32_t vnodes = 40;
    struct tether_ring *ring = tether_ring_new(p.nodes, p.n, vnodes);
    ck_assert_ptr_nonnull(ring);
    size_t count;
    uint64_t *ref = reference_points(p.nodes, p.n, vnodes, &count);
    ck_assert_uint_eq(count, tether_ring_points(ring));

    uint64_t seed = 1;
    size_t wrong = 0;
    for (int k = 0; k < 20000; k++) {
        uint64_t h;
        if (k < (int)count)
            h = ref[k] + (uint64_t)(k % 3) - 1; /* just below, at and past a point */
        else
            h = splitmix(&seed);
        size_t lo = 0, hi = count;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (ref[mid] < h)
                lo = mid + 1;
            else
                hi = mid;
        }
        wrong += tether_ring_first(ring, h) != (lo == count ? 0 : lo);
    }
    ck_assert_uint_eq(wrong, 0);
    ck_assert_uint_eq(tether_ring_first(ring, 0), 0);
    ck_assert_uint_eq(tether_ring_first(ring, ref[count - 1] + 1), 0);
    ck_assert_uint_eq(tether_ring_first(ring, ref[count - 1]), count - 1);
    ck_assert_uint_eq(tether_ring_next(ring, count - 1), 0);
    ck_assert_uint_eq(tether_ring_next(ring, 0), 1);

    /* Each point belongs to the node whose name made its hash. */
    for (size_t i = 0; i < p.n; i++) {
        char buf[64];
        int len = snprintf(buf, sizeof(buf), "%s#%u", p.names[i], vnodes * p.nodes[i].weight - 1);
        size_t pt = tether_ring_first(ring, XXH3_64bits(buf, (size_t)len));
        ck_assert_uint_eq(tether_ring_node(ring, pt), i);
    }
    free(ref);
    tether_ring_free(ring);
}
END_TEST

START_TEST(test_single_point)
{
    struct tether_ring_node one = {"solo", 1};
    struct tether_ring *ring = tether_ring_new(&one, 1, 1);
    ck_assert_ptr_nonnull(ring);
    ck_assert_uint_eq(tether_ring_points(ring), 1);
    uint64_t seed = 7;
    for (int k = 0; k < 100; k++) {
        uint64_t h = splitmix(&seed);
        ck_assert_uint_eq(tether_ring_first(ring, h), 0);
        ck_assert_int_eq(tether_ring_pick(ring, h, NULL, NULL), 0);
    }
    ck_assert_uint_eq(tether_ring_next(ring, 0), 0);
    tether_ring_free(ring);
}
END_TEST

#define KEYS 100000

START_TEST(test_remove_moves_only_its_keys)
{
    struct pool all, rest;
    pool_init(&all, 10, "backend");
    struct tether_ring *full = tether_ring_new(all.nodes, all.n, 100);
    ck_assert_ptr_nonnull(full);

    for (size_t gone = 0; gone < all.n; gone += 3) {
        /* The same backends minus one: every survivor changes index. */
        rest.n = 0;
        for (size_t i = 0; i < all.n; i++)
            if (i != gone)
                rest.nodes[rest.n++] = all.nodes[i];
        struct tether_ring *less = tether_ring_new(rest.nodes, rest.n, 100);
        ck_assert_ptr_nonnull(less);

        size_t moved = 0, orphans = 0, rehomed = 0;
        for (uint64_t k = 0; k < KEYS; k++) {
            uint64_t h = key(k);
            const char *before = owner(full, all.nodes, h);
            const char *after = owner(less, rest.nodes, h);
            if (strcmp(before, all.names[gone]) == 0) {
                orphans++;
                rehomed += *after != '\0' && strcmp(after, all.names[gone]) != 0;
            } else if (strcmp(before, after) != 0) {
                moved++;
            }
        }
        ck_assert_uint_eq(moved, 0);
        ck_assert_uint_gt(orphans, 0);
        ck_assert_uint_eq(rehomed, orphans);
        tether_ring_free(less);
    }
    tether_ring_free(full);
}
END_TEST

START_TEST(test_add_takes_keys_only_to_new)
{
    struct pool p;
    pool_init(&p, 11, "backend");
    struct tether_ring *before = tether_ring_new(p.nodes, 10, 100);
    struct tether_ring *after = tether_ring_new(p.nodes, 11, 100);
    ck_assert_ptr_nonnull(before);
    ck_assert_ptr_nonnull(after);

    size_t taken = 0, stolen = 0;
    for (uint64_t k = 0; k < KEYS; k++) {
        uint64_t h = key(k);
        const char *a = owner(before, p.nodes, h);
        const char *b = owner(after, p.nodes, h);
        if (strcmp(a, b) != 0) {
            taken++;
            stolen += strcmp(b, p.names[10]) != 0;
        }
    }
    ck_assert_uint_eq(stolen, 0);
    /* About 1/11 of the keys; at least half of that. */
    ck_assert_uint_gt(taken, KEYS / 22);
    tether_ring_free(before);
    tether_ring_free(after);
}
END_TEST

START_TEST(test_node_order_irrelevant)
{
    struct pool p;
    pool_init(&p, 10, "backend");
    p.nodes[2].weight = 2;
    p.nodes[7].weight = 4;
    struct tether_ring *ref = tether_ring_new(p.nodes, p.n, 100);
    ck_assert_ptr_nonnull(ref);

    uint64_t seed = 42;
    for (int round = 0; round < 5; round++) {
        struct tether_ring_node shuffled[10];
        memcpy(shuffled, p.nodes, sizeof(shuffled));
        for (size_t i = p.n - 1; i > 0; i--) {
            size_t j = splitmix(&seed) % (i + 1);
            struct tether_ring_node t = shuffled[i];
            shuffled[i] = shuffled[j];
            shuffled[j] = t;
        }
        struct tether_ring *ring = tether_ring_new(shuffled, p.n, 100);
        ck_assert_ptr_nonnull(ring);
        size_t differ = 0;
        for (uint64_t k = 0; k < KEYS; k++) {
            uint64_t h = key(k);
            differ += strcmp(owner(ring, shuffled, h), owner(ref, p.nodes, h)) != 0;
        }
        /* The whole point sequence, not only the sampled keys. */
        ck_assert_uint_eq(tether_ring_points(ring), tether_ring_points(ref));
        for (size_t i = 0; i < tether_ring_points(ring); i++)
            differ += strcmp(shuffled[tether_ring_node(ring, i)].name,
                             p.nodes[tether_ring_node(ref, i)].name) != 0;
        ck_assert_uint_eq(differ, 0);
        tether_ring_free(ring);
    }
    tether_ring_free(ref);
}
END_TEST

START_TEST(test_weight_share)
{
    struct pool p;
    pool_init(&p, 10, "backend");
    p.nodes[4].weight = 3;
    struct tether_ring *ring = tether_ring_new(p.nodes, p.n, 100);
    ck_assert_ptr_nonnull(ring);

    size_t per[10] = {0};
    const uint64_t keys = 400000;
    for (uint64_t k = 0; k < keys; k++)
        per[tether_ring_pick(ring, key(k), NULL, NULL)]++;

    /*
     * Expected share w_i / W = 3/12, allow +-25%: with 300 points the
     * node's arc deviates by about 1/sqrt(300) = 6%. Measured: 1.00 of the
     * expected share, 3.02 times the mean of the others.
     */
    double expect = (double)keys * 3.0 / 12.0;
    ck_assert_double_ge((double)per[4], expect * 0.75);
    ck_assert_double_le((double)per[4], expect * 1.25);
    size_t others = keys - per[4];
    double ratio = (double)per[4] / ((double)others / 9.0);
    ck_assert_double_ge(ratio, 3.0 * 0.75);
    ck_assert_double_le(ratio, 3.0 * 1.25);
    tether_ring_free(ring);
}
END_TEST

START_TEST(test_spread)
{
    struct pool p;
    pool_init(&p, 10, "backend");
    struct tether_ring *ring = tether_ring_new(p.nodes, p.n, 100);
    ck_assert_ptr_nonnull(ring);

    size_t per[10] = {0};
    const uint64_t keys = 1000000;
    uint64_t seed = 3;
    for (uint64_t k = 0; k < keys; k++)
        per[tether_ring_pick(ring, splitmix(&seed), NULL, NULL)]++;
    size_t max = 0, min = keys;
    for (size_t i = 0; i < p.n; i++) {
        max = per[i] > max ? per[i] : max;
        min = per[i] < min ? per[i] : min;
    }
    /*
     * With 100 points per node an arc deviates by about 1/sqrt(100) = 10%;
     * these names measure max/mean 1.14 and min/mean 0.82.
     */
    double mean = (double)keys / 10.0;
    ck_assert_double_lt((double)max / mean, 1.25);
    ck_assert_double_gt((double)min / mean, 0.75);
    tether_ring_free(ring);
}
END_TEST

struct offers {
    uint64_t reject;    /* bit i: node i says no */
    unsigned count[64]; /* times each node was asked */
    unsigned total;
};

static int accept_cb(void *ctx, uint32_t node)
{
    struct offers *o = ctx;
    if (node >= 64)
        return 0; /* counted as an offer nowhere: caught by the total */
    o->count[node]++;
    o->total++;
    return !(o->reject >> node & 1);
}

/* The first node along the ring from h not in reject, by a plain walk. */
static int reference_pick(const struct tether_ring *ring, uint64_t h, uint64_t reject)
{
    size_t p = tether_ring_first(ring, h);
    for (size_t k = 0; k < tether_ring_points(ring); k++, p = tether_ring_next(ring, p)) {
        uint32_t node = tether_ring_node(ring, p);
        if (!(reject >> node & 1))
            return (int)node;
    }
    return -1;
}

START_TEST(test_pick_accept)
{
    struct pool p;
    pool_init(&p, 12, "backend");
    p.nodes[3].weight = 2;
    p.nodes[8].weight = 0; /* off the ring: never offered */
    struct tether_ring *ring = tether_ring_new(p.nodes, p.n, 100);
    ck_assert_ptr_nonnull(ring);

    uint64_t seed = 9;
    size_t wrong = 0, twice = 0, unasked = 0, refused = 0, nones = 0;
    for (int k = 0; k < 20000; k++) {
        uint64_t h = splitmix(&seed);
        struct offers o = {.reject = splitmix(&seed) & 0xfff};
        int got = tether_ring_pick(ring, h, accept_cb, &o);
        wrong += got != reference_pick(ring, h, o.reject);
        unsigned asked = 0;
        for (size_t i = 0; i < p.n; i++) {
            twice += o.count[i] > 1;
            asked += o.count[i];
        }
        twice += o.count[8] != 0 || asked != o.total;
        if (got >= 0) {
            unasked += o.count[got] != 1;
            refused += o.reject >> got & 1;
        } else {
            /* Nobody accepted: every node on the ring was asked once. */
            unasked += o.total != p.n - 1;
            nones++;
        }
    }
    ck_assert_uint_eq(wrong, 0);
    ck_assert_uint_eq(twice, 0);
    ck_assert_uint_eq(unasked, 0);
    ck_assert_uint_eq(refused, 0);
    ck_assert_uint_gt(nones, 0); /* the -1 path was taken too */

    /* Everyone refuses. */
    struct offers none = {.reject = ~(uint64_t)0};
    ck_assert_int_eq(tether_ring_pick(ring, 12345, accept_cb, &none), -1);
    ck_assert_uint_eq(none.total, p.n - 1);

    /* Everyone accepts: the owner of h, asked once. */
    struct offers all = {0};
    uint64_t h = key(1);
    ck_assert_int_eq(tether_ring_pick(ring, h, accept_cb, &all),
                     (int)tether_ring_node(ring, tether_ring_first(ring, h)));
    ck_assert_uint_eq(all.total, 1);
    tether_ring_free(ring);
}
END_TEST

/* Past TETHER_RING_PICK_EXACT nodes: still the first accepted node, no allocation. */
struct wide {
    uint32_t want;
    size_t asked;
};

static int want_cb(void *ctx, uint32_t node)
{
    struct wide *w = ctx;
    w->asked++;
    return node == w->want;
}

START_TEST(test_pick_wide_ring)
{
    const size_t n = TETHER_RING_PICK_EXACT + 500;
    struct tether_ring_node *nodes = calloc(n, sizeof(*nodes));
    char(*names)[NAMELEN] = calloc(n, NAMELEN);
    ck_assert_ptr_nonnull(nodes);
    ck_assert_ptr_nonnull(names);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], NAMELEN, "wide-%zu", i);
        nodes[i].name = names[i];
        nodes[i].weight = 1;
    }
    struct tether_ring *ring = tether_ring_new(nodes, n, 2);
    ck_assert_ptr_nonnull(ring);
    ck_assert_uint_eq(tether_ring_nodes(ring), n);

    uint64_t seed = 11;
    for (int k = 0; k < 200; k++) {
        uint64_t h = splitmix(&seed);
        struct wide w = {.want = (uint32_t)(splitmix(&seed) % n)};
        ck_assert_int_eq(tether_ring_pick(ring, h, want_cb, &w), (int)w.want);
        /* Never more than one turn of the ring. */
        ck_assert_uint_le(w.asked, tether_ring_points(ring));
    }
    struct wide nobody = {.want = UINT32_MAX};
    ck_assert_int_eq(tether_ring_pick(ring, 1, want_cb, &nobody), -1);
    ck_assert_uint_le(nobody.asked, tether_ring_points(ring));
    ck_assert_uint_ge(nobody.asked, n);
    tether_ring_free(ring);
    free(names);
    free(nodes);
}
END_TEST

static Suite *ring_suite(void)
{
    Suite *s = suite_create("lb/ring");
    TCase *tc = tcase_create("build");
    tcase_add_test(tc, test_new_rejects);
    tcase_add_test(tc, test_points_and_weights);
    tcase_add_test(tc, test_first_matches_reference);
    tcase_add_test(tc, test_single_point);
    suite_add_tcase(s, tc);

    tc = tcase_create("placement");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_remove_moves_only_its_keys);
    tcase_add_test(tc, test_add_takes_keys_only_to_new);
    tcase_add_test(tc, test_node_order_irrelevant);
    tcase_add_test(tc, test_weight_share);
    tcase_add_test(tc, test_spread);
    suite_add_tcase(s, tc);

    tc = tcase_create("pick");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pick_accept);
    tcase_add_test(tc, test_pick_wide_ring);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(ring_suite());
}
