/*
 * tether config walker: applies a schema table (internal.h) to a YAML
 * mapping: unknown, repeated and missing keys, and each value's type and
 * range, are reported against the key path being walked and the walk goes
 * on, so one pass finds every problem.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- key paths ---- */

size_t tether_config_path_key(struct ctx *c, const char *k)
{
    size_t old = c->plen;
    int n = snprintf(c->path + old, sizeof(c->path) - old, "%s%.64s", old ? "." : "", k);

    c->plen = n < 0 ? old : strnlen(c->path, sizeof(c->path));
    return old;
}

size_t tether_config_path_index(struct ctx *c, size_t i)
{
    size_t old = c->plen;

    snprintf(c->path + old, sizeof(c->path) - old, "[%zu]", i);
    c->plen = strnlen(c->path, sizeof(c->path));
    return old;
}

void tether_config_path_pop(struct ctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* ---- scalars ---- */

static const char *kind_name(const struct node *v)
{
    if (v->kind == NODE_MAP)
        return "a mapping";
    if (v->kind == NODE_SEQ)
        return "a sequence";
    return v->quoted ? "a quoted string" : "a plain value";
}

bool tether_config_is_null(const struct node *v)
{
    return v->kind == NODE_SCALAR && !v->quoted &&
           (v->len == 0 || !strcmp(v->str, "~") || !strcmp(v->str, "null") ||
            !strcmp(v->str, "Null") || !strcmp(v->str, "NULL"));
}

bool tether_config_want(struct ctx *c, const struct node *v, enum node_kind kind, const char *what)
{
    if (v->bad)
        return false;
    if (v->kind == kind)
        return true;
    tether_config_report(c, v, false, "expected %s, got %s", what, kind_name(v));
    return false;
}

/* A string value, borrowed from the tree; an empty plain value is "". */
const char *tether_config_get_str(struct ctx *c, const struct node *v, unsigned flags)
{
    const char *s;

    if (!tether_config_want(c, v, NODE_SCALAR, "a string"))
        return NULL;
    s = tether_config_is_null(v) ? "" : v->str;
    if (*s && strlen(s) != v->len) {
        tether_config_report(c, v, false, "contains a NUL byte");
        return NULL;
    }
    if ((flags & F_FULL) && !*s) {
        tether_config_report(c, v, false, "must not be empty");
        return NULL;
    }
    return s;
}

void tether_config_set_str(struct ctx *c, char **dst, const char *s)
{
    char *d = tether_config_strdup(c, s);

    if (!d)
        return;
    free(*dst);
    *dst = d;
}

static void range_error(struct ctx *c, const struct node *v, enum kind kind, uint64_t lo,
                        uint64_t hi)
{
    char a[32], b[32];

    if (kind == K_DUR) {
        tether_config_fmt_duration(lo, a, sizeof(a));
        tether_config_fmt_duration(hi, b, sizeof(b));
    } else if (kind == K_SIZE) {
        tether_config_fmt_size(lo, a, sizeof(a));
        tether_config_fmt_size(hi, b, sizeof(b));
    } else {
        snprintf(a, sizeof(a), "%llu", (unsigned long long)lo);
        snprintf(b, sizeof(b), "%llu", (unsigned long long)hi);
    }
    tether_config_report(c, v, false, "must be between %s and %s", a, b);
}

bool tether_config_get_uint(struct ctx *c, const struct node *v, uint64_t lo, uint64_t hi,
                            uint64_t *out)
{
    const char *s, *p;
    bool neg, big = false;
    uint64_t x = 0;

    if (!tether_config_want(c, v, NODE_SCALAR, "an integer"))
        return false;
    if (v->quoted) {
        tether_config_report(c, v, false, "expected an integer, got a quoted string");
        return false;
    }
    s = v->str;
    neg = *s == '-';
    for (p = s + neg; isdigit((unsigned char)*p); p++) {
        if (x > (UINT64_MAX - 9) / 10)
            big = true;
        else
            x = x * 10 + (uint64_t)(*p - '0');
    }
    if (p == s + neg || *p) {
        tether_config_report(c, v, false, "expected an integer, got \"%.40s\"", s);
        return false;
    }
    if ((neg && x) || big || x < lo || x > hi) {
        range_error(c, v, K_UINT, lo, hi);
        return false;
    }
    *out = x;
    return true;
}

/* Durations and sizes carry a unit, so a quoted "10s" is as good as 10s. */
static bool get_unit(struct ctx *c, const struct node *v, enum kind kind, uint64_t lo, uint64_t hi,
                     uint64_t *out)
{
    const char *what = kind == K_DUR ? "a duration" : "a size";
    const char *s;
    int rc;

    if (!tether_config_want(c, v, NODE_SCALAR, what))
        return false;
    if (tether_config_is_null(v)) {
        tether_config_report(c, v, false, "expected %s, got nothing", what);
        return false;
    }
    s = v->str;
    rc = kind == K_DUR ? tether_config_parse_duration(s, out) : tether_config_parse_size(s, out);
    if (rc < 0 && s[0] == '-' && isdigit((unsigned char)s[1])) {
        tether_config_report(c, v, false, "%s cannot be negative", what);
        return false;
    }
    if (rc < 0 && kind == K_DUR) {
        tether_config_report(c, v, false,
                             "invalid duration \"%.40s\": write an integer and one of ms, s, m, "
                             "h, d (e.g. 500ms, 10s)", s);
        return false;
    }
    if (rc < 0) {
        tether_config_report(c, v, false,
                             "invalid size \"%.40s\": write bytes or an integer and one of k, m, "
                             "g (e.g. 64k)", s);
        return false;
    }
    if (*out < lo || *out > hi) {
        range_error(c, v, kind, lo, hi);
        return false;
    }
    return true;
}

static bool get_bool(struct ctx *c, const struct node *v, bool *out)
{
    static const char *const yes[] = { "true", "True", "TRUE" };
    static const char *const no[] = { "false", "False", "FALSE" };

    if (!tether_config_want(c, v, NODE_SCALAR, "true or false"))
        return false;
    if (v->quoted) {
        tether_config_report(c, v, false, "expected true or false, got a quoted string");
        return false;
    }
    for (size_t i = 0; i < 3; i++) {
        if (!strcmp(v->str, yes[i]) || !strcmp(v->str, no[i])) {
            *out = !strcmp(v->str, yes[i]);
            return true;
        }
    }
    tether_config_report(c, v, false, "expected true or false, got \"%.40s\"", v->str);
    return false;
}

/* A header name: a token, stored lower-cased, not one tether sets itself. */
static const char *get_header(struct ctx *c, const struct node *v, unsigned flags, char *buf,
                              size_t len)
{
    static const char *const reserved[] = {
        "x-fc-session-state", "x-fc-session-epoch", "x-fc-session-moved-from",
        "x-fc-session-end", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length", "host", "proxy-connection",
    };
    const char *s = tether_config_get_str(c, v, flags);
    size_t i;

    if (!s)
        return NULL;
    if (*s && !tether_config_is_token(s)) {
        tether_config_report(c, v, false, "\"%.40s\" is not a valid header name (RFC 9110 token)",
                             s);
        return NULL;
    }
    for (i = 0; s[i] && i + 1 < len; i++)
        buf[i] = (char)tolower((unsigned char)s[i]);
    buf[i] = '\0';
    if (s[i]) {
        tether_config_report(c, v, false, "header name too long");
        return NULL;
    }
    for (i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (!strcmp(buf, reserved[i])) {
            tether_config_report(c, v, false, "%s is reserved to tether and HTTP", buf);
            return NULL;
        }
    }
    return buf;
}

/* Apply one known key to obj; the key path is already pushed. */
static void apply(struct ctx *c, const struct field *f, const struct node *v, void *obj)
{
    void *p = (char *)obj + f->off;
    char buf[128];
    const char *s;
    const char *why;
    uint64_t x;
    bool b;

    switch (f->kind) {
    case K_STR:
        if ((s = tether_config_get_str(c, v, f->flags)))
            tether_config_set_str(c, p, s);
        break;
    case K_COOKIE:
        if (!(s = tether_config_get_str(c, v, f->flags)))
            break;
        if (*s && !tether_config_is_token(s))
            tether_config_report(c, v, false,
                                 "\"%.40s\" is not a valid cookie name (RFC 6265 token)", s);
        else
            tether_config_set_str(c, p, s);
        break;
    case K_HEADER:
        if ((s = get_header(c, v, f->flags, buf, sizeof(buf))))
            tether_config_set_str(c, p, s);
        break;
    case K_ADDR:
        if (!(s = tether_config_get_str(c, v, F_FULL)))
            break;
        if ((why = tether_config_addr_check(s, NULL, 0, NULL)))
            tether_config_report(c, v, false, "invalid address \"%.64s\": %s", s, why);
        else
            tether_config_set_str(c, p, s);
        break;
    case K_BOOL:
        if (get_bool(c, v, &b))
            *(bool *)p = b;
        break;
    case K_UINT:
        if (!tether_config_get_uint(c, v, f->min, f->max, &x))
            break;
        if (f->flags & F_U32)
            *(uint32_t *)p = (uint32_t)x;
        else
            *(uint64_t *)p = x;
        break;
    case K_DUR:
    case K_SIZE:
        if (get_unit(c, v, f->kind, f->min, f->max, &x))
            *(uint64_t *)p = x;
        break;
    case K_ENUM:
        if (!(s = tether_config_get_str(c, v, 0)))
            break;
        for (int i = 0; f->names[i]; i++) {
            if (!strcmp(s, f->names[i])) {
                memcpy(p, &i, sizeof(i));
                return;
            }
        }
        buf[0] = '\0';
        for (int i = 0; f->names[i]; i++)
            snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s", i ? ", " : "",
                     f->names[i]);
        tether_config_report(c, v, false, "must be one of %s (got \"%.40s\")", buf, s);
        break;
    case K_MAP:
        tether_config_walk_map(c, v, f->sub, p);
        break;
    case K_FN:
        f->fn(c, v, obj);
        break;
    }
}

