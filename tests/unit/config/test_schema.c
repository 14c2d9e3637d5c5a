/*
 * Tests for src/config/schema.c: the default of every key, the sections
 * with rules of their own (workers, sources, names, addresses, TLS blocks,
 * admin) and the range of each bounded value.
 */
#include <stdlib.h>
#include <unistd.h>

#include <check.h>

#include "common.h"
#include "../unit.h"

START_TEST(defaults)
{
    struct tether_config_errors e;
    struct tether_config *c = load_text(MINIMAL, &e);

    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_str_eq(c->path, "test.yaml");
    ck_assert_uint_eq(c->nlistens, 1);
    ck_assert_str_eq(c->listens[0].address, "127.0.0.1:8080");
    ck_assert_ptr_null(c->listens[0].tls);
    ck_assert_int_eq(c->listens[0].line, 2);
    ck_assert_uint_eq(c->workers, 1);
    ck_assert_str_eq(c->session.header, "x-fc-session-id");
    ck_assert_str_eq(c->session.cookie, "fc_session");
    ck_assert_uint_eq(c->session.nsources, 3);
    ck_assert_int_eq(c->session.sources[0], TETHER_SOURCE_LEARN);
    ck_assert_int_eq(c->session.sources[1], TETHER_SOURCE_HEADER);
    ck_assert_int_eq(c->session.sources[2], TETHER_SOURCE_COOKIE);
    ck_assert_str_eq(c->session.learn_header, "");
    ck_assert(c->session.insert_cookie);
    ck_assert_uint_eq(c->session.provisional_timeout_ms, 60000);
    ck_assert_uint_eq(c->session.idle_timeout_ms, 30 * 60000);
    ck_assert_uint_eq(c->session.max_lifetime_ms, 24 * 3600000);
    ck_assert_uint_eq(c->session.state_max_bytes, 8192);
    ck_assert_uint_eq(c->session.max_sessions, 1000000);
    ck_assert_uint_eq(c->session.max_state_bytes, 256u << 20);
    ck_assert_double_eq(c->balance.load_factor, 1.25);
    ck_assert_uint_eq(c->balance.vnodes, 100);
    ck_assert_uint_eq(c->nbackends, 1);
    ck_assert_str_eq(c->backends[0].name, "fn-1");
    ck_assert_str_eq(c->backends[0].address, "127.0.0.1:9001");
    ck_assert_uint_eq(c->backends[0].weight, 1);
    ck_assert_uint_eq(c->backends[0].max_sessions, 0);
    ck_assert_ptr_null(c->backends[0].tls);
    ck_assert_int_eq(c->backends[0].line, 4);
    ck_assert_str_eq(c->health.path, "/healthz");
    ck_assert_uint_eq(c->health.interval_ms, 2000);
    ck_assert_uint_eq(c->health.timeout_ms, 1000);
    ck_assert_uint_eq(c->health.rise, 2);
    ck_assert_uint_eq(c->health.fall, 3);
    ck_assert_uint_eq(c->health.passive_failures, 5);
    ck_assert(!c->health.passive_5xx);
    ck_assert_int_eq(c->state.store, TETHER_STORE_MEMORY);
    ck_assert_str_eq(c->state.snapshot, "");
    ck_assert_uint_eq(c->state.snapshot_interval_ms, 10000);
    ck_assert_str_eq(c->state.redis.address, "127.0.0.1:6379");
    ck_assert_str_eq(c->state.redis.prefix, "tether:");
    ck_assert_str_eq(c->state.redis.password_file, "");
    ck_assert_uint_eq(c->state.redis.claim_timeout_ms, 50);
    ck_assert_uint_eq(c->state.redis.queue_max, 100000);
    ck_assert(!c->admin.enabled);
    ck_assert_str_eq(c->admin.listen, "127.0.0.1:9900");
    ck_assert_str_eq(c->admin.token_file, "/etc/tether/admin.token");
    ck_assert_uint_eq(c->timeouts.client_header_ms, 10000);
    ck_assert_uint_eq(c->timeouts.client_idle_ms, 60000);
    ck_assert_uint_eq(c->timeouts.backend_connect_ms, 2000);
    ck_assert_uint_eq(c->timeouts.backend_response_ms, 300000);
    ck_assert_uint_eq(c->timeouts.backend_idle_ms, 300000);
    ck_assert_uint_eq(c->limits.max_connections, 10000);
    ck_assert_uint_eq(c->limits.max_header_bytes, 16384);
    ck_assert_uint_eq(c->limits.max_body_bytes, 16u << 20);
    ck_assert_uint_eq(c->limits.max_pipelined, 16);
    ck_assert_uint_eq(c->retries, 1);
    ck_assert_uint_eq(c->retry_body_bytes, 65536);
    ck_assert_uint_eq(c->drain_timeout_ms, 600000);
    ck_assert_uint_eq(c->shutdown_timeout_ms, 30000);
    ck_assert_int_eq(c->log.level, TETHER_LOG_INFO);
    ck_assert_str_eq(c->log.access, "stdout");
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(workers)
{
    struct tether_config_errors e;
    struct tether_config *c = load_text(MINIMAL "workers: auto\n", &e);
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->workers, n > 256 ? 256 : n < 1 ? 1 : (uint32_t)n);
    tether_config_free(c);
    c = load_text(MINIMAL "workers: 256\n", &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->workers, 256);
    tether_config_free(c);
    tether_config_errors_deinit(&e);
    ck_assert_one_error(MINIMAL "workers: 0\n", 6, 10, "workers", "must be between 1 and 256");
    ck_assert_one_error(MINIMAL "workers: 257\n", 6, 10, "workers", "must be between 1 and 256");
    ck_assert_one_error(MINIMAL "workers: many\n", 6, 10, "workers", "expected an integer");
}
END_TEST

