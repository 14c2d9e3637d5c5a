/*
 * tetherctl: the command line of tether's admin API (DESIGN.md "Admin API and CLI"). One
 * command is one HTTP/1.1 exchange (a few for `sessions --all`) with tetherd's admin listener,
 * over TCP or a unix socket; the answer is printed as a table, or as the server's JSON with
 * --json. `watch` follows the server-sent events until interrupted.
 */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <jansson.h>
#include <yaml.h>

#include "tether/config.h"
#include "tether/util.h"

/* Exit codes; tetherctl -h lists them. */
#define EXIT_OK 0
#define EXIT_REFUSED 1   /* the server answered 4xx/5xx */
#define EXIT_USAGE 2     /* bad arguments, unusable config or token */
#define EXIT_TRANSPORT 3 /* no answer: connect, timeout, broken response, I/O */
#define STOPPED (-1)     /* watch interrupted by SIGINT/SIGTERM: a normal end */

#define TIMEOUT_MS 10000           /* connect, and each wait for bytes (not for watch) */
#define LINE_MAX_BYTES 8192        /* a status, header or chunk-size line */
#define HEAD_MAX_BYTES (64 * 1024) /* a whole response head */
#define HEADERS_MAX 100
#define BODY_MAX (64 * 1024 * 1024) /* a buffered response body */
#define EVENT_MAX (1024 * 1024)     /* one server-sent event */
#define TOKEN_MAX 4096              /* a token file */
#define CONFIG_MAX (1024 * 1024)    /* as tetherd's loader */
#define PAGE_MAX 1000               /* sessions per page, as the API allows */
#define WEIGHT_MAX 1000             /* as the config allows */

static const char usage_text[] =
    "usage: tetherctl [-c CONFIG | -s HOST:PORT|unix:PATH] [--token-file F] [--json] COMMAND\n"
    "\n"
    "Commands:\n"
    "  status                          version, uptime, connections, sessions, store\n"
    "  backends                        every backend with its state and counters\n"
    "  backend add NAME ADDRESS [--weight N]\n"
    "                                  add a backend at run time (weight 1..1000, default 1)\n"
    "  backend remove NAME [--dry-run] remove it, moving its sessions (--dry-run: list the\n"
    "                                  moves it would make and change nothing)\n"
    "  backend drain NAME              no new sessions on it; existing ones stay\n"
    "  backend disable NAME            move its sessions away now\n"
    "  backend enable NAME             back to normal (nothing moves back)\n"
    "  sessions [--backend NAME] [--limit N] [--all]\n"
    "                                  list sessions: one page of N (1..1000, server default\n"
    "                                  100), or every page with --all\n"
    "  session show KEY                one session\n"
    "  session forget KEY              drop one session\n"
    "  session move KEY BACKEND        move one session (a new epoch, with handoff)\n"
    "  reload                          reload the configuration file, as SIGHUP does\n"
    "  watch                           print events as they happen, until interrupted\n"
    "  metrics                         the Prometheus text exposition\n"
    "\n"
    "Options:\n"
    "  -c CONFIG        tetherd's configuration (default " TETHER_CONFIG_DEFAULT_PATH "):\n"
    "                   its admin.listen and admin.token_file are used, even when the file\n"
    "                   has errors (so that `reload` can report them)\n"
    "  -s ADDRESS       the admin API at HOST:PORT or unix:PATH, in place of admin.listen\n"
    "                   (the config is then read only for the token, if it is there)\n"
    "  --token-file F   read the token from F (trailing whitespace is ignored); else from\n"
    "                   the environment variable TETHER_TOKEN; else from admin.token_file\n"
    "  --json           print the server's JSON (watch: one object a line, the event's data\n"
    "                   with its type under \"event\")\n"
    "  -h, --help       this help\n"
    "  -V, --version    print the version\n"
    "\n"
    "Command options may stand anywhere; a KEY or NAME that starts with '-' goes after \"--\".\n"
    "Connecting and each wait for the server time out after 10 s (watch waits as long as it\n"
    "runs; SIGINT or SIGTERM end it with status 0).\n"
    "\n"
    "Exit status:\n"
    "  0  success\n"
    "  1  the server refused the request (HTTP 4xx or 5xx); its error is printed\n"
    "  2  usage error, or the configuration or token cannot be used\n"
    "  3  no answer: cannot connect, timeout, broken response or I/O error\n"
    "Every failure prints one line on stderr.\n";

/* Command options, as bits, to check that each applies to the command given. */
enum {
    O_WEIGHT = 1 << 0,
    O_DRY_RUN = 1 << 1,
    O_BACKEND = 1 << 2,
    O_LIMIT = 1 << 3,
    O_ALL = 1 << 4,
};

struct ctl {
    /* from the command line */
    const char *config_path;
    bool config_given;
    const char *server; /* -s */
    const char *token_file;
    bool json;
    unsigned opts; /* O_* given */
    long weight, limit;
    const char *backend;
    bool dry_run, all;
    /* resolved */
    char *address;      /* owned: "host:port" or "unix:/path" */
    char *token;        /* owned; NULL = send no Authorization */
    int timeout_ms;     /* each wait for the server, once connected; -1 = none */
    sigset_t *waitmask; /* watch: signals let through while waiting, else NULL */
};

/* A buffered response body, always NUL-terminated. */
struct buf {
    char *p;
    size_t len, cap, max;
};

struct reply {
    int status;
    struct buf body;
};

/* The connection and its read buffer. */
struct conn {
    int fd;
    const struct ctl *ctl;
    char in[16384];
    size_t pos, len;
    bool eof;
};

/* Where a body goes: whole into a buf, or piece by piece to a callback (watch). */
typedef int (*sink_fn)(void *arg, const char *p, size_t n);

static volatile sig_atomic_t interrupted;

/* ---- messages ---- */

/* Prints "tetherctl: <message>" as one line (control characters become spaces); returns code. */
static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    fprintf(stderr, "tetherctl: %s\n", msg);
    return code;
}

static int oom(void)
{
    return fail(EXIT_TRANSPORT, "out of memory");
}

/* ---- small helpers ---- */

static int buf_add(struct buf *b, const char *p, size_t n)
{
    if (n > b->max - b->len)
        return -EFBIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *np;

        while (cap < b->len + n + 1)
            cap *= 2;
        if (!(np = realloc(b->p, cap)))
            return -ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void buf_deinit(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static int buf_str(struct buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

/* Appends s percent-encoded: every byte outside [A-Za-z0-9-._~] as %XX (RFC 3986 2.3). */
static int buf_pct(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
        int rc;

        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~')
            rc = buf_add(b, (const char *)p, 1);
        else
            rc = buf_add(b, e, 3);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Reads a whole file of at most max bytes into a NUL-terminated heap buffer. Returns 0 or
 * -errno (-EFBIG when larger). */
static int slurp(const char *path, size_t max, char **out, size_t *out_len)
{
    struct buf b = {.max = max};
    char tmp[4096];
    int fd, rc = 0;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, tmp, sizeof(tmp));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        if ((rc = buf_add(&b, tmp, (size_t)n)) < 0)
            break;
    }
    close(fd);
    if (rc == 0 && !b.p)
        rc = buf_add(&b, "", 0);
    if (rc < 0) {
        buf_deinit(&b);
        return rc;
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}

/* Parses a decimal integer in [min, max]. Returns 0 or -EINVAL. */
static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the token and the address ---- */

/* A token file's content without trailing whitespace; it must be one line of printable ASCII,
 * since it goes into a header. Returns 0, or an exit code after saying why. */
static int read_token(const char *path, char **out)
{
    char *t;
    size_t n;
    int rc = slurp(path, TOKEN_MAX, &t, &n);

    if (rc == -EFBIG)
        return fail(EXIT_USAGE, "token file %s: larger than %d bytes", path, TOKEN_MAX);
    if (rc < 0)
        return fail(EXIT_USAGE, "cannot read token file %s: %s", path, strerror(-rc));
    while (n > 0 && t[n - 1] && strchr(" \t\r\n\v\f", t[n - 1]))
        t[--n] = '\0';
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)t[i] < 0x20 || (unsigned char)t[i] > 0x7e) {
            free(t);
            return fail(EXIT_USAGE, "token file %s: not one line of printable ASCII", path);
        }
    }
    if (n == 0) {
        free(t);
        return fail(EXIT_USAGE, "token file %s is empty", path);
    }
    *out = t;
    return 0;
}

