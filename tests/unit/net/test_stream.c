/*
 * Unit tests for src/net/stream.c and stream_tls.c, on real sockets
 * (socketpairs and 127.0.0.1 TCP): data arrives whole under backpressure,
 * watermarks and timeouts behave as bufferevent's, connect reports
 * asynchronously, a stream may be freed from any callback, TLS works both
 * ways, and a write that completes at once never registers EV_WRITE.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <check.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tether/net.h"
#include "../unit.h"

#define MB (1024 * 1024)

static struct event_base *base;
static struct tether_stream_loop *loop;

/* Counting epoll_ctl() as libevent calls it: this definition wins over libc's. */
static int counting;
static long epoll_ctl_calls;

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    if (counting)
        epoll_ctl_calls++;
    return (int)syscall(SYS_epoll_ctl, epfd, op, fd, ev);
}

/* Loop and sockets. */

static struct event_base *new_base(void)
{
    /* As the workers configure theirs. */
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *b = event_base_new_with_config(ec);
    event_config_free(ec);
    return b;
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    base = new_base();
    ck_assert_ptr_nonnull(base);
    loop = tether_stream_loop_new(base);
    ck_assert_ptr_nonnull(loop);
}

static void teardown(void)
{
    tether_stream_loop_free(loop);
    event_base_free(base);
}

static struct timeval ms_tv(long ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    *(int *)arg = 1;
}

/* Run the loop until *flag is set or ms pass; returns *flag. */
static int run_until(const int *flag, long ms)
{
    int expired = 0;
    struct event *t = evtimer_new(base, on_deadline, &expired);
    struct timeval tv = ms_tv(ms);
    evtimer_add(t, &tv);
    while (!*flag && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *flag;
}

static void run_for(long ms)
{
    int never = 0;
    run_until(&never, ms);
}

static void socket_pair(int sv[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

/* A listening socket on 127.0.0.1 with a free port, written to *addr. */
static int tcp_listener(struct sockaddr_in *addr, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)addr, sizeof(*addr)), 0);
    ck_assert_int_eq(listen(fd, backlog), 0);
    socklen_t len = sizeof(*addr);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)addr, &len), 0);
    return fd;
}

static int wait_readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms);
}

static unsigned char pat(size_t i)
{
    return (unsigned char)(i * 131 + (i >> 11));
}

static void add_pattern(struct evbuffer *b, size_t from, size_t n)
{
    unsigned char chunk[16384];
    while (n > 0) {
        size_t k = n < sizeof(chunk) ? n : sizeof(chunk);
        for (size_t i = 0; i < k; i++)
            chunk[i] = pat(from + i);
        evbuffer_add(b, chunk, k);
        from += k;
        n -= k;
    }
}

/* Remove everything from b, checking it continues the pattern at *at. */
static int take_pattern(struct evbuffer *b, size_t *at)
{
    unsigned char chunk[16384];
    int ok = 1;
    size_t n;
    while ((n = evbuffer_get_length(b)) > 0) {
        n = n < sizeof(chunk) ? n : sizeof(chunk);
        evbuffer_remove(b, chunk, n);
        for (size_t i = 0; i < n; i++)
            if (chunk[i] != pat(*at + i))
                ok = 0;
        *at += n;
    }
    return ok;
}

/* A recorder of one stream's callbacks. */
struct rec {
    struct tether_stream *s;
    int reads, writes, events;
    short what;
    int err;
    int done;
    int connected;
    int freed; /* the test freed s: any callback now is a failure */
    int after_free;
    size_t expect; /* collect: done at this many bytes */
    struct evbuffer *got;
    size_t high; /* input never above this in a read callback (0: unchecked) */
    int over_high;
};

static void rec_read(struct tether_stream *s, void *arg)
{
    struct rec *r = arg;
    r->after_free += r->freed;
    r->reads++;
    if (r->high && evbuffer_get_length(tether_stream_get_input(s)) > r->high)
        r->over_high = 1;
}

static void rec_write(struct tether_stream *s, void *arg)
{
    struct rec *r = arg;
    r->after_free += r->freed;
    r->writes++;
}

static void rec_event(struct tether_stream *s, short what, void *arg)
{
    struct rec *r = arg;
    r->after_free += r->freed;
    r->err = errno;
    r->events++;
    r->what = what;
    if (what & BEV_EVENT_CONNECTED)
        r->connected = 1;
    else
        r->done = 1;
}

static void collect(struct tether_stream *s, void *arg)
{
    struct rec *r = arg;
    rec_read(s, arg);
    evbuffer_add_buffer(r->got, tether_stream_get_input(s));
    if (evbuffer_get_length(r->got) >= r->expect)
        r->done = 1;
}

static void echo(struct tether_stream *s, void *arg)
{
    if (arg)
        rec_read(s, arg);
    evbuffer_add_buffer(tether_stream_get_output(s), tether_stream_get_input(s));
}

/* Plain streams. */

START_TEST(test_echo)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(tether_stream_getfd(a), sv[0]);
    ck_assert_int_eq(tether_stream_get_enabled(a), EV_WRITE);
    struct rec ra = {.got = evbuffer_new(), .expect = 33};
    tether_stream_setcb(a, collect, NULL, rec_event, &ra);
    tether_stream_setcb(b, echo, NULL, NULL, NULL);
    tether_stream_enable(a, EV_READ);
    tether_stream_enable(b, EV_READ);
    struct evbuffer *out = tether_stream_get_output(a);
    evbuffer_add(out, "hello world", 11);
    evbuffer_add(out, " and more, ", 11);
    evbuffer_add(out, "then the end", 11);
    ck_assert_int_eq(ra.reads, 0);
    ck_assert(run_until(&ra.done, 2000));
    ck_assert_uint_eq(evbuffer_get_length(ra.got), 33);
    ck_assert(memcmp(evbuffer_pullup(ra.got, -1), "hello world and more, then the end", 33) == 0);
    ck_assert_int_eq(ra.events, 0);
    evbuffer_free(ra.got);
    tether_stream_free(a);
    tether_stream_free(b);
}
END_TEST

/* Source, sink and echo with backpressure, as the proxy relays. */
struct flow {
    struct tether_stream *s;
    size_t total, sent, recvd;
    int bad, done;
    size_t high;
    int over_high;
};

static void flow_fill(struct tether_stream *s, void *arg)
{
    struct flow *f = arg;
    struct evbuffer *out = tether_stream_get_output(s);
    while (f->sent < f->total && evbuffer_get_length(out) < 256 * 1024) {
        size_t n = f->total - f->sent < 65536 ? f->total - f->sent : 65536;
        add_pattern(out, f->sent, n);
        f->sent += n;
    }
}

