/*
 * tether config: reads tether.yaml with libyaml's event parser into a small
 * node tree (every node keeps its line:col), hands the tree to the schema
 * walker and the cross-field checks, and owns the lifecycle of the config
 * and of the problem list. Nothing here logs.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "internal.h"

#define FILE_MAX (1024 * 1024)   /* a config is a few kilobytes */
#define DEPTH_MAX 32             /* tether.yaml nests four deep */

int tether_config_errors_add(struct tether_config_errors *errs, bool warning, int line, int col,
                             const char *key, const char *fmt, ...)
{
    struct tether_config_error *items, *e;
    va_list ap;
    char *msg = NULL, *k = NULL;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        goto fail;
    k = strdup(key ? key : "");
    if (!k)
        goto fail;
    items = realloc(errs->items, (errs->n + 1) * sizeof(*items));
    if (!items)
        goto fail;
    errs->items = items;
    e = &items[errs->n++];
    *e = (struct tether_config_error){ line, col, k, msg, warning };
    if (!warning)
        errs->nerrors++;
    return 0;
fail:
    if (n >= 0)
        free(msg);
    free(k);
    return -ENOMEM;
}

static void vreport(struct ctx *c, bool warning, int line, int col, const char *key,
                    const char *fmt, va_list ap)
{
    char msg[512];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (tether_config_errors_add(c->errs, warning, line, col, key, "%s", msg) < 0)
        c->oom = true;
}

void tether_config_report(struct ctx *c, const struct node *at, bool warning, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport(c, warning, at ? at->line : 0, at ? at->col : 0, c->path, fmt, ap);
    va_end(ap);
}

/* Report against a key path, placed where the file wrote it (if it did). */
void tether_config_report_at(struct ctx *c, const char *key, bool warning, const char *fmt, ...)
{
    const struct tether_config_mark *m = tether_config_mark_find(c->cfg, key);
    va_list ap;

    va_start(ap, fmt);
    vreport(c, warning, m ? m->line : 0, m ? m->col : 0, key, fmt, ap);
    va_end(ap);
}

char *tether_config_strdup(struct ctx *c, const char *s)
{
    char *d = strdup(s);

    if (!d)
        c->oom = true;
    return d;
}

void tether_config_mark(struct ctx *c, const struct node *at)
{
    struct tether_config *cfg = c->cfg;
    struct tether_config_mark *m;
    char *key;

    key = tether_config_strdup(c, c->path);
    if (!key)
        return;
    m = realloc(cfg->marks, (cfg->nmarks + 1) * sizeof(*m));
    if (!m) {
        free(key);
        c->oom = true;
        return;
    }
    cfg->marks = m;
    cfg->marks[cfg->nmarks++] = (struct tether_config_mark){ key, at->line, at->col };
}

const struct tether_config_mark *tether_config_mark_find(const struct tether_config *cfg,
                                                         const char *key)
{
    for (size_t i = 0; i < cfg->nmarks; i++)
        if (strcmp(cfg->marks[i].key, key) == 0)
            return &cfg->marks[i];
    return NULL;
}

int tether_config_where(const struct tether_config *cfg, const char *key, int *line, int *col)
{
    const struct tether_config_mark *m = tether_config_mark_find(cfg, key);

    if (!m)
        return -ENOENT;
    *line = m->line;
    *col = m->col;
    return 0;
}

/* ---- the node tree ---- */

static void node_free(struct node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->str);
    free(n);
}

static struct node *node_new(enum node_kind kind, yaml_mark_t mark)
{
    struct node *n = calloc(1, sizeof(*n));

    if (!n)
        return NULL;
    n->kind = kind;
    n->line = (int)mark.line + 1;
    n->col = (int)mark.column + 1;
    return n;
}

static int node_add(struct node *parent, struct node *kid)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        struct node **k = realloc(parent->kids, cap * sizeof(*k));

        if (!k)
            return -ENOMEM;
        parent->kids = k;
        parent->cap = cap;
    }
    parent->kids[parent->n++] = kid;
    return 0;
}