/* What tetherctl takes from tetherd's configuration. */
struct admin_conf {
    bool enabled;     /* the file has an admin block */
    char *listen;     /* owned */
    char *token_file; /* owned; NULL when the file is broken and does not name one */
};

static void admin_conf_deinit(struct admin_conf *ac)
{
    free(ac->listen);
    free(ac->token_file);
    memset(ac, 0, sizeof(*ac));
}

/*
 * admin.listen and admin.token_file straight from the YAML events, for a file the loader
 * refuses: whoever broke the file must still reach tetherd, to reload and read its errors, or
 * to look at it meanwhile. Reads up to the first YAML error. Returns 0, or -ENOENT when no
 * admin.listen was seen.
 */
static int scan_admin(const char *text, size_t len, struct admin_conf *ac)
{
    struct level {
        bool map, key_next;
        char key[16];
    } st[8];
    yaml_parser_t parser;
    yaml_event_t ev;
    int depth = 0;
    bool done = false;

    if (!yaml_parser_initialize(&parser))
        return -ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    while (!done && yaml_parser_parse(&parser, &ev)) {
        struct level *top = depth > 0 && depth <= 8 ? &st[depth - 1] : NULL;

        switch (ev.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (top && top->map)
                top->key_next = true; /* the collection is a value */
            if (depth < 8)
                st[depth] =
                    (struct level){.map = ev.type == YAML_MAPPING_START_EVENT, .key_next = true};
            depth++;
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            depth--;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_ALIAS_EVENT:
            if (!top || !top->map)
                break;
            if (top->key_next && ev.type == YAML_SCALAR_EVENT) {
                snprintf(top->key, sizeof(top->key), "%s", (const char *)ev.data.scalar.value);
                top->key_next = false;
                break;
            }
            top->key_next = true;
            if (depth == 2 && st[0].map && strcmp(st[0].key, "admin") == 0 &&
                ev.type == YAML_SCALAR_EVENT) {
                char **to = strcmp(top->key, "listen") == 0       ? &ac->listen
                            : strcmp(top->key, "token_file") == 0 ? &ac->token_file
                                                                  : NULL;
                if (to) {
                    free(*to);
                    *to = strdup((const char *)ev.data.scalar.value);
                }
            }
            break;
        case YAML_DOCUMENT_END_EVENT:
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    ac->enabled = ac->listen != NULL;
    return ac->enabled ? 0 : -ENOENT;
}

/* Reads the config without its file checks: tetherctl needs only two values from it, and may
 * run where tetherd's certificates are unreadable. ac stays empty when the file is absent and
 * optional. Returns 0, or an exit code after saying why. */
static int read_config(const struct ctl *ctl, bool optional, struct admin_conf *ac)
{
    struct tether_config_errors errs = {0};
    const struct tether_config_error *e = NULL;
    const char *path = ctl->config_path;
    struct tether_config *cfg;
    char *text;
    size_t len;
    int rc = slurp(path, CONFIG_MAX, &text, &len);

    if (rc == -ENOENT && optional)
        return 0;
    if (rc == -EFBIG)
        return fail(EXIT_USAGE, "%s: larger than %d bytes", path, CONFIG_MAX);
    if (rc < 0)
        return fail(EXIT_USAGE, "cannot read %s: %s", path, strerror(-rc));
    if ((cfg = tether_config_load_buffer(path, text, len, &errs))) {
        ac->enabled = cfg->admin.enabled;
        ac->listen = strdup(cfg->admin.listen);
        ac->token_file = strdup(cfg->admin.token_file);
        rc = ac->listen && ac->token_file ? 0 : oom();
    } else if (scan_admin(text, len, ac) == 0) {
        rc = 0;
    } else {
        for (size_t i = 0; i < errs.n && !e; i++)
            if (!errs.items[i].warning)
                e = &errs.items[i];
        if (!e)
            rc = oom();
        else if (e->line > 0)
            rc = fail(EXIT_USAGE, "%s:%d:%d: %s%s%s%s", path, e->line, e->col, e->key,
                      e->key[0] ? ": " : "", e->message,
                      errs.nerrors > 1 ? " (and more: tetherd -t -c FILE lists them)" : "");
        else
            rc = fail(EXIT_USAGE, "%s: %s%s%s", path, e->key, e->key[0] ? ": " : "", e->message);
    }
    tether_config_free(cfg);
    tether_config_errors_deinit(&errs);
    free(text);
    return rc;
}

/* Settles ctl->address and ctl->token from -s, --token-file, TETHER_TOKEN and the config, in
 * that order. The config is read only when one of them is still missing. */
static int resolve(struct ctl *ctl)
{
    const char *env = getenv("TETHER_TOKEN");
    bool env_token = env && env[0];
    bool need_addr = !ctl->server, need_token = !ctl->token_file && !env_token;
    struct admin_conf ac = {0};
    int rc = 0;

    /* with -s, a config that is not there only means "no token" */
    if ((need_addr || need_token) &&
        (rc = read_config(ctl, !need_addr && !ctl->config_given, &ac)) != 0)
        goto out;
    if (need_addr && !ac.enabled) {
        rc = fail(EXIT_USAGE, "%s has no admin block: the admin API is off (or give -s)",
                  ctl->config_path);
        goto out;
    }
    if (!(ctl->address = strdup(ctl->server ? ctl->server : ac.listen))) {
        rc = oom();
        goto out;
    }
    if (ctl->token_file) {
        rc = read_token(ctl->token_file, &ctl->token);
    } else if (env_token) {
        for (const char *p = env; *p; p++) {
            if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) {
                rc = fail(EXIT_USAGE, "TETHER_TOKEN: not one line of printable ASCII");
                goto out;
            }
        }
        if (!(ctl->token = strdup(env)))
            rc = oom();
    } else if (ac.enabled && ac.token_file) {
        rc = read_token(ac.token_file, &ctl->token);
    }
out:
    admin_conf_deinit(&ac);
    return rc;
}

/* ---- the connection ---- */

/* Waits for events on fd up to timeout_ms (-1: no limit). Returns 0, STOPPED, or an exit code. */
static int wait_fd(const struct ctl *ctl, int fd, short events, int timeout_ms, const char *what)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};

    for (;;) {
        int n = ppoll(&pfd, 1, timeout_ms < 0 ? NULL : &ts, ctl->waitmask);

        if (n > 0)
            return 0;
        if (n == 0)
            return fail(EXIT_TRANSPORT, "%s: no answer within %ds %s", ctl->address,
                        timeout_ms / 1000, what);
        if (errno != EINTR)
            return fail(EXIT_TRANSPORT, "%s: poll: %s", ctl->address, strerror(errno));
        if (interrupted)
            return STOPPED;
    }
}

/* Connects to ctl->address. Returns 0 with *out set, or an exit code after saying why. */
static int dial(const struct ctl *ctl, int *out)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fd, err, rc;

    if (strncmp(ctl->address, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        const char *path = ctl->address + 5;

        if (!path[0] || strlen(path) >= sizeof(un->sun_path))
            return fail(EXIT_USAGE, "invalid admin address %s", ctl->address);
        memset(un, 0, sizeof(*un));
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, strlen(path));
        sslen = sizeof(*un);
    } else if (tether_sockaddr_parse(ctl->address, &ss, &sslen) < 0) {
        return fail(EXIT_USAGE, "invalid admin address %s (HOST:PORT or unix:PATH)", ctl->address);
    }
    if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
        return fail(EXIT_TRANSPORT, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
        socklen_t len = sizeof(err);

        err = errno;
        if (err == EINPROGRESS) {
            if ((rc = wait_fd(ctl, fd, POLLOUT, TIMEOUT_MS, "to connect")) != 0) {
                close(fd);
                return rc;
            }
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        }
        if (err) {
            close(fd);
            return fail(EXIT_TRANSPORT, "cannot connect to %s: %s", ctl->address, strerror(err));
        }
    }
    *out = fd;
    return 0;
}