static void flow_sink(struct tether_stream *s, void *arg)
{
    struct flow *f = arg;
    struct evbuffer *in = tether_stream_get_input(s);
    if (f->high && evbuffer_get_length(in) > f->high)
        f->over_high = 1;
    if (!take_pattern(in, &f->recvd))
        f->bad = 1;
    if (f->recvd >= f->total)
        f->done = 1;
}

/* Echo that stops reading while its output is long, and resumes when it drains. */
static void relay_read(struct tether_stream *s, void *arg)
{
    struct flow *f = arg;
    if (f->high && evbuffer_get_length(tether_stream_get_input(s)) > f->high)
        f->over_high = 1;
    echo(s, NULL);
    if (evbuffer_get_length(tether_stream_get_output(s)) > 256 * 1024)
        tether_stream_disable(s, EV_READ);
}

static void relay_write(struct tether_stream *s, void *arg)
{
    tether_stream_enable(s, EV_READ);
}

static void flow_event(struct tether_stream *s, short what, void *arg)
{
    if (!(what & BEV_EVENT_CONNECTED))
        ((struct flow *)arg)->bad = 2;
}

static void run_echo_flow(struct tether_stream *a, struct tether_stream *b, size_t total, long ms)
{
    struct flow fa = {.s = a, .total = total, .high = 32768};
    struct flow fb = {.s = b, .high = 65536};
    tether_stream_setcb(a, flow_sink, flow_fill, flow_event, &fa);
    tether_stream_setcb(b, relay_read, relay_write, flow_event, &fb);
    tether_stream_setwatermark(a, EV_READ, 0, 32768);
    tether_stream_setwatermark(a, EV_WRITE, 65536, 0);
    tether_stream_setwatermark(b, EV_READ, 0, 65536);
    tether_stream_setwatermark(b, EV_WRITE, 65536, 0);
    tether_stream_enable(a, EV_READ);
    tether_stream_enable(b, EV_READ);
    flow_fill(a, &fa);
    ck_assert(run_until(&fa.done, ms));
    ck_assert_int_eq(fa.bad, 0);
    ck_assert_int_eq(fb.bad, 0);
    ck_assert_uint_eq(fa.sent, total);
    ck_assert_uint_eq(fa.recvd, total);
    ck_assert_int_eq(fa.over_high, 0);
    ck_assert_int_eq(fb.over_high, 0);
}

START_TEST(test_large_backpressure)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    run_echo_flow(a, b, 8 * MB, 30000);
    tether_stream_free(a);
    tether_stream_free(b);
}
END_TEST

/* A raw peer that reads and counts everything, when started. */
struct drain {
    struct event *ev;
    size_t n;
};

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    struct drain *d = arg;
    char buf[65536];
    ssize_t r;
    while ((r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        d->n += (size_t)r;
}

START_TEST(test_write_lowmark)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct rec ra = {0};
    tether_stream_setcb(a, NULL, rec_write, rec_event, &ra);
    tether_stream_setwatermark(a, EV_WRITE, 4096, 0);
    add_pattern(tether_stream_get_output(a), 0, 4 * MB);
    run_for(50);
    /* The peer reads nothing: some went out, far more than 4096 waits. */
    ck_assert_int_eq(ra.writes, 0);
    ck_assert_uint_gt(evbuffer_get_length(tether_stream_get_output(a)), 4096);
    ck_assert_uint_lt(evbuffer_get_length(tether_stream_get_output(a)), 4 * MB);

    struct drain d = {0};
    d.ev = event_new(base, sv[1], EV_READ | EV_PERSIST, on_drain, &d);
    event_add(d.ev, NULL);
    ck_assert(run_until(&ra.writes, 5000));
    ck_assert_int_ge(ra.writes, 1);
    ck_assert_uint_le(evbuffer_get_length(tether_stream_get_output(a)), 4096);
    run_for(50);
    ck_assert_uint_eq(d.n, 4 * MB);
    ck_assert_int_eq(ra.events, 0);
    event_free(d.ev);
    tether_stream_free(a);
    close(sv[1]);
}
END_TEST

/* A raw sender of the pattern. */
struct pump {
    struct event *ev;
    int fd;
    size_t total, sent;
};

static void on_pump(evutil_socket_t fd, short what, void *arg)
{
    struct pump *p = arg;
    unsigned char buf[16384];
    while (p->sent < p->total) {
        size_t n = p->total - p->sent < sizeof(buf) ? p->total - p->sent : sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = pat(p->sent + i);
        ssize_t r = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r <= 0)
            return;
        p->sent += (size_t)r;
    }
    event_del(p->ev);
}

static void pump_start(struct pump *p, int fd, size_t total)
{
    p->fd = fd;
    p->total = total;
    p->sent = 0;
    p->ev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_pump, p);
    event_add(p->ev, NULL);
}

/* Drains a stream's input from a timer, never through the stream API. */
struct slow {
    struct event *ev;
    struct evbuffer *in;
    size_t at, total;
    int bad, done;
};

static void on_slow(evutil_socket_t fd, short what, void *arg)
{
    struct slow *w = arg;
    if (!take_pattern(w->in, &w->at))
        w->bad = 1;
    if (w->at >= w->total)
        w->done = 1;
}

static void slow_start(struct slow *w, struct evbuffer *in, size_t total, long ms)
{
    w->in = in;
    w->total = total;
    w->ev = event_new(base, -1, EV_PERSIST, on_slow, w);
    struct timeval tv = ms_tv(ms);
    event_add(w->ev, &tv);
}

START_TEST(test_read_watermark)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {.high = 10000};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    tether_stream_setwatermark(b, EV_READ, 0, 10000);
    tether_stream_enable(b, EV_READ);
    struct pump p;
    pump_start(&p, sv[0], 100000);
    run_for(100);
    ck_assert_uint_eq(p.sent, 100000);
    struct evbuffer *in = tether_stream_get_input(b);
    ck_assert_uint_eq(evbuffer_get_length(in), 10000);
    ck_assert_int_ge(rb.reads, 1);
    int reads = rb.reads;
    run_for(50);
    /* Suspended: nothing read, and the read event is not even registered. */
    ck_assert_int_eq(rb.reads, reads);
    ck_assert_int_eq(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 0);

    /* Draining resumes reading with no call on the stream. */
    struct slow w = {0};
    slow_start(&w, in, 100000, 5);
    ck_assert(run_until(&w.done, 5000));
    ck_assert_int_eq(w.bad, 0);
    ck_assert_int_eq(rb.over_high, 0);
    ck_assert_int_eq(rb.events, 0);
    event_free(w.ev);
    event_free(p.ev);
    tether_stream_free(b);
    close(sv[0]);
}
END_TEST