static void report_mark(struct ctx *c, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report_mark(struct ctx *c, yaml_mark_t m, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport(c, false, (int)m.line + 1, (int)m.column + 1, "", fmt, ap);
    va_end(ap);
}

static void report_parser(struct ctx *c, const yaml_parser_t *p)
{
    const char *problem = p->problem ? p->problem : "malformed YAML";

    if (p->error == YAML_MEMORY_ERROR)
        c->oom = true;
    else if (p->context)
        report_mark(c, p->problem_mark, "YAML: %s %s", problem, p->context);
    else
        report_mark(c, p->problem_mark, "YAML: %s", problem);
}

/* The node an event opens, or NULL after reporting why there is none. */
static struct node *event_node(struct ctx *c, const yaml_event_t *ev)
{
    struct node *n = NULL;
    const yaml_char_t *tag = NULL;

    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        report_mark(c, ev->start_mark, "YAML aliases are not supported; write the value out");
        n = node_new(NODE_SCALAR, ev->start_mark);
        if (n)
            n->bad = true;
        break;
    case YAML_SCALAR_EVENT:
        tag = ev->data.scalar.tag;
        n = node_new(NODE_SCALAR, ev->start_mark);
        if (!n)
            break;
        n->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        n->len = ev->data.scalar.length;
        n->str = malloc(n->len + 1);
        if (!n->str) {
            free(n);
            n = NULL;
            break;
        }
        memcpy(n->str, ev->data.scalar.value, n->len);
        n->str[n->len] = '\0';
        break;
    case YAML_SEQUENCE_START_EVENT:
        tag = ev->data.sequence_start.tag;
        n = node_new(NODE_SEQ, ev->start_mark);
        break;
    case YAML_MAPPING_START_EVENT:
        tag = ev->data.mapping_start.tag;
        n = node_new(NODE_MAP, ev->start_mark);
        break;
    default:
        return NULL;
    }
    if (!n) {
        c->oom = true;
        return NULL;
    }
    if (tag) {
        report_mark(c, ev->start_mark, "YAML tags are not supported (%s)", (const char *)tag);
        n->bad = true;
    }
    return n;
}

/*
 * Build the tree of the first document. Returns 0 with *root set (NULL for
 * an empty file), or -1 after reporting a syntax problem.
 */
