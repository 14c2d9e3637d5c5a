/*
 * Tests for src/config/config.c: YAML-level problems (syntax, aliases,
 * tags, several documents), many errors collected in one pass, the printed
 * format, the lifecycle, and the shipped conf/ files loading cleanly.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <check.h>

#include "common.h"
#include "../unit.h"

#ifndef TETHER_SOURCE_ROOT
#error "the build passes TETHER_SOURCE_ROOT, the source tree's root"
#endif

START_TEST(syntax_error)
{
    ck_assert_one_error("listen: [\n  - a\n", 2, 3, "", "YAML: did not find expected node");
    ck_assert_one_error("a: b: c\n", 1, 5, "", "YAML: mapping values are not allowed");
    ck_assert_one_error("a:\n\tb: 1\n", 2, 1, "", "YAML:");
}
END_TEST

START_TEST(aliases_and_tags)
{
    ck_assert_one_error("listen: &l\n  - address: 127.0.0.1:1\nbackends: *l\n", 3, 11, "",
                        "YAML aliases are not supported");
    ck_assert_one_error(MINIMAL "    weight: !!int 3\n", 6, 13, "", "YAML tags are not supported");
    ck_assert_one_error(MINIMAL "    weight: !custom 3\n", 6, 13, "", "tags are not supported");
}
END_TEST

START_TEST(documents)
{
    struct tether_config_errors e;
    struct tether_config *c;

    ck_assert_one_error(MINIMAL "---\nretries: 2\n", 6, 1, "", "more than one YAML document");
    c = load_text("---\n" MINIMAL "...\n", &e);
    ck_assert_ptr_nonnull(c);
    tether_config_free(c);
    c = load_text("# only a comment\n", &e);
    ck_assert_ptr_null(c);
    ck_assert_uint_eq(e.n, 2);
    ck_assert_ptr_nonnull(find_error(&e, 0, 0, "listen", "required key is missing"));
    ck_assert_ptr_nonnull(find_error(&e, 0, 0, "backends", "required key is missing"));
    tether_config_errors_deinit(&e);
    ck_assert_one_error("- listen\n", 1, 1, "", "expected a mapping at the top level");
    ck_assert_one_error("hello\n", 1, 1, "", "expected a mapping at the top level, got a scalar");
}
END_TEST

START_TEST(depth)
{
    char buf[512] = MINIMAL "session: ";

    for (int i = 0; i < 40; i++)
        strcat(buf, "[");
    ck_assert_one_error(buf, 6, 41, "", "nesting deeper than 32 levels");
}
END_TEST

/* One file with a problem in nearly every section, all found in one pass. */
START_TEST(one_pass)
{
    static const char text[] =
        "listen:\n"                                  /* 1 */
        "  - address: 127.0.0.1:0\n"                 /* 2 */
        "workers: two\n"                             /* 3 */
        "session:\n"                                 /* 4 */
        "  sources: [learn, cookie, learn]\n"        /* 5 */
        "  idle_timeout: 10y\n"                      /* 6 */
        "balance: { load_factor: 0.5 }\n"            /* 7 */
        "backends:\n"                                /* 8 */
        "  - name: fn-1\n"                           /* 9 */
        "    address: 127.0.0.1:9001\n"              /* 10 */
        "    weight: 0\n"                            /* 11 */
        "  - name: fn-1\n"                           /* 12 */
        "    address: \"[::1]:9002\"\n"              /* 13 */
        "    colour: red\n"                          /* 14 */
        "health:\n"                                  /* 15 */
        "  rise: \"2\"\n"                            /* 16 */
        "limits:\n"                                  /* 17 */
        "  max_header_bytes: 1m1\n"                  /* 18 */
        "log:\n"                                     /* 19 */
        "  level: chatty\n";                         /* 20 */
    static const struct {
        int line, col;
        const char *key, *part;
    } want[] = {
        { 2, 14, "listen[0].address", "port must be" },
        { 3, 10, "workers", "expected an integer" },
        { 5, 28, "session.sources[2]", "listed twice" },
        { 6, 17, "session.idle_timeout", "invalid duration" },
        { 7, 25, "balance.load_factor", "between 1.0 and 100" },
        { 11, 13, "backends[0].weight", "between 1 and 1000" },
        { 12, 11, "backends[1].name", "duplicate backend name" },
        { 14, 5, "backends[1].colour", "unknown key" },
        { 16, 9, "health.rise", "quoted string" },
        { 18, 21, "limits.max_header_bytes", "invalid size" },
        { 20, 10, "log.level", "must be one of" },
    };
    struct tether_config_errors e;
    struct tether_config *c = load_text(text, &e);

    ck_assert_ptr_null(c);
    if (e.n != sizeof(want) / sizeof(want[0]))
        tether_config_errors_print(&e, "test.yaml", stderr);
    ck_assert_uint_eq(e.n, sizeof(want) / sizeof(want[0]));
    ck_assert_uint_eq(e.nerrors, e.n);
    /* in file order, whatever order the checks ran in */
    for (size_t i = 0; i < e.n; i++) {
        ck_assert_int_eq(e.items[i].line, want[i].line);
        ck_assert_int_eq(e.items[i].col, want[i].col);
        ck_assert_str_eq(e.items[i].key, want[i].key);
        ck_assert_msg(strstr(e.items[i].message, want[i].part), "%s", e.items[i].message);
    }
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(print_format)
{
    struct tether_config_errors e = { 0 };
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);

    ck_assert_int_eq(tether_config_errors_add(&e, false, 3, 7, "backends[1].weight", "bad %d", 1),
                     0);
    ck_assert_int_eq(tether_config_errors_add(&e, true, 9, 1, "health.timeout", "slow"), 0);
    ck_assert_int_eq(tether_config_errors_add(&e, false, 0, 0, "", "cannot read"), 0);
    ck_assert_int_eq(tether_config_errors_add(&e, false, 2, 2, NULL, "YAML: oops"), 0);
    ck_assert_uint_eq(e.n, 4);
    ck_assert_uint_eq(e.nerrors, 3);
    tether_config_errors_print(&e, "/etc/tether/tether.yaml", f);
    tether_config_errors_print(&e, NULL, f);
    fclose(f);
    ck_assert_str_eq(out, "/etc/tether/tether.yaml:3:7: backends[1].weight: bad 1\n"
                          "/etc/tether/tether.yaml:9:1: warning: health.timeout: slow\n"
                          "/etc/tether/tether.yaml: cannot read\n"
                          "/etc/tether/tether.yaml:2:2: YAML: oops\n"
                          "tether.yaml:3:7: backends[1].weight: bad 1\n"
                          "tether.yaml:9:1: warning: health.timeout: slow\n"
                          "tether.yaml: cannot read\n"
                          "tether.yaml:2:2: YAML: oops\n");
    free(out);
    tether_config_errors_deinit(&e);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_ptr_null(e.items);
}
END_TEST