START_TEST(test_read_lowmark)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    tether_stream_setwatermark(b, EV_READ, 500, 0);
    tether_stream_enable(b, EV_READ);
    char buf[400] = {0};
    ck_assert_int_eq(send(sv[0], buf, 100, 0), 100);
    run_for(50);
    ck_assert_int_eq(rb.reads, 0);
    ck_assert_uint_eq(evbuffer_get_length(tether_stream_get_input(b)), 100);
    ck_assert_int_eq(send(sv[0], buf, 400, 0), 400);
    ck_assert(run_until(&rb.reads, 2000));
    ck_assert_uint_eq(evbuffer_get_length(tether_stream_get_input(b)), 500);
    tether_stream_free(b);
    close(sv[0]);
}
END_TEST

START_TEST(test_output_held_while_write_disabled)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    tether_stream_disable(a, EV_WRITE);
    evbuffer_add(tether_stream_get_output(a), "held", 4);
    run_for(30);
    ck_assert_int_eq(wait_readable(sv[1], 0), 0);
    tether_stream_enable(a, EV_WRITE);
    run_for(30);
    char buf[8];
    ck_assert_int_eq(recv(sv[1], buf, sizeof(buf), MSG_DONTWAIT), 4);
    ck_assert(memcmp(buf, "held", 4) == 0);
    tether_stream_free(a);
    close(sv[1]);
}
END_TEST

START_TEST(test_flush_now)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct rec ra = {0};
    tether_stream_setcb(a, NULL, rec_write, rec_event, &ra);
    evbuffer_add(tether_stream_get_output(a), "now", 3);
    tether_stream_flush(a);
    char buf[8];
    ck_assert_int_eq(recv(sv[1], buf, sizeof(buf), MSG_DONTWAIT), 3);
    ck_assert_uint_eq(evbuffer_get_length(tether_stream_get_output(a)), 0);
    ck_assert_int_eq(ra.writes, 0); /* never from inside the call */
    ck_assert(run_until(&ra.writes, 1000));
    ck_assert_int_eq(ra.writes, 1);
    tether_stream_free(a);
    close(sv[1]);
}
END_TEST

START_TEST(test_eof)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    tether_stream_enable(b, EV_READ);
    ck_assert_int_eq(send(sv[0], "bye", 3, 0), 3);
    close(sv[0]);
    ck_assert(run_until(&rb.done, 2000));
    ck_assert_int_eq(rb.reads, 1);
    ck_assert_int_eq(rb.what, BEV_EVENT_READING | BEV_EVENT_EOF);
    ck_assert_uint_eq(evbuffer_get_length(tether_stream_get_input(b)), 3);
    ck_assert(!(tether_stream_get_enabled(b) & EV_READ));
    run_for(30);
    ck_assert_int_eq(rb.events, 1);
    tether_stream_free(b);
}
END_TEST

START_TEST(test_read_error)
{
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr, 4);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(cfd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    int sfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(sfd, 0);
    struct tether_stream *b = tether_stream_new(loop, sfd);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    tether_stream_enable(b, EV_READ);
    /* An abortive close: the peer sends RST. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(cfd);
    ck_assert(run_until(&rb.done, 2000));
    ck_assert_int_eq(rb.what, BEV_EVENT_READING | BEV_EVENT_ERROR);
    ck_assert_int_eq(rb.err, ECONNRESET);
    tether_stream_free(b);
    close(lfd);
}
END_TEST

START_TEST(test_write_error)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct rec ra = {0};
    tether_stream_setcb(a, NULL, rec_write, rec_event, &ra);
    close(sv[1]);
    evbuffer_add(tether_stream_get_output(a), "lost", 4);
    ck_assert(run_until(&ra.done, 2000));
    ck_assert_int_eq(ra.what, BEV_EVENT_WRITING | BEV_EVENT_ERROR);
    ck_assert_int_eq(ra.err, EPIPE);
    ck_assert_int_eq(ra.writes, 0);
    ck_assert(!(tether_stream_get_enabled(a) & EV_WRITE));
    tether_stream_free(a);
}
END_TEST

START_TEST(test_read_timeout)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    struct timeval rt = ms_tv(150);
    tether_stream_set_timeouts(b, &rt, NULL);
    tether_stream_enable(b, EV_READ);
    long t0 = now_ms();
    ck_assert(run_until(&rb.done, 3000));
    long dt = now_ms() - t0;
    ck_assert_int_ge(dt, 130);
    ck_assert_int_lt(dt, 1500);
    ck_assert_int_eq(rb.what, BEV_EVENT_READING | BEV_EVENT_TIMEOUT);
    ck_assert_int_eq(rb.err, ETIMEDOUT);
    ck_assert(!(tether_stream_get_enabled(b) & EV_READ));
    tether_stream_free(b);
    close(sv[0]);
}
END_TEST

/* A timeout set to none while the read event was off must not come back. */
START_TEST(test_timeout_cleared)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    struct timeval rt = ms_tv(100);
    tether_stream_set_timeouts(b, &rt, NULL);
    tether_stream_enable(b, EV_READ);
    tether_stream_disable(b, EV_READ);
    tether_stream_set_timeouts(b, NULL, NULL);
    tether_stream_enable(b, EV_READ);
    ck_assert_int_eq(send(sv[0], "a", 1, 0), 1);
    ck_assert(run_until(&rb.reads, 1000));
    run_for(300);
    ck_assert_int_eq(rb.events, 0);
    tether_stream_free(b);
    close(sv[0]);
}
END_TEST

struct ticker {
    struct event *ev;
    int fd, left;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ticker *t = arg;
    if (t->left-- > 0)
        send(t->fd, "t", 1, MSG_DONTWAIT);
    else
        event_del(t->ev);
}

START_TEST(test_read_timeout_restarts_on_data)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, NULL, rec_event, &rb);
    struct timeval rt = ms_tv(150);
    tether_stream_set_timeouts(b, &rt, NULL);
    tether_stream_enable(b, EV_READ);
    /* A byte every 50 ms for 400 ms keeps the stream alive. */
    struct ticker t = {.fd = sv[0], .left = 8};
    t.ev = event_new(base, -1, EV_PERSIST, on_tick, &t);
    struct timeval every = ms_tv(50);
    event_add(t.ev, &every);
    long t0 = now_ms();
    ck_assert(run_until(&rb.done, 3000));
    ck_assert_int_ge(now_ms() - t0, 500);
    ck_assert_int_eq(rb.what, BEV_EVENT_READING | BEV_EVENT_TIMEOUT);
    ck_assert_int_ge(rb.reads, 6);
    event_free(t.ev);
    tether_stream_free(b);
    close(sv[0]);
}
END_TEST

