/*
 * Write-behind. Every change the session table reports lands in the
 * worker's dirty queue: one entry per key, in order of first change, with
 * flags that merge (a state blob and a use become one write; a move keeps
 * the epoch Redis held before the first of them). A flush, run once per
 * loop turn while there is something to write, reads each key's record as
 * it is now and pipelines one script per key, up to STORE_WINDOW commands
 * unanswered; hiredis writes everything queued in one turn together. No
 * request waits for any of it. A write lost with its connection is queued
 * again; a write Redis refuses with an error is counted, reported and
 * dropped; a write that finds another binding in Redis gives way to it.
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

static struct dirty *entry(struct tether_store_worker *sw, const char *key, size_t len,
                           uint64_t hash)
{
    struct tether_store *st = sw->st;
    struct dirty *d = (struct dirty *)keymap_find(&sw->dirty, key, len, hash);
    if (d)
        return d;
    if (atomic_load(&st->queue) >= store_cfg(st)->state.redis.queue_max || !(d = calloc(1, sizeof(*d)))) {
        atomic_fetch_add(&st->dropped, 1);
        if (store_log_limited(sw, LIM_QUEUE))
            tether_log_warn("redis: %" PRIu64 " session changes wait for Redis (queue_max): "
                            "further changes are not written",
                            atomic_load(&st->queue));
        return NULL;
    }
    memcpy(d->key, key, len);
    d->node.key = d->key;
    d->node.len = len;
    d->node.hash = hash;
    if (keymap_add(&sw->dirty, &d->node) < 0) {
        free(d);
        atomic_fetch_add(&st->dropped, 1);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&sw->order, d, link);
    atomic_fetch_add(&st->queue, 1);
    return d;
}

static void forget(struct tether_store_worker *sw, struct dirty *d)
{
    keymap_del(&sw->dirty, &d->node);
    TAILQ_REMOVE(&sw->order, d, link);
    atomic_fetch_sub(&sw->st->queue, 1);
    free(d);
}

void write_schedule(struct tether_store_worker *sw)
{
    if (!sw->closing && sw->flush_ev && !TAILQ_EMPTY(&sw->order))
        event_active(sw->flush_ev, EV_TIMEOUT, 0);
}

void write_note(struct tether_store_worker *sw, enum tether_session_change what, const char *key,
                size_t len, uint64_t hash, const struct tether_session_info *info)
{
    if (sw->closing)
        return;
    struct dirty *d = entry(sw, key, len, hash);
    if (!d)
        return;
    switch (what) {
    case TETHER_SESSION_NOTE_CREATE:
        d->flags |= D_SYNC | D_CREATE | (info->state_len ? D_STATE : 0);
        break;
    case TETHER_SESSION_NOTE_UPDATE:
        d->flags |= D_SYNC;
        break;
    case TETHER_SESSION_NOTE_STATE:
        d->flags |= D_SYNC | D_STATE;
        break;
    case TETHER_SESSION_NOTE_MOVE:
        /* Several moves before a flush are one compare-and-set, from the
           epoch Redis held before the first (a record made here has none). */
        if (!(d->flags & (D_MOVE | D_CREATE)))
            d->base_epoch = info->epoch - 1;
        d->flags |= D_SYNC | D_MOVE;
        break;
    case TETHER_SESSION_NOTE_END:
        /* What the ended record still had to write is moot; a record made
           anew under the key afterwards writes after the end. */
        if (!(d->flags & D_END)) {
            d->end_backend = info->backend;
            d->end_epoch = info->epoch;
        }
        d->flags = D_END;
        break;
    }
    write_schedule(sw);
}

void write_requeue(struct tether_store_worker *sw, const struct dirty *w)
{
    if (sw->closing)
        return;
    struct dirty *d = entry(sw, w->key, w->node.len, w->node.hash);
    if (!d)
        return;
    /* The lost write is older than anything noted since: its base epoch and
       its end come first. */
    if (w->flags & (D_MOVE | D_CREATE)) {
        d->base_epoch = w->base_epoch;
        d->flags &= ~(unsigned)D_MOVE;
    }
    if (w->flags & D_END) {
        d->end_backend = w->end_backend;
        d->end_epoch = w->end_epoch;
    }
    d->flags |= w->flags;
    write_schedule(sw);
}

void write_move_from(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash,
                     uint32_t base)
{
    struct dirty *d = entry(sw, key, len, hash);
    if (!d)
        return;
    d->flags = (d->flags & (D_END | D_STATE)) | D_SYNC | D_MOVE;
    d->base_epoch = base;
    write_schedule(sw);
}

static void num(char *buf, uint64_t v)
{
    snprintf(buf, 24, "%" PRIu64, v);
}

static int send_end(struct tether_store_worker *sw, const struct dirty *d)
{
    struct tether_store *st = sw->st;
    const char *backend = store_backend_name(st, d->end_backend);
    if (!backend)
        return 0;
    char rkey[STORE_MAX_RKEY], epoch[24];
    num(epoch, d->end_epoch);
    const char *argv[] = {"EVALSHA", st->sha_end, "1", rkey, backend, epoch};
    size_t lens[6] = {
        7, 40, 1, store_rkey(st, d->key, d->node.len, rkey), strlen(backend), strlen(epoch)};
    struct cmd *c = link_send(&sw->data, CMD_END, 6, argv, lens);
    if (!c)
        return -1;
    c->w = *d;
    c->w.node.key = c->w.key;
    c->w.flags = D_END;
    return 0;
}