START_TEST(ranges)
{
    ck_assert_one_error(MINIMAL "    weight: 0\n", 6, 13, "backends[0].weight",
                        "must be between 1 and 1000");
    ck_assert_one_error(MINIMAL "    weight: 1001\n", 6, 13, "backends[0].weight", "between");
    ck_assert_one_error(MINIMAL "balance:\n  vnodes: 0\n", 7, 11, "balance.vnodes",
                        "must be between 1 and 10000");
    ck_assert_one_error(MINIMAL "balance:\n  vnodes: 10001\n", 7, 11, "balance.vnodes",
                        "between");
    ck_assert_one_error(MINIMAL "balance:\n  load_factor: 0.99\n", 7, 16, "balance.load_factor",
                        "must be between 1.0 and 100");
    ck_assert_one_error(MINIMAL "balance:\n  load_factor: 100.5\n", 7, 16,
                        "balance.load_factor", "between");
    ck_assert_one_error(MINIMAL "balance:\n  load_factor: \"1.5\"\n", 7, 16,
                        "balance.load_factor", "quoted string");
    ck_assert_one_error(MINIMAL "balance:\n  load_factor: .nan\n", 7, 16, "balance.load_factor",
                        "expected a number");
    ck_assert_one_error(MINIMAL "health:\n  rise: 0\n", 7, 9, "health.rise", "between 1 and");
    ck_assert_one_error(MINIMAL "health:\n  fall: 0\n", 7, 9, "health.fall", "between 1 and");
    ck_assert_one_error(MINIMAL "health:\n  passive_failures: 0\n", 7, 21,
                        "health.passive_failures", "between 1 and");
    ck_assert_one_error(MINIMAL "health:\n  interval: 0s\n", 7, 13, "health.interval",
                        "must be between 100ms and 1h");
    ck_assert_one_error(MINIMAL "limits:\n  max_header_bytes: 1023\n", 7, 21,
                        "limits.max_header_bytes", "must be between 1k and 1m");
    ck_assert_one_error(MINIMAL "limits:\n  max_header_bytes: 1025k\n", 7, 21,
                        "limits.max_header_bytes", "between 1k and 1m");
    ck_assert_one_error(MINIMAL "limits:\n  max_pipelined: 0\n", 7, 18, "limits.max_pipelined",
                        "between 1 and 1024");
    ck_assert_one_error(MINIMAL "limits:\n  max_pipelined: 1025\n", 7, 18,
                        "limits.max_pipelined", "between 1 and 1024");
    ck_assert_one_error(MINIMAL "limits:\n  max_connections: 0\n", 7, 20,
                        "limits.max_connections", "between 1 and");
    ck_assert_one_error(MINIMAL "session:\n  idle_timeout: 500ms\n", 7, 17,
                        "session.idle_timeout", "must be between 1s and 365d");
    ck_assert_one_error(MINIMAL "timeouts:\n  backend_connect: 0ms\n", 7, 20,
                        "timeouts.backend_connect", "between 1ms and");
    ck_assert_one_error(MINIMAL "retries: 11\n", 6, 10, "retries", "between 0 and 10");
    ck_assert_one_error(MINIMAL "state:\n  redis:\n    claim_timeout: 11s\n", 8, 20,
                        "state.redis.claim_timeout", "between 1ms and 10s");
}
END_TEST

