/*
 * tether config schema: the defaults of every key of tether.yaml and the
 * tables that walk the YAML tree into struct tether_config, checking each
 * value's type and range where it stands. Checks that span several keys
 * live in validate.c. Every problem is reported and the walk goes on.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define SEC 1000ull
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)
#define KIB 1024ull
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

/*
 * Ranges (the min and max of each table row below) are chosen so that a
 * value outside them is a typo rather than a choice: zero only where it
 * means something (retries, retry_body_bytes, a backend's max_sessions);
 * durations up to 365d; workers 1..256; weight 1..1000; vnodes 1..10000;
 * load_factor 1.0..100; rise and fall 1..100; passive_failures 1..1000;
 * max_header_bytes 1k..1m; max_pipelined 1..1024; counts of sessions up
 * to 1e9. The ring as a whole is bounded in validate.c.
 */
#define DUR_MAX (365 * DAY)
#define WORKERS_MAX 256
#define COUNT_MAX 1000000000ull

/* ---- sections with their own rules ---- */

_Static_assert(sizeof(enum tether_tls_version) == sizeof(int), "K_ENUM writes an int");
_Static_assert(sizeof(enum tether_store_kind) == sizeof(int), "K_ENUM writes an int");
_Static_assert(sizeof(enum tether_log_level) == sizeof(int), "K_ENUM writes an int");

static const char *const tls_versions[] = { "tls1.2", "tls1.3", NULL };
static const char *const stores[] = { "memory", "redis", NULL };
static const char *const levels[] = { "error", "warn", "info", "debug", NULL };

static void workers(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config *cfg = obj;
    uint64_t x;

    if (v->kind == NODE_SCALAR && !strcmp(v->str, "auto")) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);

        cfg->workers = n < 1 ? 1 : n > WORKERS_MAX ? WORKERS_MAX : (uint32_t)n;
    } else if (tether_config_get_uint(c, v, 1, WORKERS_MAX, &x)) {
        cfg->workers = (uint32_t)x;
    }
}

static void load_factor(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_balance *b = obj;
    char *end;
    double x;

    if (!tether_config_want(c, v, NODE_SCALAR, "a number"))
        return;
    if (v->quoted) {
        tether_config_report(c, v, false, "expected a number, got a quoted string");
        return;
    }
    x = strtod(v->str, &end);
    if (end == v->str || *end || !isfinite(x) || strpbrk(v->str, "xXpP")) {
        tether_config_report(c, v, false, "expected a number, got \"%.40s\"", v->str);
        return;
    }
    if (x < 1.0 || x > 100.0) {
        tether_config_report(c, v, false, "must be between 1.0 and 100");
        return;
    }
    b->load_factor = x;
}

/* Session lookup order: each of learn, header, cookie at most once. */
static void sources(struct ctx *c, const struct node *v, void *obj)
{
    static const char *const names[] = { "learn", "header", "cookie" };
    struct tether_config_session *s = obj;
    enum tether_session_source got[TETHER_CONFIG_MAX_SOURCES];
    size_t n = 0;
    bool ok = true;

    if (!tether_config_is_null(v) && !tether_config_want(c, v, NODE_SEQ, "a sequence"))
        return;
    if (tether_config_is_null(v) || v->n == 0) {
        tether_config_report(c, v, false, "must list at least one of learn, header, cookie");
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        const struct node *e = v->kids[i];
        size_t old = tether_config_path_index(c, i), j, k;

        tether_config_mark(c, e);
        if (!tether_config_want(c, e, NODE_SCALAR, "a source name")) {
            ok = false;
        } else {
            for (j = 0; j < 3 && strcmp(e->str, names[j]); j++)
                ;
            for (k = 0; j < 3 && k < n && got[k] != (enum tether_session_source)j; k++)
                ;
            if (j == 3) {
                tether_config_report(c, e, false,
                                     "unknown source \"%.40s\" (learn, header or cookie)", e->str);
                ok = false;
            } else if (k < n) {
                tether_config_report(c, e, false, "%s is listed twice", names[j]);
                ok = false;
            } else {
                got[n++] = (enum tether_session_source)j;
            }
        }
        tether_config_path_pop(c, old);
    }
    if (!ok)
        return;
    memcpy(s->sources, got, n * sizeof(got[0]));
    s->nsources = n;
    c->sources_set = true;
}

/* Backend names appear in headers, URLs and metrics labels: keep them plain. */
static void backend_name(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_backend *b = obj;
    const char *s = tether_config_get_str(c, v, F_FULL);

    if (!s)
        return;
    if (!tether_config_backend_name_valid(s)) {
        tether_config_report(c, v, false,
                             "a name is 1 to 63 letters, digits, '.', '_' or '-' (got \"%.40s\")",
                             s);
        return;
    }
    tether_config_set_str(c, &b->name, s);
}

