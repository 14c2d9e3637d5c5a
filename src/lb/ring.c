/*
 * The consistent-hash ring: every node's points at XXH3("name#j"), kept as two
 * parallel sorted arrays so a lookup binary-searches 8-byte hashes only and
 * touches the owner array once. Built whole, then read-only: any number of
 * threads may look up concurrently without a lock.
 */
#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "tether/lb.h"

struct tether_ring {
    size_t npoints;
    uint32_t nnodes;  /* n given to tether_ring_new */
    uint32_t nlive;   /* nodes owning at least one point */
    uint64_t *hashes; /* ascending; npoints entries */
    uint32_t *nodes;  /* nodes[i] owns hashes[i] */
};

/* A node's name with its index, to rank nodes by name. */
struct named {
    const char *name;
    uint32_t node;
};

/* A point while sorting: rank is the owner's place in name order, unique. */
struct point {
    uint64_t hash;
    uint32_t rank;
    uint32_t node;
};

/* Two nodes of one name, which a valid configuration never has, go by index. */
static int by_name(const void *pa, const void *pb)
{
    const struct named *a = pa, *b = pb;
    int c = strcmp(a->name, b->name);
    if (c != 0)
        return c;
    return (a->node > b->node) - (a->node < b->node);
}

/* Equal hashes go by rank, i.e. by name, so the order never depends on indexes. */
static int by_hash(const void *pa, const void *pb)
{
    const struct point *a = pa, *b = pb;
    if (a->hash != b->hash)
        return (a->hash > b->hash) - (a->hash < b->hash);
    return (a->rank > b->rank) - (a->rank < b->rank);
}

/* Ranks of the nodes in name order, written to rank[node]. */
static int rank_names(const struct tether_ring_node *nodes, size_t n, uint32_t *rank)
{
    struct named *v = malloc(n * sizeof(*v));
    if (v == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        v[i].name = nodes[i].name != NULL ? nodes[i].name : "";
        v[i].node = (uint32_t)i;
    }
    qsort(v, n, sizeof(*v), by_name);
    for (size_t i = 0; i < n; i++)
        rank[v[i].node] = (uint32_t)i;
    free(v);
    return 0;
}

/* Hash every point of node i into pts, from pts[at]; returns the new end. */
static size_t place(const struct tether_ring_node *node, uint32_t i, uint32_t rank, uint64_t count,
                    char *buf, size_t cap, struct point *pts, size_t at)
{
    size_t len = strlen(node->name);
    memcpy(buf, node->name, len);
    buf[len] = '#';
    for (uint64_t j = 0; j < count; j++) {
        int d = snprintf(buf + len + 1, cap - len - 1, "%llu", (unsigned long long)j);
        pts[at].hash = XXH3_64bits(buf, len + 1 + (size_t)d);
        pts[at].rank = rank;
        pts[at].node = i;
        at++;
    }
    return at;
}

struct tether_ring *tether_ring_new(const struct tether_ring_node *nodes, size_t n, uint32_t vnodes)
{
    struct tether_ring *ring = NULL;
    uint32_t *rank = NULL;
    struct point *pts = NULL;
    char *buf = NULL;

    /* Answers are uint32_t nodes and int picks. */
    if (n == 0 || n > INT_MAX)
        return NULL;

    uint64_t total = 0;
    size_t longest = 0;
    uint32_t nlive = 0;
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].weight == 0 || vnodes == 0)
            continue;
        assert(nodes[i].name != NULL);
        total += (uint64_t)vnodes * nodes[i].weight;
        /* Billions of points are a configuration error; the bound keeps the sizes below exact. */
        if (total > UINT32_MAX)
            return NULL;
        nlive++;
        size_t len = strlen(nodes[i].name);
        if (len > longest)
            longest = len;
    }
    if (total == 0 || total > SIZE_MAX / sizeof(struct point))
        return NULL;

    size_t cap = longest + 1 + 21; /* "#" + up to 20 digits + NUL */
    buf = malloc(cap);
    rank = malloc(n * sizeof(*rank));
    pts = malloc((size_t)total * sizeof(*pts));
    if (buf == NULL || rank == NULL || pts == NULL || rank_names(nodes, n, rank) < 0)
        goto done;

    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].weight == 0 || vnodes == 0)
            continue;
        at = place(&nodes[i], (uint32_t)i, rank[i], (uint64_t)vnodes * nodes[i].weight, buf, cap,
                   pts, at);
    }
    assert(at == total);
    qsort(pts, (size_t)total, sizeof(*pts), by_hash);

    /* One block: header, then the hashes (8-aligned), then the owners. */
    size_t hoff = (sizeof(*ring) + 7) & ~(size_t)7;
    ring = malloc(hoff + (size_t)total * (sizeof(uint64_t) + sizeof(uint32_t)));
    if (ring == NULL)
        goto done;
    ring->npoints = (size_t)total;
    ring->nnodes = (uint32_t)n;
    ring->nlive = nlive;
    ring->hashes = (uint64_t *)((char *)ring + hoff);
    ring->nodes = (uint32_t *)(ring->hashes + total);
    for (size_t i = 0; i < (size_t)total; i++) {
        ring->hashes[i] = pts[i].hash;
        ring->nodes[i] = pts[i].node;
    }

