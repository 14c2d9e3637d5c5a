/*
 * TLS streams: the handshake, SSL_read and SSL_write on top of the stream
 * machine in stream.c. Either direction may wait on the other (a read that
 * must write, a write that must read); a close without close_notify reads as
 * EOF, since HTTP framing tells a cut message from a whole one.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>

#include <event2/buffer.h>
#include <openssl/err.h>

#include "stream-int.h"

/* Plaintext bytes in a full TLS record (RFC 8446 5.1). */
#define TLS_RECORD_MAX 16384
/* Records held for the socket at most: past it SSL_write waits. */
#define TLS_OUT_MAX (64 * 1024)

/*
 * An accepted stream's records go to tls_out through this BIO, and leave in
 * one write per loop turn (stream_tls_push): a flight and the tickets after
 * it, a response and the close_notify behind it. OpenSSL's flushes are
 * no-ops; the stream decides when to write.
 */
static BIO_METHOD *out_method;

static int out_write(BIO *b, const char *data, int len)
{
    struct tether_stream *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (evbuffer_get_length(s->tls_out) >= TLS_OUT_MAX) {
        BIO_set_retry_write(b);
        return -1;
    }
    return evbuffer_add(s->tls_out, data, (size_t)len) == 0 ? len : -1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void out_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tether records");
    if (m && (BIO_meth_set_write(m, out_write) != 1 || BIO_meth_set_ctrl(m, out_ctrl) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    out_method = m;
}

/* Write the records held in tls_out: bytes written, or -1 with errno. */
ssize_t stream_tls_push(struct tether_stream *s)
{
    return s->tls_out ? stream_send(s->fd, s->tls_out) : 0;
}

/*
 * What a failed SSL call means, given SSL_get_error() e and the errno sys
 * saved right after the call: BEV_EVENT_EOF, or BEV_EVENT_ERROR with *err
 * set (the socket's errno, or EPROTO). A fatal error ends all I/O.
 */
static short failure(struct tether_stream *s, int e, int sys, int *err)
{
    unsigned long queued = ERR_peek_error();
    ERR_clear_error();
    if (e == SSL_ERROR_ZERO_RETURN) {
        *err = 0;
        return BEV_EVENT_EOF;
    }
    /* After SSL_ERROR_SYSCALL or _SSL nothing more may be said, not even close_notify. */
    s->broken = true;
    /* A close without close_notify (OpenSSL 3 says so; older ones report a
       bare EOF) ends the stream like a FIN: the caller's framing decides,
       and can ask whether it was clean. */
    if ((e == SSL_ERROR_SSL && ERR_GET_LIB(queued) == ERR_LIB_SSL &&
         ERR_GET_REASON(queued) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
        (e == SSL_ERROR_SYSCALL && queued == 0 && sys == 0)) {
        s->unclean_eof = true;
        *err = 0;
        return BEV_EVENT_EOF;
    }
    s->state = ST_FAILED;
    *err = e == SSL_ERROR_SYSCALL && queued == 0 ? sys : EPROTO;
    return BEV_EVENT_ERROR;
}

int stream_tls_set_fd(struct tether_stream *s, int fd)
{
    if (!s->tls_out) {
        if (SSL_set_fd(s->ssl, fd) != 1)
            goto fail;
        return 0;
    }
    BIO *b = BIO_new(out_method);
    if (!b)
        goto fail;
    BIO_set_data(b, s);
    BIO_set_init(b, 1);
    if (SSL_set_rfd(s->ssl, fd) != 1) {
        BIO_free(b);
        goto fail;
    }
    SSL_set0_wbio(s->ssl, b);
    return 0;
fail:
    ERR_clear_error();
    return -ENOMEM;
}

struct tether_stream *tether_stream_new_tls(struct tether_stream_loop *l, int fd, SSL *ssl,
                                            int accepting)
{
    struct tether_stream *s = stream_alloc(l);
    if (!s)
        return NULL;
    s->ssl = ssl;
    if (accepting) {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        pthread_once(&once, out_init);
        /* Without the method (no memory at start), records go straight out. */
        if (out_method && !(s->tls_out = evbuffer_new())) {
            stream_release(s);
            return NULL;
        }
    }
    if (fd >= 0 && stream_tls_set_fd(s, fd) < 0) {
        stream_release(s);
        return NULL;
    }
    s->accepting = accepting != 0;
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (s->accepting)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    if (fd < 0)
        return s;
    stream_attach(s, fd);
    s->state = ST_HANDSHAKE;
    /* Either side tries at once, from the loop: an accepting one usually
       has the ClientHello waiting (the worst is one read that finds none). */
    stream_mark(s, P_HANDSHAKE);
    return s;
}

void stream_tls_handshake(struct tether_stream *s)
{
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    int sys = errno;
    int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
    /* The flight, tickets or alert this step made, in one write. */
    if (stream_tls_push(s) < 0 && e != SSL_ERROR_SSL && e != SSL_ERROR_SYSCALL) {
        int err = errno;
        s->broken = true;
        s->state = ST_FAILED;
        stream_sync(s);
        stream_run_event(s, BEV_EVENT_READING | BEV_EVENT_ERROR, err);
        return;
    }
    if (r == 1) {
        if (!stream_opened(s))
            return;
        /* Application data that came with the last handshake flight. */
        if (SSL_has_pending(s->ssl))
            stream_read(s);
        return;
    }
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        s->hs_want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        stream_sync(s);
        return;
    }
    int err;
    short what = failure(s, e, sys, &err);
    s->state = ST_FAILED;
    stream_sync(s);
    stream_run_event(s, BEV_EVENT_READING | what, err);
}

/*
 * Read records into reserved input space while the SSL object holds more
 * and the high watermark allows: decrypted bytes raise no read event, so
 * none may be left behind unless reading is suspended (check_suspend and
 * tether_stream_enable fetch them later). Returns the bytes read; *what is
 * set on EOF or error.
 */
ssize_t stream_tls_read(struct tether_stream *s, short *what, int *err)
{
    bool was = s->rwant_write;
    ssize_t total = 0;
    s->rwant_write = false;
    for (;;) {
        size_t want = stream_room(s);
        if (want == 0)
            break;
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(s->input, (ev_ssize_t)want, &v, 1) < 1) {
            *what = BEV_EVENT_ERROR;
            *err = ENOMEM;
            break;
        }
        ERR_clear_error();
        int r = SSL_read(s->ssl, v.iov_base, (int)(v.iov_len < want ? v.iov_len : want));
        if (r > 0) {
            v.iov_len = (size_t)r;
            evbuffer_commit_space(s->input, &v, 1);
            total += r;
            if (SSL_has_pending(s->ssl))
                continue;
            break;
        }
        int sys = errno;
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE)
            s->rwant_write = true;
        else if (e != SSL_ERROR_WANT_READ)
            *what = failure(s, e, sys, err);
        break;
    }
    /* Records reading made (post-handshake messages) leave through the
       write path, which also tells the user once the output is gone. */
    if (s->tls_out && evbuffer_get_length(s->tls_out) > 0 && !s->wblocked) {
        s->wblocked = true;
        stream_sync(s);
    } else if (was != s->rwant_write) {
        stream_sync(s);
    }
    return total;
}