static int send_all(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        int rc;

        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if ((rc = wait_fd(c->ctl, c->fd, POLLOUT, c->ctl->timeout_ms, "to take the request")) !=
                0)
                return rc;
        } else {
            return fail(EXIT_TRANSPORT, "%s: sending the request: %s", c->ctl->address,
                        strerror(errno));
        }
    }
    return 0;
}

/* Reads more into c->in (moving what is unread to the front). Sets c->eof at the end of the
 * stream. Returns 0, STOPPED, or an exit code. */
static int fill(struct conn *c)
{
    if (c->pos > 0) {
        memmove(c->in, c->in + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->len, sizeof(c->in) - c->len, 0);
        int rc;

        if (n > 0) {
            c->len += (size_t)n;
            return 0;
        }
        if (n == 0) {
            c->eof = true;
            return 0;
        }
        if (errno != EAGAIN && errno != EINTR)
            return fail(EXIT_TRANSPORT, "%s: reading the response: %s", c->ctl->address,
                        strerror(errno));
        if ((rc = wait_fd(c->ctl, c->fd, POLLIN, c->ctl->timeout_ms, "for the response")) != 0)
            return rc;
    }
}

static int truncated(const struct conn *c)
{
    return fail(EXIT_TRANSPORT, "%s: connection closed before the response ended", c->ctl->address);
}

static int malformed(const struct conn *c, const char *what)
{
    return fail(EXIT_TRANSPORT, "%s: malformed response: %s", c->ctl->address, what);
}

/* Reads one line ending in LF (a CR before it is dropped) into line[cap]. Returns 0, STOPPED,
 * or an exit code. */
static int read_line(struct conn *c, char *line, size_t cap, size_t *out_len)
{
    for (;;) {
        char *lf = memchr(c->in + c->pos, '\n', c->len - c->pos);
        size_t n;
        int rc;

        if (lf) {
            n = (size_t)(lf - (c->in + c->pos));
            if (n > 0 && c->in[c->pos + n - 1] == '\r')
                n--;
            if (n >= cap)
                return malformed(c, "line too long");
            memcpy(line, c->in + c->pos, n);
            line[n] = '\0';
            c->pos += (size_t)(lf - (c->in + c->pos)) + 1;
            *out_len = n;
            return 0;
        }
        if (c->len - c->pos >= cap)
            return malformed(c, "line too long");
        if (c->eof)
            return truncated(c);
        if ((rc = fill(c)) != 0)
            return rc;
    }
}