done:
    free(pts);
    free(rank);
    free(buf);
    return ring;
}

void tether_ring_free(struct tether_ring *ring)
{
    free(ring);
}

size_t tether_ring_points(const struct tether_ring *ring)
{
    return ring->npoints;
}

size_t tether_ring_nodes(const struct tether_ring *ring)
{
    return ring->nnodes;
}

uint64_t tether_ring_hash(const void *key, size_t len)
{
    return XXH3_64bits(key, len);
}

size_t tether_ring_first(const struct tether_ring *ring, uint64_t h)
{
    /*
     * Branch-free lower_bound: the loop runs log2(npoints) times whatever
     * the key, and the compiler turns the step into a conditional move.
     */
    const uint64_t *base = ring->hashes;
    size_t len = ring->npoints;
    while (len > 1) {
        size_t half = len / 2;
        base = base[half] < h ? base + half : base;
        len -= half;
    }
    size_t i = (size_t)(base - ring->hashes) + (*base < h);
    return i == ring->npoints ? 0 : i;
}

size_t tether_ring_next(const struct tether_ring *ring, size_t point)
{
    return point + 1 == ring->npoints ? 0 : point + 1;
}

uint32_t tether_ring_node(const struct tether_ring *ring, size_t point)
{
    return ring->nodes[point];
}

/* Exact walk: a bitmap of the nodes already offered. */
static int pick_exact(const struct tether_ring *ring, size_t p,
                      int (*accept)(void *ctx, uint32_t node), void *ctx)
{
    uint64_t seen[TETHER_RING_PICK_EXACT / 64];
    memset(seen, 0, ((ring->nnodes + 63) / 64) * sizeof(seen[0]));

    uint32_t offered = 0;
    for (size_t k = 0; k < ring->npoints; k++) {
        uint32_t node = ring->nodes[p];
        uint64_t bit = (uint64_t)1 << (node % 64);
        if (!(seen[node / 64] & bit)) {
            seen[node / 64] |= bit;
            if (accept(ctx, node))
                return (int)node;
            if (++offered == ring->nlive)
                return -1;
        }
        p = p + 1 == ring->npoints ? 0 : p + 1;
    }
    return -1;
}

/*
 * Beyond TETHER_RING_PICK_EXACT nodes there is no room on the stack for the
 * bitmap: skip only a run of points of the node just offered, and stop once
 * the whole ring has been walked.
 */
static int pick_runs(const struct tether_ring *ring, size_t p,
                     int (*accept)(void *ctx, uint32_t node), void *ctx)
{
    uint32_t last = UINT32_MAX;
    for (size_t k = 0; k < ring->npoints; k++) {
        uint32_t node = ring->nodes[p];
        if (node != last) {
            if (accept(ctx, node))
                return (int)node;
            last = node;
        }
        p = p + 1 == ring->npoints ? 0 : p + 1;
    }
    return -1;
}

int tether_ring_pick(const struct tether_ring *ring, uint64_t h,
                     int (*accept)(void *ctx, uint32_t node), void *ctx)
{
    size_t p = tether_ring_first(ring, h);
    if (accept == NULL)
        return (int)ring->nodes[p];
    if (ring->nnodes <= TETHER_RING_PICK_EXACT)
        return pick_exact(ring, p, accept, ctx);
    return pick_runs(ring, p, accept, ctx);
}
