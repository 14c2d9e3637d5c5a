/*
 * The admin API's server: evhttp on an event_base and thread of its own,
 * so an admin request never runs on (or waits for) a worker's loop. Here:
 * the listener (loopback TCP, or a unix socket created 0600), bearer-token
 * checks in constant time, routing, JSON replies, and the event streams.
 * The endpoints themselves are in handlers.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "tether/admin.h"
#include "tether/config.h"
#include "tether/proxy.h"
#include "tether/util.h"
#include "admin-int.h"
#include "server-int.h"

/* Request bodies: the API's are small JSON objects. */
#define MAX_BODY (64 * 1024)
/* A comment on every event stream this often, so dead peers are found. */
#define KEEPALIVE_S 15

struct stream {
    struct stream *next;
    struct evhttp_request *req;
    struct tether_admin *a;
    uint64_t seq; /* the next event to send */
};

struct tether_admin {
    struct tether_proxy *proxy;
    tether_admin_reload_fn reload;
    void *reload_ctx;
    struct event_base *base;
    struct evhttp *http;
    int wake;       /* eventfd: events published */
    int stop[2];    /* pipe: tether_admin_stop() */
    struct event *wake_ev, *stop_ev, *keepalive;
    struct stream *streams;
    char unix_path[108];
    pthread_t thread;
    bool started;
    pthread_mutex_t token_lock;
    unsigned char token_hash[SHA256_DIGEST_LENGTH];
    bool have_token;
};

static int read_token(const char *path, unsigned char out[SHA256_DIGEST_LENGTH])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        tether_log_error("admin.token_file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    char buf[4096];
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && !(st.st_mode & (S_IRWXG | S_IRWXO)))
        n = read(fd, buf, sizeof(buf));
    else
        tether_log_error("admin.token_file %s: mode %04o: use 0600 or stricter", path,
                         (unsigned)(st.st_mode & 07777));
    close(fd);
    if (n < 0)
        return -1;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                     buf[n - 1] == '\t'))
        n--;
    if (n == 0 || (size_t)n == sizeof(buf)) {
        tether_log_error("admin.token_file %s: %s", path, n ? "over 4095 bytes" : "empty");
        return -1;
    }
    SHA256((const unsigned char *)buf, (size_t)n, out);
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

int tether_admin_set_token(struct tether_admin *ta, const char *path)
{
    struct tether_admin *a = ta;
    unsigned char h[SHA256_DIGEST_LENGTH];
    if (read_token(path, h) < 0)
        return -1;
    pthread_mutex_lock(&a->token_lock);
    memcpy(a->token_hash, h, sizeof(h));
    a->have_token = true;
    pthread_mutex_unlock(&a->token_lock);
    return 0;
}

/* 0 when the request carries the token; else the status to answer. Both
   tokens are hashed first, so the comparison takes the same time whatever
   their lengths and contents. */
static int check_auth(struct tether_admin *a, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 401;
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    unsigned char got[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)tok, strlen(tok), got);
    pthread_mutex_lock(&a->token_lock);
    int ok = a->have_token && CRYPTO_memcmp(got, a->token_hash, sizeof(got)) == 0;
    pthread_mutex_unlock(&a->token_lock);
    return ok ? 0 : 403;
}

void admin_reply_json(struct evhttp_request *req, int status, json_t *body)
{
    struct evbuffer *out = evbuffer_new();
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (out && text) {
        evbuffer_add(out, text, strlen(text));
        evbuffer_add(out, "\n", 1);
    }
    struct evkeyvalq *hd = evhttp_request_get_output_headers(req);
    evhttp_add_header(hd, "Content-Type", "application/json");
    evhttp_add_header(hd, "Cache-Control", "no-store");
    const char *reason = status == 200   ? "OK"
                         : status == 201 ? "Created"
                         : status == 400 ? "Bad Request"
                         : status == 401 ? "Unauthorized"
                         : status == 403 ? "Forbidden"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 409 ? "Conflict"
                         : status == 503 ? "Service Unavailable"
                                         : "Error";
    if (status == 401)
        evhttp_add_header(hd, "WWW-Authenticate", "Bearer realm=\"tether\"");
    evhttp_send_reply(req, status, reason, out);
    if (out)
        evbuffer_free(out);
    free(text);
    json_decref(body);
}

void admin_error(struct evhttp_request *req, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Messages quote what the request said: keep them printable ASCII (JSON needs UTF-8). */
    for (char *q = msg; *q; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e)
            *q = '?';
    admin_reply_json(req, status, json_pack("{s:s}", "error", msg));
}

void admin_not_allowed(struct evhttp_request *req, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    admin_error(req, 405, "method not allowed: use %s", allow);
}