START_TEST(lifecycle)
{
    struct tether_config *c;

    tether_config_free(NULL);
    tether_config_errors_deinit(NULL);
    /* errors may be discarded */
    c = tether_config_load_buffer(NULL, MINIMAL, strlen(MINIMAL), NULL);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->path, "tether.yaml");
    tether_config_free(c);
    ck_assert_ptr_null(tether_config_load_buffer("x", "retries: 1\n", 11, NULL));
    ck_assert_ptr_null(tether_config_load("/nonexistent/tether.yaml", NULL));
}
END_TEST

START_TEST(load_missing_and_large)
{
    struct tether_config_errors e;
    char path[] = "/tmp/tether-config-big-XXXXXX";
    int fd = mkstemp(path);
    char block[4096];

    ck_assert_ptr_null(tether_config_load("/nonexistent/tether.yaml", &e));
    ck_assert_uint_eq(e.n, 1);
    ck_assert_int_eq(e.items[0].line, 0);
    ck_assert_str_eq(e.items[0].message, "cannot read: No such file or directory");
    tether_config_errors_deinit(&e);

    ck_assert_int_ge(fd, 0);
    memset(block, '#', sizeof(block));
    for (int i = 0; i < 257; i++)
        ck_assert_int_eq(write(fd, block, sizeof(block)), (ssize_t)sizeof(block));
    close(fd);
    ck_assert_ptr_null(tether_config_load(path, &e));
    ck_assert_uint_eq(e.n, 1);
    ck_assert_ptr_nonnull(strstr(e.items[0].message, "larger than"));
    tether_config_errors_deinit(&e);
    unlink(path);
}
END_TEST

