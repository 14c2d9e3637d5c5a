/*
 * Private to the state module: the Redis sidecar's structures and the
 * calls between store.c (the store, its workers, the table's watcher,
 * status), link.c (connections: setup, reconnects, the watchdog, the
 * subscriber), write.c (write-behind: the dirty queue, its flush, replies)
 * and claim.c (claims of locally unknown keys), with lua.c (the scripts
 * and reading records out of replies) and keymap.c.
 *
 * Threads: everything under a struct tether_store_worker belongs to its
 * worker's thread and event_base; the struct tether_store is shared, and
 * what other threads read of it is atomic (or under detail_lock).
 */
#ifndef TETHER_STATE_STORE_INT_H
#define TETHER_STATE_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/async.h>

#include "tether/config.h"
#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/state.h"

struct tether_proxy;
struct tether_placer;
struct redisReply;

/* Commands sent and not yet answered, per connection: past it writes wait
   in the dirty queue (where they coalesce) and claims stop waiting. */
#define STORE_WINDOW 1024
/* A connection (and its AUTH and script loads) must be ready within this. */
#define STORE_CONNECT_TIMEOUT_MS 2000
/* A connection whose oldest command is unanswered for this long (or for
   twice claim_timeout, if longer) is dropped. */
#define STORE_REPLY_TIMEOUT_MS 5000
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 5000
/* An error reply keeps the store reported unhealthy for this long. */
#define STORE_ERROR_HOLD_MS 10000
/* Room for "<prefix>s:<key>": a prefix is at most 64 bytes. */
#define STORE_MAX_RKEY (64 + 2 + TETHER_SESSION_MAX_KEY)

/* ---- keymap.c: a chained hash of keys, grown by doubling ---- */

struct keynode {
    struct keynode *next;
    uint64_t hash;
    const char *key; /* borrowed from the structure the node is in */
    size_t len;
};

struct keymap {
    struct keynode **b;
    size_t nb; /* a power of two, or 0 */
    size_t n;
};

struct keynode *keymap_find(const struct keymap *m, const char *key, size_t len, uint64_t hash);
/* Returns 0 or -ENOMEM (n is not added then). */
int keymap_add(struct keymap *m, struct keynode *n);
void keymap_del(struct keymap *m, struct keynode *n);
void keymap_deinit(struct keymap *m);

/* ---- a connection ---- */

enum link_state { L_DOWN, L_CONNECTING, L_READY };

struct cmd;
TAILQ_HEAD(cmd_list, cmd);

struct link {
    struct tether_store_worker *sw;
    redisAsyncContext *ac;        /* NULL while down */
    bool subscriber;              /* the connection for <prefix>moves */
    _Atomic int state;            /* enum link_state; read by status */
    _Atomic bool stalled;         /* the oldest command waits past claim_timeout */
    _Atomic uint64_t since_ms;    /* wall clock of the last state change */
    uint64_t started_ms;          /* when the connection attempt began */
    unsigned setup_left;          /* setup replies (AUTH, script loads) still due */
    uint64_t backoff_ms;
    bool was_ready;               /* for logging transitions once */
    struct event *retry;          /* backoff */
    struct event *watchdog;       /* connect and reply timeouts, stalls */
    struct cmd_list sent;         /* oldest first: Redis answers in order */
    size_t nsent;
};

/* ---- writes ---- */

/* What a dirty key needs written. */
#define D_SYNC 0x1   /* the record's fields (a use, a confirmation, a handoff done) */
#define D_STATE 0x2  /* ... with its state blob */
#define D_CREATE 0x4 /* made here: Redis may hold another binding (then it wins) */
#define D_MOVE 0x8   /* moved here: compare-and-set from base_epoch */
#define D_END 0x10   /* ended at (end_backend, end_epoch) */

struct dirty {
    struct keynode node;
    TAILQ_ENTRY(dirty) link;
    unsigned flags;
    uint32_t base_epoch;
    uint32_t end_backend;
    uint32_t end_epoch;
    char key[TETHER_SESSION_MAX_KEY];
};