static void backend_sni(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_backend_tls *t = obj;
    const char *s = tether_config_get_str(c, v, 0);

    if (!s)
        return;
    /* RFC 6066 3: a literal IP address is not permitted in server_name */
    if (*s && (!tether_config_is_hostname(s) || strspn(s, "0123456789.") == strlen(s))) {
        tether_config_report(c, v, false, "\"%.40s\" is not a host name (RFC 6066 3)", s);
        return;
    }
    tether_config_set_str(c, &t->sni, s);
}

/* An origin-form path (RFC 9112 3.2.1): starts with '/', visible ASCII only. */
static void health_path(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_health *h = obj;
    const char *s = tether_config_get_str(c, v, F_FULL);

    if (!s)
        return;
    for (const char *p = s; *p; p++) {
        if (*s != '/' || *p <= 0x20 || *p >= 0x7f) {
            tether_config_report(c, v, false,
                                 "must be a path starting with '/', without spaces or controls");
            return;
        }
    }
    tether_config_set_str(c, &h->path, s);
}

static void redis_prefix(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_redis *r = obj;
    const char *s = tether_config_get_str(c, v, 0);

    if (!s)
        return;
    for (const char *p = s; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f || p - s >= 64) {
            tether_config_report(c, v, false, "at most 64 visible ASCII characters, no spaces");
            return;
        }
    }
    tether_config_set_str(c, &r->prefix, s);
}

/* The admin API is trusted: it listens on loopback or on a unix socket only. */
static void admin_listen(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_admin *a = obj;
    const char *s = tether_config_get_str(c, v, F_FULL), *why;
    char host[256];

    if (!s)
        return;
    if (!strncmp(s, "unix:", 5)) {
        if (s[5] != '/')
            why = "a unix socket needs an absolute path (unix:/run/tether/admin.sock)";
        else if (strlen(s + 5) >= 108)
            why = "the unix socket path is longer than 107 bytes";
        else
            why = NULL;
    } else if (!(why = tether_config_addr_check(s, host, sizeof(host), NULL)) &&
               !tether_config_is_loopback(host)) {
        why = "must be loopback (127.0.0.0/8, [::1], localhost) or unix:/path";
    }
    if (why)
        tether_config_report(c, v, false, "invalid admin address \"%.64s\": %s", s, why);
    else
        tether_config_set_str(c, &a->listen, s);
}

/* ---- tables ---- */

static void certificates(struct ctx *c, const struct node *v, void *obj);
static void listen_tls(struct ctx *c, const struct node *v, void *obj);
static void backend_tls(struct ctx *c, const struct node *v, void *obj);
static void listens(struct ctx *c, const struct node *v, void *obj);
static void backends(struct ctx *c, const struct node *v, void *obj);
static void admin(struct ctx *c, const struct node *v, void *obj);

static const struct field cert_f[] = {
    FLD(cert, "cert", K_STR, F_REQ | F_FULL, cert, 0, 0),
    FLD(cert, "key", K_STR, F_REQ | F_FULL, key, 0, 0),
};
static const struct table cert_t = TABLE(cert_f);

static const struct field ltls_f[] = {
    FN("certificates", F_REQ, certificates),
    ENUM(listen_tls, "min_version", min_version, tls_versions),
    FLD(listen_tls, "ciphers", K_STR, 0, ciphers, 0, 0),
    FLD(listen_tls, "handshake_timeout", K_DUR, 0, handshake_timeout_ms, 100, 10 * MIN),
    FLD(listen_tls, "ticket_rotation", K_DUR, 0, ticket_rotation_ms, MIN, 7 * DAY),
    /* two years: the longest max-age in use (HSTS preload asks for one) */
    FLD(listen_tls, "hsts", K_DUR, 0, hsts_ms, 0, 2 * 365 * DAY),
    FLD(listen_tls, "hsts_subdomains", K_BOOL, 0, hsts_subdomains, 0, 0),
};
static const struct table ltls_t = TABLE(ltls_f);

static const struct field listen_f[] = {
    FLD(listen, "address", K_ADDR, F_REQ, address, 0, 0),
    FN("tls", 0, listen_tls),
};
static const struct table listen_t = TABLE(listen_f);

static const struct field btls_f[] = {
    FLD(backend_tls, "verify", K_BOOL, 0, verify, 0, 0),
    FLD(backend_tls, "ca", K_STR, 0, ca, 0, 0),
    FN("sni", 0, backend_sni),
};
static const struct table btls_t = TABLE(btls_f);

