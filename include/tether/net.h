/*
 * tether net: worker threads and listeners. Each worker runs its own
 * event_base and its own SO_REUSEPORT listening socket per `listen` entry,
 * so the kernel spreads connections across workers with no hand-off.
 * Accepted sockets are given to the proxy of that worker.
 */
#ifndef TETHER_NET_H
#define TETHER_NET_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct tether_proxy;
struct tether_net;

/*
 * Create cfg->workers workers, each with its event_base, a proxy worker and
 * its listeners (bound now, so errors such as EADDRINUSE surface before
 * tetherd reports itself started). proxy is borrowed and must outlive net.
 * Returns NULL on failure, after logging why.
 */
struct tether_net *tether_net_new(struct tether_proxy *proxy);

/* Start the worker threads. Returns 0 or -errno. */
int tether_net_start(struct tether_net *net);

/*
 * Begin a graceful stop from any thread: every worker closes its listeners
 * (new connections are refused), closes idle client connections and lets
 * in-flight requests finish; a worker's loop ends when it has no
 * connection left. Thread: any (wakes the workers through their bases).
 */
void tether_net_stop(struct tether_net *net);

/* Force every worker loop to end now (shutdown_timeout expired). Thread: any. */
void tether_net_break(struct tether_net *net);

/* Wait for the worker threads; returns when all have ended. */
void tether_net_join(struct tether_net *net);

/*
 * Wait for the worker threads until the CLOCK_REALTIME deadline. Returns 0
 * when all have ended, -ETIMEDOUT otherwise (those still running are left
 * for tether_net_break() and tether_net_join()).
 */
struct timespec;
int tether_net_join_until(struct tether_net *net, const struct timespec *deadline);

/*
 * A reload, in two steps around the proxy's: prepare binds the listen
 * addresses the new file adds (so a bad one fails the reload before
 * anything changes) and lists the changes; commit hands every worker its
 * new listener set (unchanged addresses keep their sockets and queues) and
 * the proxy's new config, and waits up to 1 s for them; abort drops what
 * prepare made. One reload at a time.
 */
struct tether_config;
struct tether_strlist;
int tether_net_reload_prepare(struct tether_net *net, const struct tether_config *ncfg,
                              struct tether_strlist *changes, struct tether_strlist *errors);
void tether_net_reload_commit(struct tether_net *net);
void tether_net_reload_abort(struct tether_net *net);

/* Frees a joined (or never started) net; accepts NULL. */
void tether_net_free(struct tether_net *net);

/*
 * Streams: a buffered, non-blocking TCP or TLS connection with the
 * semantics of the libevent bufferevent calls tether uses (callbacks,
 * watermarks, timeouts, BEV_EVENT_* flags), but with speculative I/O: output
 * is written directly once per loop turn and EV_WRITE is registered only
 * after the socket refused more; the read event stays registered while
 * reading is enabled; reads go straight into the input evbuffer without
 * asking the kernel how much is there. Everything here belongs to the thread
 * that runs the loop's event_base; nothing takes a lock. Plain streams never
 * raise SIGPIPE; TLS streams write through OpenSSL and need it ignored.
 */
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

struct evbuffer;
struct ssl_st;
struct timeval;
struct tether_stream;
struct tether_stream_loop;

/* Called with new input (read) or after output drained to the low mark (write). */
typedef void (*tether_stream_data_cb)(struct tether_stream *s, void *arg);
/*
 * Called on BEV_EVENT_CONNECTED, or on BEV_EVENT_EOF, _ERROR or _TIMEOUT
 * or'ed with BEV_EVENT_READING or _WRITING. On ERROR, errno holds the cause
 * (EPROTO for a TLS protocol failure); it is 0 on EOF and ETIMEDOUT on TIMEOUT.
 */
typedef void (*tether_stream_event_cb)(struct tether_stream *s, short what, void *arg);

/*
 * The per-thread context of streams: one per worker event_base, holding the
 * deferred flush. Returns NULL when out of memory. base is borrowed and must
 * outlive the loop.
 */
struct tether_stream_loop *tether_stream_loop_new(struct event_base *base);

/* Frees l once every stream made on it is freed; not from a callback. Accepts NULL. */
void tether_stream_loop_free(struct tether_stream_loop *l);

/*
 * A plain stream on the connected, non-blocking socket fd, or on no socket
 * yet (fd -1) for tether_stream_connect(). On success the stream owns fd
 * (closed by tether_stream_free); on failure (NULL, out of memory) the caller
 * still does. Writing is enabled and reading disabled, as for
 * bufferevent_socket_new().
 */
struct tether_stream *tether_stream_new(struct tether_stream_loop *l, int fd);

