/*
 * tether config checks that span several keys (duplicates, learn without
 * learn_header, budgets that contradict each other) and, separately, the
 * checks that need the filesystem (tether_config_check_files). Problems are
 * placed with the marks the walk left, so they point at the file too.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tether/util.h"
#include "internal.h"

/* The ring holds vnodes x weight points per backend; 1e7 is about 160 MB. */
#define RING_MAX 10000000ull

/* What tetherd can bind and connect to: a literal address or localhost. */
static bool literal_address(const char *address)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return tether_sockaddr_parse(address, &ss, &len) == 0;
}

static void check_listens(struct ctx *c)
{
    const struct tether_config *cfg = c->cfg;
    char key[64];

    for (size_t j = 0; j < cfg->nlistens; j++) {
        if (cfg->listens[j].address && !literal_address(cfg->listens[j].address)) {
            snprintf(key, sizeof(key), "listen[%zu].address", j);
            tether_config_report_at(c, key, false,
                                    "%s: use an IP address (or localhost): tether does not "
                                    "resolve names",
                                    cfg->listens[j].address);
        }
    }
    for (size_t j = 1; j < cfg->nlistens; j++) {
        for (size_t i = 0; i < j; i++) {
            if (!cfg->listens[i].address || !cfg->listens[j].address ||
                !tether_config_addr_same(cfg->listens[i].address, cfg->listens[j].address))
                continue;
            snprintf(key, sizeof(key), "listen[%zu].address", j);
            tether_config_report_at(c, key, false, "duplicate listen address (also listen[%zu])",
                                    i);
            break;
        }
    }
    if (!cfg->admin.enabled)
        return;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (cfg->listens[i].address &&
            tether_config_addr_same(cfg->admin.listen, cfg->listens[i].address)) {
            tether_config_report_at(c, "admin.listen", false, "same address as listen[%zu]", i);
            break;
        }
    }
}

int tether_config_backend_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return 0;
    }
    return 1;
}

static void check_backends(struct ctx *c)
{
    const struct tether_config *cfg = c->cfg;
    const struct tether_config_backend *b = cfg->backends;
    uint64_t points = 0;
    char key[64];

    for (size_t j = 0; j < cfg->nbackends; j++) {
        points += (uint64_t)b[j].weight * cfg->balance.vnodes;
        if (b[j].address && !literal_address(b[j].address)) {
            snprintf(key, sizeof(key), "backends[%zu].address", j);
            tether_config_report_at(c, key, false,
                                    "%s: use an IP address (or localhost): tether does not "
                                    "resolve names",
                                    b[j].address);
        }
        for (size_t i = 0; i < j && b[j].name; i++) {
            if (b[i].name && !strcmp(b[i].name, b[j].name)) {
                snprintf(key, sizeof(key), "backends[%zu].name", j);
                tether_config_report_at(c, key, false,
                                        "duplicate backend name (also backends[%zu])", i);
                break;
            }
        }
        for (size_t i = 0; i < j && b[j].address; i++) {
            if (b[i].address && tether_config_addr_same(b[i].address, b[j].address)) {
                snprintf(key, sizeof(key), "backends[%zu].address", j);
                tether_config_report_at(c, key, true, "same address as backends[%zu]", i);
                break;
            }
        }
    }
    if (points > RING_MAX)
        tether_config_report_at(c, "balance.vnodes", false,
                                "the ring would hold %llu points (at most %llu): lower vnodes "
                                "or the weights", (unsigned long long)points, RING_MAX);
}

static void check_session(struct ctx *c)
{
    const struct tether_config *cfg = c->cfg;
    const struct tether_config_session *s = &cfg->session;
    bool cookie = false;

    /* learn without learn_header is inert, as in the default list (DESIGN.md) */
    for (size_t i = 0; i < s->nsources; i++)
        if (s->sources[i] == TETHER_SOURCE_COOKIE)
            cookie = true;
    if (s->insert_cookie && !cookie)
        tether_config_report_at(c, "session.insert_cookie", true,
                                "a minted cookie is never read back: cookie is not in sources");
    if (s->max_state_bytes < s->state_max_bytes)
        tether_config_report_at(c, "session.max_state_bytes", false,
                                "smaller than session.state_max_bytes");
    if (s->state_max_bytes > cfg->limits.max_header_bytes)
        tether_config_report_at(c, "session.state_max_bytes", true,
                                "larger than limits.max_header_bytes: a response head carrying "
                                "it would be refused");
    if (s->idle_timeout_ms > s->max_lifetime_ms)
        tether_config_report_at(c, "session.idle_timeout", true,
                                "longer than session.max_lifetime, so it never applies");
}

