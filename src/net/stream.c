/*
 * Streams: buffered sockets with the bufferevent semantics tether relies on,
 * and speculative I/O. Output added during a loop turn is written by one
 * deferred flush; EV_WRITE is registered only when the socket pushes back;
 * the read event stays registered while reading is enabled. The TLS side
 * (stream_tls.c) plugs its handshake, read and write into the same machine.
 */
#include <errno.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <openssl/err.h>

#include "stream-int.h"

/* Bytes asked of one read (a TLS record holds at most as much). */
#define READ_MAX 16384
/* Segments per sendmsg(), and sendmsg() calls per flush before waiting for EV_WRITE. */
#define WRITE_IOV 16
#define WRITE_ROUNDS 4

static void on_flush(evutil_socket_t fd, short what, void *arg);
static void on_rev(evutil_socket_t fd, short what, void *arg);
static void on_wev(evutil_socket_t fd, short what, void *arg);

struct tether_stream_loop *tether_stream_loop_new(struct event_base *base)
{
    struct tether_stream_loop *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->base = base;
    TAILQ_INIT(&l->dirty);
    event_assign(&l->flush, base, -1, 0, on_flush, l);
    return l;
}

void tether_stream_loop_free(struct tether_stream_loop *l)
{
    if (!l)
        return;
    event_del(&l->flush);
    free(l);
}

/* Callbacks. Each returns false when the stream was freed from inside it. */

static void enter(struct tether_stream *s, struct guard *g)
{
    g->up = s->guard;
    g->dead = false;
    s->guard = g;
}

static bool leave(struct tether_stream *s, struct guard *g)
{
    if (g->dead)
        return false;
    s->guard = g->up;
    return true;
}

static bool run_read(struct tether_stream *s)
{
    struct guard g;
    enter(s, &g);
    s->readcb(s, s->arg);
    return leave(s, &g);
}

static bool run_write(struct tether_stream *s)
{
    struct guard g;
    enter(s, &g);
    s->writecb(s, s->arg);
    return leave(s, &g);
}

bool stream_run_event(struct tether_stream *s, short what, int err)
{
    if (!s->eventcb)
        return true;
    struct guard g;
    enter(s, &g);
    errno = err;
    s->eventcb(s, what, s->arg);
    return leave(s, &g);
}

/* Event registration: computed from the state, applied only on change. */

/*
 * Register ev with timeout tv (NULL: none), or change the timeout of an ev
 * already registered (on).
 */
static void arm(struct event *ev, bool on, const struct timeval *tv)
{
    if (tv) {
        event_add(ev, tv);
    } else if (on) {
        event_remove_timer(ev);
    } else {
        /* A persistent event remembers its last timeout across event_del()
           and would bring it back on its next activation: assign afresh. */
        struct event_base *base;
        evutil_socket_t fd;
        short what;
        event_callback_fn cb;
        void *arg;
        event_get_assignment(ev, &base, &fd, &what, &cb, &arg);
        event_assign(ev, base, fd, what, cb, arg);
        event_add(ev, NULL);
    }
}

static const struct timeval *rev_tv(const struct tether_stream *s)
{
    /* A client's handshake is part of connecting: bounded like connect(). */
    if (s->state == ST_HANDSHAKE && !s->accepting)
        return s->has_wt ? &s->wt : NULL;
    return s->has_rt ? &s->rt : NULL;
}

static const struct timeval *wev_tv(const struct tether_stream *s)
{
    return s->has_wt ? &s->wt : NULL;
}

static bool reading(const struct tether_stream *s)
{
    return (s->enabled & EV_READ) && !s->rsusp;
}

static bool want_rev(const struct tether_stream *s)
{
    switch (s->state) {
    case ST_HANDSHAKE:
        return s->hs_want == EV_READ;
    case ST_OPEN:
        return s->wwant_read || reading(s);
    default:
        return false;
    }
}

static bool want_wev(const struct tether_stream *s)
{
    switch (s->state) {
    case ST_CONNECTING:
        return true;
    case ST_HANDSHAKE:
        return s->hs_want == EV_WRITE || (s->tls_out && evbuffer_get_length(s->tls_out) > 0);
    case ST_OPEN:
        if (s->rwant_write && reading(s))
            return true;
        return s->wblocked && !s->wwant_read && (s->enabled & EV_WRITE) && stream_pending(s) > 0;
    default:
        return false;
    }
}

