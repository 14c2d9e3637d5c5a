/*
 * Session affinity on the data path (DESIGN.md steps 3 and 4): find the
 * request's key in session.sources order, bind it through the session
 * table (placing new sessions by the bounded-load pick), mint a key when
 * asked, and apply what a response says about its session: a learned key,
 * a session end, a state blob. Response effects are fenced by the
 * (backend, epoch) the request was sent with. With the redis store, a key
 * the table does not hold (or holds stale) is first claimed in Redis: the
 * request waits, at most claim_timeout, for the binding tetherd agree on.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include <event2/buffer.h>

#include "tether/lb.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/util.h"
#include "proxy-int.h"

static int ieq(const char *a, size_t an, const char *lit)
{
    return tether_strieq(a, an, lit, strlen(lit));
}

/*
 * The one value of header `name`. Returns 1 and sets *v and *vl, 0 when absent,
 * -1 when it appears more than once (which of two keys is meant is
 * ambiguous, so the request is refused).
 */
static int header_value(const struct tether_http_header *h, size_t nh, const char *name,
                        const char **v, size_t *vl)
{
    int found = 0;
    for (size_t i = 0; i < nh; i++) {
        if (!ieq(h[i].name, h[i].name_len, name))
            continue;
        if (found)
            return -1;
        found = 1;
        *v = h[i].value;
        *vl = h[i].value_len;
    }
    return found;
}

static int cookie_value(const struct tether_config *cfg, const struct tether_http_header *h,
                        size_t nh, const char **v, size_t *vl)
{
    const char *name = cfg->session.cookie;
    size_t nlen = strlen(name);
    int found = 0;
    for (size_t i = 0; i < nh; i++) {
        if (!ieq(h[i].name, h[i].name_len, "cookie"))
            continue;
        const char *cv;
        size_t cl;
        int r = tether_session_cookie_find(h[i].value, h[i].value_len, name, nlen, &cv, &cl);
        if (r < 0 || (r > 0 && found))
            return -1;
        if (r > 0) {
            found = 1;
            *v = cv;
            *vl = cl;
        }
    }
    return found;
}

/*
 * The request's key, from the first source in session.sources that has
 * one. Returns 1 (key set), 0 (no key), -1 (a malformed or ambiguous key).
 */
static int find_key(const struct tether_config *cfg, const struct tether_http_request *req,
                    const char **key, size_t *len, enum tether_session_source *from)
{
    const struct tether_config_session *s = &cfg->session;
    for (size_t i = 0; i < s->nsources; i++) {
        int r = 0;
        switch (s->sources[i]) {
        case TETHER_SOURCE_LEARN:
            if (s->learn_header[0])
                r = header_value(req->headers, req->num_headers, s->learn_header, key, len);
            break;
        case TETHER_SOURCE_HEADER:
            r = header_value(req->headers, req->num_headers, s->header, key, len);
            break;
        case TETHER_SOURCE_COOKIE:
            r = cookie_value(cfg, req->headers, req->num_headers, key, len);
            break;
        }
        if (r < 0)
            return -1;
        if (r > 0) {
            *from = s->sources[i];
            return tether_session_key_valid(*key, *len) ? 1 : -1;
        }
    }
    return 0;
}

struct tether_placer {
    struct tether_proxy *proxy;
    uint32_t *loads;
    struct tether_lb_candidate *cands;
};

struct tether_placer *tether_placer_new(struct tether_proxy *p)
{
    struct tether_placer *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return NULL;
    pl->proxy = p;
    pl->loads = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*pl->loads));
    pl->cands = calloc(TETHER_PROXY_MAX_BACKENDS, sizeof(*pl->cands));
    if (!pl->loads || !pl->cands) {
        tether_placer_free(pl);
        return NULL;
    }
    return pl;
}

void tether_placer_free(struct tether_placer *pl)
{
    if (!pl)
        return;
    free(pl->loads);
    free(pl->cands);
    free(pl);
}