/* Passes exactly n body bytes (n = UINT64_MAX: up to EOF) to sink. */
static int read_bytes(struct conn *c, uint64_t n, sink_fn sink, void *arg)
{
    while (n > 0) {
        size_t have = c->len - c->pos;
        int rc;

        if (have == 0) {
            if (c->eof)
                return n == UINT64_MAX ? 0 : truncated(c);
            if ((rc = fill(c)) != 0)
                return rc;
            continue;
        }
        if (have > n)
            have = (size_t)n;
        if ((rc = sink(arg, c->in + c->pos, have)) != 0)
            return rc;
        c->pos += have;
        if (n != UINT64_MAX)
            n -= have;
    }
    return 0;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* A chunked body (RFC 9112 7.1): size lines in hex, extensions ignored, trailers skipped. */
static int read_chunked(struct conn *c, sink_fn sink, void *arg)
{
    char line[LINE_MAX_BYTES];
    size_t n;
    int rc;

    for (;;) {
        uint64_t size = 0;
        size_t i;

        if ((rc = read_line(c, line, sizeof(line), &n)) != 0)
            return rc;
        for (i = 0; i < n && hexval(line[i]) >= 0; i++) {
            if (i >= 15)
                return malformed(c, "chunk size too large");
            size = size * 16 + (uint64_t)hexval(line[i]);
        }
        if (i == 0 || (i < n && line[i] != ';' && line[i] != ' ' && line[i] != '\t'))
            return malformed(c, "bad chunk size");
        if (size == 0)
            break;
        if ((rc = read_bytes(c, size, sink, arg)) != 0)
            return rc;
        if ((rc = read_line(c, line, sizeof(line), &n)) != 0)
            return rc;
        if (n != 0)
            return malformed(c, "chunk not followed by CRLF");
    }
    do {
        if ((rc = read_line(c, line, sizeof(line), &n)) != 0)
            return rc;
    } while (n != 0);
    return 0;
}

/* What a response head says about its body. */
struct head {
    int status;
    bool chunked;
    bool has_length;
    uint64_t length;
};

static bool is_tchar(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Reads a response head (RFC 9112 4 and 5), skipping interim 1xx responses. */
static int read_head(struct conn *c, struct head *h)
{
    char line[LINE_MAX_BYTES];
    size_t n, total;
    int rc;

    for (int interim = 0; interim < 10; interim++) {
        memset(h, 0, sizeof(*h));
        if ((rc = read_line(c, line, sizeof(line), &n)) != 0)
            return rc;
        /* "HTTP/1.x SSS[ reason]" */
        if (n < 12 || strncmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
            line[8] != ' ' || line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' ||
            line[11] < '0' || line[11] > '9' || (n > 12 && line[12] != ' '))
            return malformed(c, "bad status line");
        h->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
        total = n;
        for (int i = 0;; i++) {
            char *colon, *v, *e;

            if ((rc = read_line(c, line, sizeof(line), &n)) != 0)
                return rc;
            if (n == 0)
                break;
            total += n;
            if (i >= HEADERS_MAX || total > HEAD_MAX_BYTES)
                return malformed(c, "head too large");
            /* no obsolete line folding, no space before the colon (RFC 9112 5.1, 5.2) */
            if (!(colon = strchr(line, ':')) || colon == line)
                return malformed(c, "bad header line");
            for (char *p = line; p < colon; p++)
                if (!is_tchar((unsigned char)*p))
                    return malformed(c, "bad header name");
            *colon = '\0';
            for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
                ;
            for (e = line + n; e > v && (e[-1] == ' ' || e[-1] == '\t'); e--)
                ;
            *e = '\0';
            if (strcasecmp(line, "content-length") == 0) {
                char *end;
                uint64_t len;

                errno = 0;
                len = strtoull(v, &end, 10);
                if (*v < '0' || *v > '9' || *end || errno || (h->has_length && len != h->length))
                    return malformed(c, "bad Content-Length");
                h->has_length = true;
                h->length = len;
            } else if (strcasecmp(line, "transfer-encoding") == 0) {
                if (strcasecmp(v, "chunked") != 0 || h->chunked)
                    return malformed(c, "unsupported Transfer-Encoding");
                h->chunked = true;
            }
        }
        if (h->status >= 200)
            return 0;
        if (h->status == 101)
            return malformed(c, "unexpected 101 Switching Protocols");
    }
    return malformed(c, "too many interim responses");
}

/* Reads the body that h announces: chunked wins over Content-Length (RFC 9112 6.3); with
 * neither, the body runs to the end of the connection. */
static int read_body(struct conn *c, const struct head *h, sink_fn sink, void *arg)
{
    if (h->status == 204 || h->status == 304)
        return 0;
    if (h->chunked)
        return read_chunked(c, sink, arg);
    return read_bytes(c, h->has_length ? h->length : UINT64_MAX, sink, arg);
}

static int buf_sink(void *arg, const char *p, size_t n)
{
    int rc = buf_add(arg, p, n);

    if (rc == -EFBIG)
        return fail(EXIT_TRANSPORT, "response body larger than %d bytes", BODY_MAX);
    return rc < 0 ? oom() : 0;
}

/* The request: json (or nothing) as its body; stream asks for server-sent events. Returns 0 or
 * -ENOMEM. */
static int build_request(struct buf *req, const struct ctl *ctl, const char *method,
                         const char *path, const char *json, bool stream)
{
    char len[48];

    /* RFC 9112 3.2: a Host header always; a unix socket has no host name */
    if (buf_str(req, method) < 0 || buf_str(req, " ") < 0 || buf_str(req, path) < 0 ||
        buf_str(req, " HTTP/1.1\r\nHost: ") < 0 ||
        buf_str(req, strncmp(ctl->address, "unix:", 5) == 0 ? "localhost" : ctl->address) < 0 ||
        buf_str(req, "\r\nUser-Agent: tetherctl/" TETHER_VERSION_STRING "\r\nAccept: ") < 0 ||
        buf_str(req, stream ? "text/event-stream" : "application/json") < 0 ||
        buf_str(req, "\r\nConnection: close\r\n") < 0)
        return -ENOMEM;
    if (ctl->token && (buf_str(req, "Authorization: Bearer ") < 0 || buf_str(req, ctl->token) < 0 ||
                       buf_str(req, "\r\n") < 0))
        return -ENOMEM;
    if (json && buf_str(req, "Content-Type: application/json\r\n") < 0)
        return -ENOMEM;
    /* a POST or DELETE without a body still says so (RFC 9110 8.6) */
    snprintf(len, sizeof(len), "Content-Length: %zu\r\n", json ? strlen(json) : 0);
    if ((strcmp(method, "GET") != 0 && buf_str(req, len) < 0) || buf_str(req, "\r\n") < 0 ||
        (json && buf_str(req, json) < 0))
        return -ENOMEM;
    return 0;
}

/*
 * One exchange: method path with an optional JSON body. The response body goes to sink when
 * the status is 2xx and sink is set, else into r->body. Returns 0 when the exchange completed
 * (whatever the status), STOPPED, or an exit code after saying why.
 */
static int exchange(const struct ctl *ctl, const char *method, const char *path, json_t *body,
                    struct reply *r, sink_fn sink, void *arg)
{
    struct conn *c = NULL;
    struct buf req = {.max = SIZE_MAX};
    char *json = NULL;
    struct head h;
    int fd = -1, rc;

    memset(r, 0, sizeof(*r));
    r->body.max = BODY_MAX;
    if ((body && !(json = json_dumps(body, JSON_COMPACT))) ||
        build_request(&req, ctl, method, path, json, sink != NULL) < 0) {
        rc = oom();
        goto out;
    }
    if ((rc = dial(ctl, &fd)) != 0)
        goto out;
    if (!(c = calloc(1, sizeof(*c)))) {
        rc = oom();
        goto out;
    }
    c->fd = fd;
    c->ctl = ctl;
    if ((rc = send_all(c, req.p, req.len)) != 0 || (rc = read_head(c, &h)) != 0)
        goto out;
    r->status = h.status;
    if (h.status >= 200 && h.status < 300 && sink)
        rc = read_body(c, &h, sink, arg);
    else
        rc = read_body(c, &h, buf_sink, &r->body);
    if (rc == 0 && !r->body.p)
        rc = buf_sink(&r->body, "", 0);
out:
    if (fd >= 0)
        close(fd);
    free(c);
    free(json);
    buf_deinit(&req);
    return rc;
}

/* The server's refusal as one line: its JSON "error" (and "errors", for a reload). */
static int refused(const struct reply *r)
{
    const char *label = r->status == 401 ? " unauthorized" : r->status == 403 ? " forbidden" : "";
    json_t *root = json_loadb(r->body.p, r->body.len, 0, NULL);
    const char *error = json_string_value(json_object_get(root, "error"));
    json_t *errors = json_object_get(root, "errors"), *e;
    struct buf msg = {.max = SIZE_MAX};
    size_t i;
    int rc;

    if (error) {
        buf_add(&msg, error, strlen(error));
    } else {
        /* not JSON: the start of the body, if any, says more than nothing */
        size_t n = strcspn(r->body.p, "\r\n");
        buf_add(&msg, n ? r->body.p : "no error message", n ? n : 16);
    }
    json_array_foreach (errors, i, e) {
        if (json_is_string(e)) {
            buf_add(&msg, i ? "; " : ": ", 2);
            buf_add(&msg, json_string_value(e), json_string_length(e));
        }
    }
    rc = fail(EXIT_REFUSED, "%d%s: %s", r->status, label, msg.p ? msg.p : "");
    buf_deinit(&msg);
    json_decref(root);
    return rc;
}

/*
 * A request whose answer is JSON: 2xx with a JSON body sets *out (caller decrefs). Returns 0,
 * EXIT_REFUSED after printing the server's error, or another exit code.
 */
static int call(const struct ctl *ctl, const char *method, const char *path, json_t *body,
                json_t **out)
{
    struct reply r;
    json_error_t err;
    int rc = exchange(ctl, method, path, body, &r, NULL, NULL);

    *out = NULL;
    if (rc == 0 && (r.status < 200 || r.status > 299))
        rc = refused(&r);
    else if (rc == 0 && !(*out = json_loadb(r.body.p, r.body.len, 0, &err)))
        rc = fail(EXIT_TRANSPORT, "%s: malformed response: %s", ctl->address, err.text);
    buf_deinit(&r.body);
    return rc;
}

/* Builds "/api/v1/<prefix><name percent-encoded><suffix>" in b (zeroed). */
static int api_path(struct buf *b, const char *prefix, const char *name, const char *suffix)
{
    b->max = SIZE_MAX;
    if (buf_str(b, "/api/v1/") < 0 || buf_str(b, prefix) < 0 || buf_pct(b, name) < 0 ||
        buf_str(b, suffix) < 0)
        return oom();
    return 0;
}

/* ---- output ---- */

/* Columns aligned on the widest cell; the last column is not padded. Cells are added row by
 * row; a failed allocation is remembered and reported once, by finish_table(). */
struct table {
    size_t ncols, n, cap;
    char **cells; /* owned */
    bool nomem;
};

#define TABLE_COLS_MAX 16

/* Adds one cell; control characters are shown as '?', so no key can drive the terminal. */
static void cell(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void cell(struct table *t, const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    if (t->nomem)
        return;
    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        t->nomem = true;
        return;
    }
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        char **np = realloc(t->cells, cap * sizeof(*np));

        if (!np) {
            free(s);
            t->nomem = true;
            return;
        }
        t->cells = np;
        t->cap = cap;
    }
    t->cells[t->n++] = s;
}

/* Columns a cell takes: UTF-8 continuation bytes take none. */
static size_t text_width(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static void table_print(const struct table *t)
{
    size_t width[TABLE_COLS_MAX] = {0};

    assert(t->ncols > 0 && t->ncols <= TABLE_COLS_MAX);
    for (size_t i = 0; i < t->n; i++) {
        size_t len = text_width(t->cells[i]);

        if (len > width[i % t->ncols])
            width[i % t->ncols] = len;
    }
    for (size_t i = 0; i < t->n; i++) {
        size_t col = i % t->ncols;

        if (col + 1 == t->ncols || i + 1 == t->n)
            printf("%s\n", t->cells[i]);
        else
            printf("%s%*s", t->cells[i], (int)(width[col] - text_width(t->cells[i]) + 2), "");
    }
}

static void table_deinit(struct table *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}

static const char *str_or(json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Any JSON value as a cell: strings as they are, null as "-". */
static void cell_json(struct table *t, json_t *v)
{
    char *s;

    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_STRING:
        cell(t, "%s", json_string_value(v));
        break;
    case JSON_INTEGER:
        cell(t, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        cell(t, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        cell(t, "yes");
        break;
    case JSON_FALSE:
        cell(t, "no");
        break;
    case JSON_NULL:
        cell(t, "-");
        break;
    default:
        if (!(s = json_dumps(v, JSON_COMPACT))) {
            t->nomem = true;
            break;
        }
        cell(t, "%s", s);
        free(s);
    }
}

static void cell_key(struct table *t, json_t *o, const char *key)
{
    cell_json(t, json_object_get(o, key));
}

/* A label and the value of o's key: one row of a two-column listing. */
static void row_key(struct table *t, const char *label, json_t *o, const char *key)
{
    cell(t, "%s", label);
    cell_key(t, o, key);
}

/* A span of milliseconds, coarsely: "0s", "850ms", "42s", "3m12s", "2h05m", "4d03h". */
static void fmt_span(uint64_t ms, char *out, size_t n)
{
    uint64_t s = ms / 1000;

    if (ms == 0)
        snprintf(out, n, "0s");
    else if (ms < 1000)
        snprintf(out, n, "%" PRIu64 "ms", ms);
    else if (s < 60)
        snprintf(out, n, "%" PRIu64 "s", s);
    else if (s < 3600)
        snprintf(out, n, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, n, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s % 3600 / 60);
    else
        snprintf(out, n, "%" PRIu64 "d%02" PRIu64 "h", s / 86400, s % 86400 / 3600);
}

/* Unix epoch ms as "2026-11-27T19:00:00.123Z". */
static void fmt_time(uint64_t ms, char *out, size_t n)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char s[32];

    gmtime_r(&secs, &tm);
    strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%03uZ", s, (unsigned)(ms % 1000));
}

/* How long ago the server's wall-clock time at (unix epoch ms) was: "12s ago". */
static void cell_ago(struct table *t, json_t *at)
{
    uint64_t now = wall_ms(), then;
    char span[32];

    if (!json_is_integer(at)) {
        cell_json(t, at);
        return;
    }
    then = (uint64_t)json_integer_value(at);
    fmt_span(now > then ? now - then : 0, span, sizeof(span));
    cell(t, "%s ago", span);
}

/* The time itself and how long ago: "2026-11-27T19:00:00.123Z (12s ago)". */
static void cell_when(struct table *t, json_t *at)
{
    uint64_t now = wall_ms(), then;
    char span[32], when[40];

    if (!json_is_integer(at)) {
        cell_json(t, at);
        return;
    }
    then = (uint64_t)json_integer_value(at);
    fmt_time(then, when, sizeof(when));
    fmt_span(now > then ? now - then : 0, span, sizeof(span));
    cell(t, "%s (%s ago)", when, span);
}

/* Prints t (or reports that it could not be built) and frees it. */
static int finish_table(struct table *t)
{
    int rc = 0;

    if (t->nomem)
        rc = oom();
    else
        table_print(t);
    table_deinit(t);
    return rc;
}

/* --json: the server's document, re-encoded, so what is printed is known to be one document. */
static int print_json(json_t *v)
{
    if (json_dumpf(v, stdout, JSON_INDENT(2)) < 0 || putchar('\n') == EOF)
        return fail(EXIT_TRANSPORT, "writing the output: %s", strerror(errno));
    return 0;
}

/* An answer that is one JSON document: printed with --json, else by human(). */
static int print_answer(const struct ctl *ctl, json_t *v, int (*human)(json_t *v))
{
    return ctl->json ? print_json(v) : human(v);
}

/* ---- commands ---- */

/* An integer member of o; 0 when absent. */
static json_int_t num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static int print_status(json_t *st)
{
    json_t *sess = json_object_get(st, "sessions"), *store = json_object_get(st, "store");
    json_t *be = json_object_get(st, "backends");
    struct table t = {.ncols = 2};
    char up[32];

    fmt_span((uint64_t)num(st, "uptime_s") * 1000, up, sizeof(up));
    row_key(&t, "version", st, "version");
    row_key(&t, "pid", st, "pid");
    cell(&t, "uptime");
    cell(&t, "%s", up);
    row_key(&t, "workers", st, "workers");
    row_key(&t, "connections", st, "connections");
    cell(&t, "backends");
    cell(&t, "%" JSON_INTEGER_FORMAT " up of %" JSON_INTEGER_FORMAT, num(be, "up"),
         num(be, "total"));
    cell(&t, "sessions");
    cell(&t, "%" JSON_INTEGER_FORMAT " live, %" JSON_INTEGER_FORMAT " provisional",
         num(sess, "live"), num(sess, "provisional"));
    cell(&t, "%s", "");
    cell(&t,
         "created %" JSON_INTEGER_FORMAT ", expired %" JSON_INTEGER_FORMAT
         ", evicted %" JSON_INTEGER_FORMAT ", ended %" JSON_INTEGER_FORMAT
         ", moved %" JSON_INTEGER_FORMAT,
         num(sess, "created"), num(sess, "expired"), num(sess, "evicted"), num(sess, "ended"),
         num(sess, "moved"));
    cell(&t, "state");
    cell(&t, "%" JSON_INTEGER_FORMAT " bytes", num(sess, "state_bytes"));
    cell(&t, "store");
    cell(&t, "%s, %s (%s), queue %" JSON_INTEGER_FORMAT,
         str_or(json_object_get(store, "kind"), "-"),
         json_is_true(json_object_get(store, "healthy")) ? "healthy" : "unhealthy",
         str_or(json_object_get(store, "detail"), "-"), num(store, "queue"));
    return finish_table(&t);
}

static int cmd_status(struct ctl *ctl, char **args)
{
    json_t *st;
    int rc;

    if ((rc = call(ctl, "GET", "/api/v1/status", NULL, &st)) == 0)
        rc = print_answer(ctl, st, print_status);
    json_decref(st);
    return rc;
}

static const char *const backend_cols[] = {
    "NAME",     "ADDRESS",  "STATE", "HEALTHY", "WEIGHT",  "SESSIONS", "INFLIGHT",
    "REQUESTS", "FAILURES", "MOVED", "ORIGIN",  "CHECKED", "CHANGED",  "REASON",
};

static void backend_row(struct table *t, json_t *b)
{
    json_t *check = json_object_get(b, "last_check");

    cell_key(t, b, "name");
    cell_key(t, b, "address");
    cell_key(t, b, "state");
    cell_key(t, b, "healthy");
    cell_key(t, b, "weight");
    cell_key(t, b, "sessions");
    cell_key(t, b, "inflight");
    cell_key(t, b, "requests");
    cell_key(t, b, "failures");
    cell_key(t, b, "moved");
    cell_key(t, b, "origin");
    if (json_is_object(check))
        cell_ago(t, json_object_get(check, "at_ms"));
    else
        cell(t, "never");
    cell_ago(t, json_object_get(b, "changed_ms"));
    cell_key(t, b, "reason");
}

/* {"backends":[...]} as a table, or one backend object as a table of one row. */
static int print_backends(json_t *v)
{
    struct table t = {.ncols = sizeof(backend_cols) / sizeof(backend_cols[0])};
    json_t *list = json_object_get(v, "backends"), *b;
    size_t i;

    for (i = 0; i < t.ncols; i++)
        cell(&t, "%s", backend_cols[i]);
    if (json_is_array(list)) {
        json_array_foreach (list, i, b)
            backend_row(&t, b);
    } else {
        backend_row(&t, v);
    }
    return finish_table(&t);
}

static int cmd_backends(struct ctl *ctl, char **args)
{
    json_t *root;
    int rc;

    if ((rc = call(ctl, "GET", "/api/v1/backends", NULL, &root)) == 0)
        rc = print_answer(ctl, root, print_backends);
    json_decref(root);
    return rc;
}

static int cmd_backend_add(struct ctl *ctl, char **args)
{
    json_t *req, *b = NULL;
    int rc;

    req = json_pack("{s:s, s:s}", "name", args[0], "address", args[1]);
    if (!req || ((ctl->opts & O_WEIGHT) &&
                 json_object_set_new(req, "weight", json_integer(ctl->weight)) < 0)) {
        json_decref(req);
        return oom();
    }
    if ((rc = call(ctl, "POST", "/api/v1/backends", req, &b)) == 0)
        rc = print_answer(ctl, b, print_backends);
    json_decref(req);
    json_decref(b);
    return rc;
}

static int print_removed(json_t *res)
{
    struct table t = {.ncols = 2};
    json_t *moves = json_object_get(res, "moves"), *m, *to;
    json_int_t n;
    size_t i;

    if (!json_is_true(json_object_get(res, "dry_run"))) {
        n = json_integer_value(json_object_get(res, "moved"));
        printf("removed %s: %" JSON_INTEGER_FORMAT " session%s moved\n",
               str_or(json_object_get(res, "removed"), "?"), n, n == 1 ? "" : "s");
        return 0;
    }
    n = json_integer_value(json_object_get(res, "count"));
    printf("dry run: removing %s would move %" JSON_INTEGER_FORMAT " session%s; nothing changed\n",
           str_or(json_object_get(res, "backend"), "?"), n, n == 1 ? "" : "s");
    if (json_array_size(moves) == 0)
        return 0;
    cell(&t, "KEY");
    cell(&t, "TO");
    json_array_foreach (moves, i, m) {
        cell_key(&t, m, "key");
        if (json_is_string(to = json_object_get(m, "to")))
            cell_json(&t, to);
        else
            cell(&t, "none: keeps its binding");
    }
    return finish_table(&t);
}

static int cmd_backend_remove(struct ctl *ctl, char **args)
{
    struct buf path = {0};
    json_t *res;
    int rc;

    if ((rc = api_path(&path, "backends/", args[0], ctl->dry_run ? "?dry_run=1" : "")) != 0)
        return rc;
    if ((rc = call(ctl, "DELETE", path.p, NULL, &res)) == 0)
        rc = print_answer(ctl, res, print_removed);
    json_decref(res);
    buf_deinit(&path);
    return rc;
}

/* drain, disable, enable: POST .../{name}/<verb> with an empty body; answers the backend. */
static int backend_verb(struct ctl *ctl, const char *name, const char *verb)
{
    struct buf path = {0};
    json_t *b;
    int rc;

    if ((rc = api_path(&path, "backends/", name, verb)) != 0)
        return rc;
    if ((rc = call(ctl, "POST", path.p, NULL, &b)) == 0)
        rc = print_answer(ctl, b, print_backends);
    json_decref(b);
    buf_deinit(&path);
    return rc;
}

static int cmd_backend_drain(struct ctl *ctl, char **args)
{
    return backend_verb(ctl, args[0], "/drain");
}

static int cmd_backend_disable(struct ctl *ctl, char **args)
{
    return backend_verb(ctl, args[0], "/disable");
}

static int cmd_backend_enable(struct ctl *ctl, char **args)
{
    return backend_verb(ctl, args[0], "/enable");
}

static const char *const session_cols[] = {
    "KEY", "BACKEND", "EPOCH", "REQUESTS",   "INFLIGHT",
    "AGE", "IDLE",    "FLAGS", "MOVED-FROM", "STATE",
};

/* A table of the page's (or pages') "sessions". */
static int print_sessions(json_t *page)
{
    struct table t = {.ncols = sizeof(session_cols) / sizeof(session_cols[0])};
    json_t *list = json_object_get(page, "sessions"), *s;
    size_t i;

    if (json_array_size(list) == 0) {
        printf("no sessions\n");
        return 0;
    }
    for (i = 0; i < t.ncols; i++)
        cell(&t, "%s", session_cols[i]);
    json_array_foreach (list, i, s) {
        bool prov = json_is_true(json_object_get(s, "provisional"));
        bool handoff = json_is_true(json_object_get(s, "handoff"));

        cell_key(&t, s, "key");
        cell_key(&t, s, "backend");
        cell_key(&t, s, "epoch");
        cell_key(&t, s, "requests");
        cell_key(&t, s, "inflight");
        cell_ago(&t, json_object_get(s, "created_ms"));
        cell_ago(&t, json_object_get(s, "last_seen_ms"));
        if (prov || handoff)
            cell(&t, "%s%s%s", prov ? "provisional" : "", prov && handoff ? "," : "",
                 handoff ? "handoff" : "");
        else
            cell(&t, "-");
        cell_key(&t, s, "moved_from");
        cell_key(&t, s, "state_bytes");
    }
    return finish_table(&t);
}

/* One page of GET /api/v1/sessions (limit 0: the server's default); *out is the whole answer
 * (caller decrefs). */
static int sessions_page(struct ctl *ctl, const char *cursor, long limit, json_t **out)
{
    struct buf path = {.max = SIZE_MAX};
    char num[32];
    json_t *next;
    int rc;

    /* each parameter ends in '&'; the last one is taken back */
    *out = NULL;
    snprintf(num, sizeof(num), "limit=%ld&", limit);
    if (buf_str(&path, "/api/v1/sessions?") < 0 ||
        (ctl->backend && (buf_str(&path, "backend=") < 0 || buf_pct(&path, ctl->backend) < 0 ||
                          buf_str(&path, "&") < 0)) ||
        (limit > 0 && buf_str(&path, num) < 0) ||
        (cursor && (buf_str(&path, "cursor=") < 0 || buf_pct(&path, cursor) < 0 ||
                    buf_str(&path, "&") < 0))) {
        buf_deinit(&path);
        return oom();
    }
    path.p[--path.len] = '\0';
    rc = call(ctl, "GET", path.p, NULL, out);
    buf_deinit(&path);
    if (rc == 0 &&
        (!json_is_array(json_object_get(*out, "sessions")) ||
         !(json_is_string(next = json_object_get(*out, "next_cursor")) || json_is_null(next)))) {
        json_decref(*out);
        *out = NULL;
        rc = fail(EXIT_TRANSPORT, "%s: malformed response: not a page of sessions", ctl->address);
    }
    return rc;
}

static int cmd_sessions(struct ctl *ctl, char **args)
{
    /* --all without --limit: the largest pages, for the fewest round trips */
    long limit = (ctl->opts & O_LIMIT) ? ctl->limit : ctl->all ? PAGE_MAX : 0;
    json_t *page = NULL, *all = NULL;
    char *cursor = NULL;
    const char *next;
    int rc;

    if ((rc = sessions_page(ctl, NULL, limit, &page)) != 0)
        return rc;
    if (ctl->all) {
        /* every page in one document, shaped as the last page */
        if (!(all = json_pack("{s:O, s:n}", "sessions", json_object_get(page, "sessions"),
                              "next_cursor"))) {
            rc = oom();
            goto out;
        }
        while ((next = json_string_value(json_object_get(page, "next_cursor")))) {
            /* a server that hands back the cursor it was given would keep us here */
            if (cursor && strcmp(cursor, next) == 0) {
                rc = fail(EXIT_TRANSPORT, "%s: malformed response: the cursor does not advance",
                          ctl->address);
                goto out;
            }
            free(cursor);
            if (!(cursor = strdup(next))) {
                rc = oom();
                goto out;
            }
            json_decref(page);
            if ((rc = sessions_page(ctl, cursor, limit, &page)) != 0)
                goto out;
            if (json_array_extend(json_object_get(all, "sessions"),
                                  json_object_get(page, "sessions")) < 0) {
                rc = oom();
                goto out;
            }
        }
    }
    rc = print_answer(ctl, all ? all : page, print_sessions);
    if (rc == 0 && !ctl->json && !all && json_is_string(json_object_get(page, "next_cursor")))
        printf("more sessions follow: --all lists every one\n");
out:
    free(cursor);
    json_decref(page);
    json_decref(all);
    return rc;
}

static int print_session(json_t *s)
{
    json_t *created = json_object_get(s, "created_ms"), *seen = json_object_get(s, "last_seen_ms");
    struct table t = {.ncols = 2};

    row_key(&t, "key", s, "key");
    row_key(&t, "backend", s, "backend");
    row_key(&t, "epoch", s, "epoch");
    cell(&t, "created");
    cell_when(&t, created);
    cell(&t, "last seen");
    cell_when(&t, seen);
    row_key(&t, "requests", s, "requests");
    row_key(&t, "inflight", s, "inflight");
    row_key(&t, "provisional", s, "provisional");
    row_key(&t, "handoff", s, "handoff");
    row_key(&t, "moved from", s, "moved_from");
    row_key(&t, "state bytes", s, "state_bytes");
    return finish_table(&t);
}

static int print_forgotten(json_t *res)
{
    struct table t = {.ncols = 1};

    cell(&t, "forgot %s", str_or(json_object_get(res, "forgotten"), "?"));
    return finish_table(&t);
}

static int print_moved(json_t *s)
{
    struct table t = {.ncols = 1};
    const char *from = str_or(json_object_get(s, "moved_from"), NULL);

    cell(&t, "moved %s%s%s to %s, epoch %" JSON_INTEGER_FORMAT,
         str_or(json_object_get(s, "key"), "?"), from ? " from " : "", from ? from : "",
         str_or(json_object_get(s, "backend"), "?"),
         json_integer_value(json_object_get(s, "epoch")));
    return finish_table(&t);
}

/* GET, DELETE or POST .../sessions/{key}[suffix], printed by human() or as JSON. */
static int session_cmd(struct ctl *ctl, const char *method, const char *key, const char *suffix,
                       json_t *body, int (*human)(json_t *v))
{
    struct buf path = {0};
    json_t *res;
    int rc;

    if ((rc = api_path(&path, "sessions/", key, suffix)) != 0)
        return rc;
    if ((rc = call(ctl, method, path.p, body, &res)) == 0)
        rc = print_answer(ctl, res, human);
    json_decref(res);
    buf_deinit(&path);
    return rc;
}

static int cmd_session_show(struct ctl *ctl, char **args)
{
    return session_cmd(ctl, "GET", args[0], "", NULL, print_session);
}

static int cmd_session_forget(struct ctl *ctl, char **args)
{
    return session_cmd(ctl, "DELETE", args[0], "", NULL, print_forgotten);
}

static int cmd_session_move(struct ctl *ctl, char **args)
{
    json_t *req = json_pack("{s:s}", "backend", args[1]);
    int rc;

    if (!req)
        return oom();
    rc = session_cmd(ctl, "POST", args[0], "/move", req, print_moved);
    json_decref(req);
    return rc;
}

static int print_reloaded(json_t *res)
{
    static const char *const lists[][2] = {
        {"changes", "change"}, {"restart_required", "restart required"}, {"dropped", "dropped"}};
    size_t n = json_array_size(json_object_get(res, "changes")), i;
    struct table t = {.ncols = 1};
    json_t *v;

    cell(&t, "reloaded: %zu change%s", n, n == 1 ? "" : "s");
    for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++)
        json_array_foreach (json_object_get(res, lists[l][0]), i, v)
            cell(&t, "  %s: %s", lists[l][1], str_or(v, "?"));
    return finish_table(&t);
}

static int cmd_reload(struct ctl *ctl, char **args)
{
    json_t *res;
    int rc;

    if ((rc = call(ctl, "POST", "/api/v1/reload", NULL, &res)) == 0)
        rc = print_answer(ctl, res, print_reloaded);
    json_decref(res);
    return rc;
}

static int cmd_metrics(struct ctl *ctl, char **args)
{
    struct reply r;
    int rc = exchange(ctl, "GET", "/metrics", NULL, &r, NULL, NULL);

    if (rc == 0 && (r.status < 200 || r.status > 299))
        rc = refused(&r);
    else if (rc == 0 && fwrite(r.body.p, 1, r.body.len, stdout) != r.body.len)
        rc = fail(EXIT_TRANSPORT, "writing the output: %s", strerror(errno));
    buf_deinit(&r.body);
    return rc;
}

/* ---- watch: server-sent events ---- */

struct sse {
    const struct ctl *ctl;
    struct buf line;  /* the line being read */
    struct buf event; /* "event:" of the event being read */
    struct buf data;  /* its "data:" lines, joined with LF */
};

/* Prints s with control characters as '?', so no event can drive the terminal. */
static void print_clean(const char *s)
{
    for (; *s; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

/* One key=value of an event's data, quoted (as JSON) only when needed to read it back. */
static void print_field(const char *key, json_t *v)
{
    const char *s = json_string_value(v);
    bool bare = s && s[0];
    char *enc;

    for (const char *p = s; bare && *p; p++)
        bare = (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f && *p != '"' && *p != '=';
    putchar(' ');
    print_clean(key);
    if (bare) {
        printf("=%s", s);
    } else if (json_is_null(v)) {
        printf("=-");
    } else if ((enc = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII))) {
        printf("=%s", enc);
        free(enc);
    }
}

/*
 * A blank line ends an event (HTML Living Standard, "Server-sent events"). --json: one object
 * a line, the type under "event" and then the data's members (data that is not a JSON object
 * goes under "data" as a string); else "TIME TYPE key=value ...".
 */
static int sse_dispatch(struct sse *e)
{
    const char *type = e->event.len ? e->event.p : "message";
    json_t *data = e->data.len ? json_loadb(e->data.p, e->data.len, 0, NULL) : NULL;
    int rc = 0;

    if (!e->data.len && !e->event.len)
        return 0;
    if (e->ctl->json) {
        json_t *line = json_is_object(data) ? json_pack("{s:s}", "event", type)
                                            : json_pack("{s:s, s:s%}", "event", type, "data",
                                                        e->data.len ? e->data.p : "", e->data.len);

        /* json_pack() refuses what is not UTF-8: no line of JSON can carry it */
        if (!line)
            rc = fail(EXIT_TRANSPORT, "%s: malformed event: not UTF-8", e->ctl->address);
        else if (json_is_object(data) && json_object_update_missing(line, data) < 0)
            rc = oom();
        else if (json_dumpf(line, stdout, JSON_COMPACT) == 0) /* errors: see ferror() below */
            putchar('\n');
        json_decref(line);
    } else {
        json_t *ts = json_object_get(data, "ts_ms"), *v;
        const char *key;
        char when[40];

        fmt_time(json_is_integer(ts) ? (uint64_t)json_integer_value(ts) : wall_ms(), when,
                 sizeof(when));
        printf("%s ", when);
        print_clean(type);
        if (json_is_object(data)) {
            json_object_foreach (data, key, v) {
                if (strcmp(key, "ts_ms") != 0)
                    print_field(key, v);
            }
        } else if (e->data.len) {
            putchar(' ');
            print_clean(e->data.p);
        }
        putchar('\n');
    }
    json_decref(data);
    e->event.len = e->data.len = 0;
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout)))
        rc = fail(EXIT_TRANSPORT, "writing the output: %s", strerror(errno));
    return rc;
}

static int sse_line(struct sse *e, char *line, size_t n)
{
    char *colon, *value;
    struct buf *to;

    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';
    if (n == 0)
        return sse_dispatch(e);
    if (line[0] == ':') /* a comment: the keepalive */
        return 0;
    colon = strchr(line, ':');
    value = colon ? colon + 1 + (colon[1] == ' ') : line + n;
    if (colon)
        *colon = '\0';
    if (strcmp(line, "event") == 0) {
        to = &e->event;
        to->len = 0;
    } else if (strcmp(line, "data") == 0) {
        to = &e->data;
        if (to->len && buf_add(to, "\n", 1) < 0)
            return fail(EXIT_TRANSPORT, "%s: an event over %zu bytes", e->ctl->address, to->max);
    } else {
        return 0; /* id, retry and unknown fields: nothing to show */
    }
    if (buf_add(to, value, strlen(value)) < 0)
        return fail(EXIT_TRANSPORT, "%s: an event over %zu bytes", e->ctl->address, to->max);
    return 0;
}

static int sse_sink(void *arg, const char *p, size_t n)
{
    struct sse *e = arg;

    while (n > 0) {
        const char *lf = memchr(p, '\n', n);
        size_t take = lf ? (size_t)(lf - p) : n;
        int rc;

        if (buf_add(&e->line, p, take) < 0)
            return fail(EXIT_TRANSPORT, "%s: event line longer than %d bytes", e->ctl->address,
                        EVENT_MAX);
        p += take;
        n -= take;
        if (!lf)
            break;
        p++;
        n--;
        if ((rc = sse_line(e, e->line.p, e->line.len)) != 0)
            return rc;
        e->line.len = 0;
    }
    return 0;
}

static void on_stop(int sig)
{
    interrupted = 1;
}

static int cmd_watch(struct ctl *ctl, char **args)
{
    struct sse e = {
        .ctl = ctl, .line = {.max = EVENT_MAX}, .event = {.max = 256}, .data = {.max = EVENT_MAX}};
    struct sigaction sa = {.sa_handler = on_stop};
    sigset_t block, waitmask;
    struct reply r;
    int rc;

    /* SIGINT and SIGTERM are held except while waiting in ppoll(), so none slips in between
     * a check of the flag and the wait, and the stream ends cleanly (exit 0) */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGINT);
    sigdelset(&waitmask, SIGTERM);
    ctl->waitmask = &waitmask;
    ctl->timeout_ms = -1;

    rc = exchange(ctl, "GET", "/api/v1/events", NULL, &r, sse_sink, &e);
    if (rc == 0 && (r.status < 200 || r.status > 299))
        rc = refused(&r);
    else if (rc == 0)
        rc = fail(EXIT_TRANSPORT, "%s: the event stream ended", ctl->address);
    buf_deinit(&r.body);
    buf_deinit(&e.line);
    buf_deinit(&e.event);
    buf_deinit(&e.data);
    return rc == STOPPED ? EXIT_OK : rc;
}

