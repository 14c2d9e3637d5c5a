/*
 * The admin API's endpoints (DESIGN.md "Admin API and CLI"). Every one
 * validates all of its input before it changes anything, so a bad request
 * gets a 4xx and leaves tetherd as it was. JSON in and out with jansson.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "tether/lb.h"
#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/util.h"
#include "server-int.h"

#define LIST_DEFAULT 100
#define LIST_MAX 1000

static json_t *backend_json(struct tether_proxy *p, uint32_t i)
{
    struct tether_backend *b = &p->backends[i];
    uint64_t failures = atomic_load(&b->connect_failures) + atomic_load(&b->status[0]);
    pthread_mutex_lock(&b->state_lock);
    json_t *check = b->last_check_ms ? json_pack("{s:I,s:b}", "at_ms", (json_int_t)b->last_check_ms,
                                                 "ok", b->last_check_ok)
                                     : json_null();
    json_t *o = json_pack(
        "{s:s,s:s,s:i,s:s,s:b,s:I,s:i,s:I,s:I,s:I,s:o,s:s,s:I,s:s}", "name", b->name, "address",
        b->address, "weight", (int)b->weight, "state", tether_backend_state_name(b), "healthy",
        atomic_load(&b->up) != 0, "sessions", (json_int_t)tether_session_load(p->sessions, i),
        "inflight", (int)atomic_load(&b->inflight), "requests",
        (json_int_t)atomic_load(&b->requests), "failures", (json_int_t)failures, "moved",
        (json_int_t)atomic_load(&b->moved), "last_check", check, "reason", b->reason,
        "changed_ms", (json_int_t)b->changed_ms, "origin", b->runtime ? "runtime" : "config");
    pthread_mutex_unlock(&b->state_lock);
    return o;
}

/* Monotonic milliseconds (the table's clock) as wall-clock milliseconds,
   with one offset taken at start, so a time reads the same every time. */
static json_int_t wall(const struct tether_proxy *p, uint64_t mono)
{
    return (json_int_t)((int64_t)mono + p->wall_minus_mono_ms);
}

static json_t *session_json(struct tether_proxy *p, const char *key, size_t len,
                            const struct tether_session_info *s)
{
    json_t *from = s->handoff ? json_string(p->backends[s->moved_from].name) : json_null();
    return json_pack("{s:s%,s:s,s:i,s:I,s:I,s:I,s:i,s:b,s:b,s:o,s:i}", "key", key, len,
                     "backend", p->backends[s->backend].name, "epoch", (int)s->epoch,
                     "created_ms", wall(p, s->created_ms), "last_seen_ms", wall(p, s->last_seen_ms),
                     "requests", (json_int_t)s->requests, "inflight", (int)s->inflight,
                     "provisional", s->provisional, "handoff", s->handoff, "moved_from", from,
                     "state_bytes", (int)s->state_len);
}

/* Percent-decode one path segment strictly. Returns its length or -1. */
static ssize_t decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (o == cap)
            return -1;
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        if (i + 2 >= n)
            return -1;
        int v = 0;
        for (int k = 1; k <= 2; k++) {
            char c = s[i + (size_t)k];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= c - '0';
            else if (c >= 'a' && c <= 'f')
                v |= c - 'a' + 10;
            else if (c >= 'A' && c <= 'F')
                v |= c - 'A' + 10;
            else
                return -1;
        }
        out[o++] = (char)v;
        i += 2;
    }
    return (ssize_t)o;
}

/* Query parameters: only the names in allowed[]; NULL after answering 400. */
static struct evkeyvalq *query(struct evhttp_request *req, const char *const *allowed,
                               struct evkeyvalq *q)
{
    const char *qs = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    TAILQ_INIT(q);
    if (!qs)
        return q;
    if (evhttp_parse_query_str(qs, q) < 0) {
        admin_error(req, 400, "malformed query string");
        return NULL;
    }
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, q, next)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            ok |= strcmp(kv->key, allowed[i]) == 0;
        if (!ok) {
            admin_error(req, 400, "unknown query parameter %s", kv->key);
            evhttp_clear_headers(q);
            return NULL;
        }
    }
    return q;
}