TAILQ_HEAD(dirty_list, dirty);

/* A change noted from a thread that is not a store worker's. */
struct inbox_note {
    enum tether_session_change what;
    uint64_t hash;
    struct tether_session_info info;
    uint16_t len;
    char key[TETHER_SESSION_MAX_KEY];
};

/* ---- claims ---- */

struct claim {
    struct keynode node;
    struct tether_store_worker *sw;
    struct event timer; /* claim_timeout, pending while timed */
    bool timed;
    TAILQ_HEAD(, tether_store_waiter) waiters;
    struct tether_session_info mine; /* what the claim stores if Redis holds nothing */
    int proposal;     /* the backend proposed (reserved while waiting) */
    bool reserved;
    bool in_map;      /* waiters may still join */
    bool answered;    /* the waiters have been let go */
    bool sent;        /* a command holds it until its reply */
    char key[TETHER_SESSION_MAX_KEY];
};

/* ---- one command in flight ---- */

enum cmd_kind { CMD_SETUP, CMD_CLAIM, CMD_SYNC, CMD_END };

struct cmd {
    TAILQ_ENTRY(cmd) link;
    struct link *l;
    enum cmd_kind kind;
    uint64_t sent_ms;
    struct claim *claim;  /* CMD_CLAIM */
    struct dirty w;       /* CMD_SYNC, CMD_END: what to requeue if it is lost */
    uint32_t backend;     /* CMD_SYNC: the binding written */
    uint32_t epoch;
};

/* ---- the store and its workers ---- */

struct tether_store_worker {
    struct tether_store *st;
    struct event_base *base; /* borrowed: the worker's */
    int id;
    struct tether_placer *placer;
    struct link data;
    struct link *sub;        /* worker 0 only */
    struct keymap dirty;
    struct dirty_list order; /* oldest change first */
    struct keymap claims;
    TAILQ_HEAD(, tether_store_waiter) ready; /* claims ended: to be resumed */
    struct event *flush_ev;
    struct event *resume_ev;
    struct event *inbox_ev;
    struct event *start_ev;  /* connects once the worker's loop runs */
    pthread_mutex_t inbox_lock;
    struct inbox_note *inbox;
    size_t ninbox, inbox_cap;
    int inbox_fd[2];
    char *state_buf;         /* a state blob as copied out, grown on demand */
    size_t state_cap;
    void (*drained)(void *);
    void *drained_arg;
    bool closing;
    uint64_t logged_ms[4];   /* rate limits, see store_log_limited() */
};

struct tether_store;
/* The running config: a reload replaces it, so it is read per use, never kept. */
#define store_cfg(st) (atomic_load(&(st)->proxy->cfg))

/* Copy key's state blob into sw->state_buf (grown to fit). Length, or < 0. */
int store_state_copy(struct tether_store_worker *sw, const char *key, size_t len,
                     uint64_t hash);

struct tether_store {
    struct tether_proxy *proxy; /* borrowed */
    struct tether_session_table *table;
    char host[256];
    int port;
    char *password;             /* NULL: no AUTH */
    const char *prefix;         /* borrowed from the config */
    size_t prefix_len;
    char channel[80];           /* <prefix>moves */
    char origin[17];            /* this process, in the moves it publishes */
    char sha_claim[41], sha_sync[41], sha_end[41];
    uint64_t touch_ms;
    struct tether_store_worker **workers;
    size_t nworkers;
    _Atomic uint32_t *reserved; /* per backend: claims in flight proposing it */
    size_t nreserved;
    _Atomic bool closing;
    bool ran;                   /* a worker was made: tell the counters at the end */

