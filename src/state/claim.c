/*
 * Claims: before a key the table does not hold (or holds stale) is placed,
 * Redis is asked with one script that returns the binding it holds or
 * stores ours (the local bounded-load pick, reserved meanwhile) if it holds
 * none, so two tetherd behind one address agree on every new session. The
 * request waits at most claim_timeout, on a timer of this worker's loop
 * (hiredis 0.14 has no timeouts of its own); past it the request is placed
 * locally, preferring the proposed backend, and the late answer is
 * reconciled: a binding another tetherd won replaces ours, as a move.
 * Waiters for one key on one worker share one claim.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "tether/proxy.h"
#include "tether/util.h"
#include "store-int.h"

static void wait_on(struct claim *cl, struct tether_store_waiter *w)
{
    w->sw = cl->sw;
    w->claim = cl;
    w->queued = false;
    w->proposal = -1;
    TAILQ_INSERT_TAIL(&cl->waiters, w, link);
}

/* The waiters go on: Redis answered, or will not in time. */
static void finish(struct claim *cl)
{
    struct tether_store_worker *sw = cl->sw;
    if (cl->answered)
        return;
    cl->answered = true;
    if (cl->in_map)
        keymap_del(&sw->claims, &cl->node);
    cl->in_map = false;
    if (cl->reserved)
        atomic_fetch_sub(&sw->st->reserved[cl->proposal], 1);
    cl->reserved = false;
    if (cl->timed)
        evtimer_del(&cl->timer);
    cl->timed = false;
    struct tether_store_waiter *w;
    while ((w = TAILQ_FIRST(&cl->waiters))) {
        TAILQ_REMOVE(&cl->waiters, w, link);
        w->claim = NULL;
        w->proposal = cl->proposal;
        w->queued = true;
        TAILQ_INSERT_TAIL(&sw->ready, w, link);
    }
    /* Resumed from the loop, not from inside hiredis' reply processing. */
    if (!TAILQ_EMPTY(&sw->ready) && !sw->closing)
        event_active(sw->resume_ev, EV_TIMEOUT, 0);
}

/* A claim lives until its waiters went on and its command was answered. */
static void release(struct claim *cl)
{
    if (cl->answered && !cl->sent)
        free(cl);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct claim *cl = arg;
    atomic_fetch_add(&cl->sw->st->claim_timeouts, 1);
    finish(cl);
    release(cl);
}

static void num(char *buf, uint64_t v)
{
    snprintf(buf, 24, "%" PRIu64, v);
}

int tether_store_claim(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash,
                       const struct tether_session_info *stale, struct tether_store_waiter *w)
{
    struct tether_store *st = sw->st;
    if (sw->closing || !link_can_wait(&sw->data))
        return 0;
    struct claim *cl = (struct claim *)keymap_find(&sw->claims, key, len, hash);
    if (cl) {
        wait_on(cl, w);
        return 1;
    }
    cl = calloc(1, sizeof(*cl));
    if (!cl)
        return 0;
    cl->sw = sw;
    TAILQ_INIT(&cl->waiters);
    memcpy(cl->key, key, len);
    cl->node.key = cl->key;
    cl->node.len = len;
    cl->node.hash = hash;
    uint64_t now = tether_now_ms();
    int state = 0;
    if (stale) {
        /* Ours, as we have it, is what Redis keeps if it lost its copy. */
        cl->mine = *stale;
        cl->proposal = (int)stale->backend;
        state = store_state_copy(sw, key, len, hash);
    } else {
        int b = tether_placer_place(sw->placer, hash, -1);
        if (b < 0 || (size_t)b >= st->nreserved) {
            free(cl);
            return 0; /* nothing can take it: the caller's placement says so */
        }
        cl->proposal = b;
        cl->mine.backend = (uint32_t)b;
        cl->mine.epoch = 1;
        cl->mine.created_ms = cl->mine.last_seen_ms = now;
    }
    const char *backend = store_backend_name(st, cl->mine.backend);
    const char *from = cl->mine.handoff ? store_backend_name(st, cl->mine.moved_from) : "";
    if (!backend) {
        free(cl);
        return 0;
    }
    struct tether_session_info live = cl->mine, prov = cl->mine;
    live.provisional = false;
    prov.provisional = true;
    uint64_t wall = tether_wall_ms(), life = store_cfg(st)->session.max_lifetime_ms;
    char rkey[STORE_MAX_RKEY], ttl[24], ttl_prov[24], oldest[24], epoch[24], created[24], seen[24],
        requests[24];
    num(ttl, store_ttl_ms(st, &live, now));
    num(ttl_prov, store_ttl_ms(st, &prov, now));
    num(oldest, wall > life ? wall - life : 0);
    num(epoch, cl->mine.epoch);
    num(created, store_to_wall(cl->mine.created_ms));
    num(seen, store_to_wall(cl->mine.last_seen_ms));
    num(requests, cl->mine.requests);
    size_t rlen = store_rkey(st, key, len, rkey);
    const char *argv[17] = {"EVALSHA",
                            st->sha_claim,
                            "1",
                            rkey,
                            ttl,
                            oldest,
                            backend,
                            epoch,
                            created,
                            seen,
                            requests,
                            cl->mine.provisional ? "1" : "0",
                            cl->mine.handoff ? "1" : "0",
                            from ? from : "",
                            state > 0 ? "1" : "0",
                            sw->state_buf,
                            ttl_prov};
    size_t lens[17];
    for (size_t i = 0; i < 17; i++)
        lens[i] = i == 3 ? rlen : i == 15 ? (size_t)(state > 0 ? state : 0) : strlen(argv[i]);
    struct cmd *c = link_send(&sw->data, CMD_CLAIM, 17, argv, lens);
    struct timeval tv = tether_timeval_ms(store_cfg(st)->state.redis.claim_timeout_ms);
    evtimer_assign(&cl->timer, sw->base, on_timeout, cl);
    if (!c || evtimer_add(&cl->timer, &tv) < 0) {
        if (c) {
            /* Sent: its answer still reconciles, but nobody waits for it. */
            c->claim = cl;
            cl->sent = true;
            cl->answered = true;
        } else {
            free(cl);
        }
        return 0;
    }
    c->claim = cl;
    cl->sent = true;
    cl->timed = true;
    if (!stale) {
        atomic_fetch_add(&st->reserved[cl->proposal], 1);
        cl->reserved = true;
    }
    cl->in_map = keymap_add(&sw->claims, &cl->node) == 0;
    atomic_fetch_add(&st->claims, 1);
    wait_on(cl, w);
    return 1;
}