/* A JSON body's fields: unknown ones are refused. */
static bool only_fields(struct evhttp_request *req, json_t *body, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            ok |= strcmp(k, allowed[i]) == 0;
        if (!ok) {
            admin_error(req, 400, "unknown field %s", k);
            return false;
        }
    }
    return true;
}

/* An action without parameters: the body may be absent or {}. False after answering 400. */
static bool empty_body(struct evhttp_request *req)
{
    static const char *const none[] = {NULL};
    json_t *body = admin_body(req);
    if (!body)
        return false;
    bool ok = only_fields(req, body, none);
    json_decref(body);
    return ok;
}

void admin_probe(struct tether_proxy *p, struct evhttp_request *req, bool ready)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        admin_not_allowed(req, "GET, HEAD");
        return;
    }
    if (!ready) {
        admin_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    const char *why = NULL;
    if (atomic_load(&p->stopping))
        why = "stopping";
    size_t n = atomic_load(&p->nbackends), up = 0;
    for (size_t i = 0; i < n; i++)
        up += tether_backend_takes_new(&p->backends[i]);
    if (!why && up == 0)
        why = "no backend is up";
    if (why)
        admin_reply_json(req, 503, json_pack("{s:s,s:s}", "status", "not ready", "reason", why));
    else
        admin_reply_json(req, 200, json_pack("{s:s}", "status", "ready"));
}

static void get_status(struct tether_proxy *p, struct evhttp_request *req)
{
    struct tether_session_stats st;
    tether_session_stats(p->sessions, &st);
    struct tether_store_status ss;
    tether_store_status(p->store, &ss);
    size_t n = atomic_load(&p->nbackends), total = 0, up = 0;
    for (size_t i = 0; i < n; i++) {
        if (!atomic_load(&p->backends[i].present))
            continue;
        total++;
        up += tether_backend_serves(&p->backends[i]);
    }
    const struct tether_config *cfg = atomic_load(&p->cfg);
    json_t *store = json_pack("{s:s,s:b,s:s,s:I,s:I}", "kind",
                              ss.kind == TETHER_STORE_REDIS ? "redis" : "memory", "healthy",
                              ss.healthy, "detail", ss.detail, "queue", (json_int_t)ss.queue,
                              "queue_max", (json_int_t)ss.queue_max);
    if (ss.kind == TETHER_STORE_REDIS)
        json_object_update_new(
            store, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "claims",
                             (json_int_t)ss.claims, "claim_timeouts",
                             (json_int_t)ss.claim_timeouts, "reconciles",
                             (json_int_t)ss.reconciles, "write_errors",
                             (json_int_t)ss.write_errors, "reconnects",
                             (json_int_t)ss.reconnects, "dropped", (json_int_t)ss.dropped,
                             "writes", (json_int_t)ss.writes, "moves_applied",
                             (json_int_t)ss.moves_applied, "unknown_backends",
                             (json_int_t)ss.unknown_backends));
    admin_reply_json(
        req, 200,
        json_pack("{s:s,s:I,s:i,s:i,s:I,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I},"
                  "s:o,s:{s:i,s:i}}",
                  "version", TETHER_VERSION_STRING, "uptime_s",
                  (json_int_t)((tether_wall_ms() - p->started_ms) / 1000), "pid", (int)getpid(),
                  "workers", (int)cfg->workers, "connections",
                  (json_int_t)atomic_load(&p->connections), "sessions", "live",
                  (json_int_t)st.live, "provisional", (json_int_t)st.provisional, "created",
                  (json_int_t)st.created, "expired", (json_int_t)st.expired, "evicted",
                  (json_int_t)st.evicted, "ended", (json_int_t)st.ended, "moved",
                  (json_int_t)st.moved, "state_bytes", (json_int_t)st.state_bytes, "store",
                  store, "backends", "total", (int)total, "up", (int)up));
}