    _Atomic uint64_t queue;     /* dirty keys, all workers */
    _Atomic uint64_t claims, claim_timeouts, reconciles, write_errors, reconnects, dropped;
    _Atomic uint64_t writes, moves_applied, unknown_backends;
    _Atomic uint64_t error_ms;  /* wall clock of the last error reply */
    pthread_mutex_t detail_lock;
    char error[160];            /* the last error reply or connection failure */
};

/* store.c */
enum store_limit { LIM_ERROR, LIM_QUEUE, LIM_UNKNOWN, LIM_STALL };
bool store_log_limited(struct tether_store_worker *sw, enum store_limit which);
void store_set_error(struct tether_store *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int store_backend_index(const struct tether_store *st, const char *name, size_t len);
const char *store_backend_name(const struct tether_store *st, uint32_t b);
uint64_t store_ttl_ms(const struct tether_store *st, const struct tether_session_info *in,
                      uint64_t now_ms);
void store_check_drained(struct tether_store_worker *sw);

/* link.c */
void link_init(struct link *l, struct tether_store_worker *sw, bool subscriber);
void link_start(struct link *l);
void link_deinit(struct link *l);
/* Send argv as one command; NULL when it could not be queued (down). */
struct cmd *link_send(struct link *l, enum cmd_kind kind, int argc, const char **argv,
                      const size_t *argvlen);
void link_done(struct cmd *c);  /* c was answered: off the list, freed */
bool link_can_wait(const struct link *l);
bool link_can_send(const struct link *l);
/* Count and report an error reply (r may be NULL for one that is not ours). Returns
   true when it asks for the command again on a new connection (the scripts were flushed). */
bool link_reply_error(struct link *l, const struct redisReply *r, const char *what);

/* write.c */
void write_note(struct tether_store_worker *sw, enum tether_session_change what,
                const char *key, size_t len, uint64_t hash,
                const struct tether_session_info *info);
void write_requeue(struct tether_store_worker *sw, const struct dirty *d);
/* Write key's record as a move from base (Redis' epoch), whatever was noted. */
void write_move_from(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash,
                     uint32_t base);
void write_schedule(struct tether_store_worker *sw);
void write_on_reply(struct cmd *c, struct redisReply *r);
void write_deinit(struct tether_store_worker *sw);
void write_on_flush(evutil_socket_t fd, short what, void *arg);

/* claim.c */
void claim_on_reply(struct cmd *c, struct redisReply *r);
void claim_deinit(struct tether_store_worker *sw);
void claim_on_resume(evutil_socket_t fd, short what, void *arg);
/*
 * Take a record Redis returned (HGETALL pairs) as the binding of key; one
 * naming a backend not configured here is placed locally and written over.
 * Returns what tether_session_adopt() returned, or -EINVAL for a reply
 * that is not a record of ours.
 */
int claim_adopt_fields(struct tether_store_worker *sw, const char *key, size_t len, uint64_t hash,
                       const struct redisReply *fields);

/* lua.c */
extern const char store_lua_claim[], store_lua_sync[], store_lua_end[];
int store_sha1_hex(const char *text, char out[41]);

/* A session record as Redis holds it, viewed in a reply. */
struct rrecord {
    const char *backend;
    size_t backend_len;
    const char *moved_from;
    size_t moved_from_len;
    const char *state;          /* NULL: none */
    size_t state_len;
    uint64_t epoch, created, last_seen, requests;
    bool provisional, handoff;
};
/* Read HGETALL's flat array. Returns 0, or -EINVAL when it is not a record of ours. */
int rrecord_parse(const struct redisReply *r, struct rrecord *out);
/* Wall-clock ms of a tether_now_ms() instant and back. */
uint64_t store_to_wall(uint64_t mono_ms);
uint64_t store_to_mono(uint64_t wall_ms);

/* Build "<prefix>s:<key>" into buf (STORE_MAX_RKEY). Returns its length. */
size_t store_rkey(const struct tether_store *st, const char *key, size_t len, char *buf);

/* The calling thread's store worker, if it is one. */
extern _Thread_local struct tether_store_worker *store_current;

#endif
