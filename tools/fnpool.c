/*
 * fnpool: a pool of stateful "function instances", tether's demo backend and the backend of its
 * integration tests. Each instance is one process serving HTTP/1.1 and WebSocket on libevent
 * bufferevents, with a counter per session that it hands over through tether's state handoff
 * (x-fc-session-state). `fnpool -h` lists the endpoints and the PID file's format.
 */

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#define HEAD_MAX (64 * 1024)   /* request head with its blank line; longer: 431 */
#define IN_HIGH (256 * 1024)   /* stop reading while this much input waits */
#define OUT_HIGH (1024 * 1024) /* stop producing while this much output waits */
#define CHUNK_LINE_MAX 1024    /* a chunk-size or trailer line */
#define KEY_MAX 256            /* session ids, as in tether */
#define MAX_CONNS 10000        /* per instance; beyond, new connections are closed */
#define SESS_MAX 1000000       /* sessions per instance; beyond, new ones get 503 */
#define WS_MAX 100             /* concurrent WebSockets per instance */
#define WS_FRAME_MAX (16 * 1024 * 1024)
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define MCP_INIT "\"initialize\"" /* in a POST /mcp body without a session: mint one */
#define FNV_INIT 2166136261u
#define CL_CHUNKED (-1)
#define CL_NONE (-2)

static const char usage_text[] =
    "usage: fnpool [-n N] [-p BASE_PORT] [-f PIDFILE] [--first K] [--prefix P] [-v]\n"
    "\n"
    "Runs N stateful function instances, one process each: instance i (from 0) listens on\n"
    "127.0.0.1:BASE_PORT+i and is named P<K+i>. Stays in the foreground; SIGTERM or SIGINT\n"
    "stops every instance; an instance that dies is reported, never restarted. The PID file is\n"
    "written once every port accepts, one line per instance: NAME PID PORT.\n"
    "SIGUSR1 to an instance toggles its /healthz between 200 and 503.\n"
    "\n"
    "  -n N          instances (default 4)\n"
    "  -p BASE_PORT  port of the first instance (default 9001)\n"
    "  -f PIDFILE    write the PID file (removed at exit)\n"
    "  --first K     number of the first instance (default 1)\n"
    "  --prefix P    name prefix (default fn-)\n"
    "  -v            log every response on stderr\n"
    "\n"
    "Every response carries x-fc-instance: NAME. A request with x-fc-session-id counts on that\n"
    "session (all paths but /healthz and /stats) and its response carries\n"
    "x-fc-session-state: base64(\"count=N\"); a request carrying that header first raises the\n"
    "counter to N (the handoff after a move).\n"
    "  /                 instance=NAME session=ID|- count=N (any unlisted path too)\n"
    "  /echo             the request head exactly as received\n"
    "  /body             len=BYTES sum=HEX8: FNV-1a 32 of the body (Content-Length or chunked)\n"
    "  /stream?n=5&delay_ms=400   chunked text/event-stream, \"data: i\" every delay_ms\n"
    "  /sleep?ms=1000    answer after ms\n"
    "  /stall?after=10   Content-Length: 1000, send `after` bytes, then silence\n"
    "  /die?after=10     Content-Length: 1000, send `after` bytes, then close\n"
    "  /status?code=C    status C, 100 < C < 600 (a 1xx comes as an interim before a 200)\n"
    "  /end              like /, with x-fc-session-end: 1, and forgets the session\n"
    "  /mcp              a POST with \"initialize\" and no mcp-session-id gets a new\n"
    "                    Mcp-Session-Id; requests with mcp-session-id count under it;\n"
    "                    DELETE forgets it (404 if unknown)\n"
    "  /ws               WebSocket echo (RFC 6455); ping gets pong, close gets close\n"
    "  /healthz          ok, or 503 while toggled by SIGUSR1\n"
    "  /stats            name= connections= requests= active=. connections: TCP connections\n"
    "                    that carried a request other than /healthz; requests: all but\n"
    "                    /healthz and /stats; active: connections open now\n";

struct span {
    const char *p;
    size_t n;
};

enum route {
    R_ROOT,
    R_HEALTHZ,
    R_STATS,
    R_ECHO,
    R_BODY,
    R_STREAM,
    R_SLEEP,
    R_STALL,
    R_DIE,
    R_STATUS,
    R_END,
    R_MCP,
    R_WS
};

static const struct {
    const char *path;
    enum route route;
} routes[] = {
    {"/healthz", R_HEALTHZ}, {"/stats", R_STATS}, {"/echo", R_ECHO},   {"/body", R_BODY},
    {"/stream", R_STREAM},   {"/sleep", R_SLEEP}, {"/stall", R_STALL}, {"/die", R_DIE},
    {"/status", R_STATUS},   {"/end", R_END},     {"/mcp", R_MCP},     {"/ws", R_WS},
};

/* A parsed request head; every span points into conn.head. */
struct req {
    struct span method, target, path, query;
    int minor; /* HTTP/1.minor */
    enum route route;
    struct span sid, state, mcp, upgrade, ws_key, ws_version;
    bool has_cl, chunked, expect_continue, conn_close, conn_keep_alive, conn_upgrade;
    uint64_t cl;
};

enum cstate {
    S_HEAD,   /* waiting for a request head */
    S_BODY,   /* reading its body */
    S_WAIT,   /* the answer runs on a timer (/sleep, /stream) */
    S_STALL,  /* /stall: silent until the peer leaves */
    S_WS,     /* upgraded: WebSocket frames */
    S_FLUSH,  /* writing the last bytes before closing */
    S_LINGER, /* write side shut, draining input so the peer gets a FIN, not an RST */
};

enum body { B_NONE, B_LENGTH, B_CHUNK_SIZE, B_CHUNK_DATA, B_CHUNK_CRLF, B_TRAILER };

