/*
 * Snapshots of the session table. Layout (little-endian):
 *   "TETHSNP1" | u32 version | u32 0 | records... | "END!" | u64 count | u64 XXH3 of all before
 * record: u16 klen, key | u8 nlen, backend name | u8 flags (1 provisional,
 * 2 handoff) | u8 mlen, moved-from name | u32 epoch | u64 created | u64
 * last_seen (wall ms) | u64 requests | u32 slen, state.
 * The whole file is checked before any record is used.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "tether/lb.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/util.h"

#define MAGIC "TETHSNP1"
#define TRAILER "END!"
#define VERSION 1u

struct writer {
    FILE *f;
    XXH3_state_t *xx;
    const char *const *names;
    size_t nnames;
    uint64_t mono_now, wall_now;
    long count;
    int err;
};

static void put(struct writer *w, const void *p, size_t n)
{
    if (w->err || n == 0)
        return;
    if (fwrite(p, 1, n, w->f) != n)
        w->err = errno ? errno : EIO;
    XXH3_64bits_update(w->xx, p, n);
}

static void put_u(struct writer *w, uint64_t v, size_t bytes)
{
    unsigned char b[8];
    for (size_t i = 0; i < bytes; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put(w, b, bytes);
}

/* Wall-clock ms of a tether_now_ms() instant. */
static uint64_t to_wall(const struct writer *w, uint64_t mono)
{
    return w->wall_now - (w->mono_now - mono);
}

static int save_one(void *ctx, const struct tether_session_view *v)
{
    struct writer *w = ctx;
    const struct tether_session_info *in = &v->info;
    if (in->backend >= w->nnames)
        return 0;
    const char *name = w->names[in->backend];
    const char *from = in->handoff && in->moved_from < w->nnames ? w->names[in->moved_from] : "";
    put_u(w, v->key_len, 2);
    put(w, v->key, v->key_len);
    put_u(w, strlen(name), 1);
    put(w, name, strlen(name));
    put_u(w, (in->provisional ? 1u : 0u) | (in->handoff && from[0] ? 2u : 0u), 1);
    put_u(w, strlen(from), 1);
    put(w, from, strlen(from));
    put_u(w, in->epoch, 4);
    put_u(w, to_wall(w, in->created_ms), 8);
    put_u(w, to_wall(w, in->last_seen_ms), 8);
    put_u(w, in->requests, 8);
    put_u(w, v->state_len, 4);
    put(w, v->state, v->state_len);
    w->count++;
    return w->err;
}