/* The request body as a JSON object: NULL after answering 400 (empty is {}). */
json_t *admin_body(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > MAX_BODY) {
        admin_error(req, 400, "request body over %d bytes", MAX_BODY);
        return NULL;
    }
    if (len == 0)
        return json_object();
    json_error_t err;
    const char *text = (const char *)evbuffer_pullup(in, -1);
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!j) {
        admin_error(req, 400, "invalid JSON: %s (line %d, column %d)", err.text, err.line,
                    err.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        admin_error(req, 400, "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* Event streams: send what was published since each stream's last event. */
/* A watcher this far behind gets no more until it reads: it is told what it missed. */
#define STREAM_BACKLOG (1024 * 1024)

static size_t stream_backlog(const struct stream *s)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(s->req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static void stream_flush(struct stream *s)
{
    if (stream_backlog(s) > STREAM_BACKLOG)
        return;
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return;
    for (int i = 0; i < 1024; i++) {
        char *text;
        size_t len;
        int rc = events_get(s->seq, &text, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            uint64_t oldest = events_oldest();
            evbuffer_add_printf(out, ": %llu events dropped (the stream fell behind)\n\n",
                                (unsigned long long)(oldest - s->seq));
            s->seq = oldest;
            continue;
        }
        evbuffer_add(out, text, len);
        free(text);
        s->seq++;
    }
    if (evbuffer_get_length(out))
        evhttp_send_reply_chunk(s->req, out);
    evbuffer_free(out);
}

static void on_events(evutil_socket_t fd, short what, void *arg)
{
    struct tether_admin *a = arg;
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof(v));
    (void)n;
    /* Before reading: whatever is published from now on wakes us again. */
    events_woken();
    for (struct stream *s = a->streams; s; s = s->next)
        stream_flush(s);
    /* Still more than one pass could send: come back. */
    for (struct stream *s = a->streams; s; s = s->next)
        if (s->seq < events_next() && stream_backlog(s) <= STREAM_BACKLOG) {
            uint64_t one = 1;
            n = write(a->wake, &one, sizeof(one));
            break;
        }
}

static void stream_closed(struct evhttp_connection *conn, void *arg)
{
    struct stream *s = arg;
    struct tether_admin *a = s->a;
    for (struct stream **pp = &a->streams; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    events_subscribers(-1);
    /* The connection is gone: the unfinished reply is ours to free. */
    evhttp_send_reply_end(s->req);
    free(s);
}

static void on_keepalive(evutil_socket_t fd, short what, void *arg)
{
    struct tether_admin *a = arg;
    for (struct stream *s = a->streams; s; s = s->next) {
        stream_flush(s); /* a watcher that was behind may have caught up */
        struct evbuffer *out = evbuffer_new();
        if (!out)
            continue;
        evbuffer_add_printf(out, ": keepalive\n\n");
        evhttp_send_reply_chunk(s->req, out);
        evbuffer_free(out);
    }
}

static void admin_events_start(struct tether_admin *a, struct evhttp_request *req)
{
    struct stream *s = calloc(1, sizeof(*s));
    if (!s) {
        admin_error(req, 503, "out of memory");
        return;
    }
    s->req = req;
    s->a = a;
    events_subscribers(1);
    s->seq = events_next();
    struct evkeyvalq *hd = evhttp_request_get_output_headers(req);
    evhttp_add_header(hd, "Content-Type", "text/event-stream");
    evhttp_add_header(hd, "Cache-Control", "no-store");
    evhttp_send_reply_start(req, 200, "OK");
    struct evbuffer *out = evbuffer_new();
    if (out) {
        evbuffer_add_printf(out, ": tether events\n\n");
        evhttp_send_reply_chunk(req, out);
        evbuffer_free(out);
    }
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), stream_closed, s);
    s->next = a->streams;
    a->streams = s;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct tether_admin *a = arg;
    atomic_fetch_add_explicit(&a->proxy->admin_requests, 1, memory_order_relaxed);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || path[0] != '/') {
        admin_error(req, 400, "bad request target");
        return;
    }
    if (strcmp(path, "/livez") == 0 || strcmp(path, "/readyz") == 0) {
        admin_probe(a->proxy, req, path[1] == 'r');
        return;
    }
    int st = check_auth(a, req);
    if (st == 401) {
        admin_error(req, 401, "missing bearer token (Authorization: Bearer ...)");
        return;
    }
    if (st == 403) {
        admin_error(req, 403, "wrong token");
        return;
    }
    if (strcmp(path, "/api/v1/events") == 0) {
        if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
            admin_not_allowed(req, "GET");
            return;
        }
        admin_events_start(a, req);
        return;
    }
    admin_route(a->proxy, req, path, a->reload, a->reload_ctx);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct tether_admin *a = arg;
    event_base_loopbreak(a->base);
}