static void get_backends(struct tether_proxy *p, struct evhttp_request *req)
{
    json_t *arr = json_array();
    size_t n = atomic_load(&p->nbackends);
    for (size_t i = 0; i < n; i++)
        if (atomic_load(&p->backends[i].present))
            json_array_append_new(arr, backend_json(p, (uint32_t)i));
    admin_reply_json(req, 200, json_pack("{s:o}", "backends", arr));
}

static void post_backend(struct tether_proxy *p, struct evhttp_request *req)
{
    static const char *const fields[] = {"name", "address", "weight", NULL};
    json_t *body = admin_body(req);
    if (!body)
        return;
    if (!only_fields(req, body, fields))
        goto out;
    json_t *name = json_object_get(body, "name"), *addr = json_object_get(body, "address");
    json_t *weight = json_object_get(body, "weight");
    if (!json_is_string(name) || !json_is_string(addr)) {
        admin_error(req, 400, "name and address are required strings");
        goto out;
    }
    if (weight && (!json_is_integer(weight) || json_integer_value(weight) < 1 ||
                   json_integer_value(weight) > 1000)) {
        admin_error(req, 400, "weight must be an integer 1..1000");
        goto out;
    }
    char err[256];
    int slot = tether_proxy_backend_add(p, json_string_value(name), json_string_value(addr),
                                        weight ? (uint32_t)json_integer_value(weight) : 1, err,
                                        sizeof(err));
    if (slot < 0)
        admin_error(req, slot == -EEXIST ? 409 : slot == -EINVAL ? 400 : 503, "%s", err);
    else
        admin_reply_json(req, 201, backend_json(p, (uint32_t)slot));
out:
    json_decref(body);
}

struct dry {
    struct tether_proxy *p;
    json_t *moves;
};

static void dry_one(void *ctx, const char *key, size_t len, int to)
{
    struct dry *d = ctx;
    json_array_append_new(d->moves,
                          json_pack("{s:s%,s:o}", "key", key, len, "to",
                                    to >= 0 ? json_string(d->p->backends[to].name) : json_null()));
}

static void delete_backend(struct tether_proxy *p, struct evhttp_request *req, const char *name)
{
    static const char *const params[] = {"dry_run", NULL};
    struct evkeyvalq q;
    if (!query(req, params, &q))
        return;
    const char *dr = evhttp_find_header(&q, "dry_run");
    bool dry = dr && (strcmp(dr, "1") == 0 || strcmp(dr, "true") == 0);
    if (dr && !dry && strcmp(dr, "0") != 0 && strcmp(dr, "false") != 0) {
        admin_error(req, 400, "dry_run: 1 or 0");
        goto out;
    }
    int b = tether_proxy_backend_find(p, name);
    if (b < 0) {
        admin_error(req, 404, "unknown backend %s", name);
        goto out;
    }
    if (dry) {
        struct dry d = {p, json_array()};
        long n = tether_proxy_plan_moves(p, (uint32_t)b, dry_one, &d);
        if (n < 0) {
            json_decref(d.moves);
            admin_error(req, 503, "out of memory");
        } else {
            admin_reply_json(req, 200,
                             json_pack("{s:b,s:s,s:I,s:o}", "dry_run", 1, "backend", name, "count",
                                       (json_int_t)n, "moves", d.moves));
        }
        goto out;
    }
    long moved = tether_proxy_backend_remove(p, name);
    if (moved < 0)
        admin_error(req, 404, "unknown backend %s", name);
    else
        admin_reply_json(req, 200, json_pack("{s:s,s:I}", "removed", name, "moved",
                                             (json_int_t)moved));
out:
    evhttp_clear_headers(&q);
}

