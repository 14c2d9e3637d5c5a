/*
 * tether util: the one logger, clocks and small helpers used by every
 * module. The logger is safe from any thread (one write(2) per line).
 */
#ifndef TETHER_UTIL_H
#define TETHER_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "tether/config.h"

#define TETHER_VERSION_STRING "0.1.0"

/* Set the threshold; messages above it are dropped. Thread: any. */
void tether_log_set_level(enum tether_log_level level);

/* Log one line to stderr: "2026-11-27T19:00:00.123Z tetherd[pid]: level: msg". Thread: any. */
void tether_log(enum tether_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define tether_log_error(...) tether_log(TETHER_LOG_ERROR, __VA_ARGS__)
#define tether_log_warn(...) tether_log(TETHER_LOG_WARN, __VA_ARGS__)
#define tether_log_info(...) tether_log(TETHER_LOG_INFO, __VA_ARGS__)
#define tether_log_debug(...) tether_log(TETHER_LOG_DEBUG, __VA_ARGS__)

/* Monotonic clock in milliseconds / microseconds. */
uint64_t tether_now_ms(void);
uint64_t tether_now_us(void);

/* A timeval of ms milliseconds, for libevent timeouts. */
struct timeval tether_timeval_ms(uint64_t ms);

/* Wall clock, milliseconds since the epoch. */
uint64_t tether_wall_ms(void);

/* ASCII case-insensitive compare of two byte ranges; 1 when equal. */
int tether_strieq(const char *a, size_t alen, const char *b, size_t blen);

/*
 * Parse "a.b.c.d:port", "[v6]:port" or "localhost:port" into a socket
 * address (no DNS lookups: a name other than localhost is -EINVAL).
 * Returns 0 or -EINVAL.
 */
int tether_sockaddr_parse(const char *address, struct sockaddr_storage *ss, socklen_t *len);

/* A growable list of strings (reload reports). */
struct tether_strlist {
    char **v;
    size_t n, cap;
};
void tether_strlist_addf(struct tether_strlist *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void tether_strlist_clear(struct tether_strlist *l);

#endif