/*
 * SSL_write the output's first segments. After WANT_*, OpenSSL wants the
 * same bytes offered again, and no fewer: they stay at the front of the
 * output, which is drained only by what was written and grows only at its
 * end. With tls_out, the records made leave in one write, a close_notify
 * asked for (shut_after) behind them. Returns the progress made (bytes
 * taken or written; 0: none) or -1.
 */
ssize_t stream_tls_write(struct tether_stream *s, int *err)
{
    /* Records held from before go first; while the socket is full, no more. */
    ssize_t held = stream_tls_push(s);
    if (held < 0) {
        *err = errno;
        s->broken = true;
        return -1;
    }
    if (s->tls_out && evbuffer_get_length(s->tls_out) > 0) {
        s->wblocked = true;
        return held;
    }
    /* Small segments (a response head, then its body) leave as one record:
       one encryption, one write(), one TCP segment, where each SSL_write
       would make its own. Without memory the segments go one by one. */
    size_t len = evbuffer_get_length(s->output);
    size_t first = evbuffer_get_contiguous_space(s->output);
    if (first < len && first < TLS_RECORD_MAX)
        evbuffer_pullup(s->output, (ev_ssize_t)(len < TLS_RECORD_MAX ? len : TLS_RECORD_MAX));
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(s->output, -1, NULL, v, 16);
    size_t total = 0;
    bool failed = false;
    if (n > 16)
        n = 16;
    s->wwant_read = false;
    for (int i = 0; i < n; i++) {
        size_t off = 0;
        while (off < v[i].iov_len) {
            size_t chunk = v[i].iov_len - off;
            if (s->tls_out) {
                /* Bounded: tls_out holds at most TLS_OUT_MAX and one record more. */
                if (evbuffer_get_length(s->tls_out) >= TLS_OUT_MAX)
                    goto out;
                if (chunk > TLS_RECORD_MAX)
                    chunk = TLS_RECORD_MAX;
            }
            ERR_clear_error();
            int r = SSL_write(s->ssl, (char *)v[i].iov_base + off,
                              chunk > INT_MAX ? INT_MAX : (int)chunk);
            if (r > 0) {
                off += (size_t)r;
                total += (size_t)r;
                continue;
            }
            int sys = errno;
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                s->wwant_read = true;
            } else if (e != SSL_ERROR_WANT_WRITE) {
                failure(s, e, sys, err);
                if (*err == 0)
                    *err = EPIPE;
                failed = true;
            }
            goto out;
        }
    }
out:
    evbuffer_drain(s->output, total);
    if (!failed && s->shut_after && evbuffer_get_length(s->output) == 0)
        stream_tls_send_close_notify(s);
    ssize_t pushed = failed ? 0 : stream_tls_push(s);
    if (pushed < 0) {
        *err = errno;
        s->broken = true;
        failed = true;
    }
    s->wblocked = stream_pending(s) > 0;
    /* Progress, for the caller: user bytes taken, and held records written
       (records still in tls_out count as pending output). */
    return failed ? -1 : (ssize_t)total + held + pushed;
}

void stream_tls_send_close_notify(struct tether_stream *s)
{
    if (s->shut_sent || s->state != ST_OPEN || s->broken)
        return;
    ERR_clear_error();
    SSL_shutdown(s->ssl);
    ERR_clear_error();
    s->shut_sent = true;
}

void stream_tls_close(struct tether_stream *s)
{
    /* Best effort: one non-blocking try, no waiting for the peer's reply. */
    stream_tls_send_close_notify(s);
    stream_tls_push(s);
    ERR_clear_error();
    SSL_free(s->ssl);
}

bool tether_stream_unclean_eof(const struct tether_stream *s)
{
    return s->unclean_eof;
}
