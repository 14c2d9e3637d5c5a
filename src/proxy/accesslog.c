/*
 * The access log: one JSON object per line and request, written with one
 * write(2) (O_APPEND keeps lines whole across workers). The session key is
 * a bearer secret, so only a short hash of it is ever written.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tether/util.h"
#include "proxy-int.h"

/* Copy s as the inside of a JSON string; returns the bytes written (< cap). */
static size_t json_escape(char *dst, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            memcpy(dst + o, "\\u00", 4);
            dst[o + 4] = hex[ch >> 4];
            dst[o + 5] = hex[ch & 15];
            o += 6;
        } else {
            dst[o++] = (char)ch;
        }
    }
    return o;
}

/* The request's figures for the metrics: status class per backend, duration. */
static void count(struct conn *c, uint64_t now)
{
    struct tether_proxy *p = c->w->proxy;
    struct tether_proxy_stats *st = &p->stats[c->w->id];
    atomic_fetch_add_explicit(&st->requests, 1, memory_order_relaxed);
    if (c->backend >= 0) {
        unsigned cls = c->status >= 100 && c->status < 600 ? (unsigned)c->status / 100 : 0;
        atomic_fetch_add_explicit(&p->backends[c->backend].status[cls], 1, memory_order_relaxed);
    } else if (c->status >= 400 && c->status < 500) {
        atomic_fetch_add_explicit(&st->rejected, 1, memory_order_relaxed);
    }
    if (!c->t_start)
        return;
    uint64_t us = now - c->t_start;
    size_t i = 0;
    while (i < TETHER_PROXY_HIST_BUCKETS && (double)us > tether_proxy_hist_le[i] * 1e6)
        i++;
    atomic_fetch_add_explicit(&st->hist[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->hist_sum_us, us, memory_order_relaxed);
}

void accesslog_write(struct conn *c)
{
    struct tether_proxy *p = c->w->proxy;
    uint64_t now = tether_now_us();
    count(c, now);
    int fd = atomic_load_explicit(&p->access_fd, memory_order_relaxed);
    if (fd < 0)
        return;
    char method[64], path[1600], when[64], session[24] = "-";
    method[json_escape(method, sizeof(method), c->method, strnlen(c->method, sizeof(c->method)))] =
        '\0';
    path[json_escape(path, sizeof(path), c->path, c->path_len)] = '\0';
    uint64_t wall = tether_wall_ms();
    time_t sec = (time_t)(wall / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(wall % 1000));
    if (c->has_key)
        snprintf(session, sizeof(session), "%08x", (unsigned)(c->key_hash >> 32));
    const char *backend = c->backend >= 0 ? p->backends[c->backend].name : NULL;
    double dur = c->t_start ? (double)(now - c->t_start) / 1000.0 : 0.0;
    char up[32] = "null";
    if (c->t_upstream && c->t_first_byte)
        snprintf(up, sizeof(up), "%.3f", (double)(c->t_first_byte - c->t_upstream) / 1000.0);
    char line[2048];
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"client\":\"%s\",\"method\":\"%s\",\"path\":\"%s\","
                     "\"status\":%d,\"bytes\":%llu,\"backend\":%s%s%s,\"session\":\"%s\","
                     "\"duration_ms\":%.3f,\"upstream_ms\":%s}\n",
                     when, c->peer, method[0] ? method : "-", path, c->status,
                     (unsigned long long)c->bytes_out, backend ? "\"" : "",
                     backend ? backend : "null", backend ? "\"" : "", session, dur, up);
    if (n > 0) {
        size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
        ssize_t w = write(fd, line, len);
        (void)w;
    }
}