struct conn {
    struct bufferevent *bev;
    struct event *timer; /* made on the first /sleep or /stream */
    enum cstate state;
    bool keep_alive, head_only, read_eof, paused, counted, closed, is_ws;
    char *head; /* owned: the current request head, reused by the next request */
    size_t head_len, head_cap;
    struct req req;
    enum body body;
    uint64_t body_rem, body_len, trailer_len;
    uint32_t body_sum;
    size_t init_match; /* how much of MCP_INIT the /mcp body matched */
    bool has_sess;     /* the response reports sess_count in x-fc-session-state */
    uint64_t sess_count;
    uint64_t n, i, delay_ms; /* /stream and /sleep */
    uint64_t ws_rem;         /* payload bytes left in the data frame being echoed */
    unsigned char ws_mask[4];
    unsigned ws_pos;
    size_t lingered;
};

/* One instance per process, so its state is global. */
static struct {
    const char *name;
    struct event_base *base;
    bool verbose, unhealthy;
    uint64_t connections, requests;
    unsigned active, ws_active;
} inst;

struct sess {
    struct sess *next;
    uint64_t count;
    uint32_t hash;
    uint16_t len;
    char key[];
};

#define TAB_SIZE (1 << 16) /* buckets: chains stay short up to SESS_MAX */
static struct sess *tab[TAB_SIZE];
static size_t tab_used;

static void process_input(struct conn *c);

/* ---- small helpers ---- */

static uint32_t fnv1a(uint32_t h, const void *p, size_t n)
{
    const unsigned char *s = p;

    while (n--) {
        h ^= *s++;
        h *= 16777619u;
    }
    return h;
}

static bool span_ieq(struct span s, const char *lit)
{
    size_t n = strlen(lit);

    return s.n == n && strncasecmp(s.p, lit, n) == 0;
}

static struct span trim(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    return (struct span){p, (size_t)(e - p)};
}

/* Whether a comma-separated list (RFC 9110 5.6.1) holds tok, case-insensitively. */
static bool token_has(struct span list, const char *tok)
{
    const char *p, *end;

    if (!list.n)
        return false;
    for (p = list.p, end = list.p + list.n; p <= end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;

        if (span_ieq(trim(p, e), tok))
            return true;
        p = e + 1;
    }
    return false;
}

/* Parses 1 to 19 decimal digits (so no overflow). Returns 0, or -1 if p is anything else. */
static int parse_u64(const char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 0;
}

/* Reads query parameter key: def when absent; returns -1 if malformed or above max. */
static int query_u64(const struct req *r, const char *key, uint64_t def, uint64_t max,
                     uint64_t *out)
{
    size_t kn = strlen(key);
    const char *p, *end;

    *out = def;
    if (!r->query.n)
        return 0;
    for (p = r->query.p, end = r->query.p + r->query.n; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;

        if ((size_t)(e - p) > kn && memcmp(p, key, kn) == 0 && p[kn] == '=') {
            if (parse_u64(p + kn + 1, (size_t)(e - p) - kn - 1, out) < 0 || *out > max)
                return -1;
            return 0;
        }
        p = e + 1;
    }
    return 0;
}

/* ---- sessions ---- */

/* Returns the session named key, creating it (count 0) if create is set; NULL if absent, or if
 * the table is full or memory is short. */
static struct sess *sess_get(struct span key, bool create)
{
    uint32_t h = fnv1a(FNV_INIT, key.p, key.n);
    struct sess *s;

    for (s = tab[h % TAB_SIZE]; s; s = s->next)
        if (s->hash == h && s->len == key.n && memcmp(s->key, key.p, key.n) == 0)
            return s;
    if (!create || tab_used >= SESS_MAX || !(s = malloc(sizeof(*s) + key.n)))
        return NULL;
    s->count = 0;
    s->hash = h;
    s->len = (uint16_t)key.n;
    memcpy(s->key, key.p, key.n);
    s->next = tab[h % TAB_SIZE];
    tab[h % TAB_SIZE] = s;
    tab_used++;
    return s;
}

static void sess_del(struct sess *s)
{
    struct sess **pp = &tab[s->hash % TAB_SIZE];

    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    free(s);
    tab_used--;
}

/* Decodes a handoff state, base64 of "count=N". Returns 0, or -1 if it is anything else. */
static int state_decode(struct span b64, uint64_t *count)
{
    unsigned char in[64], out[48];
    int n;

    if (b64.n == 0 || b64.n > sizeof(in) || b64.n % 4)
        return -1;
    memcpy(in, b64.p, b64.n);
    n = EVP_DecodeBlock(out, in, (int)b64.n);
    /* EVP_DecodeBlock counts the bytes that padding stands for; take them back. */
    for (size_t i = b64.n; n > 0 && i > 0 && b64.p[i - 1] == '='; i--)
        n--;
    if (n < 7 || memcmp(out, "count=", 6) != 0)
        return -1;
    return parse_u64((const char *)out + 6, (size_t)n - 6, count);
}

/* Returns session key after applying the handoff state the request carries, if any: it raises
 * the counter, never lowers it, so a session resumes where it left its old instance (and a session
 * this instance never saw becomes known). NULL if the session is unknown. */
static struct sess *sess_restore(struct conn *c, struct span key)
{
    struct sess *s = sess_get(key, false);
    uint64_t n;

    if (state_decode(c->req.state, &n) == 0 && (!s || s->count < n) &&
        (s || (s = sess_get(key, true))))
        s->count = n;
    return s;
}

/* Counts this request on session key (after the restore above); the response will report the
 * new count. Returns the session, or NULL when the table is full. */
static struct sess *sess_count(struct conn *c, struct span key)
{
    struct sess *s = sess_restore(c, key);

    if (!s && !(s = sess_get(key, true)))
        return NULL;
    s->count++;
    c->has_sess = true;
    c->sess_count = s->count;
    return s;
}

/* ---- responses ---- */