long tether_state_snapshot_save(const char *path, struct tether_session_table *t,
                                const char *const *names, size_t nnames)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    struct writer w = {.names = names,
                       .nnames = nnames,
                       .mono_now = tether_now_ms(),
                       .wall_now = tether_wall_ms()};
    w.f = fdopen(fd, "w");
    w.xx = XXH3_createState();
    if (!w.f || !w.xx) {
        w.err = ENOMEM;
        goto fail;
    }
    XXH3_64bits_reset(w.xx);
    put(&w, MAGIC, 8);
    put_u(&w, VERSION, 4);
    put_u(&w, 0, 4);
    for (size_t i = 0; i < tether_session_shards(t) && !w.err; i++)
        tether_session_export(t, i, save_one, &w);
    put(&w, TRAILER, 4);
    put_u(&w, (uint64_t)w.count, 8);
    uint64_t sum = XXH3_64bits_digest(w.xx);
    unsigned char b[8];
    for (size_t i = 0; i < 8; i++)
        b[i] = (unsigned char)(sum >> (8 * i));
    if (!w.err && fwrite(b, 1, 8, w.f) != 8)
        w.err = EIO;
    if (!w.err && (fflush(w.f) != 0 || fsync(fd) != 0))
        w.err = errno ? errno : EIO;
    if (fclose(w.f) != 0 && !w.err)
        w.err = errno ? errno : EIO;
    w.f = NULL;
    fd = -1; /* closed with its FILE */
    if (w.err || rename(tmp, path) != 0) {
        if (!w.err)
            w.err = errno;
        goto fail;
    }
    /* The rename itself must survive a crash: sync the directory. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    XXH3_freeState(w.xx);
    return w.count;
fail:
    if (w.f)
        fclose(w.f);
    else if (fd >= 0)
        close(fd);
    XXH3_freeState(w.xx);
    unlink(tmp);
    return -(long)w.err;
}

struct reader {
    const unsigned char *p, *end;
    bool bad;
};

static uint64_t get_u(struct reader *r, size_t bytes)
{
    if ((size_t)(r->end - r->p) < bytes) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += bytes;
    return v;
}

static const unsigned char *get_bytes(struct reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *s = r->p;
    r->p += n;
    return s;
}

static int backend_index(const char *const *names, size_t n, const unsigned char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return (int)i;
    return -1;
}

/* One pass over the records: checking only (t NULL), or loading. Returns records seen or -1. */
static long walk(struct reader r, uint64_t count, struct tether_session_table *t,
                 const char *const *names, size_t nnames, long *loaded)
{
    uint64_t mono_now = tether_now_ms(), wall_now = tether_wall_ms();
    long seen = 0;
    while (!r.bad && (size_t)(r.end - r.p) > 0) {
        struct tether_session_view v = {0};
        v.key_len = (size_t)get_u(&r, 2);
        v.key = (const char *)get_bytes(&r, v.key_len);
        size_t nlen = (size_t)get_u(&r, 1);
        const unsigned char *name = get_bytes(&r, nlen);
        unsigned flags = (unsigned)get_u(&r, 1);
        size_t mlen = (size_t)get_u(&r, 1);
        const unsigned char *from = get_bytes(&r, mlen);
        v.info.epoch = (uint32_t)get_u(&r, 4);
        uint64_t created = get_u(&r, 8), last = get_u(&r, 8);
        v.info.requests = get_u(&r, 8);
        v.state_len = (size_t)get_u(&r, 4);
        v.state = get_bytes(&r, v.state_len);
        if (r.bad || v.key_len == 0 || v.key_len > TETHER_SESSION_MAX_KEY ||
            !tether_session_key_valid(v.key, v.key_len) || flags > 3)
            return -1;
        seen++;
        if (!t)
            continue;
        int b = backend_index(names, nnames, name, nlen);
        int m = flags & 2 ? backend_index(names, nnames, from, mlen) : -1;
        if (b < 0)
            continue; /* its backend is gone from the configuration */
        v.info.backend = (uint32_t)b;
        v.info.provisional = flags & 1;
        v.info.handoff = m >= 0;
        v.info.moved_from = m >= 0 ? (uint32_t)m : 0;
        /* Back onto the monotonic clock; anything from the future is now. */
        v.info.created_ms = created <= wall_now ? mono_now - (wall_now - created) : mono_now;
        v.info.last_seen_ms = last <= wall_now ? mono_now - (wall_now - last) : mono_now;
        if (tether_session_import(t, &v, tether_ring_hash(v.key, v.key_len)) == 0)
            (*loaded)++;
    }
    return (r.bad || (uint64_t)seen != count) ? -1 : seen;
}

long tether_state_snapshot_load(const char *path, struct tether_session_table *t,
                                const char *const *names, size_t nnames, char *why, size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, whylen, "%s", strerror(errno));
        return -errno;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < 36) {
        close(fd);
        snprintf(why, whylen, "too short to be a snapshot");
        return -EINVAL;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(why, whylen, "%s", strerror(errno));
        return -EIO;
    }
    long rc = -EINVAL;
    struct reader tail = {map + size - 16, map + size, false};
    uint64_t count = get_u(&tail, 8), sum = get_u(&tail, 8);
    if (memcmp(map, MAGIC, 8) != 0) {
        snprintf(why, whylen, "not a tether snapshot");
    } else if (map[8] != VERSION || map[9] || map[10] || map[11]) {
        snprintf(why, whylen, "unknown snapshot version %u", map[8]);
    } else if (XXH3_64bits(map, size - 8) != sum) {
        snprintf(why, whylen, "checksum mismatch (damaged or truncated)");
    } else if (memcmp(map + size - 20, TRAILER, 4) != 0) {
        snprintf(why, whylen, "no end marker");
    } else {
        struct reader body = {map + 16, map + size - 20, false};
        long loaded = 0;
        if (walk(body, count, NULL, names, nnames, &loaded) < 0) {
            snprintf(why, whylen, "malformed record");
        } else {
            walk(body, count, t, names, nnames, &loaded);
            rc = loaded;
        }
    }
    munmap((void *)map, size);
    return rc;
}