static void backend_action(struct tether_proxy *p, struct evhttp_request *req, const char *name,
                           const char *action)
{
    enum tether_backend_admin to;
    if (strcmp(action, "drain") == 0)
        to = TETHER_BACKEND_DRAINING;
    else if (strcmp(action, "disable") == 0)
        to = TETHER_BACKEND_DISABLED;
    else if (strcmp(action, "enable") == 0)
        to = TETHER_BACKEND_ACTIVE;
    else {
        admin_error(req, 404, "no such action %s (drain, disable, enable)", action);
        return;
    }
    if (!empty_body(req))
        return;
    long rc = tether_proxy_backend_admin(p, name, to);
    if (rc < 0) {
        admin_error(req, 404, "unknown backend %s", name);
        return;
    }
    int b = tether_proxy_backend_find(p, name);
    if (b < 0)
        admin_error(req, 404, "unknown backend %s", name);
    else
        admin_reply_json(req, 200, backend_json(p, (uint32_t)b));
}

struct page {
    struct tether_proxy *p;
    int backend;   /* -1: all */
    size_t skip;   /* matching records of this shard to step over */
    size_t want;
    size_t seen;   /* matching records of this shard looked at */
    json_t *arr;
};

static int page_collect(void *ctx, const struct tether_session_view *v)
{
    struct page *pg = ctx;
    if (pg->backend >= 0 && v->info.backend != (uint32_t)pg->backend)
        return 0;
    if (pg->seen++ < pg->skip)
        return 0;
    if (json_array_size(pg->arr) == pg->want)
        return 1; /* one more exists: the page is full */
    json_array_append_new(pg->arr, session_json(pg->p, v->key, v->key_len, &v->info));
    return 0;
}

static void list_sessions(struct tether_proxy *p, struct evhttp_request *req)
{
    static const char *const params[] = {"backend", "limit", "cursor", NULL};
    struct evkeyvalq q;
    if (!query(req, params, &q))
        return;
    struct page pg = {.p = p, .backend = -1, .want = LIST_DEFAULT};
    const char *bn = evhttp_find_header(&q, "backend");
    const char *lim = evhttp_find_header(&q, "limit");
    const char *cur = evhttp_find_header(&q, "cursor");
    size_t shard = 0, nshards = tether_session_shards(p->sessions);
    if (bn && bn[0] && (pg.backend = tether_proxy_backend_find(p, bn)) < 0) {
        admin_error(req, 404, "unknown backend %s", bn);
        goto out;
    }
    if (lim) {
        char *end;
        unsigned long v = strtoul(lim, &end, 10);
        if (!lim[0] || *end || v < 1 || v > LIST_MAX) {
            admin_error(req, 400, "limit: 1..%d", LIST_MAX);
            goto out;
        }
        pg.want = v;
    }
    if (cur && cur[0]) {
        unsigned long s, k;
        char tail;
        if (sscanf(cur, "%lu.%lu%c", &s, &k, &tail) != 2 || s >= nshards) {
            admin_error(req, 400, "cursor: not one this API gave");
            goto out;
        }
        shard = s;
        pg.skip = k;
    }
    pg.arr = json_array();
    json_t *next = json_null();
    for (; shard < nshards; shard++) {
        pg.seen = 0;
        int full = tether_session_export(p->sessions, shard, page_collect, &pg);
        if (full) {
            char c[48];
            snprintf(c, sizeof(c), "%zu.%zu", shard, pg.seen - 1);
            json_decref(next);
            next = json_string(c);
            break;
        }
        pg.skip = 0;
        if (json_array_size(pg.arr) == pg.want && shard + 1 < nshards) {
            /* Full at a shard's end: the next page starts with the next shard. */
            char c[48];
            snprintf(c, sizeof(c), "%zu.0", shard + 1);
            json_decref(next);
            next = json_string(c);
            break;
        }
    }
    admin_reply_json(req, 200, json_pack("{s:o,s:o}", "sessions", pg.arr, "next_cursor", next));
out:
    evhttp_clear_headers(&q);
}

