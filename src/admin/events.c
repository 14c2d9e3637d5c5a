/*
 * The event stream's buffer: publishers (workers, the health thread, the
 * admin thread) append under one mutex, the admin thread reads. Nothing is
 * formatted unless a subscriber is connected, so the data path pays one
 * relaxed load per change when nobody watches.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <pthread.h>

#include "tether/admin.h"
#include "tether/util.h"
#include "admin-int.h"

struct event_rec {
    char *text; /* "event: ...\ndata: ...\n\n" */
    size_t len;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct event_rec ring[EVENTS_KEEP];
static uint64_t next_seq = 1;
static _Atomic int subscribers;
static _Atomic int wake_fd = -1;
static _Atomic int wake_pending;

bool tether_events_wanted(void)
{
    return atomic_load_explicit(&subscribers, memory_order_relaxed) > 0;
}

void events_attach(int fd)
{
    atomic_store(&wake_fd, fd);
}

void events_woken(void)
{
    atomic_store(&wake_pending, 0);
}

void events_subscribers(int delta)
{
    atomic_fetch_add(&subscribers, delta);
}

void tether_events_publish(const char *type, const char *data)
{
    if (!tether_events_wanted())
        return;
    char *text = NULL;
    int n = asprintf(&text, "event: %s\ndata: %s\n\n", type, data);
    if (n < 0)
        return;
    pthread_mutex_lock(&lock);
    struct event_rec *e = &ring[next_seq % EVENTS_KEEP];
    free(e->text);
    e->text = text;
    e->len = (size_t)n;
    next_seq++;
    pthread_mutex_unlock(&lock);
    int fd = atomic_load(&wake_fd);
    if (fd >= 0 && !atomic_exchange(&wake_pending, 1)) {
        uint64_t one = 1;
        ssize_t w = write(fd, &one, sizeof(one));
        (void)w;
    }
}

void tether_events_publishf(const char *type, const char *fmt, ...)
{
    if (!tether_events_wanted())
        return;
    va_list ap;
    va_start(ap, fmt);
    json_error_t err;
    json_t *o = json_vpack_ex(&err, 0, fmt, ap);
    va_end(ap);
    if (!o)
        return;
    json_object_set_new(o, "ts_ms", json_integer((json_int_t)tether_wall_ms()));
    char *data = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (data)
        tether_events_publish(type, data);
    free(data);
}

int events_get(uint64_t seq, char **buf, size_t *len)
{
    int rc;
    pthread_mutex_lock(&lock);
    if (seq >= next_seq) {
        rc = 0;
    } else if (seq + EVENTS_KEEP < next_seq || seq == 0) {
        rc = -1;
    } else {
        struct event_rec *e = &ring[seq % EVENTS_KEEP];
        *buf = malloc(e->len);
        rc = *buf ? 1 : 0;
        if (*buf) {
            memcpy(*buf, e->text, e->len);
            *len = e->len;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

uint64_t events_next(void)
{
    pthread_mutex_lock(&lock);
    uint64_t s = next_seq;
    pthread_mutex_unlock(&lock);
    return s;
}

uint64_t events_oldest(void)
{
    pthread_mutex_lock(&lock);
    uint64_t s = next_seq > EVENTS_KEEP ? next_seq - EVENTS_KEEP : 1;
    pthread_mutex_unlock(&lock);
    return s;
}