static int send_sync(struct tether_store_worker *sw, const struct dirty *d)
{
    struct tether_store *st = sw->st;
    struct tether_session_info in;
    if (tether_session_get(st->table, d->key, d->node.len, d->node.hash, &in) < 0)
        return 0; /* gone since: its end (if any) says what Redis must know */
    const char *backend = store_backend_name(st, in.backend);
    const char *from = in.handoff ? store_backend_name(st, in.moved_from) : "";
    if (!backend)
        return 0;
    if (!from)
        from = "";
    uint64_t now = tether_now_ms();
    struct tether_session_info live = in, prov = in;
    live.provisional = false;
    prov.provisional = true;
    char rkey[STORE_MAX_RKEY], ttl[24], ttl_prov[24], base[24], epoch[24], created[24], seen[24],
        requests[24];
    num(ttl, store_ttl_ms(st, &live, now));
    num(ttl_prov, store_ttl_ms(st, &prov, now));
    num(base, d->flags & D_MOVE ? d->base_epoch : 0);
    num(epoch, in.epoch);
    num(created, store_to_wall(in.created_ms));
    num(seen, store_to_wall(in.last_seen_ms));
    num(requests, in.requests);
    int state = 0;
    bool has_state = false;
    if (d->flags & (D_STATE | D_CREATE)) {
        state = store_state_copy(sw, d->key, d->node.len, d->node.hash);
        has_state = state >= 0 && (state > 0 || (d->flags & D_STATE));
        if (state < 0)
            state = 0;
    }
    bool create = d->flags & (D_CREATE | D_MOVE | D_STATE);
    size_t rlen = store_rkey(st, d->key, d->node.len, rkey);
    const char *argv[21] = {"EVALSHA",
                            st->sha_sync,
                            "1",
                            rkey,
                            ttl,
                            base,
                            backend,
                            epoch,
                            created,
                            seen,
                            requests,
                            in.provisional ? "1" : "0",
                            in.handoff ? "1" : "0",
                            from,
                            has_state ? "1" : "0",
                            sw->state_buf,
                            create ? "1" : "0",
                            st->channel,
                            st->origin,
                            d->key,
                            ttl_prov};
    size_t lens[21];
    for (size_t i = 0; i < 21; i++)
        lens[i] = i == 3 ? rlen : i == 15 ? (size_t)state : i == 19 ? d->node.len : strlen(argv[i]);
    struct cmd *c = link_send(&sw->data, CMD_SYNC, 21, argv, lens);
    if (!c)
        return -1;
    c->backend = in.backend;
    c->epoch = in.epoch;
    c->w = *d;
    c->w.node.key = c->w.key;
    c->w.flags = d->flags & ~(unsigned)D_END;
    return 0;
}

void write_on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct tether_store_worker *sw = arg;
    struct dirty *d;
    while ((d = TAILQ_FIRST(&sw->order)) && link_can_send(&sw->data)) {
        if ((d->flags & D_END) && send_end(sw, d) < 0)
            break;
        d->flags &= ~(unsigned)D_END;
        if ((d->flags & D_SYNC) && send_sync(sw, d) < 0)
            break;
        forget(sw, d);
    }
    store_check_drained(sw);
}

void write_on_reply(struct cmd *c, redisReply *r)
{
    struct tether_store_worker *sw = c->l->sw;
    struct tether_store *st = sw->st;
    if (sw->closing)
        return;
    if (!r) {
        write_requeue(sw, &c->w);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (link_reply_error(c->l, r, c->kind == CMD_END ? "end" : "write"))
            write_requeue(sw, &c->w);
        return;
    }
    if (c->kind == CMD_END) {
        atomic_fetch_add(&st->writes, 1);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        link_reply_error(c->l, NULL, "write: unexpected reply");
        return;
    }
    switch (r->element[0]->integer) {
    case 2:
        /* A move made here without a state of its own to write: the state
           Redis holds is the latest any tetherd saw (ours was written), and
           is what the new home should get from here on. */
        if (!(c->w.flags & D_STATE) && r->elements >= 2 &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len)
            tether_session_set_state(st->table, c->w.key, c->w.node.len, c->w.node.hash, c->backend,
                                     c->epoch, r->element[1]->str, r->element[1]->len);
        /* fall through */
    case 1:
        atomic_fetch_add(&st->writes, 1);
        break;
    case 3: /* Redis lost it (expired, restarted): write it whole */
        c->w.flags |= D_SYNC | D_CREATE | D_STATE;
        write_requeue(sw, &c->w);
        break;
    case 0:
        if (r->elements < 2 ||
            claim_adopt_fields(sw, c->w.key, c->w.node.len, c->w.node.hash, r->element[1]) < 0)
            link_reply_error(c->l, NULL, "write: not a session record");
        break;
    default:
        link_reply_error(c->l, NULL, "write: unexpected reply");
    }
}

void write_deinit(struct tether_store_worker *sw)
{
    struct dirty *d;
    while ((d = TAILQ_FIRST(&sw->order)))
        forget(sw, d);
    keymap_deinit(&sw->dirty);
}
