/*
 * Private to the proxy module: the client connection, the upstream
 * connection and the per-worker pool, and the calls between client.c,
 * upstream.c, rewrite.c and accesslog.c.
 *
 * Everything here belongs to one worker thread. A client connection has at
 * most one request in progress (pipelined requests wait, unparsed, in its
 * input buffer) and at most one upstream connection attached to it.
 */
#ifndef TETHER_PROXY_INT_H
#define TETHER_PROXY_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "tether/http.h"
#include "tether/net.h"
#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/tls.h"

/* Bytes queued toward a peer before we stop reading from the other side. */
#define TETHER_PROXY_HIGH_WATER (256 * 1024)
/* Largest response head accepted from a backend. */
#define TETHER_PROXY_MAX_RESPONSE_HEAD (64 * 1024)
/* Idle upstream connections kept per backend and worker, and for how long. */
#define TETHER_PROXY_POOL_MAX 256
#define TETHER_PROXY_POOL_IDLE_MS 30000
/* How long a closing connection reads and discards before the final close. */
#define TETHER_PROXY_LINGER_MS 2000
/* Interim (1xx) responses relayed for one request before it is a 502. */
#define TETHER_PROXY_MAX_INTERIM 16
/* Longest session key (DESIGN.md step 3). */
#define TETHER_PROXY_MAX_KEY 256
/* affinity_route(): the request waits for the state store's claim. */
#define AFFINITY_WAIT (-1)

enum conn_state {
    C_HEAD,      /* waiting for (the rest of) a request head */
    C_ACTIVE,    /* a request is in progress */
    C_TUNNEL,    /* after 101: bytes relayed both ways */
    C_LINGER,    /* response flushed, write side shut, draining input */
};

enum conn_timer {
    T_NONE,
    T_HEADER,    /* client_header: the head must be complete by then */
    T_IDLE,      /* client_idle: keep-alive connection without a request */
    T_LINGER,
    T_PEEK,      /* TLS listener: waiting for the first byte (the timer is an fd event) */
    T_HANDSHAKE, /* handshake_timeout: the TLS handshake must be done by then */
    T_TUNNEL,    /* backend_idle without a byte either way ends a tunnel */
};

enum up_state {
    U_CONNECTING,
    U_HEAD,      /* request sent (or being sent), waiting for the response head */
    U_BODY,      /* relaying the response body */
    U_TUNNEL,
    U_IDLE,      /* in the pool */
};

struct upstream;
struct evbuffer;

struct conn {
    TAILQ_ENTRY(conn) link;
    struct tether_proxy_worker *w;
    struct tether_stream *bev;
    struct upstream *up;
    struct event timer;
    enum conn_timer timer_mode;
    enum conn_state state;
    bool tls;
    int fd;                      /* until the stream exists (TLS listeners peek first) */
    uint64_t handshake_ms;       /* TLS listeners: handshake_timeout */
    uint64_t hsts_s;             /* TLS listeners: HSTS max-age, 0 = none */
    bool hsts_subdomains;
    struct tether_tls_server *tls_srv;
    SSL *ssl;                    /* borrowed from bev on TLS listeners */
    bool handshaking;            /* the TLS handshake is under way */
    char peer[46];

    size_t head_scanned;         /* input bytes already looked at for the next head */

    /* The request in progress. */
    char *head;                  /* the head as sent upstream (kept for a retry) */
    size_t head_len, head_cap;
    enum tether_http_body req_body;
    uint64_t req_left;           /* LENGTH: body bytes still to forward */
    struct tether_http_chunked req_chunk;
    bool req_done;               /* the whole request is forwarded */
    bool keepalive;              /* the client wants the connection kept */
    bool head_method;
    bool upgrade;
    bool idempotent;
    int minor;
    int backend;                 /* index in proxy->backends */
    unsigned attempts;           /* connect attempts on the current backend */
    unsigned moves;              /* session moves this request followed */
    unsigned interim;            /* 1xx responses relayed */
    uint64_t last_io_ms;         /* tunnel: last byte either way */
    bool retried_reuse;          /* already retried after a reused connection died */
    bool hold_body;              /* body bytes sent are kept in held, for that retry */
    struct evbuffer *held;
    bool resp_started;           /* a byte of the response reached the client output */
    bool resp_done;
    bool close_after;            /* close once the response is complete */
    bool read_eof;               /* the client half-closed: answer what it sent, then close */
    bool aborting;               /* closing without lingering once output is flushed */
    bool done_reading;           /* closing after a whole exchange: no lingering if nothing more came */