START_TEST(test_write_timeout)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct rec ra = {0};
    tether_stream_setcb(a, NULL, rec_write, rec_event, &ra);
    struct timeval wt = ms_tv(150);
    tether_stream_set_timeouts(a, NULL, &wt);
    add_pattern(tether_stream_get_output(a), 0, 8 * MB);
    long t0 = now_ms();
    ck_assert(run_until(&ra.done, 3000));
    long dt = now_ms() - t0;
    ck_assert_int_ge(dt, 130);
    ck_assert_int_lt(dt, 1500);
    ck_assert_int_eq(ra.what, BEV_EVENT_WRITING | BEV_EVENT_TIMEOUT);
    ck_assert_int_eq(ra.err, ETIMEDOUT);
    ck_assert(!(tether_stream_get_enabled(a) & EV_WRITE));
    tether_stream_free(a);
    close(sv[1]);
}
END_TEST

/* Connecting. */

START_TEST(test_connect)
{
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr, 4);
    struct tether_stream *c = tether_stream_new(loop, -1);
    ck_assert_int_eq(tether_stream_getfd(c), -1);
    struct rec rc = {0};
    tether_stream_setcb(c, rec_read, rec_write, rec_event, &rc);
    /* Queued before the connection is up, sent once it is. */
    evbuffer_add(tether_stream_get_output(c), "early", 5);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&addr, sizeof(addr)), 0);
    ck_assert_int_ge(tether_stream_getfd(c), 0);
    ck_assert_int_eq(rc.events, 0);
    ck_assert(run_until(&rc.connected, 2000));
    ck_assert_int_eq(rc.what, BEV_EVENT_CONNECTED);
    int sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    ck_assert_int_ge(sfd, 0);
    ck_assert_int_eq(wait_readable(sfd, 1000), 1);
    char buf[8];
    ck_assert_int_eq(recv(sfd, buf, sizeof(buf), 0), 5);
    ck_assert(memcmp(buf, "early", 5) == 0);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&addr, sizeof(addr)), -EINVAL);

    /* And the other way. */
    tether_stream_enable(c, EV_READ);
    ck_assert_int_eq(send(sfd, "back", 4, 0), 4);
    ck_assert(run_until(&rc.reads, 2000));
    ck_assert_uint_eq(evbuffer_get_length(tether_stream_get_input(c)), 4);
    ck_assert_int_eq(rc.events, 1);
    tether_stream_free(c);
    close(sfd);
    close(lfd);
}
END_TEST

START_TEST(test_connect_refused)
{
    /* A port that was free a moment ago and has no listener. */
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr, 1);
    close(lfd);
    struct tether_stream *c = tether_stream_new(loop, -1);
    struct rec rc = {0};
    tether_stream_setcb(c, rec_read, rec_write, rec_event, &rc);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&addr, sizeof(addr)), 0);
    ck_assert_int_eq(rc.events, 0);
    ck_assert(run_until(&rc.done, 2000));
    ck_assert_int_eq(rc.what, BEV_EVENT_ERROR);
    ck_assert_int_eq(rc.err, ECONNREFUSED);
    ck_assert_int_eq(rc.connected, 0);
    tether_stream_free(c);
}
END_TEST

START_TEST(test_connect_refused_at_once)
{
    /* A bound, not listening local socket: connect() itself fails. */
    int ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int n = snprintf(sun.sun_path + 1, sizeof(sun.sun_path) - 1, "tether-stream-%d", getpid());
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    ck_assert_int_eq(bind(ufd, (struct sockaddr *)&sun, len), 0);
    struct tether_stream *c = tether_stream_new(loop, -1);
    struct rec rc = {0};
    tether_stream_setcb(c, rec_read, rec_write, rec_event, &rc);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&sun, len), 0);
    ck_assert_int_eq(rc.events, 0);
    ck_assert(run_until(&rc.done, 2000));
    ck_assert_int_eq(rc.what, BEV_EVENT_ERROR);
    ck_assert_int_eq(rc.err, ECONNREFUSED);
    tether_stream_free(c);
    close(ufd);
}
END_TEST

START_TEST(test_connect_now_unix)
{
    /* A local listener accepts connect() at once: CONNECTED still comes from the loop. */
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int n = snprintf(sun.sun_path + 1, sizeof(sun.sun_path) - 1, "tether-stream-l-%d", getpid());
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sun, len), 0);
    ck_assert_int_eq(listen(lfd, 4), 0);
    struct tether_stream *c = tether_stream_new(loop, -1);
    struct rec rc = {0};
    tether_stream_setcb(c, rec_read, rec_write, rec_event, &rc);
    evbuffer_add(tether_stream_get_output(c), "hi", 2);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&sun, len), 0);
    ck_assert_int_eq(rc.events, 0);
    ck_assert(run_until(&rc.connected, 2000));
    int sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    ck_assert_int_eq(wait_readable(sfd, 1000), 1);
    char buf[4];
    ck_assert_int_eq(recv(sfd, buf, sizeof(buf), 0), 2);
    tether_stream_free(c);
    close(sfd);
    close(lfd);
}
END_TEST

START_TEST(test_connect_timeout)
{
    /* With backlog 0 and its queue full, Linux drops further SYNs. */
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr, 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        connect(fill[i], (struct sockaddr *)&addr, sizeof(addr));
    }
    run_for(50);
    struct tether_stream *c = tether_stream_new(loop, -1);
    struct rec rc = {0};
    tether_stream_setcb(c, rec_read, rec_write, rec_event, &rc);
    struct timeval wt = ms_tv(200);
    tether_stream_set_timeouts(c, NULL, &wt);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&addr, sizeof(addr)), 0);
    long t0 = now_ms();
    int ended = 0;
    while (!rc.connected && !rc.done && !ended)
        ended = !run_until(&rc.done, 3000) && !rc.connected;
    if (rc.connected) {
        fprintf(stderr, "test_connect_timeout: skipped, the full backlog did not drop the SYN\n");
    } else {
        ck_assert_int_eq(rc.done, 1);
        ck_assert_int_eq(rc.what, BEV_EVENT_WRITING | BEV_EVENT_TIMEOUT);
        ck_assert_int_ge(now_ms() - t0, 180);
    }
    tether_stream_free(c);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}