/* ---- main ---- */

static const struct command {
    const char *word, *sub; /* "backend" "add", or "status" NULL */
    int nargs;
    unsigned opts; /* O_* that apply */
    int (*run)(struct ctl *ctl, char **args);
    const char *args; /* for usage messages */
} commands[] = {
    {"status", NULL, 0, 0, cmd_status, ""},
    {"backends", NULL, 0, 0, cmd_backends, ""},
    {"backend", "add", 2, O_WEIGHT, cmd_backend_add, " NAME ADDRESS [--weight N]"},
    {"backend", "remove", 1, O_DRY_RUN, cmd_backend_remove, " NAME [--dry-run]"},
    {"backend", "drain", 1, 0, cmd_backend_drain, " NAME"},
    {"backend", "disable", 1, 0, cmd_backend_disable, " NAME"},
    {"backend", "enable", 1, 0, cmd_backend_enable, " NAME"},
    {"sessions", NULL, 0, O_BACKEND | O_LIMIT | O_ALL, cmd_sessions,
     " [--backend NAME] [--limit N] [--all]"},
    {"session", "show", 1, 0, cmd_session_show, " KEY"},
    {"session", "forget", 1, 0, cmd_session_forget, " KEY"},
    {"session", "move", 2, 0, cmd_session_move, " KEY BACKEND"},
    {"reload", NULL, 0, 0, cmd_reload, ""},
    {"watch", NULL, 0, 0, cmd_watch, ""},
    {"metrics", NULL, 0, 0, cmd_metrics, ""},
};

