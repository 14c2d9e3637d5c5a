/*
 * bench-ring: cost of a ring lookup and quality of the spread, on the
 * default shape (100 backends x 100 vnodes). Prints one small table.
 * Usage: bench-ring [lookups]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tether/lb.h"

#define BACKENDS 100
#define VNODES 100
#define SPREAD_KEYS 1000000

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Refuses every other node, so a pick walks past at least one owner. */
static int odd_only(void *ctx, uint32_t node)
{
    (void)ctx;
    return node & 1;
}

int main(int argc, char **argv)
{
    long lookups = argc > 1 ? atol(argv[1]) : 10000000;
    if (lookups <= 0) {
        fprintf(stderr, "usage: bench-ring [lookups]\n");
        return 2;
    }

    static char names[BACKENDS][32];
    struct tether_ring_node nodes[BACKENDS];
    for (int i = 0; i < BACKENDS; i++) {
        snprintf(names[i], sizeof(names[i]), "fn-%d", i);
        nodes[i].name = names[i];
        nodes[i].weight = 1;
    }
    double t0 = now_ns();
    struct tether_ring *ring = tether_ring_new(nodes, BACKENDS, VNODES);
    double build = now_ns() - t0;
    if (ring == NULL) {
        fprintf(stderr, "bench-ring: cannot build the ring\n");
        return 1;
    }

    /* The hashes are drawn inside the timed loop; their cost is measured apart. */
    uint64_t seed = 1, sink = 0;
    t0 = now_ns();
    for (long i = 0; i < lookups; i++)
        sink += splitmix(&seed);
    double gen = now_ns() - t0;

    seed = 1;
    t0 = now_ns();
    for (long i = 0; i < lookups; i++)
        sink += tether_ring_first(ring, splitmix(&seed));
    double first = now_ns() - t0 - gen;

    seed = 1;
    t0 = now_ns();
    for (long i = 0; i < lookups; i++)
        sink += (uint64_t)tether_ring_pick(ring, splitmix(&seed), NULL, NULL);
    double pick = now_ns() - t0 - gen;

    seed = 1;
    t0 = now_ns();
    for (long i = 0; i < lookups; i++)
        sink += (uint64_t)tether_ring_pick(ring, splitmix(&seed), odd_only, NULL);
    double pick_cb = now_ns() - t0 - gen;

    static unsigned per[BACKENDS];
    seed = 2;
    for (long i = 0; i < SPREAD_KEYS; i++) {
        char key[32];
        int len = snprintf(key, sizeof(key), "session-%llu", (unsigned long long)splitmix(&seed));
        per[tether_ring_pick(ring, tether_ring_hash(key, (size_t)len), NULL, NULL)]++;
    }
    unsigned max = 0, min = SPREAD_KEYS;
    for (int i = 0; i < BACKENDS; i++) {
        max = per[i] > max ? per[i] : max;
        min = per[i] < min ? per[i] : min;
    }
    double mean = (double)SPREAD_KEYS / BACKENDS;

    printf("ring: %d backends x %d vnodes = %zu points, built in %.2f ms\n", BACKENDS, VNODES,
           tether_ring_points(ring), build / 1e6);
    printf("%-34s %10s\n", "operation", "ns/op");
    printf("%-34s %10.1f\n", "tether_ring_first", first / (double)lookups);
    printf("%-34s %10.1f\n", "tether_ring_pick (accept NULL)", pick / (double)lookups);
    printf("%-34s %10.1f\n", "tether_ring_pick (odd nodes only)", pick_cb / (double)lookups);
    printf("%-34s %10s\n", "spread over 1M keys", "");
    printf("%-34s %10.3f\n", "  peak / mean", (double)max / mean);
    printf("%-34s %10.3f\n", "  min / mean", (double)min / mean);
    printf("(checksum %llu, %ld lookups each)\n", (unsigned long long)sink, lookups);
    tether_ring_free(ring);
    return 0;
}