    /* The request's session: a copy of the key, never a record pointer. */
    char key[TETHER_SESSION_MAX_KEY];
    size_t key_len;
    uint32_t epoch;
    uint64_t created_ms;         /* the record acquired (a release names it) */
    bool session;                /* acquired in the table: release at the end */
    bool minted;                 /* a new key: set the cookie on the response */
    bool delete_learned;         /* DELETE with the learn header: 2xx/404 ends it */
    bool handoff;                /* moved: send the state and moved-from */
    uint32_t moved_from;
    struct tether_store_waiter waiter; /* waiting for a claim (its head unparsed) */
    bool claimed;                /* the claim ended: route without asking again */

    /* For the access log. */
    char method[16];
    char path[256];
    size_t path_len;
    bool has_key;
    uint64_t key_hash;
    uint64_t t_start;            /* µs, monotonic */
    uint64_t t_upstream;         /* µs, when the request went upstream */
    uint64_t t_first_byte;       /* µs, when the response head arrived */
    int status;
    uint64_t bytes_out;          /* response bytes sent to the client */
};

struct upstream {
    TAILQ_ENTRY(upstream) link;
    struct tether_proxy_worker *w;
    struct tether_stream *bev;
    SSL *ssl;                    /* borrowed from bev when the backend speaks TLS */
    struct conn *c;              /* NULL while pooled */
    int backend;
    uint32_t gen;                /* the backend slot's generation at connect */
    enum up_state state;
    bool reused;                 /* taken from the pool for this request */
    bool got_bytes;              /* any response byte arrived for this request */
    bool keepalive;              /* the backend allows reuse after this response */
    bool rechunk;                /* a close-delimited body sent to the client chunked */
    enum tether_http_body body;
    uint64_t left;
    struct tether_http_chunked chunk;
};

TAILQ_HEAD(conn_list, conn);
TAILQ_HEAD(upstream_list, upstream);

struct pool {
    struct upstream_list idle;
    unsigned nidle;
};

struct tether_proxy_worker {
    struct tether_proxy *proxy;
    const struct tether_config *cfg; /* the proxy's, as of this worker's last reload */
    struct tether_tls_server *const *tls; /* the contexts of cfg's listeners, taken with it */
    struct event_base *base;
    struct tether_stream_loop *loop;
    int id;
    struct conn_list conns;
    size_t nconns;
    struct pool *pools;          /* one per backend */
    uint32_t *scratch_inflight;  /* per backend, for the least-in-flight pick */
    struct tether_placer *placer; /* for the bounded-load pick */
    struct tether_store_worker *store; /* redis store: this worker's connection; else NULL */
    struct event *sweep;         /* session expiry for this worker's shards */
    unsigned char *scratch_up;
    bool stopping;
    void (*drained)(void *);
    void *drained_arg;
};

/* client.c */
void conn_upstream_ready(struct conn *c);
void conn_forward_request_body(struct conn *c);
void conn_response_done(struct conn *c);
void conn_error(struct conn *c, int status, const char *what);
void conn_abort(struct conn *c);
void conn_start_tunnel(struct conn *c);
void conn_upstream_failed(struct conn *c, int status, const char *what, bool retryable);
void conn_retry_elsewhere(struct conn *c, int status, const char *what, bool retryable);
void conn_on_timer(evutil_socket_t fd, short what, void *arg);
void conn_resume_request(struct conn *c);

/* upstream.c */
int upstream_attach(struct conn *c);
void upstream_release(struct upstream *u, bool reusable);
void upstream_start_request(struct upstream *u);
void upstream_resume(struct upstream *u);
void upstream_tunnel_client_closed(struct upstream *u);
void upstream_pool_free(struct tether_proxy_worker *w);

/* rewrite.c: the head sent upstream and the head sent to the client. */
int rewrite_request(struct conn *c, const struct tether_http_request *req);
int rewrite_response(struct conn *c, struct upstream *u, const struct tether_http_response *res,
                     struct evbuffer *out);
int header_is_hop_by_hop(const char *name, size_t len);
/* The Strict-Transport-Security line of c's listener, CRLF included, into buf
   (at least TETHER_PROXY_HSTS_MAX bytes); returns its length, 0 when none. */
#define TETHER_PROXY_HSTS_MAX 96
size_t rewrite_hsts(const struct conn *c, char *buf);

/* accesslog.c */
void accesslog_write(struct conn *c);

/* proxy.c */
int proxy_pick_least(struct tether_proxy_worker *w);

/* affinity.c */
int affinity_route(struct conn *c, const struct tether_http_request *req, const char **why);
void affinity_release(struct conn *c);
void affinity_on_response(struct conn *c, int backend, const struct tether_http_response *res);
int affinity_set_cookie(const struct conn *c, char *buf, size_t cap);
int affinity_reroute(struct conn *c);
void affinity_cancel(struct conn *c);
void affinity_write_headers(struct conn *c, struct evbuffer *out);

#endif
