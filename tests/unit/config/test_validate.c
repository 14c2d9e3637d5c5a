/*
 * Tests for src/config/validate.c: the checks across keys (duplicates,
 * learn without learn_header, contradicting budgets, warnings) and the
 * filesystem checks, run against files made in a temporary directory.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>

#include "common.h"
#include "../unit.h"

START_TEST(duplicates)
{
    ck_assert_one_error(MINIMAL "  - name: fn-1\n    address: 127.0.0.1:9002\n", 6, 11,
                        "backends[1].name", "duplicate backend name (also backends[0])");
    ck_assert_one_error("listen:\n  - address: 127.0.0.1:80\n  - address: \"[::1]:80\"\n"
                        "  - address: 127.0.0.1:80\n"
                        "backends:\n  - name: a\n    address: 127.0.0.1:1\n",
                        4, 14, "listen[2].address", "duplicate listen address (also listen[0])");
    ck_assert_one_error("listen:\n  - address: \"[::1]:80\"\n  - address: \"[0::1]:80\"\n"
                        "backends:\n  - name: a\n    address: 127.0.0.1:1\n",
                        3, 14, "listen[1].address", "duplicate listen address");
    ck_assert_one_error(MINIMAL "admin:\n  listen: 127.0.0.1:8080\n", 7, 11, "admin.listen",
                        "same address as listen[0]");
}
END_TEST

START_TEST(names_are_not_resolved)
{
    ck_assert_one_error(MINIMAL "  - name: fn-2\n    address: fn-2.internal:9002\n", 7, 14,
                        "backends[1].address", "tether does not resolve names");
    ck_assert_one_error("listen:\n  - address: lb.example:80\n"
                        "backends:\n  - name: a\n    address: 127.0.0.1:1\n",
                        2, 14, "listen[0].address", "tether does not resolve names");
    ck_assert_one_error(MINIMAL "  - { name: \"fn 2\", address: 127.0.0.1:9002 }\n", 6, 13,
                        "backends[1].name", "a name is 1 to 63 letters");
}
END_TEST

START_TEST(learn_without_learn_header_is_inert)
{
    struct tether_config_errors e;
    struct tether_config *c;

    /* DESIGN.md's defaults written out: learn listed, learn_header "" */
    c = load_text(MINIMAL "session:\n  sources: [learn, header, cookie]\n  learn_header: \"\"\n", &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(e.nerrors, 0);
    tether_config_free(c);
    c = load_text(MINIMAL "session:\n  sources: [learn]\n  learn_header: mcp-session-id\n"
                          "  insert_cookie: false\n", &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(e.n, 0);
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(budgets)
{
    ck_assert_one_error(MINIMAL "session:\n  state_max_bytes: 64k\n  max_state_bytes: 32k\n"
                                "limits:\n  max_header_bytes: 128k\n",
                        8, 20, "session.max_state_bytes", "smaller than session.state_max_bytes");
}
END_TEST

START_TEST(ring_size)
{
    ck_assert_one_error(MINIMAL "    weight: 1000\n  - { name: b, address: \"127.0.0.2:2\" }\n"
                                "balance:\n  vnodes: 10000\n",
                        9, 11, "balance.vnodes", "the ring would hold 10010000 points");
}
END_TEST

START_TEST(warnings)
{
    struct tether_config_errors e;
    struct tether_config *c =
        load_text(MINIMAL "  - name: fn-2\n    address: 127.0.0.1:9001\n"
                          "session:\n  sources: [header]\n  idle_timeout: 2d\n"
                          "  state_max_bytes: 32k\n"
                          "health:\n  interval: 1s\n  timeout: 1s\n"
                          "state:\n  store: redis\n  snapshot: /var/lib/t.snap\n",
                  &e);

    ck_assert_ptr_nonnull(c);
    if (e.n != 6)
        tether_config_errors_print(&e, "test.yaml", stderr);
    ck_assert_uint_eq(e.n, 6);
    ck_assert_uint_eq(e.nerrors, 0);
    ck_assert_ptr_nonnull(find_error(&e, 7, 14, "backends[1].address", "same address"));
    ck_assert_ptr_nonnull(find_error(&e, 0, 0, "session.insert_cookie", "never read back"));
    ck_assert_ptr_nonnull(find_error(&e, 10, 17, "session.idle_timeout", "max_lifetime"));
    ck_assert_ptr_nonnull(find_error(&e, 11, 20, "session.state_max_bytes", "max_header_bytes"));
    ck_assert_ptr_nonnull(find_error(&e, 14, 12, "health.timeout", "checks will overlap"));
    ck_assert_ptr_nonnull(find_error(&e, 17, 13, "state.snapshot", "ignored"));
    for (size_t i = 0; i < e.n; i++)
        ck_assert(e.items[i].warning);
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

/* ---- files ---- */

static char dir[64];

static void mkfile(const char *name, mode_t mode)
{
    char path[128];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "x\n", 2), 2);
    close(fd);
    ck_assert_int_eq(chmod(path, mode), 0);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tether-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    mkfile("site.crt", 0644);
    mkfile("site.key", 0600);
    mkfile("token", 0600);
    mkfile("open-token", 0640);
    mkfile("redis.pw", 0600);
}

static void teardown(void)
{
    static const char *const names[] = { "site.crt", "site.key", "token", "open-token",
                                         "redis.pw" };
    char path[128];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Write yaml (a format with %1$s for the directory) to a file and load it. */
static struct tether_config *load_file(const char *fmt, struct tether_config_errors *e)
{
    char path[128], text[2048];
    FILE *f;
    struct tether_config *c;

    snprintf(path, sizeof(path), "%s/tether.yaml", dir);
    snprintf(text, sizeof(text), fmt, dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    c = tether_config_load(path, e);
    unlink(path);
    return c;
}

#define FILES_OK                                                                               \
    "listen:\n"                                                                                \
    "  - address: 127.0.0.1:8443\n"                                                            \
    "    tls:\n"                                                                               \
    "      certificates:\n"                                                                    \
    "        - { cert: %1$s/site.crt, key: %1$s/site.key }\n"                                  \
    "backends:\n"                                                                              \
    "  - { name: a, address: \"127.0.0.1:1\", tls: { ca: %1$s } }\n"                                   \
    "state:\n"                                                                                 \
    "  snapshot: %1$s/tether.snap\n"                                                           \
    "log:\n"                                                                                   \
    "  access: %1$s/access.log\n"

START_TEST(files_ok)
{
    struct tether_config_errors e;
    struct tether_config *c = load_file(FILES_OK "admin:\n  token_file: %1$s/token\n", &e);

    if (!c)
        tether_config_errors_print(&e, "tether.yaml", stderr);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_int_eq(tether_config_check_files(c, &e), 0);
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(files_missing)
{
    struct tether_config_errors e;
    struct tether_config *c = load_file(
        "listen:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n"
        "        - { cert: %1$s/nope.crt, key: %1$s }\n"
        "backends:\n  - { name: a, address: \"127.0.0.1:1\", tls: { ca: %1$s/nope.pem } }\n"
        "state:\n  snapshot: %1$s/nodir/t.snap\nadmin:\n  token_file: %1$s/open-token\n"
        "log:\n  access: %1$s/nodir/access.log\n", &e);

    ck_assert_ptr_null(c);
    if (e.n != 6)
        tether_config_errors_print(&e, "tether.yaml", stderr);
    ck_assert_uint_eq(e.n, 6);
    ck_assert_uint_eq(e.nerrors, 6);
    ck_assert_ptr_nonnull(find_error(&e, 5, 19, "listen[0].tls.certificates[0].cert",
                                     "No such file or directory"));
    ck_assert_ptr_nonnull(find_error(&e, 5, 35 + (int)strlen(dir),
                                     "listen[0].tls.certificates[0].key",
                                     "is not a regular file"));
    ck_assert_ptr_nonnull(find_error(&e, 7, 51, "backends[0].tls.ca", "cannot open"));
    ck_assert_ptr_nonnull(find_error(&e, 9, 13, "state.snapshot", "does not exist"));
    ck_assert_ptr_nonnull(find_error(&e, 11, 15, "admin.token_file",
                                     "has mode 0640: use 0600 or stricter"));
    ck_assert_ptr_nonnull(find_error(&e, 13, 11, "log.access", "does not exist"));
    tether_config_errors_deinit(&e);
}
END_TEST

START_TEST(files_direct)
{
    struct tether_config_errors e;
    struct tether_config *c;
    char text[512];

    /* load_buffer leaves the filesystem alone; check_files is separate */
    snprintf(text, sizeof(text),
             MINIMAL "admin:\n  token_file: %s/missing\nstate:\n  store: redis\n  redis:\n"
                     "    password_file: %s/redis.pw\n", dir, dir);
    c = load_text(text, &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(tether_config_check_files(c, &e), 1);
    ck_assert_uint_eq(e.n, 1);
    ck_assert_ptr_nonnull(find_error(&e, 7, 15, "admin.token_file", "cannot open"));
    tether_config_free(c);
    tether_config_errors_deinit(&e);

    /* a group-readable redis password is only a warning */
    snprintf(text, sizeof(text), "%s/redis.pw", dir);
    ck_assert_int_eq(chmod(text, 0640), 0);
    snprintf(text, sizeof(text),
             MINIMAL "state:\n  store: redis\n  redis:\n    password_file: %s/redis.pw\n", dir);
    c = load_text(text, &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(tether_config_check_files(c, &e), 0);
    ck_assert_uint_eq(e.n, 1);
    ck_assert(e.items[0].warning);
    ck_assert_ptr_nonnull(find_error(&e, 9, 20, "state.redis.password_file", "mode 0640"));
    tether_config_free(c);
    tether_config_errors_deinit(&e);
}
END_TEST

static Suite *validate_suite(void)
{
    Suite *s = suite_create("config/validate");
    TCase *tc = tcase_create("validate");
    TCase *tf = tcase_create("files");

    tcase_add_test(tc, duplicates);
    tcase_add_test(tc, names_are_not_resolved);
    tcase_add_test(tc, learn_without_learn_header_is_inert);
    tcase_add_test(tc, budgets);
    tcase_add_test(tc, ring_size);
    tcase_add_test(tc, warnings);
    suite_add_tcase(s, tc);
    tcase_add_checked_fixture(tf, setup, teardown);
    tcase_add_test(tf, files_ok);
    tcase_add_test(tf, files_missing);
    tcase_add_test(tf, files_direct);
    suite_add_tcase(s, tf);
    return s;
}

int main(void)
{
    return unit_run(validate_suite());
}
