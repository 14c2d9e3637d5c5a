/*
 * Private to src/net: the stream object and the calls between stream.c
 * (the state machine, plain sockets, the public API) and stream_tls.c (the
 * handshake, SSL_read and SSL_write). Everything belongs to one loop thread.
 */
#ifndef TETHER_NET_STREAM_INT_H
#define TETHER_NET_STREAM_INT_H

#include <stdbool.h>
#include <sys/queue.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>

#include "tether/net.h"

enum stream_state {
    ST_IDLE,       /* no socket yet: waiting for tether_stream_connect() */
    ST_CONNECTING, /* connect() under way */
    ST_CONNECTED,  /* connect() succeeded at once; CONNECTED not delivered yet */
    ST_HANDSHAKE,  /* TLS handshake under way */
    ST_OPEN,
    ST_FAILED, /* connect, handshake or TLS failed: no more I/O */
};

/* Work for the flush event besides writing the output. */
enum {
    P_EVENT = 1,     /* deliver pend_what with errno pend_err */
    P_CONNECTED = 2, /* deliver CONNECTED of an immediate connect() */
    P_HANDSHAKE = 4, /* start a client handshake */
    P_READ = 8,      /* TLS: decrypted input waits inside the SSL object */
    P_WRITECB = 16,  /* tether_stream_flush() drained the output */
};

/*
 * One per callback running on a stream, on the caller's stack: free marks
 * them all dead, and the code after the callback leaves without touching
 * the stream.
 */
struct guard {
    struct guard *up;
    bool dead;
};

struct tether_stream_loop {
    struct event_base *base; /* borrowed */
    struct event flush;      /* active when dirty is not empty */
    TAILQ_HEAD(, tether_stream) dirty;
    bool armed;   /* flush is active */
    bool running; /* on_flush is walking dirty */
};

struct tether_stream {
    struct tether_stream_loop *loop;
    int fd;
    SSL *ssl;
    enum stream_state state;
    short enabled; /* EV_READ | EV_WRITE, as the user set them */
    short hs_want; /* EV_READ or EV_WRITE the handshake waits for */
    bool accepting;
    bool assigned;       /* rev and wev are assigned to fd */
    bool rev_on, wev_on; /* ... and registered */
    bool rsusp;          /* reading stopped at the high watermark */
    bool wblocked;       /* the output waits for EV_WRITE */
    bool wwant_read;     /* TLS: the write waits for readability */
    bool rwant_write;    /* TLS: the read waits for writability */
    bool broken;         /* TLS: fatal error, send no close_notify */
    bool unclean_eof;    /* TLS: the peer closed without close_notify */
    bool shut_after;     /* TLS: close_notify right behind the output */
    bool shut_sent;      /* TLS: close_notify queued or sent */
    bool dirty;          /* on loop->dirty */
    unsigned pend;       /* P_* */
    short pend_what;
    int pend_err;
    struct event rev, wev;
    struct timeval rt, wt;
    bool has_rt, has_wt;
    int outq;            /* send queue at the last write timeout, -1 after progress */
    size_t rlow, rhigh, wlow;
    struct evbuffer *input, *output;
    /* TLS records made but not yet written (accepted streams only): what
       one loop turn produces leaves in one write. NULL: straight to the socket. */
    struct evbuffer *tls_out;
    struct evbuffer_cb_entry *in_cb, *out_cb;
    tether_stream_data_cb readcb, writecb;
    tether_stream_event_cb eventcb;
    void *arg;
    struct guard *guard; /* innermost callback running, or NULL */
    TAILQ_ENTRY(tether_stream) link;
};

/* stream.c */
struct tether_stream *stream_alloc(struct tether_stream_loop *l);
void stream_release(struct tether_stream *s);
void stream_attach(struct tether_stream *s, int fd);
void stream_sync(struct tether_stream *s);
void stream_mark(struct tether_stream *s, unsigned pend);
size_t stream_room(const struct tether_stream *s);
/* These run callbacks: false means the stream was freed by one of them. */
bool stream_run_event(struct tether_stream *s, short what, int err);
bool stream_read(struct tether_stream *s);
bool stream_write(struct tether_stream *s);
bool stream_opened(struct tether_stream *s);
ssize_t stream_send(int fd, struct evbuffer *b);

/* stream_tls.c */
int stream_tls_set_fd(struct tether_stream *s, int fd);
ssize_t stream_tls_read(struct tether_stream *s, short *what, int *err);
ssize_t stream_tls_write(struct tether_stream *s, int *err);
void stream_tls_handshake(struct tether_stream *s);
void stream_tls_close(struct tether_stream *s);
ssize_t stream_tls_push(struct tether_stream *s);
void stream_tls_send_close_notify(struct tether_stream *s);

/* Output not yet handed to the socket: the user's bytes and TLS records. */
static inline size_t stream_pending(const struct tether_stream *s)
{
    return evbuffer_get_length(s->output) + (s->tls_out ? evbuffer_get_length(s->tls_out) : 0);
}

#endif