/* tether_session_place_fn: runs under the table's placement lock. */
int tether_placer_place(void *ctx, uint64_t hash, int prefer)
{
    struct tether_placer *pl = ctx;
    struct tether_proxy *p = pl->proxy;
    size_t n = atomic_load_explicit(&p->nbackends, memory_order_acquire);
    tether_session_loads(p->sessions, pl->loads, n);
    if (p->store)
        tether_store_add_reserved(p->store, pl->loads, n);
    for (size_t i = 0; i < n; i++) {
        const struct tether_backend *b = &p->backends[i];
        struct tether_lb_candidate *cd = &pl->cands[i];
        cd->load = pl->loads[i];
        cd->weight = b->weight;
        cd->cap = b->max_sessions;
        cd->usable = (unsigned char)tether_backend_takes_new(b);
    }
    if (prefer >= (int)n)
        prefer = -1;
    if (prefer >= 0) {
        const struct tether_lb_candidate *cd = &pl->cands[prefer];
        if (cd->usable && (cd->cap == 0 || cd->load < cd->cap))
            return prefer;
    }
    /* The ring may lag a backend added this instant: it is simply not picked yet. */
    const struct tether_ring *ring = atomic_load_explicit(&p->ring, memory_order_acquire);
    size_t nodes = tether_ring_nodes(ring);
    int b = tether_lb_bounded_pick(ring, hash, pl->cands, nodes < n ? nodes : n,
                                   p->cfg->balance.load_factor);
    if (b >= 0)
        atomic_fetch_add_explicit(&p->stats[0].placements, 1, memory_order_relaxed);
    return b;
}

static void mint(struct conn *c)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        abort(); /* no randomness: a guessable key would be a security hole */
    for (size_t i = 0; i < sizeof(raw); i++) {
        c->key[2 * i] = hex[raw[i] >> 4];
        c->key[2 * i + 1] = hex[raw[i] & 15];
    }
    c->key_len = 2 * sizeof(raw);
}

/* A placement preferring the backend a claim proposed (its answer came too late). */
struct preferring {
    struct tether_placer *pl;
    int prefer;
};

static int place_preferring(void *ctx, uint64_t hash, int prefer)
{
    struct preferring *p = ctx;
    return tether_placer_place(p->pl, hash, prefer >= 0 ? prefer : p->prefer);
}

static void on_claimed(struct tether_store_waiter *wt)
{
    struct conn *c = (struct conn *)((char *)wt - offsetof(struct conn, waiter));
    c->claimed = true;
    conn_resume_request(c);
}

void affinity_cancel(struct conn *c)
{
    tether_store_cancel(&c->waiter);
}

int affinity_route(struct conn *c, const struct tether_http_request *req, const char **why)
{
    struct tether_proxy_worker *w = c->w;
    struct tether_proxy *p = w->proxy;
    const struct tether_config *cfg = w->cfg;
    const char *key;
    size_t len;

    enum tether_session_source from = TETHER_SOURCE_HEADER;
    c->session = c->minted = c->delete_learned = c->handoff = false;
    c->epoch = 0;
    c->has_key = false;
    int k = find_key(cfg, req, &key, &len, &from);
    if (k < 0) {
        *why = "invalid session key";
        return -400;
    }
    unsigned flags = 0;
    if (k > 0) {
        memcpy(c->key, key, len);
        c->key_len = len;
        c->delete_learned = from == TETHER_SOURCE_LEARN && req->method_len == 6 &&
                            memcmp(req->method, "DELETE", 6) == 0;
        /* The key came back from the client: a minted session is now real. */
        flags = TETHER_SESSION_CONFIRM;
    } else if (cfg->session.insert_cookie) {
        mint(c);
        c->minted = true;
        flags = TETHER_SESSION_PROVISIONAL;
    } else if (cfg->session.learn_header[0]) {
        /* The response may name the session: place it like a new one. */
        uint64_t h;
        RAND_bytes((unsigned char *)&h, sizeof(h));
        int b = tether_placer_place(w->placer, h, -1);
        if (b < 0)
            *why = "every backend is at capacity";
        return b < 0 ? -503 : b;
    } else {
        int b = proxy_pick_least(w);
        if (b < 0)
            *why = "no backend available";
        return b < 0 ? -503 : b;
    }

    c->has_key = true;
    c->key_hash = tether_ring_hash(c->key, c->key_len);
    struct tether_session_info info;
    /* A minted key is new everywhere: only keys from clients are asked for. */
    bool ask = w->store && !c->claimed && !c->minted;
    struct preferring pref = {w->placer, c->claimed ? c->waiter.proposal : -1};
    c->claimed = false;
    int rc = tether_session_acquire(p->sessions, c->key, c->key_len, c->key_hash, tether_now_ms(),
                                    flags | (ask ? TETHER_SESSION_LOOKUP : 0u), place_preferring,
                                    &pref, &info);
    if (rc == TETHER_SESSION_MISS || rc == TETHER_SESSION_STALE) {
        c->waiter.done = on_claimed;
        if (tether_store_claim(w->store, c->key, c->key_len, c->key_hash,
                               rc == TETHER_SESSION_STALE ? &info : NULL, &c->waiter))
            return AFFINITY_WAIT;
        /* Redis cannot answer now: the local table decides. */
        rc = tether_session_acquire(p->sessions, c->key, c->key_len, c->key_hash, tether_now_ms(),
                                    flags, place_preferring, &pref, &info);
    }
    if (rc == TETHER_SESSION_FULL) {
        *why = "every backend is at capacity";
        return -503;
    }
    if (rc < 0) {
        *why = "session table full";
        return -503;
    }
    c->session = true;
    c->epoch = info.epoch;
    c->created_ms = info.created_ms;
    c->backend = (int)info.backend;
    if (affinity_reroute(c) < 0) {
        /* Every backend is down: the binding stays for when one is back. */
        c->backend = -1;
        *why = "no backend available";
        return -503;
    }
    return c->backend;
}