static void *run(void *arg)
{
    struct tether_admin *a = arg;
    event_base_dispatch(a->base);
    return NULL;
}

/* A unix socket, mode 0600 from its creation; a stale file is replaced. */
static int unix_listen(struct tether_admin *a, const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        tether_log_error("admin.listen unix:%s: path too long", path);
        return -1;
    }
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    /* Someone answering there is another tetherd: do not take its socket. */
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
        tether_log_error("admin.listen unix:%s: in use by another process", path);
        close(fd);
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 64) < 0) {
        tether_log_error("admin.listen unix:%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    snprintf(a->unix_path, sizeof(a->unix_path), "%s", path);
    return fd;
}

static void admin_free(struct tether_admin *a)
{
    while (a->streams) {
        struct stream *s = a->streams;
        a->streams = s->next;
        evhttp_connection_set_closecb(evhttp_request_get_connection(s->req), NULL, NULL);
        events_subscribers(-1);
        free(s);
    }
    events_attach(-1);
    if (a->http)
        evhttp_free(a->http);
    if (a->wake_ev)
        event_free(a->wake_ev);
    if (a->stop_ev)
        event_free(a->stop_ev);
    if (a->keepalive)
        event_free(a->keepalive);
    if (a->base)
        event_base_free(a->base);
    if (a->wake >= 0)
        close(a->wake);
    if (a->stop[0] >= 0) {
        close(a->stop[0]);
        close(a->stop[1]);
    }
    if (a->unix_path[0])
        unlink(a->unix_path);
    pthread_mutex_destroy(&a->token_lock);
    free(a);
}

struct tether_admin *tether_admin_start(struct tether_proxy *proxy, const struct tether_config *cfg,
                                        tether_admin_reload_fn reload, void *reload_ctx)
{
    struct tether_admin *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->proxy = proxy;
    a->reload = reload;
    a->reload_ctx = reload_ctx;
    a->wake = -1;
    a->stop[0] = a->stop[1] = -1;
    pthread_mutex_init(&a->token_lock, NULL);
    if (tether_admin_set_token(a, cfg->admin.token_file) < 0)
        goto fail;
    a->base = event_base_new();
    a->http = a->base ? evhttp_new(a->base) : NULL;
    a->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!a->http || a->wake < 0 || pipe2(a->stop, O_NONBLOCK | O_CLOEXEC) < 0)
        goto fail;
    a->wake_ev = event_new(a->base, a->wake, EV_READ | EV_PERSIST, on_events, a);
    a->stop_ev = event_new(a->base, a->stop[0], EV_READ, on_stop, a);
    a->keepalive = event_new(a->base, -1, EV_PERSIST, on_keepalive, a);
    struct timeval ka = {KEEPALIVE_S, 0};
    if (!a->wake_ev || !a->stop_ev || !a->keepalive || event_add(a->wake_ev, NULL) < 0 ||
        event_add(a->stop_ev, NULL) < 0 || event_add(a->keepalive, &ka) < 0)
        goto fail;
    /* Every method reaches the router, which answers 405 in JSON. */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
                                            EVHTTP_REQ_OPTIONS);
    evhttp_set_max_headers_size(a->http, 16 * 1024);
    evhttp_set_max_body_size(a->http, 1024 * 1024);
    evhttp_set_timeout(a->http, 60);
    evhttp_set_gencb(a->http, on_request, a);

    const char *where = cfg->admin.listen;
    int fd;
    if (strncmp(where, "unix:", 5) == 0) {
        fd = unix_listen(a, where + 5);
    } else {
        struct sockaddr_storage ss;
        socklen_t len;
        fd = -1;
        if (tether_sockaddr_parse(where, &ss, &len) == 0) {
            fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            int one = 1;
            if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
                            bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0)) {
                tether_log_error("admin.listen %s: %s", where, strerror(errno));
                close(fd);
                fd = -1;
            }
        } else {
            tether_log_error("admin.listen %s: not an address", where);
        }
    }
    if (fd < 0 || !evhttp_accept_socket_with_handle(a->http, fd)) {
        if (fd >= 0)
            close(fd);
        goto fail;
    }
    events_attach(a->wake);
    int err = pthread_create(&a->thread, NULL, run, a);
    if (err) {
        tether_log_error("admin: cannot start the thread: %s", strerror(err));
        goto fail;
    }
    a->started = true;
    tether_log_info("admin API on %s", where);
    return a;
fail:
    admin_free(a);
    return NULL;
}

void tether_admin_stop(struct tether_admin *ta)
{
    struct tether_admin *a = ta;
    if (!a)
        return;
    if (a->started) {
        char c = 'q';
        ssize_t n = write(a->stop[1], &c, 1);
        (void)n;
        pthread_join(a->thread, NULL);
    }
    admin_free(a);
}