void stream_sync(struct tether_stream *s)
{
    bool r = want_rev(s), w = want_wev(s);
    if (r != s->rev_on) {
        if (r)
            arm(&s->rev, false, rev_tv(s));
        else
            event_del(&s->rev);
        s->rev_on = r;
    }
    if (w != s->wev_on) {
        if (w)
            arm(&s->wev, false, wev_tv(s));
        else
            event_del(&s->wev);
        s->wev_on = w;
    }
}

void stream_mark(struct tether_stream *s, unsigned pend)
{
    struct tether_stream_loop *l = s->loop;
    s->pend |= pend;
    if (s->dirty)
        return;
    s->dirty = true;
    TAILQ_INSERT_TAIL(&l->dirty, s, link);
    if (!l->armed && !l->running) {
        l->armed = true;
        event_active(&l->flush, EV_TIMEOUT, 0);
    }
}

static void post_event(struct tether_stream *s, short what, int err)
{
    s->pend_what = what;
    s->pend_err = err;
    stream_mark(s, P_EVENT);
}

/* Reading stops at the high watermark and resumes below it. */
static void check_suspend(struct tether_stream *s, size_t len)
{
    bool susp = s->rhigh && len >= s->rhigh;
    if (susp == s->rsusp)
        return;
    s->rsusp = susp;
    stream_sync(s);
    /* TLS input already decrypted raises no read event: fetch it from the loop. */
    if (!susp && s->ssl && s->state == ST_OPEN && reading(s) && SSL_has_pending(s->ssl))
        stream_mark(s, P_READ);
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    check_suspend(arg, info->orig_size + info->n_added - info->n_deleted);
}

/* New output on a writable stream is written by the flush, once per loop turn. */
static void on_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct tether_stream *s = arg;
    if (info->n_added == 0 || s->dirty || s->state != ST_OPEN || !(s->enabled & EV_WRITE))
        return;
    if (!s->wblocked)
        stream_mark(s, 0);
    else if (!s->wev_on)
        stream_sync(s);
}

size_t stream_room(const struct tether_stream *s)
{
    if (!s->rhigh)
        return READ_MAX;
    size_t len = evbuffer_get_length(s->input);
    if (len >= s->rhigh)
        return 0;
    return s->rhigh - len < READ_MAX ? s->rhigh - len : READ_MAX;
}

/* Plain I/O. */