END_TEST

/* Freeing from inside callbacks. */

static void free_in_read(struct tether_stream *s, void *arg)
{
    struct rec *r = arg;
    rec_read(s, arg);
    /* Output added here is never written: the stream is gone before the flush. */
    evbuffer_add(tether_stream_get_output(s), "x", 1);
    tether_stream_free(s);
    r->freed = 1;
    r->done = 1;
}

START_TEST(test_free_in_read)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, free_in_read, rec_write, rec_event, &rb);
    tether_stream_enable(b, EV_READ);
    ck_assert_int_eq(send(sv[0], "data", 4, 0), 4);
    ck_assert(run_until(&rb.done, 2000));
    run_for(50);
    ck_assert_int_eq(rb.reads, 1);
    ck_assert_int_eq(rb.after_free, 0);
    char c;
    ck_assert_int_eq(wait_readable(sv[0], 1000), 1);
    ck_assert_int_le(recv(sv[0], &c, 1, MSG_DONTWAIT), 0); /* closed, "x" never sent */
    close(sv[0]);
}
END_TEST

static void free_in_write(struct tether_stream *s, void *arg)
{
    struct rec *r = arg;
    rec_write(s, arg);
    tether_stream_free(s);
    r->freed = 1;
    r->done = 1;
}

START_TEST(test_free_in_write)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct rec ra = {0};
    tether_stream_setcb(a, rec_read, free_in_write, rec_event, &ra);
    tether_stream_enable(a, EV_READ);
    evbuffer_add(tether_stream_get_output(a), "data", 4);
    ck_assert(run_until(&ra.done, 2000));
    run_for(50);
    ck_assert_int_eq(ra.writes, 1);
    ck_assert_int_eq(ra.after_free, 0);
    close(sv[1]);
}
END_TEST

/* Also from a write callback after an EV_WRITE wait (not the flush). */
START_TEST(test_free_in_write_after_wait)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct rec ra = {0};
    tether_stream_setcb(a, rec_read, free_in_write, rec_event, &ra);
    tether_stream_setwatermark(a, EV_WRITE, 65536, 0);
    add_pattern(tether_stream_get_output(a), 0, 2 * MB);
    run_for(30);
    ck_assert_int_eq(ra.writes, 0);
    struct drain d = {0};
    d.ev = event_new(base, sv[1], EV_READ | EV_PERSIST, on_drain, &d);
    event_add(d.ev, NULL);
    ck_assert(run_until(&ra.done, 5000));
    run_for(30);
    ck_assert_int_eq(ra.writes, 1);
    ck_assert_int_eq(ra.after_free, 0);
    event_free(d.ev);
    close(sv[1]);
}
END_TEST

static void free_in_event(struct tether_stream *s, short what, void *arg)
{
    struct rec *r = arg;
    rec_event(s, what, arg);
    tether_stream_free(s);
    r->freed = 1;
    r->done = 1;
}

START_TEST(test_free_in_event)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, rec_write, free_in_event, &rb);
    tether_stream_enable(b, EV_READ);
    evbuffer_add(tether_stream_get_output(b), "unsent", 6);
    close(sv[0]);
    ck_assert(run_until(&rb.done, 2000));
    run_for(50);
    ck_assert_int_eq(rb.events, 1);
    ck_assert_int_eq(rb.after_free, 0);
}
END_TEST

START_TEST(test_free_in_connected)
{
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr, 4);
    struct tether_stream *c = tether_stream_new(loop, -1);
    struct rec rc = {0};
    tether_stream_setcb(c, rec_read, rec_write, free_in_event, &rc);
    evbuffer_add(tether_stream_get_output(c), "unsent", 6);
    tether_stream_enable(c, EV_READ);
    ck_assert_int_eq(tether_stream_connect(c, (struct sockaddr *)&addr, sizeof(addr)), 0);
    ck_assert(run_until(&rc.done, 2000));
    ck_assert_int_eq(rc.connected, 1);
    run_for(50);
    ck_assert_int_eq(rc.events, 1);
    ck_assert_int_eq(rc.after_free, 0);
    int sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    ck_assert_int_eq(wait_readable(sfd, 1000), 1);
    char buf[8];
    ck_assert_int_eq(recv(sfd, buf, sizeof(buf), 0), 0); /* closed before writing */
    close(sfd);
    close(lfd);
}
END_TEST

START_TEST(test_free_in_timeout)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct rec rb = {0};
    tether_stream_setcb(b, rec_read, rec_write, free_in_event, &rb);
    struct timeval t = ms_tv(100);
    tether_stream_set_timeouts(b, &t, &t);
    tether_stream_enable(b, EV_READ);
    ck_assert(run_until(&rb.done, 2000));
    ck_assert_int_eq(rb.what, BEV_EVENT_READING | BEV_EVENT_TIMEOUT);
    run_for(250);
    ck_assert_int_eq(rb.events, 1);
    ck_assert_int_eq(rb.after_free, 0);
    close(sv[0]);
}
END_TEST

/* A callback of one stream frees another that has a flush pending and input ready. */
struct pair_ctx {
    struct tether_stream *victim;
    struct rec *vrec;
    int done;
};

static void free_other(struct tether_stream *s, void *arg)
{
    struct pair_ctx *p = arg;
    evbuffer_add(tether_stream_get_output(p->victim), "never", 5);
    tether_stream_free(p->victim);
    p->vrec->freed = 1;
    p->done = 1;
    tether_stream_setcb(s, NULL, NULL, NULL, NULL);
}

START_TEST(test_free_other)
{
    int sa[2], sb[2];
    socket_pair(sa);
    socket_pair(sb);
    struct tether_stream *a = tether_stream_new(loop, sa[1]);
    struct tether_stream *b = tether_stream_new(loop, sb[1]);
    struct rec rb = {0};
    struct pair_ctx p = {.victim = b, .vrec = &rb};
    tether_stream_setcb(a, free_other, NULL, NULL, &p);
    tether_stream_setcb(b, rec_read, rec_write, rec_event, &rb);
    tether_stream_enable(a, EV_READ);
    tether_stream_enable(b, EV_READ);
    /* b's input is ready in the same turn as a's. */
    ck_assert_int_eq(send(sb[0], "b", 1, 0), 1);
    ck_assert_int_eq(send(sa[0], "a", 1, 0), 1);
    ck_assert(run_until(&p.done, 2000));
    run_for(50);
    ck_assert_int_eq(rb.after_free, 0);
    char buf[8];
    ck_assert_int_eq(wait_readable(sb[0], 1000), 1);
    ck_assert_int_le(recv(sb[0], buf, sizeof(buf), MSG_DONTWAIT), 0);
    tether_stream_free(a);
    close(sa[0]);
    close(sb[0]);
}
END_TEST

