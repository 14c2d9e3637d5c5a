/*
 * The one logger: a line per event to stderr, with a UTC timestamp and the
 * level. Built whole in a stack buffer and written with a single write(2),
 * so lines from several threads never interleave.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tether/util.h"

static _Atomic int threshold = TETHER_LOG_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

void tether_log_set_level(enum tether_log_level level)
{
    atomic_store(&threshold, (int)level);
}

void tether_log(enum tether_log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load(&threshold))
        return;

    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ tetherd[%d]: %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, (int)getpid(), names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* A message may quote client bytes: keep it on one line, unforgeable. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
