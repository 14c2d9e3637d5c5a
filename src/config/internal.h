/*
 * Private to src/config: the YAML node tree the loader builds from libyaml
 * events, the walking context that collects problems, and the helpers the
 * config files share. Nothing outside this folder includes it.
 */
#ifndef TETHER_CONFIG_INTERNAL_H
#define TETHER_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tether/config.h"

#define KEYPATH_MAX 256

enum node_kind { NODE_SCALAR, NODE_SEQ, NODE_MAP };

/* One YAML node. A mapping holds its keys and values alternately in kids. */
struct node {
    enum node_kind kind;
    int line;                    /* 1-based */
    int col;                     /* 1-based */
    bool quoted;                 /* scalar written quoted or as a block */
    bool bad;                    /* already reported (an alias): skip quietly */
    char *str;                   /* scalar text, NUL-terminated */
    size_t len;                  /* scalar length (may hold a NUL) */
    struct node **kids;
    size_t n;
    size_t cap;
};

/* The state of one load: the config being filled and the problems found. */
struct ctx {
    struct tether_config *cfg;
    struct tether_config_errors *errs;
    char path[KEYPATH_MAX];      /* key path of the node being walked */
    size_t plen;
    bool sources_set;            /* session.sources was written */
    bool oom;
};

/* ---- schema tables, walked by walk.c ---- */

enum kind { K_STR, K_COOKIE, K_HEADER, K_BOOL, K_UINT, K_DUR, K_SIZE, K_ADDR, K_ENUM, K_MAP, K_FN };

#define F_REQ 1u                 /* the key must be present */
#define F_FULL 2u                /* a string must not be empty */
#define F_U32 4u                 /* the integer member is a uint32_t */

typedef void walk_fn(struct ctx *c, const struct node *v, void *obj);

struct table;

/* One key of a mapping: how to check its value and where to store it. */
struct field {
    const char *key;
    enum kind kind;
    unsigned flags;
    size_t off;                  /* member offset in the walked struct */
    uint64_t min, max;           /* K_UINT, K_DUR (ms), K_SIZE (bytes) */
    const char *const *names;    /* K_ENUM: NULL-terminated; the index is stored */
    const struct table *sub;     /* K_MAP: the nested mapping */
    walk_fn *fn;                 /* K_FN: called with the walked struct */
};

struct table {
    const struct field *f;
    size_t n;                    /* at most 64 */
};

/* Table rows; s names the walked struct: struct tether_config_<s>. */
#define FLD(s, k, kd, fl, m, lo, hi) \
    { k, kd, fl, offsetof(struct tether_config_##s, m), lo, hi, NULL, NULL, NULL }
#define ENUM(s, k, m, nm) \
    { k, K_ENUM, 0, offsetof(struct tether_config_##s, m), 0, 0, nm, NULL, NULL }
#define SUB(s, k, m, tab) \
    { k, K_MAP, 0, offsetof(struct tether_config_##s, m), 0, 0, NULL, &tab, NULL }
#define FN(k, fl, f) { k, K_FN, fl, 0, 0, 0, NULL, NULL, f }
#define TABLE(a) { a, sizeof(a) / sizeof(a[0]) }

/* config.c */
void tether_config_report(struct ctx *c, const struct node *at, bool warning, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));
void tether_config_report_at(struct ctx *c, const char *key, bool warning, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void tether_config_mark(struct ctx *c, const struct node *at);
const struct tether_config_mark *tether_config_mark_find(const struct tether_config *cfg,
                                                         const char *key);
char *tether_config_strdup(struct ctx *c, const char *s);

/* values.c */
const char *tether_config_addr_check(const char *addr, char *host, size_t hostlen,
                                     uint16_t *port);
bool tether_config_is_token(const char *s);
bool tether_config_is_hostname(const char *s);
bool tether_config_is_loopback(const char *host);
bool tether_config_addr_same(const char *a, const char *b);
void tether_config_fmt_duration(uint64_t ms, char *buf, size_t len);
void tether_config_fmt_size(uint64_t bytes, char *buf, size_t len);

/* walk.c */
size_t tether_config_path_key(struct ctx *c, const char *key);
size_t tether_config_path_index(struct ctx *c, size_t i);
void tether_config_path_pop(struct ctx *c, size_t old);
bool tether_config_is_null(const struct node *v);
bool tether_config_want(struct ctx *c, const struct node *v, enum node_kind kind, const char *what);
const char *tether_config_get_str(struct ctx *c, const struct node *v, unsigned flags);
bool tether_config_get_uint(struct ctx *c, const struct node *v, uint64_t lo, uint64_t hi,
                            uint64_t *out);
void tether_config_set_str(struct ctx *c, char **dst, const char *s);
void tether_config_walk_map(struct ctx *c, const struct node *m, const struct table *t, void *obj);

/* schema.c */
int tether_config_defaults(struct tether_config *cfg);
void tether_config_walk(struct ctx *c, const struct node *root);

/* validate.c */
void tether_config_validate(struct ctx *c);

#endif