static void one_session(struct tether_proxy *p, struct evhttp_request *req, const char *key,
                        size_t len, const char *action)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m == EVHTTP_REQ_HEAD)
        m = EVHTTP_REQ_GET;
    uint64_t hash = tether_ring_hash(key, len);
    struct tether_session_info info;
    if (!action) {
        if (m == EVHTTP_REQ_GET) {
            if (tether_session_get(p->sessions, key, len, hash, &info) < 0)
                admin_error(req, 404, "no session %.*s", (int)len, key);
            else
                admin_reply_json(req, 200, session_json(p, key, len, &info));
        } else if (m == EVHTTP_REQ_DELETE) {
            if (tether_session_forget(p->sessions, key, len, hash) < 0)
                admin_error(req, 404, "no session %.*s", (int)len, key);
            else
                admin_reply_json(req, 200, json_pack("{s:s%}", "forgotten", key, len));
        } else {
            admin_not_allowed(req, "GET, HEAD, DELETE");
        }
        return;
    }
    if (strcmp(action, "move") != 0) {
        admin_error(req, 404, "no such action %s", action);
        return;
    }
    if (m != EVHTTP_REQ_POST) {
        admin_not_allowed(req, "POST");
        return;
    }
    static const char *const fields[] = {"backend", NULL};
    json_t *body = admin_body(req);
    if (!body)
        return;
    if (!only_fields(req, body, fields))
        goto out;
    json_t *to = json_object_get(body, "backend");
    if (!json_is_string(to)) {
        admin_error(req, 400, "backend is a required string");
        goto out;
    }
    int b = tether_proxy_backend_find(p, json_string_value(to));
    if (b < 0) {
        admin_error(req, 404, "unknown backend %s", json_string_value(to));
        goto out;
    }
    if (!tether_backend_serves(&p->backends[b])) {
        admin_error(req, 409, "backend %s is %s", json_string_value(to),
                    tether_backend_state_name(&p->backends[b]));
        goto out;
    }
    int rc = tether_proxy_move_session(p, key, len, (uint32_t)b, &info);
    if (rc == -ENOENT)
        admin_error(req, 404, "no session %.*s", (int)len, key);
    else if (rc < 0)
        admin_error(req, 409, "the session moved meanwhile; try again");
    else
        admin_reply_json(req, 200, session_json(p, key, len, &info));
out:
    json_decref(body);
}

static json_t *strlist_json(const struct tether_strlist *l)
{
    json_t *a = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(a, json_string(l->v[i]));
    return a;
}

static void post_reload(struct evhttp_request *req, tether_admin_reload_fn reload, void *ctx)
{
    if (!empty_body(req))
        return;
    struct tether_strlist l[4] = {{0}};
    struct tether_reload_report rep = {&l[0], &l[1], &l[2], &l[3]};
    int rc = reload(ctx, &rep);
    if (rc < 0)
        admin_reply_json(req, 400,
                         json_pack("{s:s,s:o}", "error", "configuration has errors; the running "
                                                         "one stays",
                                   "errors", strlist_json(rep.errors)));
    else
        admin_reply_json(req, 200,
                         json_pack("{s:b,s:o,s:o,s:o}", "reloaded", 1, "changes",
                                   strlist_json(rep.changes), "restart_required",
                                   strlist_json(rep.restart_required), "dropped",
                                   strlist_json(rep.dropped)));
    for (size_t i = 0; i < 4; i++)
        tether_strlist_clear(&l[i]);
}

/* Split path into at most 6 raw segments. Returns the count, or -1. */
static int segments(const char *path, const char **seg, size_t *len, int max)
{
    int n = 0;
    const char *s = path + 1;
    while (*s) {
        if (n == max)
            return -1;
        const char *e = strchr(s, '/');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        seg[n] = s;
        len[n++] = l;
        if (!e)
            break;
        s = e + 1;
        if (!*s)
            return -1; /* a trailing slash */
    }
    return n;
}