START_TEST(session_names)
{
    struct tether_config_errors e;
    struct tether_config *c =
        load_text(MINIMAL "session:\n  header: X-Conversation\n  learn_header: Mcp-Session-Id\n"
                          "  cookie: Conv_ID\n", &e);

    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->session.header, "x-conversation");
    ck_assert_str_eq(c->session.learn_header, "mcp-session-id");
    ck_assert_str_eq(c->session.cookie, "Conv_ID");  /* cookie names are case-sensitive */
    tether_config_free(c);
    tether_config_errors_deinit(&e);
    ck_assert_one_error(MINIMAL "session:\n  header: \"x session\"\n", 7, 11, "session.header",
                        "is not a valid header name");
    ck_assert_one_error(MINIMAL "session:\n  header: \"\"\n", 7, 11, "session.header",
                        "must not be empty");
    ck_assert_one_error(MINIMAL "session:\n  learn_header: \"a:b\"\n", 7, 17,
                        "session.learn_header", "not a valid header name");
    ck_assert_one_error(MINIMAL "session:\n  learn_header: X-FC-Session-State\n", 7, 17,
                        "session.learn_header", "x-fc-session-state is reserved");
    ck_assert_one_error(MINIMAL "session:\n  header: Host\n", 7, 11, "session.header",
                        "host is reserved");
    ck_assert_one_error(MINIMAL "session:\n  cookie: \"a=b\"\n", 7, 11, "session.cookie",
                        "not a valid cookie name (RFC 6265 token)");
    ck_assert_one_error(MINIMAL "session:\n  cookie: \"\"\n", 7, 11, "session.cookie",
                        "must not be empty");
}
END_TEST

START_TEST(sources)
{
    struct tether_config_errors e;
    struct tether_config *c = load_text(MINIMAL "session:\n  sources: [cookie, header]\n", &e);

    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->session.nsources, 2);
    ck_assert_int_eq(c->session.sources[0], TETHER_SOURCE_COOKIE);
    ck_assert_int_eq(c->session.sources[1], TETHER_SOURCE_HEADER);
    tether_config_free(c);
    tether_config_errors_deinit(&e);
    ck_assert_one_error(MINIMAL "session:\n  sources: [header, query]\n", 7, 21,
                        "session.sources[1]", "unknown source \"query\"");
    ck_assert_one_error(MINIMAL "session:\n  sources: [cookie, header, cookie]\n", 7, 29,
                        "session.sources[2]", "cookie is listed twice");
    ck_assert_one_error(MINIMAL "session:\n  sources: []\n", 7, 12, "session.sources",
                        "must list at least one");
    ck_assert_one_error(MINIMAL "session:\n  sources: [header, [cookie]]\n", 7, 21,
                        "session.sources[1]", "expected a source name, got a sequence");
}
END_TEST