/*
 * The request's backend is down (the mover may not have reached its
 * session yet): follow the session's move now, or pick again for a request
 * without a session. Sets c->backend (and the handoff it brings). Returns 0,
 * or -1 when no backend can take it.
 */
int affinity_reroute(struct conn *c)
{
    struct tether_proxy_worker *w = c->w;
    struct tether_proxy *p = w->proxy;
    struct tether_session_info info;
    int b = c->backend;
    if (!c->session) {
        if (tether_backend_serves(&p->backends[b]))
            return 0;
        b = proxy_pick_least(w);
    } else {
        if (tether_session_get(p->sessions, c->key, c->key_len, c->key_hash, &info) < 0)
            return tether_backend_serves(&p->backends[b]) ? 0 : -1;
        b = (int)info.backend;
        const struct tether_backend *be = &p->backends[b];
        if (!tether_backend_serves(be))
            tether_proxy_move_reason(!atomic_load(&be->present) ? TETHER_MOVE_REMOVED
                                     : atomic_load(&be->admin) == TETHER_BACKEND_DISABLED
                                         ? TETHER_MOVE_DISABLED
                                         : TETHER_MOVE_DOWN);
        if (!tether_backend_serves(be))
            b = tether_session_move(p->sessions, c->key, c->key_len, c->key_hash, info.backend,
                                    tether_placer_place, w->placer, &info);
        if (b >= 0 && !tether_backend_serves(&p->backends[b]))
            b = -1;
        if (b >= 0) {
            c->epoch = info.epoch;
            c->handoff = info.handoff;
            c->moved_from = info.moved_from;
        }
    }
    if (b < 0)
        return -1;
    c->backend = b;
    return 0;
}

/*
 * x-fc-session-state with the stored blob, copied straight into the output:
 * no buffer of its own. A blob stored under a larger state_max_bytes than
 * the running one gets a second try with room for it.
 */
static void add_state(struct tether_proxy *p, struct conn *c, struct evbuffer *out)
{
    size_t room = c->w->cfg->session.state_max_bytes;
    for (int tries = 0; tries < 2; tries++) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)(room + 22), &v, 1) != 1)
            return;
        char *at = v.iov_base;
        size_t need = 0;
        int n = tether_session_state_copy(p->sessions, c->key, c->key_len, c->key_hash, at + 20,
                                          room, &need);
        v.iov_len = 0;
        if (n > 0) {
            memcpy(at, "x-fc-session-state: ", 20);
            memcpy(at + 20 + n, "\r\n", 2);
            v.iov_len = (size_t)n + 22;
        }
        evbuffer_commit_space(out, &v, 1);
        if (n != -ENOSPC)
            return;
        room = need;
    }
}