static const char *reason(int code)
{
    static const struct {
        int code;
        const char *text;
    } reasons[] = {{101, "Switching Protocols"},
                   {103, "Early Hints"},
                   {200, "OK"},
                   {204, "No Content"},
                   {304, "Not Modified"},
                   {400, "Bad Request"},
                   {404, "Not Found"},
                   {426, "Upgrade Required"},
                   {431, "Request Header Fields Too Large"},
                   {500, "Internal Server Error"},
                   {501, "Not Implemented"},
                   {502, "Bad Gateway"},
                   {503, "Service Unavailable"},
                   {504, "Gateway Timeout"}};

    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].code == code)
            return reasons[i].text;
    return "Status";
}

/* Writes a response head. clen is the Content-Length, CL_CHUNKED or CL_NONE; extra is NULL or
 * whole header lines ("Name: value\r\n"). */
static void send_head(struct conn *c, int status, const char *ctype, long long clen,
                      const char *extra)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nx-fc-instance: %s\r\n", status, reason(status),
                        inst.name);
    if (ctype)
        evbuffer_add_printf(out, "Content-Type: %s\r\n", ctype);
    if (clen >= 0)
        evbuffer_add_printf(out, "Content-Length: %lld\r\n", clen);
    else if (clen == CL_CHUNKED)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    if (c->has_sess) {
        char txt[32];
        unsigned char b64[48];
        int n = snprintf(txt, sizeof(txt), "count=%" PRIu64, c->sess_count);

        EVP_EncodeBlock(b64, (unsigned char *)txt, n);
        evbuffer_add_printf(out, "x-fc-session-state: %s\r\n", (char *)b64);
    }
    if (extra)
        evbuffer_add(out, extra, strlen(extra));
    if (!c->keep_alive)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (c->req.minor == 0)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
    evbuffer_add(out, "\r\n", 2);
    if (inst.verbose && c->req.method.n)
        fprintf(stderr, "%s %.*s %.*s %d\n", inst.name, (int)c->req.method.n, c->req.method.p,
                (int)c->req.target.n, c->req.target.p, status);
}

static void send_text(struct conn *c, int status, const char *extra, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sends a whole text/plain response (no body for 204 and 304, RFC 9110 15.3.5, 15.4.5). */
static void send_text(struct conn *c, int status, const char *extra, const char *fmt, ...)
{
    char body[768];
    bool empty = status == 204 || status == 304;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    else if ((size_t)n >= sizeof(body))
        n = sizeof(body) - 1;
    send_head(c, status, empty ? NULL : "text/plain", empty ? CL_NONE : n, extra);
    if (!empty && !c->head_only)
        evbuffer_add(bufferevent_get_output(c->bev), body, (size_t)n);
}

static void send_count(struct conn *c, struct span key, const char *extra)
{
    send_text(c, 200, extra, "instance=%s session=%.*s count=%" PRIu64 "\n", inst.name,
              key.n ? (int)key.n : 1, key.n ? key.p : "-", key.n ? c->sess_count : 0);
}

/* ---- connection teardown ---- */

static void on_free(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    bufferevent_free(c->bev);
    if (c->timer)
        event_free(c->timer);
    if (c->is_ws)
        inst.ws_active--;
    inst.active--;
    free(c->head);
    free(c);
}

/* Closes at once. The memory goes on the next loop turn, so callers up the stack may still read
 * c (and see c->closed). */
static void conn_close(struct conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
    if (c->timer)
        evtimer_del(c->timer);
    (void)event_base_once(inst.base, -1, EV_TIMEOUT, on_free, c, NULL);
}

/* Shuts the write side and reads until the peer closes (or 2s pass): closing with unread input
 * would send an RST that can destroy the response in flight. */
static void start_linger(struct conn *c)
{
    static const struct timeval tv = {2, 0};
    struct evbuffer *in = bufferevent_get_input(c->bev);

    c->state = S_LINGER;
    if (c->read_eof) {
        conn_close(c);
        return;
    }
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_set_timeouts(c->bev, &tv, NULL);
    bufferevent_enable(c->bev, EV_READ);
}

/* Closes once the output is written. */
static void conn_finish(struct conn *c)
{
    static const struct timeval tv = {30, 0};

    c->state = S_FLUSH;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        start_linger(c);
    else
        bufferevent_set_timeouts(c->bev, NULL, &tv);
}

/* A malformed request: answer and close, since the stream can no longer be trusted. */
static void fail(struct conn *c, int status, const char *msg)
{
    c->keep_alive = false;
    c->has_sess = false;
    send_text(c, status, NULL, "%s\n", msg);
    conn_finish(c);
}

static void response_done(struct conn *c)
{
    if (c->keep_alive)
        c->state = S_HEAD;
    else
        conn_finish(c);
}

static void arm_timer(struct conn *c, uint64_t ms);

/* ---- endpoints ---- */

static void do_stream_next(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    if (c->i < c->n) {
        char ev[40];
        int len = snprintf(ev, sizeof(ev), "data: %" PRIu64 "\n\n", ++c->i);

        if (c->req.minor)
            evbuffer_add_printf(out, "%x\r\n%s\r\n", (unsigned)len, ev);
        else
            evbuffer_add(out, ev, (size_t)len);
    }
    if (c->i < c->n) {
        arm_timer(c, c->delay_ms);
        return;
    }
    if (c->req.minor)
        evbuffer_add(out, "0\r\n\r\n", 5);
    response_done(c);
}

static void do_stream(struct conn *c)
{
    if (query_u64(&c->req, "n", 5, 100000, &c->n) < 0 ||
        query_u64(&c->req, "delay_ms", 400, 3600000, &c->delay_ms) < 0) {
        send_text(c, 400, NULL, "bad n or delay_ms\n");
        response_done(c);
        return;
    }
    /* HTTP/1.0 has no chunked coding: the close ends the stream. */
    if (c->req.minor == 0)
        c->keep_alive = false;
    send_head(c, 200, "text/event-stream", c->req.minor ? CL_CHUNKED : CL_NONE,
              "Cache-Control: no-cache\r\n");
    if (c->head_only) {
        response_done(c);
        return;
    }
    c->i = 0;
    c->state = S_WAIT;
    do_stream_next(c);
}

/* /stall and /die: promise 1000 bytes, send only `after`. */
static void do_partial(struct conn *c)
{
    char body[1000];
    uint64_t after;

    if (query_u64(&c->req, "after", 10, sizeof(body), &after) < 0) {
        send_text(c, 400, NULL, "bad after\n");
        response_done(c);
        return;
    }
    send_head(c, 200, "text/plain", sizeof(body), NULL);
    if (c->head_only) {
        response_done(c);
        return;
    }
    memset(body, 'x', after);
    evbuffer_add(bufferevent_get_output(c->bev), body, after);
    if (c->req.route == R_DIE)
        conn_finish(c);
    else
        c->state = S_STALL;
}

static void do_status(struct conn *c)
{
    uint64_t code;

    if (query_u64(&c->req, "code", 200, 599, &code) < 0 || code <= 101) {
        send_text(c, 400, NULL, "code must be 102..599\n");
    } else {
        /* A 1xx cannot end a request: send it as an interim response (RFC 9110 15.2), which
         * HTTP/1.0 clients must not get, then a final 200. */
        if (code < 200 && c->req.minor)
            evbuffer_add_printf(bufferevent_get_output(c->bev),
                                "HTTP/1.1 %d %s\r\nx-fc-instance: %s\r\n\r\n", (int)code,
                                reason((int)code), inst.name);
        if (code < 200)
            code = 200;
        send_text(c, (int)code, NULL, "status=%d\n", (int)code);
    }
    response_done(c);
}

static void do_mcp(struct conn *c)
{
    struct req *r = &c->req;
    struct span id = r->mcp;
    char minted[33], hdr[64];
    unsigned char rnd[16];
    struct sess *s;

    if (span_ieq(r->method, "DELETE")) {
        if (!id.n) {
            send_text(c, 400, NULL, "missing mcp-session-id\n");
        } else if (!(s = sess_restore(c, id))) {
            send_text(c, 404, NULL, "unknown session\n");
        } else {
            send_text(c, 200, "x-fc-session-end: 1\r\n", "instance=%s session=%.*s ended\n",
                      inst.name, (int)id.n, id.p);
            sess_del(s);
        }
        response_done(c);
        return;
    }
    hdr[0] = '\0';
    if (!id.n) {
        if (!span_ieq(r->method, "POST") || c->init_match < strlen(MCP_INIT)) {
            send_text(c, 400, NULL, "missing mcp-session-id\n");
            response_done(c);
            return;
        }
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            send_text(c, 500, NULL, "no randomness\n");
            response_done(c);
            return;
        }
        for (size_t i = 0; i < sizeof(rnd); i++)
            snprintf(minted + 2 * i, 3, "%02x", rnd[i]);
        snprintf(hdr, sizeof(hdr), "Mcp-Session-Id: %s\r\n", minted);
        id = (struct span){minted, 32};
    }
    if (!sess_count(c, id))
        send_text(c, 503, NULL, "session table full\n");
    else
        send_count(c, id, hdr[0] ? hdr : NULL);
    response_done(c);
}

