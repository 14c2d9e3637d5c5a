/*
 * Unit tests for src/lb/least.c: the choice is always a least-loaded up
 * backend relative to its weight, ties rotate with `start`, and a run of
 * choices spreads in-flight requests in proportion to the weights.
 */
#include <stdint.h>
#include <stdlib.h>

#include <check.h>

#include "tether/lb.h"
#include "../unit.h"

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * Whether chosen is an up candidate and none has a strictly smaller
 * inflight/weight. A plain predicate: the loops below call it often and
 * assert once.
 */
static int is_least(const uint32_t *inflight, const uint32_t *weight, const unsigned char *up,
                    size_t n, int chosen)
{
    if (chosen < 0 || (size_t)chosen >= n || !up[chosen] || weight[chosen] == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!up[i] || weight[i] == 0)
            continue;
        if ((uint64_t)inflight[i] * weight[chosen] < (uint64_t)inflight[chosen] * weight[i])
            return 0;
    }
    return 1;
}

START_TEST(test_none_up)
{
    uint32_t inflight[3] = {0, 0, 0}, weight[3] = {1, 1, 1};
    unsigned char up[3] = {0, 0, 0};
    ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, 0, 0), -1);
    ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, 3, 0), -1);
    ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, 3, 2), -1);

    /* Up but of weight 0 is not a candidate either. */
    unsigned char all[3] = {1, 1, 1};
    uint32_t zero[3] = {0, 0, 0};
    ck_assert_int_eq(tether_lb_least_inflight(inflight, zero, all, 3, 1), -1);
}
END_TEST

START_TEST(test_weights)
{
    /* 4/1 > 6/2: the heavier backend with more requests is still less loaded. */
    uint32_t inflight[2] = {4, 6}, weight[2] = {1, 2};
    unsigned char up[2] = {1, 1};
    ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, 2, 0), 1);
    ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, 2, 1), 1);
    up[1] = 0;
    ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, 2, 1), 0);

    /*
     * Ratios 1 + 1/(2^32 - 3) and 1 + 1/(2^32 - 2) differ by about 2^-64,
     * far below a double's 2^-52: only an exact comparison sees it.
     */
    uint32_t big[2] = {UINT32_MAX - 1, UINT32_MAX}, bw[2] = {UINT32_MAX - 2, UINT32_MAX - 1};
    unsigned char both[2] = {1, 1};
    ck_assert_int_eq(tether_lb_least_inflight(big, bw, both, 2, 0), 1);
    ck_assert_int_eq(tether_lb_least_inflight(big, bw, both, 2, 1), 1);
}
END_TEST

START_TEST(test_ties_rotate)
{
    enum { N = 7 };
    uint32_t inflight[N], weight[N];
    unsigned char up[N];
    for (size_t i = 0; i < N; i++) {
        inflight[i] = 2 * (uint32_t)(i % 3 + 1);
        weight[i] = (uint32_t)(i % 3 + 1); /* every ratio is 2 */
        up[i] = i != 3;
    }
    for (size_t start = 0; start < 3 * N; start++) {
        size_t want = start % N == 3 ? 4 : start % N;
        ck_assert_int_eq(tether_lb_least_inflight(inflight, weight, up, N, start), (int)want);
    }

    /* A rotating start shares equal backends evenly. */
    unsigned hits[N] = {0};
    for (size_t start = 0; start < 100 * N; start++)
        hits[tether_lb_least_inflight(inflight, weight, up, N, start)]++;
    ck_assert_uint_eq(hits[3], 0);
    ck_assert_uint_eq(hits[4], 2 * hits[0]);
    for (size_t i = 0; i < N; i++)
        if (i != 3 && i != 4)
            ck_assert_uint_eq(hits[i], hits[0]);
}
END_TEST

START_TEST(test_random_is_least)
{
    enum { N = 16 };
    uint64_t seed = 5;
    size_t wrong = 0, nones = 0;
    for (int round = 0; round < 20000; round++) {
        uint32_t inflight[N], weight[N];
        unsigned char up[N];
        int any = 0;
        uint64_t density = splitmix(&seed) % 5; /* 0: all down .. 4: all up */
        for (size_t i = 0; i < N; i++) {
            inflight[i] = (uint32_t)(splitmix(&seed) % 50);
            weight[i] = (uint32_t)(splitmix(&seed) % 5);
            up[i] = splitmix(&seed) % 4 < density;
            any |= up[i] && weight[i] > 0;
        }
        size_t start = splitmix(&seed) % 100;
        int got = tether_lb_least_inflight(inflight, weight, up, N, start);
        if (!any)
            nones++, wrong += got != -1;
        else
            wrong += !is_least(inflight, weight, up, N, got);
    }
    ck_assert_uint_eq(wrong, 0);
    ck_assert_uint_gt(nones, 0);
}
END_TEST

/* Sending each request to the choice keeps in-flight counts proportional to weight. */
START_TEST(test_weighted_spread)
{
    enum { N = 10 };
    uint32_t inflight[N] = {0}, weight[N];
    unsigned char up[N];
    uint32_t total_weight = 0;
    for (size_t i = 0; i < N; i++) {
        weight[i] = (uint32_t)(i % 3 + 1);
        up[i] = 1;
        total_weight += weight[i];
    }
    const uint32_t rounds = 1000;
    size_t wrong = 0;
    for (uint32_t k = 0; k < rounds * total_weight; k++) {
        int got = tether_lb_least_inflight(inflight, weight, up, N, k);
        if (!is_least(inflight, weight, up, N, got)) {
            wrong++;
            continue;
        }
        inflight[got]++;
    }
    ck_assert_uint_eq(wrong, 0);
    for (size_t i = 0; i < N; i++)
        ck_assert_uint_eq(inflight[i], rounds * weight[i]);
}
END_TEST

static Suite *least_suite(void)
{
    Suite *s = suite_create("lb/least");
    TCase *tc = tcase_create("least_inflight");
    tcase_add_test(tc, test_none_up);
    tcase_add_test(tc, test_weights);
    tcase_add_test(tc, test_ties_rotate);
    tcase_add_test(tc, test_random_is_least);
    tcase_add_test(tc, test_weighted_spread);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(least_suite());
}