static bool seg_is(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

void admin_route(struct tether_proxy *p, struct evhttp_request *req, const char *path,
                 tether_admin_reload_fn reload, void *reload_ctx)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m == EVHTTP_REQ_HEAD)
        m = EVHTTP_REQ_GET; /* evhttp sends the head without the body */
    if (strcmp(path, "/metrics") == 0) {
        if (m != EVHTTP_REQ_GET)
            admin_not_allowed(req, "GET, HEAD");
        else
            admin_metrics(p, req);
        return;
    }
    const char *seg[6];
    size_t len[6];
    int n = segments(path, seg, len, 6);
    if (n < 3 || !seg_is(seg[0], len[0], "api") || !seg_is(seg[1], len[1], "v1")) {
        admin_error(req, 404, "no such endpoint %s", path);
        return;
    }
    char arg[TETHER_SESSION_MAX_KEY + 1];
    ssize_t alen = 0;
    if (n >= 4) {
        alen = decode(seg[3], len[3], arg, TETHER_SESSION_MAX_KEY);
        if (alen <= 0) {
            admin_error(req, 400, "bad percent-encoding or length in %s", path);
            return;
        }
        arg[alen] = '\0';
    }
    char action[32] = "";
    if (n == 5) {
        if (len[4] >= sizeof(action)) {
            admin_error(req, 404, "no such endpoint %s", path);
            return;
        }
        memcpy(action, seg[4], len[4]);
        action[len[4]] = '\0';
    }
    if (seg_is(seg[2], len[2], "status") && n == 3) {
        if (m != EVHTTP_REQ_GET)
            admin_not_allowed(req, "GET, HEAD");
        else
            get_status(p, req);
    } else if (seg_is(seg[2], len[2], "reload") && n == 3) {
        if (m != EVHTTP_REQ_POST)
            admin_not_allowed(req, "POST");
        else
            post_reload(req, reload, reload_ctx);
    } else if (seg_is(seg[2], len[2], "backends") && n == 3) {
        if (m == EVHTTP_REQ_GET)
            get_backends(p, req);
        else if (m == EVHTTP_REQ_POST)
            post_backend(p, req);
        else
            admin_not_allowed(req, "GET, HEAD, POST");
    } else if (seg_is(seg[2], len[2], "backends") && n == 4) {
        if (strlen(arg) != (size_t)alen) {
            admin_error(req, 400, "bad backend name");
        } else if (m == EVHTTP_REQ_DELETE) {
            delete_backend(p, req, arg);
        } else if (m == EVHTTP_REQ_GET) {
            int b = tether_proxy_backend_find(p, arg);
            if (b < 0)
                admin_error(req, 404, "unknown backend %s", arg);
            else
                admin_reply_json(req, 200, backend_json(p, (uint32_t)b));
        } else {
            admin_not_allowed(req, "GET, HEAD, DELETE");
        }
    } else if (seg_is(seg[2], len[2], "backends") && n == 5) {
        if (m != EVHTTP_REQ_POST)
            admin_not_allowed(req, "POST");
        else if (strlen(arg) != (size_t)alen)
            admin_error(req, 400, "bad backend name");
        else
            backend_action(p, req, arg, action);
    } else if (seg_is(seg[2], len[2], "sessions") && n == 3) {
        if (m != EVHTTP_REQ_GET)
            admin_not_allowed(req, "GET, HEAD");
        else
            list_sessions(p, req);
    } else if (seg_is(seg[2], len[2], "sessions") && (n == 4 || n == 5)) {
        if (!tether_session_key_valid(arg, (size_t)alen))
            admin_error(req, 400, "not a session key (1..256 printable ASCII bytes)");
        else
            one_session(p, req, arg, (size_t)alen, n == 5 ? action : NULL);
    } else {
        admin_error(req, 404, "no such endpoint %s", path);
    }
}