void tether_config_validate(struct ctx *c)
{
    const struct tether_config *cfg = c->cfg;

    check_listens(c);
    check_backends(c);
    check_session(c);
    if (cfg->health.timeout_ms >= cfg->health.interval_ms)
        tether_config_report_at(c, "health.timeout", true,
                                "not shorter than health.interval: checks will overlap");
    if (cfg->state.store == TETHER_STORE_REDIS && cfg->state.snapshot[0])
        tether_config_report_at(c, "state.snapshot", true, "ignored with store: redis");
}

/* ---- the filesystem ---- */

struct files {
    const struct tether_config *cfg;
    struct tether_config_errors *errs;
    int n;                       /* errors appended */
    bool oom;
};

static void fail(struct files *f, bool warning, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(struct files *f, bool warning, const char *key, const char *fmt, ...)
{
    const struct tether_config_mark *m = tether_config_mark_find(f->cfg, key);
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (tether_config_errors_add(f->errs, warning, m ? m->line : 0, m ? m->col : 0, key, "%s",
                                 msg) < 0)
        f->oom = true;
    else if (!warning)
        f->n++;
}

/* A file we must read: it opens, and (unless dir_ok) it is a regular file. */
static bool readable(struct files *f, const char *key, const char *path, bool dir_ok,
                     struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

    if (fd < 0) {
        fail(f, false, key, "cannot open %s: %s", path, strerror(errno));
        return false;
    }
    if (fstat(fd, st) < 0) {
        fail(f, false, key, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return false;
    }
    close(fd);
    if (!S_ISREG(st->st_mode) && !(dir_ok && S_ISDIR(st->st_mode))) {
        fail(f, false, key, "%s is not a regular file", path);
        return false;
    }
    return true;
}

/* A file we will create: its directory exists, and it is not something else. */
static void creatable(struct files *f, const char *key, const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    struct stat st;

    if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else if (slash)
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    else
        snprintf(dir, sizeof(dir), ".");
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        fail(f, false, key, "directory %s does not exist", dir);
    else if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        fail(f, false, key, "%s exists and is not a regular file", path);
}

static void secret(struct files *f, const char *key, const char *path, bool must_be_private)
{
    struct stat st;

    if (!readable(f, key, path, false, &st) || !(st.st_mode & (S_IRWXG | S_IRWXO)))
        return;
    fail(f, !must_be_private, key, "%s has mode %04o: use 0600 or stricter", path,
         (unsigned)(st.st_mode & 07777));
}

int tether_config_check_files(const struct tether_config *cfg, struct tether_config_errors *errs)
{
    struct files f = { cfg, errs, 0, false };
    struct stat st;
    char key[96];

    for (size_t i = 0; i < cfg->nlistens; i++) {
        const struct tether_config_listen_tls *tls = cfg->listens[i].tls;

        for (size_t j = 0; tls && j < tls->ncerts; j++) {
            snprintf(key, sizeof(key), "listen[%zu].tls.certificates[%zu].cert", i, j);
            readable(&f, key, tls->certs[j].cert, false, &st);
            snprintf(key, sizeof(key), "listen[%zu].tls.certificates[%zu].key", i, j);
            readable(&f, key, tls->certs[j].key, false, &st);
        }
    }
    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct tether_config_backend_tls *tls = cfg->backends[i].tls;

        if (tls && tls->ca[0]) {
            snprintf(key, sizeof(key), "backends[%zu].tls.ca", i);
            readable(&f, key, tls->ca, true, &st);
        }
    }
    if (cfg->admin.enabled)
        secret(&f, "admin.token_file", cfg->admin.token_file, true);
    if (cfg->state.store == TETHER_STORE_MEMORY && cfg->state.snapshot[0])
        creatable(&f, "state.snapshot", cfg->state.snapshot);
    if (cfg->state.store == TETHER_STORE_REDIS && cfg->state.redis.password_file[0])
        secret(&f, "state.redis.password_file", cfg->state.redis.password_file, false);
    if (strcmp(cfg->log.access, "stdout") && strcmp(cfg->log.access, "off"))
        creatable(&f, "log.access", cfg->log.access);
    return f.oom ? -ENOMEM : f.n;
}