static const struct field backend_f[] = {
    FN("name", F_REQ, backend_name),
    FLD(backend, "address", K_ADDR, F_REQ, address, 0, 0),
    FLD(backend, "weight", K_UINT, F_U32, weight, 1, 1000),
    FLD(backend, "max_sessions", K_UINT, 0, max_sessions, 0, COUNT_MAX),
    FN("tls", 0, backend_tls),
};
static const struct table backend_t = TABLE(backend_f);

static const struct field session_f[] = {
    FLD(session, "header", K_HEADER, F_FULL, header, 0, 0),
    FLD(session, "cookie", K_COOKIE, F_FULL, cookie, 0, 0),
    FN("sources", 0, sources),
    FLD(session, "learn_header", K_HEADER, 0, learn_header, 0, 0),
    FLD(session, "insert_cookie", K_BOOL, 0, insert_cookie, 0, 0),
    /* Max-Age is whole seconds, so nothing here is shorter than 1s */
    FLD(session, "provisional_timeout", K_DUR, 0, provisional_timeout_ms, SEC, DUR_MAX),
    FLD(session, "idle_timeout", K_DUR, 0, idle_timeout_ms, SEC, DUR_MAX),
    FLD(session, "max_lifetime", K_DUR, 0, max_lifetime_ms, SEC, DUR_MAX),
    FLD(session, "state_max_bytes", K_SIZE, 0, state_max_bytes, 1, MIB),
    FLD(session, "max_sessions", K_UINT, 0, max_sessions, 1, COUNT_MAX),
    FLD(session, "max_state_bytes", K_SIZE, 0, max_state_bytes, 1, 1024 * GIB),
};
static const struct table session_t = TABLE(session_f);

static const struct field balance_f[] = {
    FN("load_factor", 0, load_factor),
    FLD(balance, "vnodes", K_UINT, F_U32, vnodes, 1, 10000),
};
static const struct table balance_t = TABLE(balance_f);

static const struct field health_f[] = {
    FN("path", 0, health_path),
    FLD(health, "interval", K_DUR, 0, interval_ms, 100, HOUR),
    FLD(health, "timeout", K_DUR, 0, timeout_ms, 10, HOUR),
    FLD(health, "rise", K_UINT, F_U32, rise, 1, 100),
    FLD(health, "fall", K_UINT, F_U32, fall, 1, 100),
    FLD(health, "passive_failures", K_UINT, F_U32, passive_failures, 1, 1000),
    FLD(health, "passive_5xx", K_BOOL, 0, passive_5xx, 0, 0),
};
static const struct table health_t = TABLE(health_f);

static const struct field redis_f[] = {
    FLD(redis, "address", K_ADDR, 0, address, 0, 0),
    FN("prefix", 0, redis_prefix),
    FLD(redis, "password_file", K_STR, 0, password_file, 0, 0),
    FLD(redis, "claim_timeout", K_DUR, 0, claim_timeout_ms, 1, 10 * SEC),
    FLD(redis, "queue_max", K_UINT, 0, queue_max, 1, 100000000),
};
static const struct table redis_t = TABLE(redis_f);

static const struct field state_f[] = {
    ENUM(state, "store", store, stores),
    FLD(state, "snapshot", K_STR, 0, snapshot, 0, 0),
    FLD(state, "snapshot_interval", K_DUR, 0, snapshot_interval_ms, SEC, DAY),
    SUB(state, "redis", redis, redis_t),
};
static const struct table state_t = TABLE(state_f);

static const struct field admin_f[] = {
    FN("listen", 0, admin_listen),
    FLD(admin, "token_file", K_STR, F_FULL, token_file, 0, 0),
};
static const struct table admin_t = TABLE(admin_f);

static const struct field timeouts_f[] = {
    FLD(timeouts, "client_header", K_DUR, 0, client_header_ms, 1, DUR_MAX),
    FLD(timeouts, "client_idle", K_DUR, 0, client_idle_ms, 1, DUR_MAX),
    FLD(timeouts, "backend_connect", K_DUR, 0, backend_connect_ms, 1, DUR_MAX),
    FLD(timeouts, "backend_response", K_DUR, 0, backend_response_ms, 1, DUR_MAX),
    FLD(timeouts, "backend_idle", K_DUR, 0, backend_idle_ms, 1, DUR_MAX),
};
static const struct table timeouts_t = TABLE(timeouts_f);