static void do_ws_upgrade(struct conn *c)
{
    struct req *r = &c->req;
    unsigned char key[64], md[SHA_DIGEST_LENGTH], accept[32];
    char extra[128];

    if (!span_ieq(r->method, "GET") || r->minor != 1 || !r->conn_upgrade ||
        !token_has(r->upgrade, "websocket") || r->ws_key.n != 24 || c->body_len) {
        send_text(c, 400, NULL, "bad websocket handshake\n");
    } else if (!span_ieq(r->ws_version, "13")) {
        send_text(c, 426, "Sec-WebSocket-Version: 13\r\n", "websocket version 13 only\n");
    } else if (inst.ws_active >= WS_MAX) {
        send_text(c, 503, NULL, "too many websockets\n");
    } else {
        /* RFC 6455 4.2.2: the accept value proves the server read this handshake. */
        memcpy(key, r->ws_key.p, 24);
        memcpy(key + 24, WS_GUID, 36);
        SHA1(key, 60, md);
        EVP_EncodeBlock(accept, md, sizeof(md));
        snprintf(extra, sizeof(extra),
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
                 (char *)accept);
        c->keep_alive = true; /* the upgrade names its own Connection */
        send_head(c, 101, NULL, CL_NONE, extra);
        c->is_ws = true;
        inst.ws_active++;
        c->ws_rem = 0;
        c->state = S_WS;
        return;
    }
    response_done(c);
}