START_TEST(shipped)
{
    struct tether_config_errors e;
    struct tether_config *c = tether_config_load(TETHER_SOURCE_ROOT "/conf/tether.yaml", &e);

    if (e.n)
        tether_config_errors_print(&e, "conf/tether.yaml", stderr);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_uint_eq(c->nlistens, 1);
    ck_assert_str_eq(c->listens[0].address, "127.0.0.1:8080");
    ck_assert_ptr_null(c->listens[0].tls);
    ck_assert_uint_eq(c->nbackends, 4);
    for (size_t i = 0; i < 4; i++) {
        char name[8], addr[32];

        snprintf(name, sizeof(name), "fn-%zu", i + 1);
        snprintf(addr, sizeof(addr), "127.0.0.1:%zu", 9001 + i);
        ck_assert_str_eq(c->backends[i].name, name);
        ck_assert_str_eq(c->backends[i].address, addr);
    }
    ck_assert_str_eq(c->health.path, "/healthz");
    ck_assert_int_eq(c->state.store, TETHER_STORE_MEMORY);
    ck_assert(!c->admin.enabled);
    ck_assert_str_eq(c->log.access, "stdout");
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

/* Each example passes every YAML check, without a warning; its files are examples. */
START_TEST(examples)
{
    const char *root = TETHER_SOURCE_ROOT "/conf/examples";
    DIR *d = opendir(root);
    struct dirent *de;
    int seen = 0;

    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d))) {
        struct tether_config_errors e;
        struct tether_config *c;
        char path[512], *buf;
        size_t len = strlen(de->d_name);
        long n;
        FILE *f;

        if (len < 6 || strcmp(de->d_name + len - 5, ".yaml"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", root, de->d_name);
        f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        rewind(f);
        buf = malloc((size_t)n);
        ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
        fclose(f);
        c = tether_config_load_buffer(path, buf, (size_t)n, &e);
        if (e.n)
            tether_config_errors_print(&e, path, stderr);
        ck_assert_msg(c != NULL, "%s", path);
        ck_assert_uint_eq(e.n, 0);
        tether_config_free(c);
        tether_config_errors_deinit(&e);
        free(buf);
        seen++;
    }
    closedir(d);
    ck_assert_int_ge(seen, 2);
}
END_TEST

/* full.yaml writes every default out: it must equal a minimal file's config. */
START_TEST(full_example_is_defaults)
{
    struct tether_config_errors e;
    struct tether_config *full = tether_config_load(TETHER_SOURCE_ROOT "/conf/examples/full.yaml",
                                                    &e);
    struct tether_config *min = load_text("listen:\n  - address: 127.0.0.1:8080\nbackends:\n"
                                          "  - { name: fn-1, address: 127.0.0.1:9001 }\n", &e);

    ck_assert_ptr_nonnull(full);
    ck_assert_ptr_nonnull(min);
    ck_assert_uint_eq(full->workers, min->workers);
    ck_assert_mem_eq(&full->session.sources, &min->session.sources, sizeof(min->session.sources));
    ck_assert_uint_eq(full->session.nsources, min->session.nsources);
    ck_assert_uint_eq(full->session.max_state_bytes, min->session.max_state_bytes);
    ck_assert_uint_eq(full->session.provisional_timeout_ms, min->session.provisional_timeout_ms);
    ck_assert_double_eq(full->balance.load_factor, min->balance.load_factor);
    ck_assert_mem_eq(&full->health.interval_ms, &min->health.interval_ms,
                     sizeof(min->health) - offsetof(struct tether_config_health, interval_ms));
    ck_assert_mem_eq(&full->timeouts, &min->timeouts, sizeof(min->timeouts));
    ck_assert_mem_eq(&full->limits, &min->limits, sizeof(min->limits));
    ck_assert_uint_eq(full->state.redis.claim_timeout_ms, min->state.redis.claim_timeout_ms);
    ck_assert_uint_eq(full->state.redis.queue_max, min->state.redis.queue_max);
    ck_assert_str_eq(full->state.redis.prefix, min->state.redis.prefix);
    ck_assert_uint_eq(full->retries, min->retries);
    ck_assert_uint_eq(full->retry_body_bytes, min->retry_body_bytes);
    ck_assert_uint_eq(full->drain_timeout_ms, min->drain_timeout_ms);
    ck_assert_uint_eq(full->shutdown_timeout_ms, min->shutdown_timeout_ms);
    ck_assert_int_eq(full->log.level, min->log.level);
    ck_assert(!full->admin.enabled);
    tether_config_free(full);
    tether_config_free(min);
    tether_config_errors_deinit(&e);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config/config");
    TCase *tc = tcase_create("config");

    tcase_add_test(tc, syntax_error);
    tcase_add_test(tc, aliases_and_tags);
    tcase_add_test(tc, documents);
    tcase_add_test(tc, depth);
    tcase_add_test(tc, one_pass);
    tcase_add_test(tc, print_format);
    tcase_add_test(tc, lifecycle);
    tcase_add_test(tc, load_missing_and_large);
    tcase_add_test(tc, shipped);
    tcase_add_test(tc, examples);
    tcase_add_test(tc, full_example_is_defaults);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(config_suite());
}