/*
 * A TLS stream over fd (non-blocking, or -1 for tether_stream_connect()) and
 * ssl, which is set up as a server (accepting 1) or client (0). The
 * handshake runs by itself and ends in BEV_EVENT_CONNECTED (on both sides).
 * A server's handshake is bounded by the read and write timeouts, a
 * client's, as part of connecting, by the write timeout alone. A peer that
 * closes without close_notify is reported as EOF. On success the stream
 * owns fd and ssl (a best-effort close_notify is sent on free); on failure
 * (NULL) the caller still does.
 */
struct tether_stream *tether_stream_new_tls(struct tether_stream_loop *l, int fd,
                                            struct ssl_st *ssl, int accepting);

/*
 * Start connecting a stream made with fd -1 to sa. Returns 0 when under way:
 * BEV_EVENT_CONNECTED (TLS: after the handshake) or BEV_EVENT_ERROR follows
 * from the loop, never from inside this call, also for an immediate refusal;
 * BEV_EVENT_WRITING|BEV_EVENT_TIMEOUT when the write timeout passes first.
 * Returns -errno when no attempt could be made (no event follows), -EINVAL
 * if the stream already has a socket. Output queued before the connection
 * is up is sent once it is.
 */
int tether_stream_connect(struct tether_stream *s, const struct sockaddr *sa, socklen_t len);

/* Set the callbacks (any may be NULL) and their argument; callable any time. */
void tether_stream_setcb(struct tether_stream *s, tether_stream_data_cb readcb,
                         tether_stream_data_cb writecb, tether_stream_event_cb eventcb,
                         void *arg);

/*
 * Enable or disable reading and/or writing (EV_READ, EV_WRITE). Enabling
 * restarts the matching timeout. Disabled writing keeps output queued.
 * Both return 0.
 */
int tether_stream_enable(struct tether_stream *s, short what);
int tether_stream_disable(struct tether_stream *s, short what);

/* EV_READ and/or EV_WRITE as currently enabled. */
short tether_stream_get_enabled(struct tether_stream *s);

/*
 * Watermarks, for EV_READ and/or EV_WRITE. Read: the read callback runs only
 * once input holds at least low bytes; at high (0: no limit) reading stops
 * and resumes by itself when input is drained below it. Write: the write
 * callback runs when a write leaves at most low bytes queued; high is
 * ignored, as for a socket bufferevent.
 */
void tether_stream_setwatermark(struct tether_stream *s, short what, size_t low, size_t high);

/*
 * Read and write timeouts, NULL (or zero) for none. Reading enabled and nothing read
 * for rt: READING|TIMEOUT and reading is disabled. Output waiting and nothing
 * written for wt: WRITING|TIMEOUT and writing is disabled; wt also bounds
 * tether_stream_connect(). Returns 0.
 */
int tether_stream_set_timeouts(struct tether_stream *s, const struct timeval *rt,
                               const struct timeval *wt);

/*
 * The input and output buffers, owned by the stream. Adding to the output
 * schedules a write later in the same loop turn.
 */
struct evbuffer *tether_stream_get_input(struct tether_stream *s);
struct evbuffer *tether_stream_get_output(struct tether_stream *s);

/*
 * TLS: the peer closed the connection without close_notify. A body that
 * ends with the connection cannot be told from a cut one then.
 */
bool tether_stream_unclean_eof(const struct tether_stream *s);

/*
 * Nothing the peer sent is waiting: no buffered or undecrypted TLS record,
 * no byte in the socket's receive queue (one ioctl). Closing then sends a
 * FIN, not the RST that unread data would cause.
 */
bool tether_stream_input_idle(struct tether_stream *s);

/* The socket, or -1 before tether_stream_connect(). */
int tether_stream_getfd(struct tether_stream *s);

/*
 * Write what the socket takes now, without waiting for the loop (e.g. before
 * shutdown(SHUT_WR)). Callbacks this causes (write, error) run later from
 * the loop, not from inside this call.
 */
void tether_stream_flush(struct tether_stream *s);

/*
 * End the sending side once the output is written: on TLS a close_notify
 * first (RFC 8446 6.1: the peer can tell the end from a cut), then the TCP
 * FIN. Reading goes on. Call it with an empty output buffer.
 */
void tether_stream_shutdown_write(struct tether_stream *s);

/*
 * TLS: send the close_notify right behind the output (in the same write,
 * once all of it is taken); nothing may be written after it. Plain streams:
 * no effect.
 */
void tether_stream_close_notify_after_output(struct tether_stream *s);

/* Output bytes not yet handed to the socket (TLS: including records made). */
size_t tether_stream_output_pending(const struct tether_stream *s);

/*
 * Close and free s at once: TLS sends a best-effort close_notify, the socket
 * is closed and queued output dropped. Safe from inside any callback,
 * including one of s itself; no callback of s runs afterwards. Accepts NULL.
 */
void tether_stream_free(struct tether_stream *s);

#endif