static void handle_request(struct conn *c)
{
    struct req *r = &c->req;
    struct sess *s = NULL;

    if (r->route == R_HEALTHZ) {
        send_text(c, inst.unhealthy ? 503 : 200, NULL, inst.unhealthy ? "unhealthy\n" : "ok\n");
        response_done(c);
        return;
    }
    if (r->route == R_STATS) {
        send_text(c, 200, NULL, "name=%s connections=%" PRIu64 " requests=%" PRIu64 " active=%u\n",
                  inst.name, inst.connections, inst.requests, inst.active);
        response_done(c);
        return;
    }
    inst.requests++;
    if (r->route == R_MCP) {
        do_mcp(c);
        return;
    }
    if (r->sid.n && !(s = sess_count(c, r->sid))) {
        send_text(c, 503, NULL, "session table full\n");
        response_done(c);
        return;
    }
    switch (r->route) {
    case R_ECHO:
        send_head(c, 200, "text/plain", (long long)c->head_len, NULL);
        if (!c->head_only)
            evbuffer_add(bufferevent_get_output(c->bev), c->head, c->head_len);
        break;
    case R_BODY:
        send_text(c, 200, NULL, "len=%" PRIu64 " sum=%08" PRIx32 "\n", c->body_len, c->body_sum);
        break;
    case R_STREAM:
        do_stream(c);
        return;
    case R_SLEEP:
        if (query_u64(r, "ms", 1000, 3600000, &c->delay_ms) < 0) {
            send_text(c, 400, NULL, "bad ms\n");
            break;
        }
        c->state = S_WAIT;
        arm_timer(c, c->delay_ms);
        return;
    case R_STALL:
    case R_DIE:
        do_partial(c);
        return;
    case R_STATUS:
        do_status(c);
        return;
    case R_WS:
        do_ws_upgrade(c);
        return;
    case R_END:
        send_count(c, r->sid, "x-fc-session-end: 1\r\n");
        if (s)
            sess_del(s);
        break;
    default:
        send_count(c, r->sid, NULL);
        break;
    }
    response_done(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    if (c->req.route == R_STREAM) {
        do_stream_next(c);
    } else {
        send_text(c, 200, NULL, "slept=%" PRIu64 "\n", c->delay_ms);
        response_done(c);
    }
    if (c->state == S_HEAD)
        process_input(c);
}

static void arm_timer(struct conn *c, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    if (!c->timer && !(c->timer = evtimer_new(inst.base, on_timer, c))) {
        conn_close(c);
        return;
    }
    evtimer_add(c->timer, &tv);
}

/* ---- request parsing ---- */

static bool is_tchar(unsigned char ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Session ids: what tether accepts (at most KEY_MAX visible ASCII bytes), or nothing. */
static bool key_ok(struct span k)
{
    if (k.n > KEY_MAX)
        return false;
    for (size_t i = 0; i < k.n; i++)
        if ((unsigned char)k.p[i] <= ' ' || (unsigned char)k.p[i] >= 0x7f)
            return false;
    return true;
}

static void set_once(struct span *field, struct span value)
{
    if (!field->p)
        *field = value;
}

/* Takes what this server acts on from one header field. Returns 0 or an error status. */
static int store_header(struct req *r, struct span name, struct span value)
{
    uint64_t n;

    if (span_ieq(name, "content-length")) {
        if (parse_u64(value.p, value.n, &n) < 0 || (r->has_cl && n != r->cl))
            return 400;
        r->has_cl = true;
        r->cl = n;
    } else if (span_ieq(name, "transfer-encoding")) {
        if (!span_ieq(value, "chunked"))
            return 501; /* RFC 9112 6.1: a coding we do not know */
        r->chunked = true;
    } else if (span_ieq(name, "connection")) {
        r->conn_close |= token_has(value, "close");
        r->conn_keep_alive |= token_has(value, "keep-alive");
        r->conn_upgrade |= token_has(value, "upgrade");
    } else if (span_ieq(name, "expect")) {
        r->expect_continue = span_ieq(value, "100-continue");
    } else if (span_ieq(name, "x-fc-session-id")) {
        set_once(&r->sid, value);
    } else if (span_ieq(name, "x-fc-session-state")) {
        set_once(&r->state, value);
    } else if (span_ieq(name, "mcp-session-id")) {
        set_once(&r->mcp, value);
    } else if (span_ieq(name, "upgrade")) {
        set_once(&r->upgrade, value);
    } else if (span_ieq(name, "sec-websocket-key")) {
        set_once(&r->ws_key, value);
    } else if (span_ieq(name, "sec-websocket-version")) {
        set_once(&r->ws_version, value);
    }
    return 0;
}

/* Parses c->head (a request line and fields, ending in CRLF CRLF) into c->req. Strict where
 * leniency would let a request be read two ways (RFC 9112 11.2). Returns 0 or an error status. */
static int parse_head(struct conn *c)
{
    struct req *r = &c->req;
    const char *p = c->head, *lim = c->head + c->head_len, *eol, *sp1, *sp2, *q;
    struct span t, v;

    eol = memmem(p, (size_t)(lim - p), "\r\n", 2);
    sp1 = memchr(p, ' ', (size_t)(eol - p));
    sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp2)
        return 400;
    r->method = (struct span){p, (size_t)(sp1 - p)};
    t = r->target = (struct span){sp1 + 1, (size_t)(sp2 - sp1 - 1)};
    v = (struct span){sp2 + 1, (size_t)(eol - sp2 - 1)};
    if (!r->method.n || !t.n || v.n != 8 || memcmp(v.p, "HTTP/1.", 7) != 0 ||
        (v.p[7] != '0' && v.p[7] != '1'))
        return 400;
    r->minor = v.p[7] - '0';
    for (q = r->method.p; q < sp1; q++)
        if (!is_tchar((unsigned char)*q))
            return 400;
    for (q = t.p; q < sp2; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 0x7f)
            return 400;
    q = memchr(t.p, '?', t.n);
    r->path = (struct span){t.p, q ? (size_t)(q - t.p) : t.n};
    if (q)
        r->query = (struct span){q + 1, (size_t)(t.p + t.n - q - 1)};

    for (p = eol + 2; (eol = memmem(p, (size_t)(lim - p), "\r\n", 2)) != p; p = eol + 2) {
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        int err;

        if (!colon || colon == p)
            return 400;
        /* this also refuses obs-fold and whitespace before the colon (RFC 9112 5.1, 5.2) */
        for (q = p; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return 400;
        v = trim(colon + 1, eol);
        for (q = v.p; q < v.p + v.n; q++)
            if (((unsigned char)*q < ' ' && *q != '\t') || *q == 0x7f)
                return 400;
        if ((err = store_header(r, (struct span){p, (size_t)(colon - p)}, v)))
            return err;
    }
    if (r->has_cl && r->chunked)
        return 400; /* RFC 9112 6.3: a smuggling vector */
    if (!key_ok(r->sid) || !key_ok(r->mcp))
        return 400;
    r->route = R_ROOT;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        if (r->path.n == strlen(routes[i].path) && !memcmp(r->path.p, routes[i].path, r->path.n))
            r->route = routes[i].route;
    return 0;
}

/* Moves a complete request head from the input into c->head. Returns 1 when it did, 0 when more
 * input is needed, -1 when the connection is closing. */
static int read_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_ptr end;
    unsigned char crlf[2];
    size_t len;

    /* RFC 9112 2.2: ignore empty lines before a request line. */
    while (evbuffer_copyout(in, crlf, 2) == 2 && crlf[0] == '\r' && crlf[1] == '\n')
        evbuffer_drain(in, 2);
    end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0 || end.pos + 4 > HEAD_MAX) {
        if (evbuffer_get_length(in) > HEAD_MAX) {
            fail(c, 431, "request head too large");
            return -1;
        }
        if (c->read_eof) {
            conn_finish(c);
            return -1;
        }
        return 0;
    }
    len = (size_t)end.pos + 4;
    if (len > c->head_cap) {
        /* two sizes: most heads fit the first */
        size_t cap = len <= 4096 ? 4096 : HEAD_MAX;
        char *h = realloc(c->head, cap);

        if (!h) {
            conn_close(c);
            return -1;
        }
        c->head = h;
        c->head_cap = cap;
    }
    evbuffer_remove(in, c->head, len);
    c->head_len = len;
    return 1;
}