/* One read into reserved input space; *what is set on EOF or error. */
static ssize_t plain_read(struct tether_stream *s, short *what, int *err)
{
    size_t want = stream_room(s);
    if (want == 0)
        return 0;
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    int n = evbuffer_reserve_space(s->input, (ev_ssize_t)want, v, 2);
    if (n <= 0) {
        *what = BEV_EVENT_ERROR;
        *err = ENOMEM;
        return -1;
    }
    size_t left = want;
    int niov = 0;
    for (; niov < n && left > 0; niov++) {
        iov[niov].iov_base = v[niov].iov_base;
        iov[niov].iov_len = v[niov].iov_len < left ? v[niov].iov_len : left;
        left -= iov[niov].iov_len;
    }
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
    ssize_t r;
    do
        r = recvmsg(s->fd, &mh, MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    if (r > 0) {
        size_t got = (size_t)r;
        int k = 0;
        for (; k < niov && got > 0; k++) {
            v[k].iov_len = iov[k].iov_len < got ? iov[k].iov_len : got;
            got -= v[k].iov_len;
        }
        evbuffer_commit_space(s->input, v, k);
        return r;
    }
    if (r == 0) {
        *what = BEV_EVENT_EOF;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *what = BEV_EVENT_ERROR;
        *err = errno;
        return -1;
    }
    return 0;
}

/*
 * Write b's bytes until the socket takes less than offered (at most
 * WRITE_ROUNDS calls), draining what was written. A short write means the
 * socket buffer is full: wait for EV_WRITE rather than spend a call on
 * EAGAIN. Returns the bytes written, or -1 with errno set.
 */
ssize_t stream_send(int fd, struct evbuffer *b)
{
    size_t total = 0;
    for (int round = 0; round < WRITE_ROUNDS; round++) {
        struct evbuffer_iovec v[WRITE_IOV];
        struct iovec iov[WRITE_IOV];
        int n = evbuffer_peek(b, -1, NULL, v, WRITE_IOV);
        if (n <= 0)
            break;
        if (n > WRITE_IOV)
            n = WRITE_IOV;
        size_t want = 0;
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len;
            want += v[i].iov_len;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        evbuffer_drain(b, (size_t)r);
        total += (size_t)r;
        if ((size_t)r < want)
            break;
    }
    return (ssize_t)total;
}

/* Write from the output; returns the bytes written, or -1 with *err. */
static ssize_t plain_write(struct tether_stream *s, int *err)
{
    ssize_t n = stream_send(s->fd, s->output);
    if (n < 0) {
        *err = errno;
        return -1;
    }
    s->wblocked = evbuffer_get_length(s->output) > 0;
    return n;
}

/* The state machine. */

/* Read once (TLS: until nothing decrypted is left); then the callbacks. */
bool stream_read(struct tether_stream *s)
{
    if (s->state != ST_OPEN || !reading(s))
        return true;
    short what = 0;
    int err = 0;
    ssize_t n = s->ssl ? stream_tls_read(s, &what, &err) : plain_read(s, &what, &err);
    if (n > 0 && s->readcb && evbuffer_get_length(s->input) >= s->rlow && !run_read(s))
        return false;
    if (what) {
        s->enabled &= ~EV_READ;
        stream_sync(s);
        return stream_run_event(s, BEV_EVENT_READING | what, err);
    }
    return true;
}

/* Write what the socket takes; then the write callback or an error event. */
bool stream_write(struct tether_stream *s)
{
    size_t len = stream_pending(s);
    if (s->state != ST_OPEN || !(s->enabled & EV_WRITE) || len == 0) {
        if (len == 0)
            s->wblocked = false;
        stream_sync(s);
        return true;
    }
    int err = 0;
    ssize_t n = s->ssl ? stream_tls_write(s, &err) : plain_write(s, &err);
    if (n < 0) {
        s->enabled &= ~EV_WRITE;
        s->wblocked = false;
        stream_sync(s);
        return stream_run_event(s, BEV_EVENT_WRITING | BEV_EVENT_ERROR, err);
    }
    if (n > 0)
        s->outq = -1;
    stream_sync(s);
    if (n > 0 && s->writecb && stream_pending(s) <= s->wlow)
        return run_write(s);
    return true;
}

/*
 * The write timeout fired: no writability for a whole interval. With a
 * large socket send buffer that says little: the kernel reports space only
 * once a good part of it is free, and a slow reader may drain it for far
 * longer than the timeout while making steady progress. So the timeout
 * counts only when the peer took nothing from the send queue during an
 * interval: the first firing samples the queue, the next one compares
 * (a stuck peer is cut after one to two intervals). true: progress.
 */
static bool peer_progressed(struct tether_stream *s)
{
    int q = 0;
    if (s->state != ST_OPEN || s->fd < 0 || ioctl(s->fd, SIOCOUTQ, &q) < 0 || q <= 0)
        return false;
    bool progressed = s->outq < 0 || q < s->outq;
    s->outq = q;
    return progressed;
}

/* The connection is up: tell the user, then send what was queued meanwhile. */
bool stream_opened(struct tether_stream *s)
{
    s->state = ST_OPEN;
    s->hs_want = 0;
    if (!stream_run_event(s, BEV_EVENT_CONNECTED, 0))
        return false;
    return stream_write(s);
}

static void connect_done(struct tether_stream *s)
{
    int e = 0;
    socklen_t elen = sizeof(e);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
        e = errno;
    if (e == EINPROGRESS || e == EALREADY || e == EINTR)
        return;
    if (e) {
        s->state = ST_FAILED;
        stream_sync(s);
        stream_run_event(s, BEV_EVENT_ERROR, e);
        return;
    }
    if (s->ssl) {
        s->state = ST_HANDSHAKE;
        stream_tls_handshake(s);
        return;
    }
    stream_opened(s);
}

static void on_rev(evutil_socket_t fd, short what, void *arg)
{
    struct tether_stream *s = arg;
    if (what & EV_TIMEOUT) {
        short ev = BEV_EVENT_TIMEOUT | BEV_EVENT_READING;
        if (s->state == ST_HANDSHAKE && !s->accepting) {
            ev = BEV_EVENT_TIMEOUT | BEV_EVENT_WRITING;
        } else if (s->state == ST_OPEN) {
            s->enabled &= ~EV_READ;
            stream_sync(s);
        }
        stream_run_event(s, ev, ETIMEDOUT);
        return;
    }
    if (s->state == ST_HANDSHAKE) {
        stream_tls_handshake(s);
        return;
    }
    if (s->wwant_read) {
        s->wwant_read = false;
        if (!stream_write(s))
            return;
    }
    stream_read(s);
}

static void on_wev(evutil_socket_t fd, short what, void *arg)
{
    struct tether_stream *s = arg;
    if (what & EV_TIMEOUT) {
        if (peer_progressed(s))
            return; /* the persistent event's timeout starts again */
        if (s->state == ST_CONNECTING)
            s->state = ST_FAILED;
        else if (s->state == ST_OPEN)
            s->enabled &= ~EV_WRITE;
        stream_sync(s);
        stream_run_event(s, BEV_EVENT_TIMEOUT | BEV_EVENT_WRITING, ETIMEDOUT);
        return;
    }
    switch (s->state) {
    case ST_CONNECTING:
        connect_done(s);
        return;
    case ST_HANDSHAKE:
        stream_tls_handshake(s);
        return;
    case ST_OPEN:
        break;
    default:
        stream_sync(s);
        return;
    }
    if (s->rwant_write && !stream_read(s))
        return;
    stream_write(s);
}

/* Deferred work of one stream, from the flush event. */
static void service(struct tether_stream *s)
{
    unsigned p = s->pend;
    s->pend = 0;
    if ((p & P_EVENT) && !stream_run_event(s, s->pend_what, s->pend_err))
        return;
    if (p & P_CONNECTED) {
        stream_opened(s);
        return;
    }
    if (p & P_HANDSHAKE) {
        stream_tls_handshake(s);
        return;
    }
    if ((p & P_READ) && !stream_read(s))
        return;
    if (s->state == ST_OPEN && (s->enabled & EV_WRITE) && !s->wblocked && stream_pending(s) > 0)
        stream_write(s);
    else if ((p & P_WRITECB) && s->writecb && stream_pending(s) <= s->wlow)
        run_write(s);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct tether_stream_loop *l = arg;
    struct tether_stream *s;
    l->armed = false;
    l->running = true;
    /* Streams marked meanwhile (a callback writing to another stream) are
       served in this same pass. */
    while ((s = TAILQ_FIRST(&l->dirty))) {
        TAILQ_REMOVE(&l->dirty, s, link);
        s->dirty = false;
        service(s);
    }
    l->running = false;
}

/* Construction and the public calls. */

struct tether_stream *stream_alloc(struct tether_stream_loop *l)
{
    struct tether_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = l;
    s->fd = -1;
    s->outq = -1;
    s->enabled = EV_WRITE;
    s->input = evbuffer_new();
    s->output = evbuffer_new();
    if (!s->input || !s->output)
        goto fail;
    s->in_cb = evbuffer_add_cb(s->input, on_input, s);
    s->out_cb = evbuffer_add_cb(s->output, on_output, s);
    if (!s->in_cb || !s->out_cb)
        goto fail;
    return s;
fail:
    stream_release(s);
    return NULL;
}

void stream_release(struct tether_stream *s)
{
    if (s->input)
        evbuffer_free(s->input);
    if (s->output)
        evbuffer_free(s->output);
    if (s->tls_out)
        evbuffer_free(s->tls_out);
    free(s);
}

void stream_attach(struct tether_stream *s, int fd)
{
    s->fd = fd;
    event_assign(&s->rev, s->loop->base, fd, EV_READ | EV_PERSIST, on_rev, s);
    event_assign(&s->wev, s->loop->base, fd, EV_WRITE | EV_PERSIST, on_wev, s);
    s->assigned = true;
}

struct tether_stream *tether_stream_new(struct tether_stream_loop *l, int fd)
{
    struct tether_stream *s = stream_alloc(l);
    if (!s)
        return NULL;
    if (fd >= 0) {
        stream_attach(s, fd);
        s->state = ST_OPEN;
    }
    return s;
}

int tether_stream_connect(struct tether_stream *s, const struct sockaddr *sa, socklen_t len)
{
    if (s->fd >= 0 || s->state != ST_IDLE) {
        errno = EINVAL;
        return -EINVAL;
    }
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int e = connect(fd, sa, len) < 0 ? errno : 0;
    if (e && e != EINPROGRESS && e != EINTR && e != ECONNREFUSED) {
        close(fd);
        errno = e;
        return -e;
    }
    if (s->ssl && stream_tls_set_fd(s, fd) < 0) {
        close(fd);
        errno = ENOMEM;
        return -ENOMEM;
    }
    stream_attach(s, fd);
    if (e == EINPROGRESS || e == EINTR) {
        s->state = ST_CONNECTING;
        stream_sync(s);
    } else if (e == ECONNREFUSED) {
        /* Refused at once (a local socket): still reported from the loop. */
        s->state = ST_FAILED;
        post_event(s, BEV_EVENT_ERROR, e);
    } else if (s->ssl) {
        s->state = ST_HANDSHAKE;
        stream_mark(s, P_HANDSHAKE);
    } else {
        s->state = ST_CONNECTED;
        stream_mark(s, P_CONNECTED);
    }
    return 0;
}

void tether_stream_setcb(struct tether_stream *s, tether_stream_data_cb readcb,
                         tether_stream_data_cb writecb, tether_stream_event_cb eventcb, void *arg)
{
    s->readcb = readcb;
    s->writecb = writecb;
    s->eventcb = eventcb;
    s->arg = arg;
}

int tether_stream_enable(struct tether_stream *s, short what)
{
    what &= EV_READ | EV_WRITE;
    s->enabled |= what;
    /* As bufferevent_enable(): enabling again restarts the timeout. */
    if ((what & EV_READ) && s->rev_on)
        arm(&s->rev, true, rev_tv(s));
    if ((what & EV_WRITE) && s->wev_on)
        arm(&s->wev, true, wev_tv(s));
    stream_sync(s);
    if (s->state != ST_OPEN)
        return 0;
    if ((what & EV_WRITE) && !s->wblocked && stream_pending(s) > 0)
        stream_mark(s, 0);
    if ((what & EV_READ) && s->ssl && reading(s) && SSL_has_pending(s->ssl))
        stream_mark(s, P_READ);
    return 0;
}

int tether_stream_disable(struct tether_stream *s, short what)
{
    s->enabled &= ~(what & (EV_READ | EV_WRITE));
    stream_sync(s);
    return 0;
}

short tether_stream_get_enabled(struct tether_stream *s)
{
    return s->enabled;
}

void tether_stream_setwatermark(struct tether_stream *s, short what, size_t low, size_t high)
{
    if (what & EV_WRITE)
        s->wlow = low;
    if (what & EV_READ) {
        s->rlow = low;
        s->rhigh = high;
        check_suspend(s, evbuffer_get_length(s->input));
    }
}

static bool set_tv(struct timeval *dst, const struct timeval *tv)
{
    if (!tv || (tv->tv_sec == 0 && tv->tv_usec == 0))
        return false;
    *dst = *tv;
    return true;
}

int tether_stream_set_timeouts(struct tether_stream *s, const struct timeval *rt,
                               const struct timeval *wt)
{
    s->has_rt = set_tv(&s->rt, rt);
    s->has_wt = set_tv(&s->wt, wt);
    if (s->rev_on)
        arm(&s->rev, true, rev_tv(s));
    if (s->wev_on)
        arm(&s->wev, true, wev_tv(s));
    return 0;
}

struct evbuffer *tether_stream_get_input(struct tether_stream *s)
{
    return s->input;
}

struct evbuffer *tether_stream_get_output(struct tether_stream *s)
{
    return s->output;
}

int tether_stream_getfd(struct tether_stream *s)
{
    return s->fd;
}

void tether_stream_flush(struct tether_stream *s)
{
    if (s->state != ST_OPEN || !(s->enabled & EV_WRITE) || s->wwant_read || stream_pending(s) == 0)
        return;
    int err = 0;
    ssize_t n = s->ssl ? stream_tls_write(s, &err) : plain_write(s, &err);
    if (n < 0) {
        s->enabled &= ~EV_WRITE;
        s->wblocked = false;
        post_event(s, BEV_EVENT_WRITING | BEV_EVENT_ERROR, err);
    } else if (n > 0 && stream_pending(s) <= s->wlow) {
        stream_mark(s, P_WRITECB);
    }
    stream_sync(s);
}

bool tether_stream_input_idle(struct tether_stream *s)
{
    int queued = 0;
    if (evbuffer_get_length(s->input) > 0 || (s->ssl && SSL_has_pending(s->ssl)))
        return false;
    return s->fd >= 0 && ioctl(s->fd, FIONREAD, &queued) == 0 && queued == 0;
}

void tether_stream_shutdown_write(struct tether_stream *s)
{
    if (s->fd < 0)
        return;
    if (s->ssl) {
        stream_tls_send_close_notify(s);
        stream_tls_push(s);
    }
    shutdown(s->fd, SHUT_WR);
}

void tether_stream_close_notify_after_output(struct tether_stream *s)
{
    if (s->ssl)
        s->shut_after = true;
}

size_t tether_stream_output_pending(const struct tether_stream *s)
{
    return stream_pending(s);
}

void tether_stream_free(struct tether_stream *s)
{
    if (!s)
        return;
    for (struct guard *g = s->guard; g; g = g->up)
        g->dead = true;
    if (s->dirty)
        TAILQ_REMOVE(&s->loop->dirty, s, link);
    if (s->assigned) {
        event_del(&s->rev);
        event_del(&s->wev);
    }
    if (s->ssl)
        stream_tls_close(s);
    if (s->fd >= 0)
        close(s->fd);
    stream_release(s);
}
