/* A list of formatted strings; an entry that cannot be allocated is left out. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "tether/util.h"

void tether_strlist_addf(struct tether_strlist *l, const char *fmt, ...)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        char **v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return;
        l->v = v;
        l->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&l->v[l->n], fmt, ap);
    va_end(ap);
    if (n >= 0)
        l->n++;
}

void tether_strlist_clear(struct tether_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    *l = (struct tether_strlist){0};
}