static int begin_request(struct conn *c)
{
    struct req *r = &c->req;
    int err;

    memset(r, 0, sizeof(*r));
    c->has_sess = false;
    c->head_only = false;
    c->keep_alive = false;
    if ((err = parse_head(c))) {
        fail(c, err, err == 501 ? "unsupported transfer-encoding" : "bad request");
        return -1;
    }
    if (r->route != R_HEALTHZ && !c->counted) {
        c->counted = true;
        inst.connections++;
    }
    c->keep_alive = r->minor ? !r->conn_close : r->conn_keep_alive && !r->conn_close;
    c->head_only = span_ieq(r->method, "HEAD");
    c->body = r->chunked ? B_CHUNK_SIZE : r->cl ? B_LENGTH : B_NONE;
    c->body_rem = r->cl;
    c->body_len = c->trailer_len = 0;
    c->body_sum = FNV_INIT;
    c->init_match = 0;
    if (r->expect_continue && r->minor && c->body != B_NONE)
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->state = S_BODY;
    return 0;
}

/* Feeds n body bytes from the input to the hash (and, for /mcp, the "initialize" search), then
 * drops them: a body is never held whole. */
static void body_take(struct conn *c, struct evbuffer *in, size_t n)
{
    while (n > 0) {
        struct evbuffer_iovec v[8];
        int k = evbuffer_peek(in, (ev_ssize_t)n, NULL, v, 8);
        size_t done = 0;

        for (int j = 0; j < k && j < 8 && done < n; j++) {
            const unsigned char *p = v[j].iov_base;
            size_t len = v[j].iov_len < n - done ? v[j].iov_len : n - done;

            c->body_sum = fnv1a(c->body_sum, p, len);
            /* No prefix of MCP_INIT recurs inside it, so a mismatch restarts the match at this
             * byte (KMP with a trivial failure table). */
            for (size_t i = 0; c->req.route == R_MCP && i < len; i++)
                if (c->init_match < strlen(MCP_INIT))
                    c->init_match =
                        p[i] == MCP_INIT[c->init_match] ? c->init_match + 1 : p[i] == '"';
            done += len;
        }
        evbuffer_drain(in, done);
        c->body_len += done;
        n -= done;
    }
}

/* Reads the request body (RFC 9112 6, 7.1). Returns 1 when it is complete, 0 when more input is
 * needed, -1 when the connection is closing. */
static int read_body(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    char line[CHUNK_LINE_MAX];

    for (;;) {
        size_t avail = evbuffer_get_length(in), eol_len, i;
        struct evbuffer_ptr e;
        uint64_t size = 0;

        switch (c->body) {
        case B_NONE:
            return 1;
        case B_LENGTH:
        case B_CHUNK_DATA:
            body_take(c, in, avail < c->body_rem ? avail : c->body_rem);
            if (avail < c->body_rem) {
                c->body_rem -= avail;
                return 0;
            }
            c->body_rem = 0;
            c->body = c->body == B_LENGTH ? B_NONE : B_CHUNK_CRLF;
            break;
        case B_CHUNK_CRLF:
            if (avail < 2)
                return 0;
            evbuffer_remove(in, line, 2);
            if (line[0] != '\r' || line[1] != '\n')
                goto bad;
            c->body = B_CHUNK_SIZE;
            break;
        case B_CHUNK_SIZE:
        case B_TRAILER:
            e = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);
            if (e.pos < 0 && avail < sizeof(line))
                return 0;
            if (e.pos < 0 || (size_t)e.pos >= sizeof(line))
                goto bad;
            evbuffer_remove(in, line, (size_t)e.pos);
            evbuffer_drain(in, 2);
            if (c->body == B_TRAILER) {
                /* trailer fields are read and ignored, within the head's bound */
                c->trailer_len += (size_t)e.pos + 2;
                if (e.pos == 0)
                    c->body = B_NONE;
                else if (c->trailer_len > HEAD_MAX)
                    goto bad;
                break;
            }
            for (i = 0; i < (size_t)e.pos && isxdigit((unsigned char)line[i]); i++) {
                if (i == 15)
                    goto bad;
                size = size * 16 +
                       (uint64_t)(line[i] <= '9' ? line[i] - '0' : (line[i] | 0x20) - 'a' + 10);
            }
            /* after the size only chunk extensions (";..."), which we ignore */
            if (i == 0 ||
                (i < (size_t)e.pos && line[i] != ';' && line[i] != ' ' && line[i] != '\t'))
                goto bad;
            c->body_rem = size;
            c->body = size ? B_CHUNK_DATA : B_TRAILER;
            break;
        }
    }
bad:
    fail(c, 400, "bad chunked body");
    return -1;
}

/* ---- WebSocket (RFC 6455) ---- */

