/*
 * One connection to Redis, on a worker's event_base through hiredis'
 * libevent adapter: connect, AUTH and script loads (or SUBSCRIBE for the
 * subscriber), reconnects with backoff, and the timers hiredis 0.14 does
 * not have: a connect timeout, a reply timeout, and the stall mark that
 * stops claims from waiting on a Redis that does not answer. The
 * subscriber applies the moves other tetherd publish, and after any
 * reconnect marks every cached record stale (moves may have been missed).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>

#include "tether/lb.h"
#include "tether/proxy.h"
#include "tether/util.h"
#include "store-int.h"

static void on_retry(evutil_socket_t fd, short what, void *arg);
static void on_watchdog(evutil_socket_t fd, short what, void *arg);

static const char *name(const struct link *l)
{
    return l->subscriber ? "subscriber" : "connection";
}

void link_init(struct link *l, struct tether_store_worker *sw, bool subscriber)
{
    l->sw = sw;
    l->subscriber = subscriber;
    TAILQ_INIT(&l->sent);
    atomic_store(&l->state, L_DOWN);
    atomic_store(&l->since_ms, tether_wall_ms());
    l->retry = evtimer_new(sw->base, on_retry, l);
    l->watchdog = event_new(sw->base, -1, EV_PERSIST, on_watchdog, l);
}

/* The connection is gone (or never came): retry after a backoff. l->ac is
   already NULL or about to be freed by hiredis. */
static void lost(struct link *l, const char *why)
{
    struct tether_store_worker *sw = l->sw;
    struct tether_store *st = sw->st;
    int was = atomic_load(&l->state);
    l->ac = NULL;
    atomic_store(&l->state, L_DOWN);
    atomic_store(&l->stalled, false);
    atomic_store(&l->since_ms, tether_wall_ms());
    event_del(l->watchdog);
    store_set_error(st, "%s", why);
    if (was == L_READY) {
        atomic_fetch_add(&st->reconnects, 1);
        tether_log_warn("redis %s:%d: worker %d: %s lost: %s; serving from the local table, "
                        "reconnecting",
                        st->host, st->port, sw->id, name(l), why);
    } else if (l->was_ready || l->backoff_ms == 0) {
        /* The first failure, and the first after having been up. */
        tether_log_warn("redis %s:%d: worker %d: cannot connect: %s; serving from the local "
                        "table, retrying with backoff",
                        st->host, st->port, sw->id, why);
    }
    l->was_ready = false;
    if (sw->closing)
        return;
    uint64_t delay = l->backoff_ms ? l->backoff_ms : STORE_BACKOFF_MIN_MS;
    l->backoff_ms = delay * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : delay * 2;
    /* Jitter: workers (and tetherd) that lost Redis together do not return together. */
    unsigned char r = 0;
    RAND_bytes(&r, 1);
    struct timeval tv = tether_timeval_ms(delay / 2 + delay * r / 512);
    evtimer_add(l->retry, &tv);
    store_check_drained(sw);
}

/* Drop the connection on our side (timeouts, a failed setup). */
static void drop(struct link *l, const char *why)
{
    redisAsyncContext *ac = l->ac;
    lost(l, why);
    if (ac)
        redisAsyncFree(ac); /* answers what is pending with NULL: requeued */
}

static void ready(struct link *l)
{
    struct tether_store_worker *sw = l->sw;
    struct tether_store *st = sw->st;
    atomic_store(&l->state, L_READY);
    atomic_store(&l->since_ms, tether_wall_ms());
    bool again = l->backoff_ms != 0;
    l->backoff_ms = 0;
    l->was_ready = true;
    if (l->subscriber) {
        /* Moves published while this connection was away were missed:
           every cached record is checked against Redis before its next use. */
        size_t n = tether_session_mark_stale(st->table);
        tether_log_info("redis %s:%d: subscribed to %s%s", st->host, st->port, st->channel,
                        n ? "; cached sessions are checked against Redis before use" : "");
    } else {
        tether_log_info("redis %s:%d: worker %d: %s", st->host, st->port, sw->id,
                        again ? "reconnected" : "connected");
        write_schedule(sw);
    }
    store_check_drained(sw);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void on_message(redisAsyncContext *ac, void *reply, void *privdata);

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;
    if (status != REDIS_OK && l && l->ac == ac)
        lost(l, ac->errstr[0] ? ac->errstr : "connect failed"); /* hiredis frees ac */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;
    if (l && l->ac == ac)
        lost(l, ac->err ? ac->errstr : "closed by Redis");
}

