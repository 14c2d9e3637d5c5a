/*
 * tether configuration: the validated, immutable in-memory form of
 * tether.yaml (see tether.yaml(5) and DESIGN.md "Configuration").
 * A config is loaded once, then shared read-only by every thread; a reload
 * builds a new one and swaps the pointer. Nothing here logs.
 */
#ifndef TETHER_CONFIG_H
#define TETHER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#define TETHER_CONFIG_DEFAULT_PATH "/etc/tether/tether.yaml"
#define TETHER_CONFIG_MAX_SOURCES 3

/*
 * Durations are held in milliseconds, sizes in bytes. Paths are kept as
 * written; a relative one is relative to tetherd's working directory.
 */

struct tether_config_cert {
    char *cert;  /* path to the PEM chain */
    char *key;   /* path to the PEM key */
};

enum tether_tls_version { TETHER_TLS_1_2 = 0, TETHER_TLS_1_3 = 1 };

struct tether_config_listen_tls {
    struct tether_config_cert *certs;
    size_t ncerts;               /* >= 1 */
    enum tether_tls_version min_version;
    char *ciphers;               /* "" = Mozilla intermediate */
    uint64_t handshake_timeout_ms;
    uint64_t ticket_rotation_ms;
    uint64_t hsts_ms;            /* Strict-Transport-Security max-age; 0 = not sent */
    bool hsts_subdomains;        /* ... with includeSubDomains */
};

struct tether_config_listen {
    char *address;               /* "host:port" as written, validated */
    struct tether_config_listen_tls *tls; /* NULL = plain TCP */
    int line;                    /* where it was defined, for messages */
};

enum tether_session_source {
    TETHER_SOURCE_LEARN = 0,
    TETHER_SOURCE_HEADER = 1,
    TETHER_SOURCE_COOKIE = 2,
};

struct tether_config_session {
    char *header;                /* lower-cased; default "x-fc-session-id" */
    char *cookie;                /* default "fc_session" */
    /* lookup order, no repeats; default learn, header, cookie. "learn" is
     * inert while learn_header is "" (an explicit list naming it is an error) */
    enum tether_session_source sources[TETHER_CONFIG_MAX_SOURCES];
    size_t nsources;
    char *learn_header;          /* lower-cased; "" = off */
    bool insert_cookie;
    uint64_t provisional_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t max_lifetime_ms;
    uint64_t state_max_bytes;
    uint64_t max_sessions;
    uint64_t max_state_bytes;
};

struct tether_config_balance {
    double load_factor;          /* >= 1.0 */
    uint32_t vnodes;             /* >= 1 */
};

struct tether_config_backend_tls {
    bool verify;                 /* default true */
    char *ca;                    /* "" = system store */
    char *sni;                   /* "" = none */
};

struct tether_config_backend {
    char *name;                  /* unique */
    char *address;               /* "host:port" */
    uint32_t weight;             /* >= 1 */
    uint64_t max_sessions;       /* 0 = no cap */
    struct tether_config_backend_tls *tls; /* NULL = plain */
    int line;
};

struct tether_config_health {
    char *path;
    uint64_t interval_ms;
    uint64_t timeout_ms;
    uint32_t rise;
    uint32_t fall;
    uint32_t passive_failures;
    bool passive_5xx;
};

enum tether_store_kind { TETHER_STORE_MEMORY = 0, TETHER_STORE_REDIS = 1 };

struct tether_config_redis {
    char *address;
    char *prefix;
    char *password_file;
    uint64_t claim_timeout_ms;
    uint64_t queue_max;
};

struct tether_config_state {
    enum tether_store_kind store;
    char *snapshot;              /* "" = none */
    uint64_t snapshot_interval_ms;
    struct tether_config_redis redis;
};

struct tether_config_admin {
    bool enabled;                /* false when the block is absent */
    char *listen;                /* loopback host:port or "unix:/path" */
    char *token_file;
};

struct tether_config_timeouts {
    uint64_t client_header_ms;
    uint64_t client_idle_ms;
    uint64_t backend_connect_ms;
    uint64_t backend_response_ms;
    uint64_t backend_idle_ms;
};

struct tether_config_limits {
    uint64_t max_connections;
    uint64_t max_header_bytes;
    uint64_t max_body_bytes;
    uint32_t max_pipelined;
};

enum tether_log_level {
    TETHER_LOG_ERROR = 0,
    TETHER_LOG_WARN = 1,
    TETHER_LOG_INFO = 2,
    TETHER_LOG_DEBUG = 3,
};

struct tether_config_log {
    enum tether_log_level level;
    char *access;                /* "stdout" | "off" | path */
};

/* Where a key path was written; see tether_config_where(). */
struct tether_config_mark {
    char *key;                   /* e.g. "listen[1].tls.certificates[0].cert" */
    int line;                    /* 1-based */
    int col;                     /* 1-based */
};