static void ws_frame_head(struct evbuffer *out, unsigned b0, uint64_t len)
{
    unsigned char h[10];
    size_t n = 2;

    h[0] = (unsigned char)b0;
    if (len < 126) {
        h[1] = (unsigned char)len;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        n = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        n = 10;
    }
    evbuffer_add(out, h, n);
}

static void ws_close(struct conn *c, unsigned code)
{
    unsigned char p[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    struct evbuffer *out = bufferevent_get_output(c->bev);

    ws_frame_head(out, 0x88, 2);
    evbuffer_add(out, p, 2);
    conn_finish(c);
}

/* Echoes frames as they arrive. A data frame's payload is unmasked and passed on piece by piece
 * (its header goes first: the length is known), so a 16 MiB frame is never held whole; control
 * frames (at most 125 bytes) are answered once complete. */
static void ws_process(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev), *out = bufferevent_get_output(c->bev);
    unsigned char h[14], buf[4096];

    while (c->state == S_WS) {
        size_t avail = evbuffer_get_length(in), hlen, k;
        unsigned op, len7;
        uint64_t len;

        if (evbuffer_get_length(out) > OUT_HIGH) {
            c->paused = true;
            return;
        }
        if (c->ws_rem) {
            if (!avail)
                return;
            k = avail < sizeof(buf) ? avail : sizeof(buf);
            k = k < c->ws_rem ? k : c->ws_rem;
            evbuffer_remove(in, buf, k);
            for (size_t i = 0; i < k; i++)
                buf[i] ^= c->ws_mask[c->ws_pos++ & 3];
            evbuffer_add(out, buf, k);
            c->ws_rem -= k;
            continue;
        }
        if (avail < 2)
            return;
        evbuffer_copyout(in, h, 2);
        op = h[0] & 0x0f;
        len7 = h[1] & 0x7f;
        hlen = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
        /* no extension was negotiated, so RSV must be 0; a client must mask (5.2, 5.3) */
        if ((h[0] & 0x70) || !(h[1] & 0x80) || (op > 2 && op < 8) || op > 10) {
            ws_close(c, 1002);
            return;
        }
        if (avail < hlen)
            return;
        evbuffer_copyout(in, h, hlen);
        len = len7;
        for (size_t i = 2; len7 >= 126 && i < hlen - 4; i++)
            len = (i == 2 ? 0 : len << 8) | h[i];
        memcpy(c->ws_mask, h + hlen - 4, 4);
        c->ws_pos = 0;
        if (op >= 8) {
            if (!(h[0] & 0x80) || len > 125 || (op == 8 && len == 1)) {
                ws_close(c, 1002); /* 5.5: control frames are short and whole */
                return;
            }
            if (avail < hlen + len)
                return;
            evbuffer_drain(in, hlen);
            evbuffer_remove(in, buf, (size_t)len);
            for (size_t i = 0; i < len; i++)
                buf[i] ^= c->ws_mask[i & 3];
            if (op == 9) {
                ws_frame_head(out, 0x8a, len);
                evbuffer_add(out, buf, (size_t)len);
            } else if (op == 8) {
                /* 5.5.1: answer with the status code received, then close */
                ws_frame_head(out, 0x88, len ? 2 : 0);
                evbuffer_add(out, buf, len ? 2 : 0);
                conn_finish(c);
            }
            continue;
        }
        if (len > WS_FRAME_MAX) {
            ws_close(c, 1009);
            return;
        }
        evbuffer_drain(in, hlen);
        ws_frame_head(out, h[0] & 0x8f, len);
        c->ws_rem = len;
    }
}

/* ---- connections ---- */

/* Runs the connection's state machine over its input for as long as it can progress. Requests are
 * answered one at a time, in order: the next is not read until the last response is complete. */