/* The session lines of the head sent upstream (the rest is in c->head). */
void affinity_write_headers(struct conn *c, struct evbuffer *out)
{
    struct tether_proxy *p = c->w->proxy;
    if (c->has_key) {
        evbuffer_add_printf(out, "x-fc-session-id: %.*s\r\nx-fc-session-epoch: %u\r\n",
                            (int)c->key_len, c->key, c->epoch);
        if (c->handoff) {
            /* Until the new home has answered one request without a 5xx.
               A backend not configured here (the redis store knew it by
               name only) goes unnamed; the state still goes along. */
            if (c->moved_from < p->nbackends)
                evbuffer_add_printf(out, "x-fc-session-moved-from: %s\r\n",
                                    p->backends[c->moved_from].name);
            add_state(p, c, out);
        }
    }
    evbuffer_add(out, "\r\n", 2);
}

void affinity_release(struct conn *c)
{
    if (!c->session)
        return;
    c->session = false;
    tether_session_release(c->w->proxy->sessions, c->key, c->key_len, c->key_hash, c->created_ms,
                           tether_now_ms());
}

void affinity_on_response(struct conn *c, int backend, const struct tether_http_response *res)
{
    struct tether_proxy *p = c->w->proxy;
    const struct tether_config *cfg = c->w->cfg;
    const char *learn = cfg->session.learn_header;
    const struct tether_http_header *h = res->headers;
    const char *state = NULL, *learned = NULL;
    size_t state_len = 0, learned_len = 0;
    uint64_t learned_hash = 0;
    bool end = false;

    for (size_t i = 0; i < res->num_headers; i++) {
        const char *n = h[i].name;
        size_t nl = h[i].name_len;
        if (ieq(n, nl, "x-fc-session-end")) {
            end = end || (h[i].value_len == 1 && h[i].value[0] == '1');
        } else if (ieq(n, nl, "x-fc-session-state")) {
            state = h[i].value;
            state_len = h[i].value_len;
        } else if (learn[0] && ieq(n, nl, learn) && res->status < 300 &&
                   tether_session_key_valid(h[i].value, h[i].value_len)) {
            uint64_t hash = tether_ring_hash(h[i].value, h[i].value_len);
            int rc = tether_session_bind(p->sessions, h[i].value, h[i].value_len, hash,
                                         (uint32_t)backend, tether_now_ms());
            if (rc == 0) {
                learned = h[i].value;
                learned_len = h[i].value_len;
                learned_hash = hash;
            }
            if (rc == 0 && c->minted) {
                /* The server named the session: that key binds, not ours. */
                tether_session_end(p->sessions, c->key, c->key_len, c->key_hash, (uint32_t)backend,
                                   c->epoch);
                c->minted = false;
            }
        }
    }
    if (state && state_len > cfg->session.state_max_bytes) {
        atomic_fetch_add(&p->state_dropped, 1);
        state = NULL;
    }
    /* The state a response carries beside a key it names is that session's. */
    if (learned && state && !(c->has_key && learned_len == c->key_len &&
                              memcmp(learned, c->key, learned_len) == 0)) {
        struct tether_session_info info;
        if (tether_session_get(p->sessions, learned, learned_len, learned_hash, &info) == 0 &&
            info.backend == (uint32_t)backend)
            tether_session_set_state(p->sessions, learned, learned_len, learned_hash,
                                     (uint32_t)backend, info.epoch, state, state_len);
        state = NULL;
    }
    if (!c->has_key)
        return;
    if (c->delete_learned && ((res->status >= 200 && res->status < 300) || res->status == 404))
        end = true;
    if (c->handoff && res->status < 500)
        tether_session_handoff_done(p->sessions, c->key, c->key_len, c->key_hash, (uint32_t)backend,
                                    c->epoch);
    if (end) {
        tether_session_end(p->sessions, c->key, c->key_len, c->key_hash, (uint32_t)backend,
                           c->epoch);
        c->minted = false;
        return;
    }
    if (state)
        tether_session_set_state(p->sessions, c->key, c->key_len, c->key_hash, (uint32_t)backend,
                                 c->epoch, state, state_len);
}

int affinity_set_cookie(const struct conn *c, char *buf, size_t cap)
{
    const struct tether_config *cfg = c->w->cfg;
    int n = snprintf(
        buf, cap, "Set-Cookie: %s=%.*s; Path=/; Max-Age=%llu; HttpOnly; SameSite=Lax%s\r\n",
        cfg->session.cookie, (int)c->key_len, c->key,
        (unsigned long long)(cfg->session.max_lifetime_ms / 1000), c->tls ? "; Secure" : "");
    return n > 0 && (size_t)n < cap ? n : 0;
}