static const struct field limits_f[] = {
    FLD(limits, "max_connections", K_UINT, 0, max_connections, 1, 10000000),
    FLD(limits, "max_header_bytes", K_SIZE, 0, max_header_bytes, KIB, MIB),
    FLD(limits, "max_body_bytes", K_SIZE, 0, max_body_bytes, 1, 1024 * GIB),
    FLD(limits, "max_pipelined", K_UINT, F_U32, max_pipelined, 1, 1024),
};
static const struct table limits_t = TABLE(limits_f);

static const struct field log_f[] = {
    ENUM(log, "level", level, levels),
    FLD(log, "access", K_STR, F_FULL, access, 0, 0),
};
static const struct table log_t = TABLE(log_f);

#define TOP(k, kd, fl, m, lo, hi) \
    { k, kd, fl, offsetof(struct tether_config, m), lo, hi, NULL, NULL, NULL }
#define TOPSUB(k, m, tab) { k, K_MAP, 0, offsetof(struct tether_config, m), 0, 0, NULL, &tab, NULL }

static const struct field top_f[] = {
    FN("listen", F_REQ, listens),
    FN("workers", 0, workers),
    TOPSUB("session", session, session_t),
    TOPSUB("balance", balance, balance_t),
    FN("backends", F_REQ, backends),
    TOPSUB("health", health, health_t),
    TOPSUB("state", state, state_t),
    FN("admin", 0, admin),
    TOPSUB("timeouts", timeouts, timeouts_t),
    TOPSUB("limits", limits, limits_t),
    TOP("retries", K_UINT, F_U32, retries, 0, 10),
    TOP("retry_body_bytes", K_SIZE, 0, retry_body_bytes, 0, 64 * MIB),
    TOP("drain_timeout", K_DUR, 0, drain_timeout_ms, 1, DUR_MAX),
    TOP("shutdown_timeout", K_DUR, 0, shutdown_timeout_ms, 1, DUR_MAX),
    TOPSUB("log", log, log_t),
};
static const struct table top_t = TABLE(top_f);

/* ---- sequences and optional blocks ---- */

/*
 * Walk a sequence of mappings into a new zeroed array of elements of size
 * sz, each given its defaults by init (may be NULL) before its walk.
 * Returns the array with *n set, or NULL when the sequence is absent, empty
 * or not a sequence (reported).
 */
static void *walk_list(struct ctx *c, const struct node *v, const struct table *t, size_t sz,
                       void (*init)(void *), size_t *n, const char *what)
{
    char *arr;

    if (!tether_config_is_null(v) && !tether_config_want(c, v, NODE_SEQ, "a sequence"))
        return NULL;
    if (tether_config_is_null(v) || v->n == 0) {
        tether_config_report(c, v, false, "must list at least one %s", what);
        return NULL;
    }
    arr = calloc(v->n, sz);
    if (!arr) {
        c->oom = true;
        return NULL;
    }
    *n = v->n;
    for (size_t i = 0; i < v->n; i++) {
        size_t old = tether_config_path_index(c, i);

        tether_config_mark(c, v->kids[i]);
        if (init)
            init(arr + i * sz);
        if (tether_config_want(c, v->kids[i], NODE_MAP, "a mapping"))
            tether_config_walk_map(c, v->kids[i], t, arr + i * sz);
        tether_config_path_pop(c, old);
    }
    return arr;
}

static void certificates(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_listen_tls *tls = obj;

    tls->certs = walk_list(c, v, &cert_t, sizeof(*tls->certs), NULL, &tls->ncerts,
                           "certificate (cert and key)");
}

static void listen_tls(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_listen *l = obj;
    struct tether_config_listen_tls *tls = calloc(1, sizeof(*tls));

    if (!tls || !(tls->ciphers = tether_config_strdup(c, ""))) {
        free(tls);
        c->oom = true;
        return;
    }
    tls->min_version = TETHER_TLS_1_2;
    tls->handshake_timeout_ms = 10 * SEC;
    tls->ticket_rotation_ms = HOUR;
    l->tls = tls;
    /* a null tls: still a TLS block, and one without certificates */
    tether_config_walk_map(c, v, &ltls_t, tls);
}

static void backend_tls(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config_backend *b = obj;
    struct tether_config_backend_tls *tls = calloc(1, sizeof(*tls));

    if (!tls) {
        c->oom = true;
        return;
    }
    b->tls = tls;
    tls->verify = true;
    tls->ca = tether_config_strdup(c, "");
    tls->sni = tether_config_strdup(c, "");
    tether_config_walk_map(c, v, &btls_t, tls);
}

static void listens(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config *cfg = obj;

    cfg->listens = walk_list(c, v, &listen_t, sizeof(*cfg->listens), NULL, &cfg->nlistens,
                             "address to listen on");
    for (size_t i = 0; cfg->listens && i < cfg->nlistens; i++)
        cfg->listens[i].line = v->kids[i]->line;
}

