/*
 * Unit tests for src/util/log.c: stderr is pointed at a temporary file
 * while the logger runs, then every captured line is checked against the
 * documented "<UTC time> tetherd[pid]: level: msg" format and the level.
 */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include "tether/util.h"
#include "../unit.h"

static FILE *capture;
static int saved_stderr = -1;

static void start_capture(void)
{
    capture = tmpfile();
    ck_assert_ptr_nonnull(capture);
    saved_stderr = dup(STDERR_FILENO);
    ck_assert_int_ge(saved_stderr, 0);
    ck_assert_int_eq(dup2(fileno(capture), STDERR_FILENO), STDERR_FILENO);
}

/* Restores stderr; returns what was logged (caller frees). */
static char *stop_capture(size_t *len)
{
    ck_assert_int_eq(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
    close(saved_stderr);
    ck_assert_int_eq(fseek(capture, 0, SEEK_END), 0);
    long size = ftell(capture);
    ck_assert_int_ge(size, 0);
    char *buf = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(buf);
    rewind(capture);
    ck_assert_uint_eq(fread(buf, 1, (size_t)size, capture), (size_t)size);
    buf[size] = '\0';
    fclose(capture);
    *len = (size_t)size;
    return buf;
}

/* Number of lines in buf logged at `level` whose message is msg. */
static int count(const char *buf, const char *level, const char *msg)
{
    char want[256];
    snprintf(want, sizeof(want), " %s: %s\n", level, msg);
    int n = 0;
    for (const char *p = buf; (p = strstr(p, want)) != NULL; p++)
        n++;
    return n;
}

static void log_all(const char *tag)
{
    tether_log_error("%s error", tag);
    tether_log_warn("%s warn", tag);
    tether_log_info("%s info", tag);
    tether_log_debug("%s debug", tag);
}

START_TEST(test_levels)
{
    start_capture();
    log_all("default");
    tether_log_set_level(TETHER_LOG_ERROR);
    log_all("error");
    tether_log_set_level(TETHER_LOG_WARN);
    log_all("warn");
    tether_log_set_level(TETHER_LOG_DEBUG);
    log_all("debug");
    size_t len;
    char *out = stop_capture(&len);

    static const char *const levels[] = {"error", "warn", "info", "debug"};
    static const struct {
        const char *tag;
        int shown; /* levels up to this index appear */
    } runs[] = {{"default", 2}, {"error", 0}, {"warn", 1}, {"debug", 3}};
    for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
        for (int l = 0; l < 4; l++) {
            char msg[64];
            snprintf(msg, sizeof(msg), "%s %s", runs[r].tag, levels[l]);
            ck_assert_int_eq(count(out, levels[l], msg), l <= runs[r].shown ? 1 : 0);
        }
    }
    free(out);
}
END_TEST

START_TEST(test_format)
{
    start_capture();
    uint64_t before = (uint64_t)time(NULL);
    tether_log_warn("backend %s down after %d failures", "fn-3", 3);
    tether_log_error("second");
    uint64_t after = (uint64_t)time(NULL);
    size_t len;
    char *out = stop_capture(&len);

    /* 1-6: date and time, 7: pid, 8: level, 9: message. */
    static const char pattern[] = "^([0-9]{4})-([0-9]{2})-([0-9]{2})"
                                  "T([0-9]{2}):([0-9]{2}):([0-9]{2})\\.[0-9]{3}Z"
                                  " tetherd\\[([0-9]+)\\]: (error|warn|info|debug): ([^\n]*)\n";
    regex_t re;
    ck_assert_int_eq(regcomp(&re, pattern, REG_EXTENDED), 0);
    const char *p = out;
    const char *want[] = {"warn", "backend fn-3 down after 3 failures", "error", "second"};
    for (int i = 0; i < 2; i++) {
        regmatch_t m[10];
        ck_assert_int_eq(regexec(&re, p, 10, m, 0), 0);
        ck_assert_int_eq(m[0].rm_so, 0);
        ck_assert_int_eq(atoi(p + m[7].rm_so), (int)getpid());
        ck_assert_int_eq(m[8].rm_eo - m[8].rm_so, (int)strlen(want[2 * i]));
        ck_assert_int_eq(strncmp(p + m[8].rm_so, want[2 * i], strlen(want[2 * i])), 0);
        ck_assert_int_eq(m[9].rm_eo - m[9].rm_so, (int)strlen(want[2 * i + 1]));
        ck_assert_int_eq(strncmp(p + m[9].rm_so, want[2 * i + 1], strlen(want[2 * i + 1])), 0);

        /* The timestamp is UTC and now. */
        struct tm tm = {0};
        tm.tm_year = atoi(p + m[1].rm_so) - 1900;
        tm.tm_mon = atoi(p + m[2].rm_so) - 1;
        tm.tm_mday = atoi(p + m[3].rm_so);
        tm.tm_hour = atoi(p + m[4].rm_so);
        tm.tm_min = atoi(p + m[5].rm_so);
        tm.tm_sec = atoi(p + m[6].rm_so);
        uint64_t t = (uint64_t)timegm(&tm);
        ck_assert_uint_ge(t, before);
        ck_assert_uint_le(t, after);
        p += m[0].rm_eo;
    }
    ck_assert_str_eq(p, "");
    regfree(&re);
    free(out);
}
END_TEST

START_TEST(test_one_line)
{
    start_capture();
    /* Longer than the line buffer, with line breaks a client might send. */
    char *big = malloc(5000);
    ck_assert_ptr_nonnull(big);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    tether_log_info("%s", big);
    tether_log_info("header value: a\r\n2026-01-01T00:00:00.000Z tetherd[1]: error: forged");
    size_t len;
    char *out = stop_capture(&len);

    char *nl = strchr(out, '\n');
    ck_assert_ptr_nonnull(nl);
    ck_assert_uint_le((size_t)(nl - out) + 1, 2048);
    ck_assert_int_eq(nl[-1], 'x');
    char *second = nl + 1;
    nl = strchr(second, '\n');
    ck_assert_ptr_nonnull(nl);
    ck_assert_str_eq(nl + 1, "");
    ck_assert_ptr_null(strchr(second, '\r'));
    ck_assert_ptr_nonnull(strstr(second, " info: header value: a??2026-01-01T"));
    free(big);
    free(out);
}
END_TEST

static Suite *log_suite(void)
{
    Suite *s = suite_create("util/log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, test_levels);
    tcase_add_test(tc, test_format);
    tcase_add_test(tc, test_one_line);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return unit_run(log_suite());
}