/* Speculative writes: a write that completes at once never registers EV_WRITE. */
struct pingpong {
    int n, limit, done;
    int added_min, added_max; /* events registered with the base, seen in callbacks */
};

static void pp_read(struct tether_stream *s, void *arg)
{
    struct pingpong *p = arg;
    struct evbuffer *in = tether_stream_get_input(s);
    while (evbuffer_get_length(in) >= 4) {
        evbuffer_drain(in, 4);
        int added = event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED);
        if (added > p->added_max)
            p->added_max = added;
        if (p->added_min == 0 || added < p->added_min)
            p->added_min = added;
        if (++p->n >= p->limit) {
            p->done = 1;
            return;
        }
        evbuffer_add(tether_stream_get_output(s), "ping", 4);
    }
}

static void bev_pp_read(struct bufferevent *bev, void *arg)
{
    struct pingpong *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (evbuffer_get_length(in) >= 4) {
        evbuffer_drain(in, 4);
        if (++p->n >= p->limit) {
            p->done = 1;
            return;
        }
        evbuffer_add(bufferevent_get_output(bev), "ping", 4);
    }
}

START_TEST(test_speculative_write)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *a = tether_stream_new(loop, sv[0]);
    struct tether_stream *b = tether_stream_new(loop, sv[1]);
    struct pingpong p = {.limit = 2000};
    tether_stream_setcb(a, pp_read, NULL, NULL, &p);
    tether_stream_setcb(b, pp_read, NULL, NULL, &p);
    tether_stream_enable(a, EV_READ);
    tether_stream_enable(b, EV_READ);
    event_base_loop(base, EVLOOP_NONBLOCK);
    epoll_ctl_calls = 0;
    counting = 1;
    evbuffer_add(tether_stream_get_output(a), "ping", 4);
    ck_assert(run_until(&p.done, 10000));
    counting = 0;
    long ours = epoll_ctl_calls;
    /* The two read events (and the test's deadline), never a write event. */
    ck_assert_int_gt(p.added_min, 0);
    ck_assert_int_eq(p.added_max, p.added_min);
    tether_stream_free(a);
    tether_stream_free(b);

    /* The same 1000 round trips on bufferevents, for comparison. */
    socket_pair(sv);
    struct bufferevent *x = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    struct bufferevent *y = bufferevent_socket_new(base, sv[1], BEV_OPT_CLOSE_ON_FREE);
    struct pingpong q = {.limit = 2000};
    bufferevent_setcb(x, bev_pp_read, NULL, NULL, &q);
    bufferevent_setcb(y, bev_pp_read, NULL, NULL, &q);
    bufferevent_enable(x, EV_READ);
    bufferevent_enable(y, EV_READ);
    event_base_loop(base, EVLOOP_NONBLOCK);
    epoll_ctl_calls = 0;
    counting = 1;
    evbuffer_add(bufferevent_get_output(x), "ping", 4);
    ck_assert(run_until(&q.done, 10000));
    counting = 0;
    long theirs = epoll_ctl_calls;
    bufferevent_free(x);
    bufferevent_free(y);
    fprintf(stderr, "epoll_ctl calls for 1000 round trips: streams %ld, bufferevents %ld\n", ours,
            theirs);
    if (theirs > 0)
        ck_assert_int_le(ours, 4);
    else
        fprintf(stderr, "test_speculative_write: epoll_ctl not observable, count not checked\n");
}
END_TEST

/* TLS. */

static SSL_CTX *server_ctx, *client_ctx;

static void tls_setup(void)
{
    setup();
    EVP_PKEY *key = EVP_EC_gen("P-256");
    ck_assert_ptr_nonnull(key);
    X509 *crt = X509_new();
    X509_set_version(crt, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(crt), 1);
    X509_gmtime_adj(X509_getm_notBefore(crt), -60);
    X509_gmtime_adj(X509_getm_notAfter(crt), 3600);
    X509_set_pubkey(crt, key);
    X509_NAME *name = X509_get_subject_name(crt);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(crt, name);
    ck_assert_int_gt(X509_sign(crt, key, EVP_sha256()), 0);
    server_ctx = SSL_CTX_new(TLS_server_method());
    ck_assert_int_eq(SSL_CTX_use_certificate(server_ctx, crt), 1);
    ck_assert_int_eq(SSL_CTX_use_PrivateKey(server_ctx, key), 1);
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    X509_free(crt);
    EVP_PKEY_free(key);
}

static void tls_teardown(void)
{
    SSL_CTX_free(server_ctx);
    SSL_CTX_free(client_ctx);
    teardown();
}

static void tls_pair(struct tether_stream **srv, struct tether_stream **cli, int sv[2])
{
    socket_pair(sv);
    *srv = tether_stream_new_tls(loop, sv[0], SSL_new(server_ctx), 1);
    *cli = tether_stream_new_tls(loop, sv[1], SSL_new(client_ctx), 0);
    ck_assert_ptr_nonnull(*srv);
    ck_assert_ptr_nonnull(*cli);
}

static void wait_connected(struct rec *rs, struct rec *rc)
{
    int both = 0;
    for (int i = 0; i < 200 && !both; i++) {
        run_for(10);
        both = rs->connected && rc->connected;
    }
    ck_assert(both);
}

