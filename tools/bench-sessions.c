/*
 * bench-sessions: new sessions placed through the real session table by the
 * bounded-load pick, side by side with a plain ring: the spread, what moves
 * when one backend goes, the cost of a placement and of a lookup, and the
 * memory per live session. Usage: bench-sessions [-n SESSIONS] [-b BACKENDS] [-c FACTOR]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tether/lb.h"
#include "tether/session.h"

#define VNODES 100
#define KEYLEN 20
#define NAMELEN 16
#define NOW_MS 1000
#define HOT 10000 /* sessions in the hot set of the cached lookup */

struct placer {
    const struct tether_ring *ring;
    const struct tether_session_table *table;
    struct tether_lb_candidate *cands;
    size_t n;
    double c; /* 0: the plain ring, no bound */
};

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

/* Resident set in bytes, from /proc/self/statm. */
static double rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f == NULL || fscanf(f, "%lu %lu", &size, &resident) != 2) {
        fprintf(stderr, "bench-sessions: cannot read /proc/self/statm\n");
        exit(1);
    }
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* The place callback as the proxy has it: candidates from the table's loads. */
static int place(void *ctx, uint64_t hash, int prefer)
{
    struct placer *p = ctx;
    if (p->c == 0)
        return tether_ring_pick(p->ring, hash, NULL, NULL);
    uint32_t loads[TETHER_SESSION_MAX_BACKENDS];
    tether_session_loads(p->table, loads, p->n);
    for (size_t i = 0; i < p->n; i++)
        p->cands[i].load = loads[i];
    if (prefer >= 0 && (size_t)prefer < p->n && p->cands[prefer].usable &&
        (p->cands[prefer].cap == 0 || p->cands[prefer].load < p->cands[prefer].cap))
        return prefer;
    return tether_lb_bounded_pick(p->ring, hash, p->cands, p->n, p->c);
}

static struct tether_session_table *table_new(void)
{
    struct tether_session_limits lim = {
        .max_sessions = UINT64_MAX,
        .max_state_bytes = UINT64_MAX,
        .idle_timeout_ms = 1ULL << 40,
        .max_lifetime_ms = 1ULL << 40,
        .provisional_timeout_ms = 1ULL << 40,
    };
    struct tether_session_table *t = tether_session_table_new(&lim, 0);
    if (t == NULL) {
        fprintf(stderr, "bench-sessions: cannot allocate the table\n");
        exit(1);
    }
    return t;
}

/* Places every key; the binding of key i goes to at[i]. Returns ns per placement. */
static double fill(struct tether_session_table *t, struct placer *p, const char *keys,
                   const uint64_t *hashes, size_t n, uint16_t *at)
{
    p->table = t;
    double t0 = now_ns();
    for (size_t i = 0; i < n; i++) {
        struct tether_session_info info;
        const char *k = keys + i * KEYLEN;
        int rc = tether_session_acquire(t, k, KEYLEN, hashes[i], NOW_MS, 0, place, p, &info);
        if (rc != TETHER_SESSION_CREATED) {
            fprintf(stderr, "bench-sessions: placement %zu answered %d\n", i, rc);
            exit(1);
        }
        tether_session_release(t, k, KEYLEN, hashes[i], info.created_ms, NOW_MS);
        at[i] = (uint16_t)info.backend;
    }
    return (now_ns() - t0) / (double)n;
}

/*
 * n acquires and releases of existing sessions drawn at random from the
 * first span keys: all of them (memory-bound), or a hot set that stays in
 * cache. Returns ns per lookup.
 */
static double lookups(struct tether_session_table *t, struct placer *p, const char *keys,
                      const uint64_t *hashes, size_t n, size_t span)
{
    uint64_t seed = 7, misses = 0;
    double t0 = now_ns();
    for (size_t j = 0; j < n; j++) {
        size_t i = splitmix(&seed) % span;
        struct tether_session_info info;
        const char *k = keys + i * KEYLEN;
        misses += tether_session_acquire(t, k, KEYLEN, hashes[i], NOW_MS, 0, place, p, &info) !=
                  TETHER_SESSION_FOUND;
        tether_session_release(t, k, KEYLEN, hashes[i], info.created_ms, NOW_MS);
    }
    double ns = (now_ns() - t0) / (double)n;
    if (misses != 0) {
        fprintf(stderr, "bench-sessions: %llu lookups missed\n", (unsigned long long)misses);
        exit(1);
    }
    return ns;
}