static const char *const option_names[] = {"--weight", "--dry-run", "--backend", "--limit",
                                           "--all"};

/* The command named by words[0..n), or NULL after saying what is wrong. */
static const struct command *find_command(char **words, int n)
{
    bool word_known = false;

    if (n == 0) {
        fail(EXIT_USAGE, "no command given (tetherctl -h lists them)");
        return NULL;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct command *cmd = &commands[i];
        int words_used = cmd->sub ? 2 : 1;

        if (strcmp(words[0], cmd->word) != 0)
            continue;
        word_known = true;
        if (cmd->sub && (n < 2 || strcmp(words[1], cmd->sub) != 0))
            continue;
        if (n - words_used != cmd->nargs) {
            fail(EXIT_USAGE, "usage: tetherctl %s%s%s%s", cmd->word, cmd->sub ? " " : "",
                 cmd->sub ? cmd->sub : "", cmd->args);
            return NULL;
        }
        return cmd;
    }
    if (word_known)
        fail(EXIT_USAGE, "%s: %s%s%s (tetherctl -h lists them)", words[0],
             n < 2 ? "missing subcommand" : "unknown subcommand '", n < 2 ? "" : words[1],
             n < 2 ? "" : "'");
    else
        fail(EXIT_USAGE, "unknown command '%s' (tetherctl -h lists them)", words[0]);
    return NULL;
}