int claim_adopt_fields(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash,
                       const redisReply *fields)
{
    struct tether_store *st = sw->st;
    struct rrecord rec;
    if (rrecord_parse(fields, &rec) < 0)
        return -EINVAL;
    uint64_t now = tether_now_ms();
    struct tether_session_view v = {.key = key, .key_len = len};
    v.info.created_ms = store_to_mono(rec.created);
    v.info.last_seen_ms = store_to_mono(rec.last_seen);
    v.info.requests = rec.requests;
    v.info.provisional = rec.provisional;
    if (rec.state) {
        v.state = rec.state;
        v.state_len = rec.state_len;
    }
    int b = store_backend_index(st, rec.backend, rec.backend_len);
    if (b < 0) {
        /* Bound to a backend this tetherd does not know: placed here, and
           written over as a move, so the binding stays one that works. */
        atomic_fetch_add(&st->unknown_backends, 1);
        int pick = tether_placer_place(sw->placer, hash, -1);
        if (store_log_limited(sw, LIM_UNKNOWN))
            tether_log_warn("redis: a session is bound to backend \"%.*s\", which is not "
                            "configured here: placed on %s instead",
                            (int)rec.backend_len, rec.backend,
                            pick >= 0 ? store_backend_name(st, (uint32_t)pick) : "none (full)");
        if (pick < 0 || rec.epoch >= UINT32_MAX)
            return 0;
        v.info.backend = (uint32_t)pick;
        v.info.epoch = (uint32_t)rec.epoch + 1;
        v.info.handoff = !rec.provisional; /* the new home gets the state */
        v.info.moved_from = TETHER_SESSION_NOWHERE;
        int rc = tether_session_adopt(st->table, &v, hash, now);
        if (rc >= 0)
            write_move_from(sw, key, len, hash, (uint32_t)rec.epoch);
        return rc;
    }
    v.info.backend = (uint32_t)b;
    v.info.epoch = (uint32_t)rec.epoch;
    int from =
        rec.moved_from_len ? store_backend_index(st, rec.moved_from, rec.moved_from_len) : -1;
    v.info.handoff = rec.handoff && !rec.provisional;
    v.info.moved_from = from >= 0 ? (uint32_t)from : TETHER_SESSION_NOWHERE;
    int rc = tether_session_adopt(st->table, &v, hash, now);
    if (rc == 1) {
        atomic_fetch_add(&st->reconciles, 1);
        tether_log_debug("redis: another tetherd holds a session on %s (epoch %u): adopted",
                         store_backend_name(st, (uint32_t)b), v.info.epoch);
    }
    return rc;
}

void claim_on_reply(struct cmd *c, redisReply *r)
{
    struct claim *cl = c->claim;
    struct tether_store_worker *sw = cl->sw;
    struct tether_store *st = sw->st;
    cl->sent = false;
    if (!r || sw->closing) {
        /* Lost with the connection: the waiters place locally; a write of
           what they made reconciles later. */
    } else if (r->type == REDIS_REPLY_ERROR) {
        link_reply_error(c->l, r, "claim");
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
               r->element[0]->type != REDIS_REPLY_INTEGER) {
        link_reply_error(c->l, NULL, "claim: unexpected reply");
    } else if (r->element[0]->integer == 1) {
        /* Ours is stored: take it (a request placed meanwhile gives way). */
        struct tether_session_view v = {.key = cl->key, .key_len = cl->node.len, .info = cl->mine};
        if (tether_session_adopt(st->table, &v, cl->node.hash, tether_now_ms()) == 1)
            atomic_fetch_add(&st->reconciles, 1);
    } else if (r->element[0]->integer != 0 || r->elements < 2 ||
               claim_adopt_fields(sw, cl->key, cl->node.len, cl->node.hash, r->element[1]) < 0) {
        link_reply_error(c->l, NULL, "claim: not a session record");
    }
    finish(cl);
    release(cl);
}

void claim_on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct tether_store_worker *sw = arg;
    struct tether_store_waiter *w;
    while ((w = TAILQ_FIRST(&sw->ready))) {
        TAILQ_REMOVE(&sw->ready, w, link);
        w->queued = false;
        w->done(w);
    }
}

void tether_store_cancel(struct tether_store_waiter *w)
{
    if (w->claim) {
        struct claim *cl = w->claim;
        TAILQ_REMOVE(&cl->waiters, w, link);
        w->claim = NULL;
    } else if (w->queued) {
        TAILQ_REMOVE(&w->sw->ready, w, link);
        w->queued = false;
    }
}

void claim_deinit(struct tether_store_worker *sw)
{
    /* The connections are gone: every claim was answered (with NULL) and freed. */
    struct tether_store_waiter *w;
    while ((w = TAILQ_FIRST(&sw->ready))) {
        TAILQ_REMOVE(&sw->ready, w, link);
        w->queued = false;
    }
    keymap_deinit(&sw->claims);
}