/* Peak load over the mean, over the backends not marked gone. */
static double peak(const uint32_t *load, size_t nb, size_t gone)
{
    uint64_t total = 0, max = 0, live = 0;
    for (size_t b = 0; b < nb; b++) {
        if (b == gone)
            continue;
        total += load[b];
        max = load[b] > max ? load[b] : max;
        live++;
    }
    return total != 0 ? (double)max * (double)live / (double)total : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench-sessions [-n SESSIONS] [-b BACKENDS] [-c FACTOR]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    size_t n = 1000000, nb = 100;
    double c = 1.25;
    int opt;
    while ((opt = getopt(argc, argv, "n:b:c:h")) != -1) {
        switch (opt) {
        case 'n':
            n = strtoul(optarg, NULL, 10);
            break;
        case 'b':
            nb = strtoul(optarg, NULL, 10);
            break;
        case 'c':
            c = strtod(optarg, NULL);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || n == 0 || nb < 2 || nb > TETHER_SESSION_MAX_BACKENDS || !(c >= 1.0))
        usage();

    char *names = calloc(nb, NAMELEN);
    struct tether_ring_node *nodes = calloc(nb, sizeof(*nodes));
    struct tether_lb_candidate *cands = calloc(nb, sizeof(*cands));
    char *keys = malloc(n * KEYLEN);
    uint64_t *hashes = malloc(n * sizeof(*hashes));
    uint16_t *bound_at = malloc(n * sizeof(*bound_at)), *plain_at = malloc(n * sizeof(*plain_at));
    uint32_t *bload = calloc(nb, sizeof(*bload)), *pload = calloc(nb, sizeof(*pload));
    if (!names || !nodes || !cands || !keys || !hashes || !bound_at || !plain_at || !bload ||
        !pload) {
        fprintf(stderr, "bench-sessions: out of memory\n");
        return 1;
    }
    for (size_t b = 0; b < nb; b++) {
        snprintf(names + b * NAMELEN, NAMELEN, "fn-%zu", b);
        nodes[b] = (struct tether_ring_node){.name = names + b * NAMELEN, .weight = 1};
        cands[b] = (struct tether_lb_candidate){.weight = 1, .usable = 1};
    }
    struct tether_ring *ring = tether_ring_new(nodes, nb, VNODES);
    if (ring == NULL) {
        fprintf(stderr, "bench-sessions: cannot build the ring\n");
        return 1;
    }

    /* Keys, hashes and answers first, so they stay out of the table's RSS. */
    memset(bound_at, 0, n * sizeof(*bound_at));
    memset(plain_at, 0, n * sizeof(*plain_at));
    uint64_t seed = 1;
    for (size_t i = 0; i < n; i++) {
        char buf[KEYLEN + 1];
        uint64_t r = splitmix(&seed);
        snprintf(buf, sizeof(buf), "%016llx%04x", (unsigned long long)r, (unsigned)(i & 0xffff));
        memcpy(keys + i * KEYLEN, buf, KEYLEN);
    }
    double t0 = now_ns();
    for (size_t i = 0; i < n; i++)
        hashes[i] = tether_ring_hash(keys + i * KEYLEN, KEYLEN);
    double hash_ns = (now_ns() - t0) / (double)n;

    struct placer bp = {.ring = ring, .cands = cands, .n = nb, .c = c};
    struct placer pp = {.ring = ring, .cands = cands, .n = nb, .c = 0};

    double rss0 = rss();
    struct tether_session_table *bt = table_new();
    double place_b = fill(bt, &bp, keys, hashes, n, bound_at);
    double rss1 = rss();
    struct tether_session_table *pt = table_new();
    double place_p = fill(pt, &pp, keys, hashes, n, plain_at);
    double look_b = lookups(bt, &bp, keys, hashes, n, n);
    double look_p = lookups(pt, &pp, keys, hashes, n, n);
    size_t hot = n < HOT ? n : HOT;
    double hot_b = lookups(bt, &bp, keys, hashes, n, hot);
    double hot_p = lookups(pt, &pp, keys, hashes, n, hot);

    /* The pick alone at the final loads, to tell its cost from the table's. */
    bp.table = bt;
    t0 = now_ns();
    uint64_t sink = 0;
    for (size_t i = 0; i < n; i++)
        sink += (uint64_t)place(&bp, hashes[i], -1);
    double pick_ns = (now_ns() - t0) / (double)n;
    t0 = now_ns();
    for (size_t i = 0; i < n; i++)
        sink += (uint64_t)tether_lb_bounded_pick(ring, hashes[i], cands, nb, c);
    double bare_ns = (now_ns() - t0) / (double)n;

    for (size_t b = 0; b < nb; b++) {
        bload[b] = tether_session_load(bt, (uint32_t)b);
        pload[b] = tether_session_load(pt, (uint32_t)b);
    }
    double bpeak = peak(bload, nb, SIZE_MAX), ppeak = peak(pload, nb, SIZE_MAX);

    /*
     * Remove one backend: a ring without it (weight 0 keeps the indexes).
     * Plain ring: every key goes to its new owner. Bounded table: only the
     * removed backend's sessions are placed again, the others stay bound.
     */
    size_t gone = nb / 2;
    nodes[gone].weight = 0;
    struct tether_ring *ring2 = tether_ring_new(nodes, nb, VNODES);
    if (ring2 == NULL) {
        fprintf(stderr, "bench-sessions: cannot build the ring\n");
        return 1;
    }
    size_t pmoved = 0, pbetween = 0, bmoved = 0, full = 0;
    for (size_t b = 0; b < nb; b++) {
        cands[b].load = bload[b];
        cands[b].usable = b != gone;
    }
    for (size_t i = 0; i < n; i++) {
        int before = tether_ring_pick(ring, hashes[i], NULL, NULL);
        int after = tether_ring_pick(ring2, hashes[i], NULL, NULL);
        if (before != after) {
            pmoved++;
            pbetween += (size_t)before != gone;
        }
        pload[plain_at[i]]--;
        pload[after]++;
        if (bound_at[i] != gone)
            continue;
        int to = tether_lb_bounded_pick(ring2, hashes[i], cands, nb, c);
        if (to < 0) {
            full++;
            continue;
        }
        cands[gone].load--;
        cands[to].load++;
        bmoved++;
    }
    for (size_t b = 0; b < nb; b++)
        bload[b] = cands[b].load;
    double bpeak2 = peak(bload, nb, gone), ppeak2 = peak(pload, nb, gone);

    /*
     * Steady state: every session of the plain table ends, and as many new
     * ones are placed by the bounded pick into the memory they freed, with
     * no page to fault in.
     */
    for (size_t i = 0; i < n; i++) {
        if (tether_session_end(pt, keys + i * KEYLEN, KEYLEN, hashes[i], plain_at[i], 1) != 0) {
            fprintf(stderr, "bench-sessions: cannot end session %zu\n", i);
            return 1;
        }
    }
    double place_s = fill(pt, &bp, keys, hashes, n, plain_at);

    printf("bench-sessions: %zu sessions, %zu backends x %d vnodes (equal weights), c = %.2f\n", n,
           nb, VNODES, c);
    printf("%-40s %14s %14s\n", "", "bounded", "plain ring");
    printf("%-40s %14.3f %14.3f\n", "peak / mean sessions per backend", bpeak, ppeak);
    printf("%-40s %14.3f %14.3f\n", "  after removing one backend", bpeak2, ppeak2);
    printf("%-40s %13.2f%% %13.2f%%\n", "  sessions moved", 100.0 * bmoved / n, 100.0 * pmoved / n);
    /* A bounded table never rebinds a survivor's session: only the removed one's are placed. */
    printf("%-40s %14s %14zu\n", "  moved between two survivors", "0 (pinned)", pbetween);
    printf("%-40s %14.1f %14.1f\n", "ns / placement (acquire miss + release)", place_b, place_p);
    printf("%-40s %14.1f %14s\n", "  into memory already faulted in", place_s, "-");
    printf("%-40s %14.1f %14s\n", "  of which: candidates + bounded pick", pick_ns, "-");
    printf("%-40s %14.1f %14s\n", "    of which: bounded pick", bare_ns, "-");
    printf("%-40s %14.1f %14.1f\n", "ns / lookup (acquire hit + release)", look_b, look_p);
    printf("%-40s %14.1f %14.1f\n", "  the same within a hot set of 10k", hot_b, hot_p);
    printf("%-40s %14.1f %14s\n", "hash of a 20-byte key (not in the above)", hash_ns, "-");
    printf("%-40s %14.1f %14s\n", "bytes / live session (RSS, 20-byte key in)",
           (rss1 - rss0) / (double)n, "-");
    printf("(single thread; checksum %llu%s)\n", (unsigned long long)sink,
           full != 0 ? "; some sessions found no backend" : "");

    tether_session_table_free(bt);
    tether_session_table_free(pt);
    tether_ring_free(ring2);
    tether_ring_free(ring);
    free(pload);
    free(bload);
    free(plain_at);
    free(bound_at);
    free(hashes);
    free(keys);
    free(cands);
    free(nodes);
    free(names);
    return (pbetween | full) != 0;
}