int main(int argc, char **argv)
{
    enum { OPT_TOKEN = 256, OPT_JSON, OPT_WEIGHT, OPT_DRY_RUN, OPT_BACKEND, OPT_LIMIT, OPT_ALL };
    static const struct option longopts[] = {
        {"token-file", required_argument, NULL, OPT_TOKEN},
        {"json", no_argument, NULL, OPT_JSON},
        {"weight", required_argument, NULL, OPT_WEIGHT},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"all", no_argument, NULL, OPT_ALL},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct ctl ctl = {.config_path = TETHER_CONFIG_DEFAULT_PATH, .timeout_ms = TIMEOUT_MS};
    const struct command *cmd;
    int opt, rc;

    opterr = 0; /* every complaint is ours, on one line */
    while ((opt = getopt_long(argc, argv, ":c:s:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            ctl.config_path = optarg;
            ctl.config_given = true;
            break;
        case 's':
            ctl.server = optarg;
            break;
        case OPT_TOKEN:
            ctl.token_file = optarg;
            break;
        case OPT_JSON:
            ctl.json = true;
            break;
        case OPT_WEIGHT:
            if (parse_long(optarg, 1, WEIGHT_MAX, &ctl.weight) < 0)
                return fail(EXIT_USAGE, "--weight: expected 1..%d, not '%s'", WEIGHT_MAX, optarg);
            ctl.opts |= O_WEIGHT;
            break;
        case OPT_DRY_RUN:
            ctl.dry_run = true;
            ctl.opts |= O_DRY_RUN;
            break;
        case OPT_BACKEND:
            ctl.backend = optarg;
            ctl.opts |= O_BACKEND;
            break;
        case OPT_LIMIT:
            if (parse_long(optarg, 1, PAGE_MAX, &ctl.limit) < 0)
                return fail(EXIT_USAGE, "--limit: expected 1..%d, not '%s'", PAGE_MAX, optarg);
            ctl.opts |= O_LIMIT;
            break;
        case OPT_ALL:
            ctl.all = true;
            ctl.opts |= O_ALL;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return EXIT_OK;
        case 'V':
            printf("tetherctl %s\n", TETHER_VERSION_STRING);
            return EXIT_OK;
        case ':':
            return fail(EXIT_USAGE, "option %s needs a value", argv[optind - 1]);
        default:
            if (optopt)
                return fail(EXIT_USAGE, "unknown option '-%c' (tetherctl -h for help)", optopt);
            return fail(EXIT_USAGE, "unknown option '%s' (tetherctl -h for help)",
                        argv[optind - 1]);
        }
    }
    if (!(cmd = find_command(argv + optind, argc - optind)))
        return EXIT_USAGE;
    for (size_t i = 0; i < sizeof(option_names) / sizeof(option_names[0]); i++)
        if ((ctl.opts & ~cmd->opts) & (1u << i))
            return fail(EXIT_USAGE, "%s does not apply to '%s%s%s'", option_names[i], cmd->word,
                        cmd->sub ? " " : "", cmd->sub ? cmd->sub : "");
    if ((rc = resolve(&ctl)) == 0) {
        rc = cmd->run(&ctl, argv + optind + (cmd->sub ? 2 : 1));
        if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout)))
            rc = fail(EXIT_TRANSPORT, "writing the output: %s", strerror(errno));
    }
    free(ctl.address);
    free(ctl.token);
    return rc;
}