static int parse(struct ctx *c, const char *buf, size_t len, struct node **root)
{
    yaml_parser_t p;
    yaml_event_t ev;
    struct node *stack[DEPTH_MAX];
    size_t depth = 0;
    int docs = 0, rc = -1;
    bool done = false;

    *root = NULL;
    if (!yaml_parser_initialize(&p)) {
        c->oom = true;
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    while (!done) {
        struct node *n = NULL;

        if (!yaml_parser_parse(&p, &ev)) {
            report_parser(c, &p);
            goto fail;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                report_mark(c, ev.start_mark,
                            "more than one YAML document; tether.yaml holds one");
                done = true;
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        case YAML_ALIAS_EVENT:
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            n = event_node(c, &ev);
            if (!n)
                goto fail_event;
            if (depth == 0) {
                *root = n;
            } else if (node_add(stack[depth - 1], n) < 0) {
                node_free(n);
                c->oom = true;
                goto fail_event;
            }
            if (n->kind != NODE_SCALAR) {
                if (depth == DEPTH_MAX) {
                    report_mark(c, ev.start_mark, "nesting deeper than %d levels", DEPTH_MAX);
                    goto fail_event;
                }
                stack[depth++] = n;
            }
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    rc = 0;
    goto out;
fail_event:
    yaml_event_delete(&ev);
fail:
    node_free(*root);
    *root = NULL;
out:
    yaml_parser_delete(&p);
    return rc;
}

/* Order problems as they appear in the file (stable); unplaced ones last. */
static void sort_errors(struct tether_config_errors *errs)
{
    for (size_t i = 1; i < errs->n; i++) {
        struct tether_config_error e = errs->items[i];
        long line = e.line > 0 ? e.line : INT32_MAX;
        size_t j = i;

        for (; j > 0; j--) {
            const struct tether_config_error *p = &errs->items[j - 1];
            long pline = p->line > 0 ? p->line : INT32_MAX;

            if (pline < line || (pline == line && p->col <= e.col))
                break;
            errs->items[j] = *p;
        }
        errs->items[j] = e;
    }
}

/* ---- lifecycle ---- */

static void free_listen(struct tether_config_listen *l)
{
    if (l->tls) {
        for (size_t i = 0; i < l->tls->ncerts; i++) {
            free(l->tls->certs[i].cert);
            free(l->tls->certs[i].key);
        }
        free(l->tls->certs);
        free(l->tls->ciphers);
        free(l->tls);
    }
    free(l->address);
}

static void free_backend(struct tether_config_backend *b)
{
    if (b->tls) {
        free(b->tls->ca);
        free(b->tls->sni);
        free(b->tls);
    }
    free(b->name);
    free(b->address);
}

void tether_config_free(struct tether_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->nlistens; i++)
        free_listen(&cfg->listens[i]);
    free(cfg->listens);
    for (size_t i = 0; i < cfg->nbackends; i++)
        free_backend(&cfg->backends[i]);
    free(cfg->backends);
    free(cfg->session.header);
    free(cfg->session.cookie);
    free(cfg->session.learn_header);
    free(cfg->health.path);
    free(cfg->state.snapshot);
    free(cfg->state.redis.address);
    free(cfg->state.redis.prefix);
    free(cfg->state.redis.password_file);
    free(cfg->admin.listen);
    free(cfg->admin.token_file);
    free(cfg->log.access);
    for (size_t i = 0; i < cfg->nmarks; i++)
        free(cfg->marks[i].key);
    free(cfg->marks);
    free(cfg->path);
    free(cfg);
}

void tether_config_errors_deinit(struct tether_config_errors *errs)
{
    if (!errs)
        return;
    for (size_t i = 0; i < errs->n; i++) {
        free(errs->items[i].key);
        free(errs->items[i].message);
    }
    free(errs->items);
    memset(errs, 0, sizeof(*errs));
}

void tether_config_errors_print(const struct tether_config_errors *errs, const char *path,
                                FILE *out)
{
    if (!path)
        path = "tether.yaml";
    for (size_t i = 0; i < errs->n; i++) {
        const struct tether_config_error *e = &errs->items[i];

        if (e->line > 0)
            fprintf(out, "%s:%d:%d: ", path, e->line, e->col);
        else
            fprintf(out, "%s: ", path);
        if (e->warning)
            fputs("warning: ", out);
        if (e->key && e->key[0])
            fprintf(out, "%s: ", e->key);
        fprintf(out, "%s\n", e->message);
    }
}

struct tether_config *tether_config_load_buffer(const char *name, const char *buf, size_t len,
                                                struct tether_config_errors *errs)
{
    struct tether_config_errors discard = { 0 };
    struct ctx c = { 0 };
    struct node *root = NULL;

    if (!errs)
        errs = &discard;
    memset(errs, 0, sizeof(*errs));
    c.errs = errs;
    c.cfg = calloc(1, sizeof(*c.cfg));
    if (!c.cfg || tether_config_defaults(c.cfg) < 0)
        goto fail;
    c.cfg->path = tether_config_strdup(&c, name ? name : "tether.yaml");
    if (parse(&c, buf, len, &root) < 0)
        goto fail;
    tether_config_walk(&c, root);
    if (!c.oom)
        tether_config_validate(&c);
    sort_errors(errs);
    if (c.oom || errs->nerrors > 0)
        goto fail;
    node_free(root);
    tether_config_errors_deinit(&discard);
    return c.cfg;
fail:
    node_free(root);
    tether_config_free(c.cfg);
    tether_config_errors_deinit(&discard);
    return NULL;
}

/* Read a whole file into a new buffer; returns 0 or -errno (-EFBIG past FILE_MAX). */
static int slurp(const char *path, char **out, size_t *outlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len;
    int rc = -ENOMEM;

    if (!f)
        return -errno;
    buf = malloc(FILE_MAX + 1);
    if (!buf)
        goto fail;
    len = fread(buf, 1, FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = -EIO;
        goto fail;
    }
    if (len > FILE_MAX) {
        rc = -EFBIG;
        goto fail;
    }
    fclose(f);
    *out = buf;
    *outlen = len;
    return 0;
fail:
    free(buf);
    fclose(f);
    return rc;
}

struct tether_config *tether_config_load(const char *path, struct tether_config_errors *errs)
{
    struct tether_config_errors discard = { 0 };
    struct tether_config *cfg = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc;

    if (!errs)
        errs = &discard;
    memset(errs, 0, sizeof(*errs));
    rc = slurp(path, &buf, &len);
    if (rc == -EFBIG) {
        tether_config_errors_add(errs, false, 0, 0, "", "larger than %d bytes", FILE_MAX);
        goto fail;
    } else if (rc < 0) {
        tether_config_errors_add(errs, false, 0, 0, "", "cannot read: %s", strerror(-rc));
        goto fail;
    }
    cfg = tether_config_load_buffer(path, buf, len, errs);
    if (cfg && tether_config_check_files(cfg, errs) != 0) {
        sort_errors(errs);
        goto fail;
    }
    free(buf);
    tether_config_errors_deinit(&discard);
    return cfg;
fail:
    free(buf);
    tether_config_free(cfg);
    tether_config_errors_deinit(&discard);
    return NULL;
}
