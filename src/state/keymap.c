/*
 * A small chained hash of session keys for the redis store's per-worker
 * maps (dirty keys, claims in flight). Nodes are embedded in their owner
 * and point at the owner's copy of the key; the caller supplies the hash.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store-int.h"

struct keynode *keymap_find(const struct keymap *m, const char *key, size_t len, uint64_t hash)
{
    if (!m->nb)
        return NULL;
    for (struct keynode *n = m->b[hash & (m->nb - 1)]; n; n = n->next)
        if (n->hash == hash && n->len == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

static int grow(struct keymap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 64;
    struct keynode **b = calloc(nb, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        struct keynode *n = m->b[i];
        while (n) {
            struct keynode *next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

int keymap_add(struct keymap *m, struct keynode *n)
{
    if (m->n >= m->nb && grow(m) < 0)
        return -ENOMEM;
    struct keynode **head = &m->b[n->hash & (m->nb - 1)];
    n->next = *head;
    *head = n;
    m->n++;
    return 0;
}

void keymap_del(struct keymap *m, struct keynode *n)
{
    struct keynode **pp = &m->b[n->hash & (m->nb - 1)];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        m->n--;
    }
    n->next = NULL;
}

void keymap_deinit(struct keymap *m)
{
    free(m->b);
    memset(m, 0, sizeof(*m));
}