static void process_input(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);

    while (!c->closed) {
        switch (c->state) {
        case S_HEAD:
            if (evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_HIGH) {
                c->paused = true;
                return;
            }
            if (read_head(c) <= 0 || begin_request(c) < 0)
                return;
            break;
        case S_BODY:
            if (read_body(c) <= 0)
                return;
            handle_request(c);
            break;
        case S_WS:
            ws_process(c);
            if (c->state == S_WS)
                return;
            break;
        case S_LINGER:
            c->lingered += evbuffer_get_length(in);
            evbuffer_drain(in, evbuffer_get_length(in));
            if (c->lingered > OUT_HIGH)
                conn_close(c);
            return;
        default: /* the input waits until the response in progress is done */
            return;
        }
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    process_input(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    if (c->state == S_FLUSH) {
        start_linger(c);
    } else if (c->paused) {
        c->paused = false;
        process_input(c);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    if (!(what & BEV_EVENT_EOF)) {
        conn_close(c); /* an error, or a linger or flush timeout */
        return;
    }
    c->read_eof = true;
    /* Between requests the peer may only have shut its write side: what it asked for is still
     * answered. Mid-request or mid-response, it has gone. */
    if (c->state == S_HEAD && !c->paused)
        process_input(c);
    else if (c->state != S_HEAD && c->state != S_FLUSH)
        conn_close(c);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int slen,
                      void *arg)
{
    struct conn *c;
    int one = 1;

    (void)l;
    (void)sa;
    (void)slen;
    (void)arg;
    if (inst.active >= MAX_CONNS || !(c = calloc(1, sizeof(*c)))) {
        evutil_closesocket(fd);
        return;
    }
    if (!(c->bev = bufferevent_socket_new(inst.base, fd, BEV_OPT_CLOSE_ON_FREE))) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    /* small writes (stream events, pipelined answers) must not wait for Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    inst.active++;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, IN_HIGH);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    inst.unhealthy = !inst.unhealthy;
    fprintf(stderr, "%s now %s\n", inst.name, inst.unhealthy ? "unhealthy" : "healthy");
}

/* Serves one instance on the listening socket fd until killed. SIGUSR1 must be blocked on entry:
 * it is unblocked once it has a handler. Returns the exit status. */
static int run_instance(const char *name, int fd, int port)
{
    struct evconnlistener *listener;
    struct event *usr1;
    sigset_t set;

    inst.name = name;
    signal(SIGPIPE, SIG_IGN);
    if (!(inst.base = event_base_new()) ||
        !(listener =
              evconnlistener_new(inst.base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd)) ||
        !(usr1 = evsignal_new(inst.base, SIGUSR1, on_usr1, NULL)) || event_add(usr1, NULL) < 0) {
        fprintf(stderr, "%s: cannot set up the event loop\n", name);
        return 1;
    }
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    fprintf(stderr, "%s listening on 127.0.0.1:%d pid %d\n", name, port, (int)getpid());
    event_base_dispatch(inst.base);
    return 0;
}

/* ---- the pool ---- */

struct child {
    char name[96];
    int port;
    int fd;    /* listening socket, until handed to the child */
    pid_t pid; /* 0 once reaped */
};

/* Returns a listening socket on 127.0.0.1:port, or -errno. */
static int listen_on(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd, one = 1, err;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Writes the PID file atomically (a temporary file renamed over it). Returns 0 or -errno. */
static int write_pidfile(const char *path, const struct child *ch, int n)
{
    char tmp[4096];
    FILE *f;
    bool bad;

    if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    if (!(f = fopen(tmp, "w")))
        return -errno;
    errno = 0;
    for (int i = 0; i < n; i++)
        fprintf(f, "%s %d %d\n", ch[i].name, (int)ch[i].pid, ch[i].port);
    bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad || rename(tmp, path) < 0) {
        int err = errno ? -errno : -EIO;

        unlink(tmp);
        return err;
    }
    return 0;
}

static void reap(struct child *ch, int n)
{
    pid_t pid;
    int st;

    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < n; i++) {
            if (ch[i].pid != pid)
                continue;
            ch[i].pid = 0;
            if (WIFSIGNALED(st))
                fprintf(stderr, "fnpool: %s (pid %d) killed by signal %d, not restarting\n",
                        ch[i].name, (int)pid, WTERMSIG(st));
            else
                fprintf(stderr, "fnpool: %s (pid %d) exited with status %d, not restarting\n",
                        ch[i].name, (int)pid, WEXITSTATUS(st));
        }
    }
}

static void stop_children(struct child *ch, int n)
{
    for (int i = 0; i < n; i++) {
        if (ch[i].pid > 0) {
            kill(ch[i].pid, SIGTERM);
            kill(ch[i].pid, SIGCONT); /* a test may have stopped it */
        }
    }
    for (int i = 0; i < n; i++)
        if (ch[i].pid > 0)
            waitpid(ch[i].pid, NULL, 0);
}

static int parse_int(const char *s, long min, long max, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"first", required_argument, NULL, 'F'},
        {"prefix", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int n = 4, port = 9001, first = 1, opt, err;
    const char *pidfile = NULL, *prefix = "fn-";
    struct child *ch;
    struct rlimit rl;
    sigset_t set, old;
    pid_t parent = getpid();

    while ((opt = getopt_long(argc, argv, "n:p:f:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'n':
            if (parse_int(optarg, 1, 1000, &n) < 0)
                goto usage;
            break;
        case 'p':
            if (parse_int(optarg, 1, 65535, &port) < 0)
                goto usage;
            break;
        case 'F':
            if (parse_int(optarg, 0, 1000000, &first) < 0)
                goto usage;
            break;
        case 'P':
            if (strlen(optarg) > 64)
                goto usage;
            prefix = optarg;
            break;
        case 'f':
            pidfile = optarg;
            break;
        case 'v':
            inst.verbose = true;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            goto usage;
        }
    }
    if (optind != argc || port + n - 1 > 65535)
        goto usage;
    if (!(ch = calloc((size_t)n, sizeof(*ch)))) {
        fprintf(stderr, "fnpool: out of memory\n");
        return 1;
    }
    /* each instance may hold MAX_CONNS connections */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Every socket listens before any child runs, so each port accepts from the start. */
    for (int i = 0; i < n; i++) {
        snprintf(ch[i].name, sizeof(ch[i].name), "%s%d", prefix, first + i);
        ch[i].port = port + i;
        if ((ch[i].fd = err = listen_on(ch[i].port)) < 0) {
            fprintf(stderr, "fnpool: 127.0.0.1:%d: %s\n", ch[i].port, strerror(-err));
            while (i-- > 0)
                close(ch[i].fd);
            return 1;
        }
    }
    /* Signals are taken with sigwaitinfo(); children start with SIGUSR1 still blocked, so one
     * sent before their handler exists is kept, not fatal. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &old);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();

        if (pid < 0) {
            fprintf(stderr, "fnpool: fork: %s\n", strerror(errno));
            stop_children(ch, n);
            return 1;
        }
        if (pid == 0) {
            sigaddset(&old, SIGUSR1);
            sigprocmask(SIG_SETMASK, &old, NULL);
            if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                _exit(1);
            for (int j = i + 1; j < n; j++)
                close(ch[j].fd);
            exit(run_instance(ch[i].name, ch[i].fd, ch[i].port));
        }
        ch[i].pid = pid;
        /* Only the child may hold its port: once it dies, connecting must fail. */
        close(ch[i].fd);
        ch[i].fd = -1;
    }
    if (pidfile && (err = write_pidfile(pidfile, ch, n)) < 0) {
        fprintf(stderr, "fnpool: %s: %s\n", pidfile, strerror(-err));
        stop_children(ch, n);
        return 1;
    }
    fprintf(stderr, "fnpool: %d instances ready\n", n);
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);

        /* SIGUSR1 is meant for an instance; sent here, it is ignored */
        if (sig == SIGCHLD)
            reap(ch, n);
        else if (sig == SIGINT || sig == SIGTERM)
            break;
    }
    stop_children(ch, n);
    if (pidfile)
        unlink(pidfile);
    free(ch);
    return 0;

usage:
    fputs(usage_text, stderr);
    return 1;
}