static int setup(struct link *l, const char *const *argv, int argc)
{
    struct cmd *c = link_send(l, CMD_SETUP, argc, (const char **)argv, NULL);
    if (!c)
        return -1;
    l->setup_left++;
    return 0;
}

void link_start(struct link *l)
{
    struct tether_store_worker *sw = l->sw;
    struct tether_store *st = sw->st;
    if (sw->closing || l->ac)
        return;
    l->started_ms = tether_now_ms();
    l->setup_left = 0;
    redisAsyncContext *ac = redisAsyncConnect(st->host, st->port);
    if (!ac || ac->err) {
        char why[128];
        snprintf(why, sizeof(why), "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        lost(l, why);
        return;
    }
    ac->data = l;
    if (redisLibeventAttach(ac, sw->base) != REDIS_OK) {
        redisAsyncFree(ac);
        lost(l, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    l->ac = ac;
    atomic_store(&l->state, L_CONNECTING);
    atomic_store(&l->since_ms, tether_wall_ms());
    /* Sent as soon as the socket connects, ahead of anything else. */
    int bad = 0;
    if (st->password) {
        const char *auth[] = {"AUTH", st->password};
        bad |= setup(l, auth, 2);
    }
    if (l->subscriber) {
        if (redisAsyncCommand(ac, on_message, l, "SUBSCRIBE %s", st->channel) != REDIS_OK)
            bad = 1;
        else
            l->setup_left++;
    } else {
        const char *scripts[] = {store_lua_claim, store_lua_sync, store_lua_end};
        for (size_t i = 0; i < 3; i++) {
            const char *load[] = {"SCRIPT", "LOAD", scripts[i]};
            bad |= setup(l, load, 3);
        }
    }
    if (bad) {
        drop(l, "cannot queue the connection's setup");
        return;
    }
    uint64_t period = store_cfg(sw->st)->state.redis.claim_timeout_ms;
    struct timeval tv = tether_timeval_ms(period < 10 ? 10 : period > 100 ? 100 : period);
    event_add(l->watchdog, &tv);
}

void link_deinit(struct link *l)
{
    if (l->retry)
        event_free(l->retry);
    if (l->watchdog)
        event_free(l->watchdog);
    l->retry = l->watchdog = NULL;
    redisAsyncContext *ac = l->ac;
    l->ac = NULL;
    atomic_store(&l->state, L_DOWN);
    if (ac)
        redisAsyncFree(ac);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    link_start(arg);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct link *l = arg;
    struct tether_store_worker *sw = l->sw;
    uint64_t now = tether_now_ms();
    int state = atomic_load(&l->state);
    if (state == L_CONNECTING && now - l->started_ms >= STORE_CONNECT_TIMEOUT_MS) {
        drop(l,
             l->setup_left ? "no answer to the connection's setup within 2s" : "connect timed out");
        return;
    }
    struct cmd *head = TAILQ_FIRST(&l->sent);
    uint64_t age = head ? now - head->sent_ms : 0;
    uint64_t claim_ms = store_cfg(sw->st)->state.redis.claim_timeout_ms;
    if (age >= STORE_REPLY_TIMEOUT_MS && age >= 2 * claim_ms) {
        drop(l, "no reply in time");
        return;
    }
    bool slow = state == L_READY && age >= claim_ms;
    if (slow != atomic_load(&l->stalled)) {
        atomic_store(&l->stalled, slow);
        if (slow && store_log_limited(sw, LIM_STALL))
            tether_log_warn("redis %s:%d: worker %d: no reply for %llums: new keys are placed "
                            "without waiting for Redis",
                            sw->st->host, sw->st->port, sw->id, (unsigned long long)age);
        else if (!slow)
            tether_log_info("redis %s:%d: worker %d: answering again", sw->st->host, sw->st->port,
                            sw->id);
    }
}

struct cmd *link_send(struct link *l, enum cmd_kind kind, int argc, const char **argv,
                      const size_t *argvlen)
{
    /* A claim may queue behind a connection's setup (see link_can_wait()). */
    int state = atomic_load(&l->state);
    if (!l->ac ||
        (kind != CMD_SETUP && state != L_READY && !(kind == CMD_CLAIM && state == L_CONNECTING)))
        return NULL;
    struct cmd *c = malloc(sizeof(*c));
    if (!c)
        return NULL;
    c->l = l;
    c->kind = kind;
    c->sent_ms = tether_now_ms();
    c->claim = NULL;
    c->w.flags = 0;
    if (redisAsyncCommandArgv(l->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&l->sent, c, link);
    l->nsent++;
    return c;
}

bool link_can_send(const struct link *l)
{
    return l->ac && atomic_load(&l->state) == L_READY && l->nsent < STORE_WINDOW;
}

bool link_can_wait(const struct link *l)
{
    if (!l->ac || l->nsent >= STORE_WINDOW || atomic_load(&l->stalled))
        return false;
    int state = atomic_load(&l->state);
    /* A connection on its way (tetherd just started, or Redis just came
       back) is worth the wait while it is younger than claim_timeout. */
    return state == L_READY ||
           (state == L_CONNECTING &&
            tether_now_ms() - l->started_ms < store_cfg(l->sw->st)->state.redis.claim_timeout_ms);
}

void link_done(struct cmd *c)
{
    struct link *l = c->l;
    struct tether_store_worker *sw = l->sw;
    TAILQ_REMOVE(&l->sent, c, link);
    l->nsent--;
    free(c);
    if (sw->closing)
        return;
    if (atomic_load(&l->stalled)) {
        struct cmd *head = TAILQ_FIRST(&l->sent);
        if (!head || tether_now_ms() - head->sent_ms < store_cfg(sw->st)->state.redis.claim_timeout_ms) {
            atomic_store(&l->stalled, false);
            tether_log_info("redis %s:%d: worker %d: answering again", sw->st->host, sw->st->port,
                            sw->id);
        }
    }
    if (!l->subscriber) {
        if (!TAILQ_EMPTY(&sw->order))
            write_schedule(sw);
        store_check_drained(sw);
    }
}

bool link_reply_error(struct link *l, const redisReply *r, const char *what)
{
    struct tether_store_worker *sw = l->sw;
    struct tether_store *st = sw->st;
    if (r && r->str && r->len >= 8 && memcmp(r->str, "NOSCRIPT", 8) == 0) {
        /* The scripts went (SCRIPT FLUSH): a new connection loads them again. */
        if (l->ac)
            drop(l, "Redis no longer has tether's scripts");
        return true;
    }
    atomic_fetch_add(&st->write_errors, 1);
    store_set_error(st, "%s: %.*s", what, (int)(r && r->str ? r->len : 0),
                    r && r->str ? r->str : "");
    if (store_log_limited(sw, LIM_ERROR))
        tether_log_warn("redis %s:%d: %s: error reply \"%.*s\": treated as Redis being down, "
                        "served from the local table",
                        st->host, st->port, what, (int)(r && r->str ? r->len : 0),
                        r && r->str ? r->str : "");
    return false;
}

static void setup_reply(struct cmd *c, redisReply *r)
{
    struct link *l = c->l;
    struct tether_store *st = l->sw->st;
    if (!r || l->ac == NULL)
        return; /* lost with its connection */
    char why[160];
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof(why), "setup refused: %.*s", (int)r->len, r->str);
    } else if (r->type == REDIS_REPLY_STRING && r->len == 40 && memcmp(r->str, st->sha_claim, 40) &&
               memcmp(r->str, st->sha_sync, 40) && memcmp(r->str, st->sha_end, 40)) {
        snprintf(why, sizeof(why), "SCRIPT LOAD answered an unexpected digest");
    } else {
        if (--l->setup_left == 0)
            ready(l);
        return;
    }
    /* An AUTH or a script load refused is not an answer to build on. */
    atomic_fetch_add(&st->write_errors, 1);
    drop(l, why);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cmd *c = privdata;
    redisReply *r = reply;
    switch (c->kind) {
    case CMD_SETUP:
        setup_reply(c, r);
        break;
    case CMD_CLAIM:
        claim_on_reply(c, r);
        break;
    case CMD_SYNC:
    case CMD_END:
        write_on_reply(c, r);
        break;
    }
    link_done(c);
}

/* "origin\nkey\nbackend\nepoch\nmoved_from\nhandoff\nstate", as the sync script publishes it. */
static void apply_move(struct tether_store_worker *sw, const char *msg, size_t len)
{
    struct tether_store *st = sw->st;
    const char *part[7];
    size_t plen[7], n = 0;
    const char *p = msg, *end = msg + len;
    while (n < 6) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return;
        part[n] = p;
        plen[n++] = (size_t)(nl - p);
        p = nl + 1;
    }
    part[6] = p;
    plen[6] = (size_t)(end - p);
    if (plen[0] == strlen(st->origin) && memcmp(part[0], st->origin, plen[0]) == 0)
        return; /* our own */
    if (!tether_session_key_valid(part[1], plen[1]) || plen[3] == 0 || plen[3] > 10)
        return;
    int b = store_backend_index(st, part[2], plen[2]);
    if (b < 0) {
        atomic_fetch_add(&st->unknown_backends, 1);
        if (store_log_limited(sw, LIM_UNKNOWN))
            tether_log_warn("redis: a move to backend \"%.*s\", which is not configured here, "
                            "was ignored",
                            (int)plen[2], part[2]);
        return;
    }
    uint64_t epoch = strtoull(part[3], NULL, 10);
    uint64_t hash = tether_ring_hash(part[1], plen[1]);
    struct tether_session_info mine;
    if (epoch == 0 || epoch > UINT32_MAX ||
        tether_session_get(st->table, part[1], plen[1], hash, &mine) < 0)
        return; /* not cached here: it is read from Redis when it is used */
    if (mine.epoch > epoch || (mine.epoch == epoch && mine.backend == (uint32_t)b))
        return;
    struct tether_session_view v = {.key = part[1], .key_len = plen[1], .info = mine};
    v.info.backend = (uint32_t)b;
    v.info.epoch = (uint32_t)epoch;
    int from = plen[4] ? store_backend_index(st, part[4], plen[4]) : -1;
    v.info.handoff = from >= 0 && plen[5] == 1 && part[5][0] == '1';
    v.info.moved_from = from >= 0 ? (uint32_t)from : 0;
    if (plen[6]) {
        v.state = part[6];
        v.state_len = plen[6];
    }
    if (tether_session_adopt(st->table, &v, hash, tether_now_ms()) == 1) {
        atomic_fetch_add(&st->moves_applied, 1);
        tether_log_debug("redis: session moved by another tetherd to %s (epoch %llu)",
                         store_backend_name(st, (uint32_t)b), (unsigned long long)epoch);
    }
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct link *l = privdata;
    redisReply *r = reply;
    if (!r || l->ac != ac || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *kind = r->element[0];
    if (kind->len == 9 && memcmp(kind->str, "subscribe", 9) == 0) {
        if (--l->setup_left == 0)
            ready(l);
    } else if (kind->len == 7 && memcmp(kind->str, "message", 7) == 0 &&
               r->element[2]->type == REDIS_REPLY_STRING) {
        apply_move(l->sw, r->element[2]->str, r->element[2]->len);
    }
}