START_TEST(test_tls_echo)
{
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct rec rs = {0}, rc = {0};
    tether_stream_setcb(srv, NULL, NULL, rec_event, &rs);
    tether_stream_setcb(cli, NULL, NULL, rec_event, &rc);
    wait_connected(&rs, &rc);
    ck_assert_int_eq(rs.done + rc.done, 0);
    /* 1 MB from the client, echoed back by the server. */
    run_echo_flow(cli, srv, 1 * MB, 30000);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

START_TEST(test_tls_early_output)
{
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct rec rs = {.got = evbuffer_new(), .expect = 5};
    tether_stream_setcb(srv, collect, NULL, rec_event, &rs);
    tether_stream_enable(srv, EV_READ);
    evbuffer_add(tether_stream_get_output(cli), "early", 5);
    ck_assert(run_until(&rs.done, 3000));
    ck_assert_int_eq(rs.connected, 1);
    ck_assert(memcmp(evbuffer_pullup(rs.got, -1), "early", 5) == 0);
    evbuffer_free(rs.got);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

/* A high watermark below a record's size leaves decrypted data in the SSL
   object; it must come out when the input is drained. */
START_TEST(test_tls_pending_under_watermark)
{
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct rec rs = {.high = 1000};
    tether_stream_setcb(srv, rec_read, NULL, rec_event, &rs);
    tether_stream_setwatermark(srv, EV_READ, 0, 1000);
    tether_stream_enable(srv, EV_READ);
    add_pattern(tether_stream_get_output(cli), 0, 200000);
    struct slow w = {0};
    slow_start(&w, tether_stream_get_input(srv), 200000, 1);
    ck_assert(run_until(&w.done, 20000));
    ck_assert_int_eq(w.bad, 0);
    ck_assert_int_eq(rs.over_high, 0);
    ck_assert_int_eq(rs.done, 0);
    event_free(w.ev);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

/*
 * With read-ahead and small records, the SSL object holds many records the
 * socket no longer signals: every one must be read out.
 */
static void small_records(void)
{
    SSL_CTX_set_read_ahead(server_ctx, 1);
    SSL_CTX_set_max_send_fragment(client_ctx, 512);
}

START_TEST(test_tls_read_ahead)
{
    small_records();
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct flow fs = {.total = 1 * MB};
    tether_stream_setcb(srv, flow_sink, NULL, flow_event, &fs);
    tether_stream_enable(srv, EV_READ);
    add_pattern(tether_stream_get_output(cli), 0, 1 * MB);
    ck_assert(run_until(&fs.done, 20000));
    ck_assert_int_eq(fs.bad, 0);
    ck_assert_uint_eq(fs.recvd, 1 * MB);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

/* Data that arrives with the client's last handshake flight. */
START_TEST(test_tls_read_ahead_early)
{
    small_records();
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct rec rs = {.got = evbuffer_new(), .expect = 5};
    tether_stream_setcb(srv, collect, NULL, rec_event, &rs);
    tether_stream_enable(srv, EV_READ);
    evbuffer_add(tether_stream_get_output(cli), "early", 5);
    ck_assert(run_until(&rs.done, 3000));
    ck_assert_uint_eq(evbuffer_get_length(rs.got), 5);
    evbuffer_free(rs.got);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

/* Reading disabled after each callback and enabled again from a timer. */
static void sink_then_pause(struct tether_stream *s, void *arg)
{
    flow_sink(s, arg);
    tether_stream_disable(s, EV_READ);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    tether_stream_enable(arg, EV_READ);
}

START_TEST(test_tls_reenable_reads_buffered)
{
    small_records();
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    /* Few enough records for one read-ahead to empty the socket. */
    struct flow fs = {.total = 4096, .high = 100};
    tether_stream_setcb(srv, sink_then_pause, NULL, flow_event, &fs);
    tether_stream_setwatermark(srv, EV_READ, 0, 100);
    tether_stream_enable(srv, EV_READ);
    add_pattern(tether_stream_get_output(cli), 0, fs.total);
    struct event *t = event_new(base, -1, EV_PERSIST, on_resume, srv);
    struct timeval every = ms_tv(2);
    event_add(t, &every);
    ck_assert(run_until(&fs.done, 20000));
    ck_assert_int_eq(fs.bad, 0);
    ck_assert_int_eq(fs.over_high, 0);
    event_free(t);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

START_TEST(test_tls_dirty_shutdown_is_eof)
{
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct rec rs = {0}, rc = {0};
    tether_stream_setcb(srv, rec_read, NULL, rec_event, &rs);
    tether_stream_setcb(cli, rec_read, NULL, rec_event, &rc);
    tether_stream_enable(srv, EV_READ);
    wait_connected(&rs, &rc);
    /* The transport ends with no close_notify. */
    shutdown(tether_stream_getfd(cli), SHUT_RDWR);
    ck_assert(run_until(&rs.done, 2000));
    ck_assert_int_eq(rs.what, BEV_EVENT_READING | BEV_EVENT_EOF);
    tether_stream_free(cli);
    tether_stream_free(srv);
}
END_TEST

START_TEST(test_tls_close_notify_is_eof)
{
    int sv[2];
    struct tether_stream *srv, *cli;
    tls_pair(&srv, &cli, sv);
    struct rec rs = {0}, rc = {0};
    tether_stream_setcb(srv, rec_read, NULL, rec_event, &rs);
    tether_stream_setcb(cli, rec_read, NULL, rec_event, &rc);
    tether_stream_enable(srv, EV_READ);
    wait_connected(&rs, &rc);
    evbuffer_add(tether_stream_get_output(cli), "last", 4);
    tether_stream_flush(cli);
    tether_stream_free(cli);
    ck_assert(run_until(&rs.done, 2000));
    ck_assert_int_eq(rs.what, BEV_EVENT_READING | BEV_EVENT_EOF);
    ck_assert_uint_eq(evbuffer_get_length(tether_stream_get_input(srv)), 4);
    tether_stream_free(srv);
}
END_TEST

START_TEST(test_tls_garbage_is_error)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *srv = tether_stream_new_tls(loop, sv[0], SSL_new(server_ctx), 1);
    struct rec rs = {0};
    tether_stream_setcb(srv, rec_read, NULL, rec_event, &rs);
    tether_stream_enable(srv, EV_READ);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(send(sv[1], junk, sizeof(junk) - 1, 0), (ssize_t)sizeof(junk) - 1);
    ck_assert(run_until(&rs.done, 2000));
    ck_assert_int_eq(rs.what, BEV_EVENT_READING | BEV_EVENT_ERROR);
    ck_assert_int_eq(rs.err, EPROTO);
    ck_assert_int_eq(rs.connected, 0);
    ck_assert_uint_eq(ERR_peek_error(), 0);
    tether_stream_free(srv);
    close(sv[1]);
}
END_TEST

/* A raw, non-blocking client SSL on fd, driven while the loop runs. */
static SSL *raw_client(int fd)
{
    SSL *ssl = SSL_new(client_ctx);
    ck_assert_ptr_nonnull(ssl);
    ck_assert_int_eq(SSL_set_fd(ssl, fd), 1);
    int r = 0;
    for (int i = 0; i < 300 && (r = SSL_connect(ssl)) != 1; i++) {
        ck_assert_int_eq(SSL_get_error(ssl, r), SSL_ERROR_WANT_READ);
        run_for(10);
    }
    ck_assert_int_eq(r, 1);
    return ssl;
}

/* SSL_read into buf while the loop runs: what one record held. */
static int raw_read(SSL *ssl, char *buf, int len)
{
    int r = 0;
    for (int i = 0; i < 300 && (r = SSL_read(ssl, buf, len)) <= 0; i++) {
        ck_assert_int_eq(SSL_get_error(ssl, r), SSL_ERROR_WANT_READ);
        run_for(10);
    }
    return r;
}

/* Output in several small segments (a head, then a body) leaves as one record. */
START_TEST(test_tls_small_segments_one_record)
{
    int sv[2];
    socket_pair(sv);
    struct tether_stream *srv = tether_stream_new_tls(loop, sv[0], SSL_new(server_ctx), 1);
    struct rec rs = {0};
    tether_stream_setcb(srv, NULL, NULL, rec_event, &rs);
    SSL *cli = raw_client(sv[1]);
    ck_assert(run_until(&rs.connected, 3000));

    struct evbuffer *out = tether_stream_get_output(srv), *body = evbuffer_new();
    evbuffer_add(body, "body", 4);
    evbuffer_add(out, "head-", 5);
    evbuffer_add_buffer(out, body);
    ck_assert_int_ge(evbuffer_peek(out, -1, NULL, NULL, 0), 2);
    char buf[64];
    ck_assert_int_eq(raw_read(cli, buf, sizeof(buf)), 9);
    ck_assert(memcmp(buf, "head-body", 9) == 0);

    /* More than a record: full records, then the rest. */
    char big[20000];
    memset(big, 'x', sizeof(big));
    evbuffer_add(out, "h", 1);
    evbuffer_add_reference(out, big, sizeof(big), NULL, NULL);
    int got = 0, n;
    char rbuf[32768];
    while (got < 1 + (int)sizeof(big) && (n = raw_read(cli, rbuf, sizeof(rbuf))) > 0) {
        ck_assert_int_le(n, 16384);
        if (got == 0)
            ck_assert_int_eq(n, 16384);
        got += n;
    }
    ck_assert_int_eq(got, 1 + (int)sizeof(big));
    ck_assert_uint_eq(evbuffer_get_length(out), 0);

    evbuffer_free(body);
    SSL_free(cli);
    tether_stream_free(srv);
    close(sv[1]);
}
END_TEST

/* A TLS client that connects over TCP; the server side is accepted raw. */
struct acceptor {
    int lfd;
    struct tether_stream *srv;
    struct rec *rs;
};

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    struct acceptor *a = arg;
    int sfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (sfd < 0 || a->srv)
        return;
    a->srv = tether_stream_new_tls(loop, sfd, SSL_new(server_ctx), 1);
    tether_stream_setcb(a->srv, echo, NULL, rec_event, a->rs);
    tether_stream_enable(a->srv, EV_READ);
}

START_TEST(test_tls_connect)
{
    struct sockaddr_in addr;
    struct rec rs = {0};
    struct acceptor acc = {.lfd = tcp_listener(&addr, 4), .rs = &rs};
    struct event *lev = event_new(base, acc.lfd, EV_READ | EV_PERSIST, on_accept, &acc);
    event_add(lev, NULL);
    struct tether_stream *cli = tether_stream_new_tls(loop, -1, SSL_new(client_ctx), 0);
    struct rec rc = {.got = evbuffer_new(), .expect = 10};
    tether_stream_setcb(cli, collect, NULL, rec_event, &rc);
    tether_stream_enable(cli, EV_READ);
    struct timeval wt = ms_tv(2000);
    tether_stream_set_timeouts(cli, NULL, &wt);
    ck_assert_int_eq(tether_stream_connect(cli, (struct sockaddr *)&addr, sizeof(addr)), 0);
    evbuffer_add(tether_stream_get_output(cli), "0123456789", 10);
    ck_assert(run_until(&rc.done, 3000));
    ck_assert_int_eq(rc.connected, 1);
    ck_assert_int_eq(rs.connected, 1);
    ck_assert(memcmp(evbuffer_pullup(rc.got, -1), "0123456789", 10) == 0);
    evbuffer_free(rc.got);
    tether_stream_free(cli);
    tether_stream_free(acc.srv);
    event_free(lev);
    close(acc.lfd);
}
END_TEST

static Suite *stream_suite(void)
{
    Suite *s = suite_create("net/stream");
    TCase *tc = tcase_create("plain");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_echo);
    tcase_add_test(tc, test_large_backpressure);
    tcase_add_test(tc, test_write_lowmark);
    tcase_add_test(tc, test_read_watermark);
    tcase_add_test(tc, test_read_lowmark);
    tcase_add_test(tc, test_output_held_while_write_disabled);
    tcase_add_test(tc, test_flush_now);
    tcase_add_test(tc, test_eof);
    tcase_add_test(tc, test_read_error);
    tcase_add_test(tc, test_write_error);
    tcase_add_test(tc, test_read_timeout);
    tcase_add_test(tc, test_read_timeout_restarts_on_data);
    tcase_add_test(tc, test_timeout_cleared);
    tcase_add_test(tc, test_write_timeout);
    tcase_add_test(tc, test_speculative_write);
    suite_add_tcase(s, tc);

    tc = tcase_create("connect");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_connect);
    tcase_add_test(tc, test_connect_refused);
    tcase_add_test(tc, test_connect_refused_at_once);
    tcase_add_test(tc, test_connect_now_unix);
    tcase_add_test(tc, test_connect_timeout);
    suite_add_tcase(s, tc);

    tc = tcase_create("free");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_free_in_read);
    tcase_add_test(tc, test_free_in_write);
    tcase_add_test(tc, test_free_in_write_after_wait);
    tcase_add_test(tc, test_free_in_event);
    tcase_add_test(tc, test_free_in_connected);
    tcase_add_test(tc, test_free_in_timeout);
    tcase_add_test(tc, test_free_other);
    suite_add_tcase(s, tc);

    tc = tcase_create("tls");
    tcase_add_checked_fixture(tc, tls_setup, tls_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_tls_echo);
    tcase_add_test(tc, test_tls_early_output);
    tcase_add_test(tc, test_tls_pending_under_watermark);
    tcase_add_test(tc, test_tls_read_ahead);
    tcase_add_test(tc, test_tls_read_ahead_early);
    tcase_add_test(tc, test_tls_reenable_reads_buffered);
    tcase_add_test(tc, test_tls_dirty_shutdown_is_eof);
    tcase_add_test(tc, test_tls_close_notify_is_eof);
    tcase_add_test(tc, test_tls_garbage_is_error);
    tcase_add_test(tc, test_tls_small_segments_one_record);
    tcase_add_test(tc, test_tls_connect);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(stream_suite());
}