static void backend_init(void *obj)
{
    struct tether_config_backend *b = obj;

    b->weight = 1;
}

static void backends(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config *cfg = obj;

    cfg->backends = walk_list(c, v, &backend_t, sizeof(*cfg->backends), backend_init,
                              &cfg->nbackends, "backend");
    for (size_t i = 0; cfg->backends && i < cfg->nbackends; i++)
        cfg->backends[i].line = v->kids[i]->line;
}

/* The block's presence turns the admin API on; a null block takes the defaults. */
static void admin(struct ctx *c, const struct node *v, void *obj)
{
    struct tether_config *cfg = obj;

    if (!tether_config_is_null(v) && !tether_config_want(c, v, NODE_MAP, "a mapping"))
        return;
    cfg->admin.enabled = true;
    tether_config_walk_map(c, v, &admin_t, &cfg->admin);
}

/* ---- entry points ---- */

static int init_str(char **dst, const char *s)
{
    *dst = strdup(s);
    return *dst ? 0 : -ENOMEM;
}

int tether_config_defaults(struct tether_config *cfg)
{
    struct tether_config_session *s = &cfg->session;
    struct tether_config_redis *r = &cfg->state.redis;

    cfg->workers = 1;
    s->sources[0] = TETHER_SOURCE_LEARN;
    s->sources[1] = TETHER_SOURCE_HEADER;
    s->sources[2] = TETHER_SOURCE_COOKIE;
    s->nsources = 3;
    s->insert_cookie = true;
    s->provisional_timeout_ms = 60 * SEC;
    s->idle_timeout_ms = 30 * MIN;
    s->max_lifetime_ms = 24 * HOUR;
    s->state_max_bytes = 8 * KIB;
    s->max_sessions = 1000000;
    s->max_state_bytes = 256 * MIB;
    cfg->balance.load_factor = 1.25;
    cfg->balance.vnodes = 100;
    cfg->health.interval_ms = 2 * SEC;
    cfg->health.timeout_ms = 1 * SEC;
    cfg->health.rise = 2;
    cfg->health.fall = 3;
    cfg->health.passive_failures = 5;
    cfg->health.passive_5xx = false;
    cfg->state.store = TETHER_STORE_MEMORY;
    cfg->state.snapshot_interval_ms = 10 * SEC;
    r->claim_timeout_ms = 50;
    r->queue_max = 100000;
    cfg->admin.enabled = false;
    cfg->timeouts.client_header_ms = 10 * SEC;
    cfg->timeouts.client_idle_ms = 60 * SEC;
    cfg->timeouts.backend_connect_ms = 2 * SEC;
    cfg->timeouts.backend_response_ms = 300 * SEC;
    cfg->timeouts.backend_idle_ms = 300 * SEC;
    cfg->limits.max_connections = 10000;
    cfg->limits.max_header_bytes = 16 * KIB;
    cfg->limits.max_body_bytes = 16 * MIB;
    cfg->limits.max_pipelined = 16;
    cfg->retries = 1;
    cfg->retry_body_bytes = 64 * KIB;
    cfg->drain_timeout_ms = 10 * MIN;
    cfg->shutdown_timeout_ms = 30 * SEC;
    cfg->log.level = TETHER_LOG_INFO;
    if (init_str(&s->header, "x-fc-session-id") < 0 || init_str(&s->cookie, "fc_session") < 0 ||
        init_str(&s->learn_header, "") < 0 || init_str(&cfg->health.path, "/healthz") < 0 ||
        init_str(&cfg->state.snapshot, "") < 0 || init_str(&r->address, "127.0.0.1:6379") < 0 ||
        init_str(&r->prefix, "tether:") < 0 || init_str(&r->password_file, "") < 0 ||
        init_str(&cfg->admin.listen, "127.0.0.1:9900") < 0 ||
        init_str(&cfg->admin.token_file, "/etc/tether/admin.token") < 0 ||
        init_str(&cfg->log.access, "stdout") < 0)
        return -ENOMEM;
    return 0;
}

/* Walk the whole document; root NULL is an empty file. */
void tether_config_walk(struct ctx *c, const struct node *root)
{
    if (root && !tether_config_is_null(root) && root->kind != NODE_MAP) {
        tether_config_report(c, root, false, "expected a mapping at the top level, got %s",
                             root->kind == NODE_SEQ ? "a sequence" : "a scalar");
        return;
    }
    tether_config_walk_map(c, root, &top_t, c->cfg);
}