struct tether_config {
    char *path;                  /* the file it was read from */
    struct tether_config_listen *listens;
    size_t nlistens;             /* >= 1 */
    uint32_t workers;            /* resolved: "auto" = online cores */
    struct tether_config_session session;
    struct tether_config_balance balance;
    struct tether_config_backend *backends;
    size_t nbackends;            /* >= 1 */
    struct tether_config_health health;
    struct tether_config_state state;
    struct tether_config_admin admin;
    struct tether_config_timeouts timeouts;
    struct tether_config_limits limits;
    uint32_t retries;
    uint64_t retry_body_bytes;
    uint64_t drain_timeout_ms;
    uint64_t shutdown_timeout_ms;
    struct tether_config_log log;
    struct tether_config_mark *marks; /* every key the file set, for later messages */
    size_t nmarks;
};

/* One problem found while loading; the loader collects all of them. */
struct tether_config_error {
    int line;                    /* 1-based; 0 when not tied to a place */
    int col;                     /* 1-based */
    char *key;                   /* key path, e.g. "backends[2].weight" */
    char *message;
    bool warning;                /* a warning does not fail the load */
};

struct tether_config_errors {
    struct tether_config_error *items;
    size_t n;
    size_t nerrors;              /* items that are not warnings */
};

/*
 * Load and validate a config file: the YAML checks of
 * tether_config_load_buffer(), then tether_config_check_files().
 *   path: the YAML file (at most 1m).  errs: initialised by the call, then
 *   receives every problem (errors and warnings); caller frees it with
 *   tether_config_errors_deinit(). May be NULL to discard them.
 * Returns a new config (caller frees with tether_config_free()) or NULL if
 * any error (not warning) was found; NULL with no error means out of
 * memory. Problems are ordered as they appear in the file. Thread: any;
 * touches no global state.
 * YAML: one document; anchors are allowed but aliases and tags are errors.
 */
struct tether_config *tether_config_load(const char *path, struct tether_config_errors *errs);

/*
 * Same, from a buffer, without touching the filesystem (no file checks);
 * name is used in place of a path (cfg->path). For tests and the admin API.
 */
struct tether_config *tether_config_load_buffer(const char *name, const char *buf, size_t len,
                                                struct tether_config_errors *errs);

/*
 * The checks that need the filesystem: certificate and key files readable;
 * backend CA readable; when admin is enabled, the token file a regular,
 * readable file of mode 0600 or stricter; the snapshot's directory present
 * (store memory); the Redis password file readable (store redis); the
 * access log's directory present. Deeper TLS checks belong to the TLS module.
 *   errs: initialised (zeroed, or from a load); problems are appended, placed
 *   with cfg->marks when the key was written in the file.
 * Returns the number of errors appended (0 = all good), or -ENOMEM.
 * Thread: any.
 */
int tether_config_check_files(const struct tether_config *cfg, struct tether_config_errors *errs);

/*
 * Where key (a path such as "backends[1].weight") was written in the file.
 * Returns 0 and sets *line, *col (1-based), or -ENOENT (default value).
 */
int tether_config_where(const struct tether_config *cfg, const char *key, int *line, int *col);

/*
 * Append one problem to errs (initialised); line 0 = not tied to a place.
 * For modules that check a loaded config further (TLS: an expired
 * certificate is a warning). Returns 0 or -ENOMEM.
 */
int tether_config_errors_add(struct tether_config_errors *errs, bool warning, int line, int col,
                             const char *key, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/*
 * Print every collected problem as "file:line:col: key: message" (warnings
 * as "file:line:col: warning: key: message"), one a line; the place and the
 * key are left out when unknown. path NULL prints "tether.yaml".
 */
void tether_config_errors_print(const struct tether_config_errors *errs, const char *path,
                                FILE *out);

/* Frees what errs holds and zeroes it; accepts NULL. */
void tether_config_errors_deinit(struct tether_config_errors *errs);

/* Frees a config and everything it owns; accepts NULL. */
void tether_config_free(struct tether_config *cfg);

/* 1 when name can name a backend: 1..63 bytes of A-Z a-z 0-9 - _ . (it
   appears in URLs, headers and metric labels) */
int tether_config_backend_name_valid(const char *name);

/*
 * Value parsers shared with other modules (admin API, tetherctl).
 * Return 0 and set *out, or -EINVAL.
 *   durations: "500ms", "10s", "5m", "2h", "1d"; a bare integer is seconds.
 *   sizes: "123", "64k", "1m", "1g" (binary multiples; K, M, G too).
 * Signs, fractions, spaces, other units and overflow are -EINVAL.
 */
int tether_config_parse_duration(const char *s, uint64_t *out_ms);
int tether_config_parse_size(const char *s, uint64_t *out_bytes);

/*
 * Split "host:port" or "[v6]:port" into host and port (host written into
 * host[hostlen], without brackets). The host must be an IPv4 literal, an
 * IPv6 literal in brackets, or a DNS name; the port 1..65535.
 * Returns 0 or -EINVAL (also when host does not fit in hostlen).
 */
int tether_config_split_address(const char *addr, char *host, size_t hostlen, uint16_t *port);

#endif