START_TEST(backend_rules)
{
    struct tether_config_errors e;
    struct tether_config *c;

    ck_assert_one_error(MINIMAL "  - name: \"fn 2\"\n    address: 127.0.0.1:9002\n", 6, 11,
                        "backends[1].name", "a name is 1 to 63 letters");
    ck_assert_one_error(MINIMAL "  - name: \"\"\n    address: 127.0.0.1:9002\n", 6, 11,
                        "backends[1].name", "must not be empty");
    ck_assert_one_error(MINIMAL "  - name: fn-2\n    address: 127.0.0.1\n", 7, 14,
                        "backends[1].address", "invalid address \"127.0.0.1\": missing :port");
    ck_assert_one_error(MINIMAL "  - name: fn-2\n    address: \"[::1]:65536\"\n", 7, 14,
                        "backends[1].address", "port must be a number from 1 to 65535");
    ck_assert_one_error(MINIMAL "    max_sessions: 1000000001\n", 6, 19,
                        "backends[0].max_sessions", "between 0 and 1000000000");
    ck_assert_one_error(MINIMAL "    tls: { sni: 10.0.0.1 }\n", 6, 17, "backends[0].tls.sni",
                        "not a host name");
    ck_assert_one_error(MINIMAL "    tls: { verify: no }\n", 6, 20, "backends[0].tls.verify",
                        "expected true or false");
    ck_assert_one_error("listen:\n  - address: 127.0.0.1:1\nbackends: []\n", 3, 11, "backends",
                        "must list at least one");
    c = load_text(MINIMAL "    weight: 1000\n    max_sessions: 7\n"
                          "    tls: { ca: /etc/ca.pem, sni: fn-1.internal }\n"
                          "  - { name: fn_2.b, address: \"[::1]:9002\", tls: {} }\n", &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->nbackends, 2);
    ck_assert_uint_eq(c->backends[0].weight, 1000);
    ck_assert_uint_eq(c->backends[0].max_sessions, 7);
    ck_assert_ptr_nonnull(c->backends[0].tls);
    ck_assert(c->backends[0].tls->verify);
    ck_assert_str_eq(c->backends[0].tls->ca, "/etc/ca.pem");
    ck_assert_str_eq(c->backends[0].tls->sni, "fn-1.internal");
    ck_assert_str_eq(c->backends[1].name, "fn_2.b");
    ck_assert_int_eq(c->backends[1].line, 9);
    ck_assert_str_eq(c->backends[1].tls->ca, "");
    ck_assert_str_eq(c->backends[1].tls->sni, "");
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

#define TLS_LISTEN                                                                             \
    "backends:\n"                                                                              \
    "  - name: fn-1\n"                                                                         \
    "    address: 127.0.0.1:9001\n"                                                            \
    "listen:\n"                                                                                \
    "  - address: 127.0.0.1:8443\n"                                                            \
    "    tls:\n"

START_TEST(listen_tls)
{
    struct tether_config_errors e;
    struct tether_config *c = load_text(TLS_LISTEN "      certificates:\n"
                                                   "        - { cert: a.crt, key: a.key }\n"
                                                   "        - { cert: b.crt, key: b.key }\n"
                                                   "      min_version: tls1.3\n"
                                                   "      ciphers: ECDHE+AESGCM\n"
                                                   "      handshake_timeout: 5s\n"
                                                   "      hsts: 365d\n"
                                                   "      hsts_subdomains: true\n",
                                        &e);

    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(c->listens[0].tls);
    ck_assert_uint_eq(c->listens[0].tls->ncerts, 2);
    ck_assert_str_eq(c->listens[0].tls->certs[1].cert, "b.crt");
    ck_assert_str_eq(c->listens[0].tls->certs[1].key, "b.key");
    ck_assert_int_eq(c->listens[0].tls->min_version, TETHER_TLS_1_3);
    ck_assert_str_eq(c->listens[0].tls->ciphers, "ECDHE+AESGCM");
    ck_assert_uint_eq(c->listens[0].tls->handshake_timeout_ms, 5000);
    ck_assert_uint_eq(c->listens[0].tls->ticket_rotation_ms, 3600000);
    ck_assert_uint_eq(c->listens[0].tls->hsts_ms, 365 * 86400000ull);
    ck_assert(c->listens[0].tls->hsts_subdomains);
    tether_config_free(c);
    tether_config_errors_deinit(&e);

    /* HSTS is off unless asked for */
    c = load_text(TLS_LISTEN "      certificates: [{ cert: a, key: b }]\n", &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->listens[0].tls->hsts_ms, 0);
    ck_assert(!c->listens[0].tls->hsts_subdomains);
    tether_config_free(c);
    tether_config_errors_deinit(&e);

    ck_assert_one_error(TLS_LISTEN "      certificates: []\n", 7, 21,
                        "listen[0].tls.certificates", "must list at least one certificate");
    ck_assert_one_error(TLS_LISTEN "      min_version: tls1.2\n", 7, 7,
                        "listen[0].tls.certificates", "required key is missing");
    ck_assert_one_error(TLS_LISTEN "      certificates:\n        - { cert: a.crt }\n", 8, 11,
                        "listen[0].tls.certificates[0].key", "required key is missing");
    ck_assert_one_error(TLS_LISTEN "      certificates:\n        - { cert: \"\", key: a }\n", 8,
                        19, "listen[0].tls.certificates[0].cert", "must not be empty");
    ck_assert_one_error(TLS_LISTEN "      certificates:\n        - { cert: a, key: b }\n"
                                   "      min_version: TLS1.3\n",
                        9, 20, "listen[0].tls.min_version", "must be one of tls1.2, tls1.3");
    ck_assert_one_error(TLS_LISTEN "      certificates: [{ cert: a, key: b }]\n"
                                   "      ticket_rotation: 10s\n",
                        8, 24, "listen[0].tls.ticket_rotation", "between 1m and 7d");
    ck_assert_one_error(TLS_LISTEN "      certificates: [{ cert: a, key: b }]\n"
                                   "      hsts: 800d\n",
                        8, 13, "listen[0].tls.hsts", "between 0ms and 730d");
}
END_TEST

START_TEST(state_and_log)
{
    struct tether_config_errors e;
    struct tether_config *c =
        load_text(MINIMAL "state:\n  store: redis\n  redis:\n    address: \"[::1]:6380\"\n"
                          "    prefix: \"t:\"\n    queue_max: 5\nlog:\n  level: debug\n"
                          "  access: \"off\"\n", &e);

    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(c->state.store, TETHER_STORE_REDIS);
    ck_assert_str_eq(c->state.redis.address, "[::1]:6380");
    ck_assert_str_eq(c->state.redis.prefix, "t:");
    ck_assert_uint_eq(c->state.redis.queue_max, 5);
    ck_assert_int_eq(c->log.level, TETHER_LOG_DEBUG);
    ck_assert_str_eq(c->log.access, "off");
    tether_config_free(c);
    tether_config_errors_deinit(&e);
    ck_assert_one_error(MINIMAL "state:\n  store: sqlite\n", 7, 10, "state.store",
                        "must be one of memory, redis (got \"sqlite\")");
    ck_assert_one_error(MINIMAL "state:\n  redis:\n    prefix: \"a b\"\n", 8, 13,
                        "state.redis.prefix", "no spaces");
    ck_assert_one_error(MINIMAL "state:\n  redis:\n    address: redis\n", 8, 14,
                        "state.redis.address", "missing :port");
    ck_assert_one_error(MINIMAL "health:\n  path: healthz\n", 7, 9, "health.path",
                        "starting with '/'");
    ck_assert_one_error(MINIMAL "health:\n  path: \"/a b\"\n", 7, 9, "health.path",
                        "without spaces");
}
END_TEST

START_TEST(admin)
{
    static const char *const ok[] = {
        "127.0.0.1:9900", "127.9.9.9:1", "\"[::1]:9900\"", "localhost:9900",
        "unix:/run/tether/admin.sock",
    };
    static const char *const bad[] = {
        "0.0.0.0:9900", "10.0.0.1:9900", "\"[::]:9900\"", "example.com:9900",
        "unix:run/admin.sock", "\"unix:\"", "127.0.0.1",
    };
    struct tether_config_errors e;
    struct tether_config *c;
    char buf[512];

    c = load_text(MINIMAL "admin:\n", &e);
    ck_assert_ptr_nonnull(c);
    ck_assert(c->admin.enabled);
    ck_assert_str_eq(c->admin.listen, "127.0.0.1:9900");
    tether_config_free(c);
    tether_config_errors_deinit(&e);
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(buf, sizeof(buf), MINIMAL "admin:\n  listen: %s\n  token_file: /t\n", ok[i]);
        c = load_text(buf, &e);
        ck_assert_msg(c != NULL, "%s", ok[i]);
        ck_assert(c->admin.enabled);
        ck_assert_str_eq(c->admin.token_file, "/t");
        tether_config_free(c);
        tether_config_errors_deinit(&e);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), MINIMAL "admin:\n  listen: %s\n", bad[i]);
        ck_assert_one_error(buf, 7, 11, "admin.listen", "invalid admin address");
    }
    ck_assert_one_error(MINIMAL "admin:\n  listen: 10.1.1.1:1\n", 7, 11, "admin.listen",
                        "must be loopback (127.0.0.0/8, [::1], localhost) or unix:/path");
    ck_assert_one_error(MINIMAL "admin: [a]\n", 6, 8, "admin", "expected a mapping");
}
END_TEST

static Suite *schema_suite(void)
{
    Suite *s = suite_create("config/schema");
    TCase *tc = tcase_create("schema");

    tcase_add_test(tc, defaults);
    tcase_add_test(tc, workers);
    tcase_add_test(tc, ranges);
    tcase_add_test(tc, session_names);
    tcase_add_test(tc, sources);
    tcase_add_test(tc, backend_rules);
    tcase_add_test(tc, listen_tls);
    tcase_add_test(tc, state_and_log);
    tcase_add_test(tc, admin);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(schema_suite());
}