/* Closest known key within two edits, for "did you mean". */
static const char *suggest(const struct table *t, const char *key)
{
    size_t kl = strlen(key);

    for (size_t i = 0; i < t->n; i++) {
        const char *k = t->f[i].key;
        size_t n = strlen(k), d[65], prev, tmp;

        if (kl > 64 || n > 64 || (kl > n ? kl - n : n - kl) > 2)
            continue;
        for (size_t j = 0; j <= n; j++)
            d[j] = j;
        for (size_t a = 1; a <= kl; a++) {
            prev = d[0];
            d[0] = a;
            for (size_t j = 1; j <= n; j++) {
                tmp = d[j];
                d[j] = prev + (tolower((unsigned char)key[a - 1]) != k[j - 1]);
                if (d[j - 1] + 1 < d[j])
                    d[j] = d[j - 1] + 1;
                if (tmp + 1 < d[j])
                    d[j] = tmp + 1;
                prev = tmp;
            }
        }
        if (d[n] <= 2)
            return k;
    }
    return NULL;
}

/*
 * Walk a mapping with a table: unknown and repeated keys are errors, and so
 * are missing required ones. A null value counts as an empty mapping.
 */
void tether_config_walk_map(struct ctx *c, const struct node *m, const struct table *t, void *obj)
{
    uint64_t seen = 0;
    size_t npairs = 0;

    if (m && !tether_config_is_null(m)) {
        if (!tether_config_want(c, m, NODE_MAP, "a mapping"))
            return;
        npairs = m->n / 2;
    }
    for (size_t i = 0; i < npairs; i++) {
        const struct node *k = m->kids[2 * i], *v = m->kids[2 * i + 1];
        const struct field *f = NULL;
        const char *hint;
        size_t old, j;

        if (k->bad)
            continue;
        if (k->kind != NODE_SCALAR) {
            tether_config_report(c, k, false, "a key must be a string, not %s", kind_name(k));
            continue;
        }
        old = tether_config_path_key(c, k->str);
        for (j = 0; j < i; j++) {
            const struct node *prev = m->kids[2 * j];

            if (prev->kind == NODE_SCALAR && !strcmp(prev->str, k->str))
                break;
        }
        for (size_t n = 0; n < t->n && !f && strlen(k->str) == k->len; n++)
            if (!strcmp(t->f[n].key, k->str))
                f = &t->f[n];
        if (j < i) {
            tether_config_report(c, k, false, "duplicate key (first at line %d)",
                                 m->kids[2 * j]->line);
        } else if (!f) {
            hint = suggest(t, k->str);
            if (hint)
                tether_config_report(c, k, false, "unknown key (did you mean %s?)", hint);
            else
                tether_config_report(c, k, false, "unknown key");
        } else {
            seen |= 1ull << (f - t->f);
            tether_config_mark(c, v);
            if (!v->bad)
                apply(c, f, v, obj);
        }
        tether_config_path_pop(c, old);
    }
    for (size_t n = 0; n < t->n; n++) {
        if ((t->f[n].flags & F_REQ) && !(seen & (1ull << n))) {
            size_t old = tether_config_path_key(c, t->f[n].key);

            tether_config_report(c, m, false, "required key is missing");
            tether_config_path_pop(c, old);
        }
    }
}

