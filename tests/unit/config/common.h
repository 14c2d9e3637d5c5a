/*
 * Helpers shared by the config test suites: load a YAML text and look for
 * one problem by place, key and message.
 */
#ifndef TETHER_TEST_CONFIG_COMMON_H
#define TETHER_TEST_CONFIG_COMMON_H

#include <string.h>

#include <check.h>

#include "tether/config.h"

static inline struct tether_config *load_text(const char *yaml, struct tether_config_errors *e)
{
    return tether_config_load_buffer("test.yaml", yaml, strlen(yaml), e);
}

/* The problem at line:col for key whose message contains part, or NULL. */
static inline const struct tether_config_error *
find_error(const struct tether_config_errors *e, int line, int col, const char *key,
           const char *part)
{
    for (size_t i = 0; i < e->n; i++) {
        const struct tether_config_error *x = &e->items[i];

        if (x->line == line && x->col == col && !strcmp(x->key, key) &&
            strstr(x->message, part))
            return x;
    }
    return NULL;
}

/* Load text that must fail with exactly one error, at line:col for key. */
#define ck_assert_one_error(yaml, line, col, key, part)                                        \
    do {                                                                                       \
        struct tether_config_errors e_;                                                        \
        struct tether_config *c_ = load_text(yaml, &e_);                                       \
        ck_assert_ptr_null(c_);                                                                \
        if (e_.n != 1 || !find_error(&e_, line, col, key, part))                               \
            tether_config_errors_print(&e_, "test.yaml", stderr);                              \
        ck_assert_uint_eq(e_.n, 1);                                                            \
        ck_assert_ptr_nonnull(find_error(&e_, line, col, key, part));                          \
        tether_config_errors_deinit(&e_);                                                      \
    } while (0)

/* The smallest valid file; tests append one section after it. */
#define MINIMAL                                                                                \
    "listen:\n"                                                                                \
    "  - address: 127.0.0.1:8080\n"                                                            \
    "backends:\n"                                                                              \
    "  - name: fn-1\n"                                                                         \
    "    address: 127.0.0.1:9001\n"

#endif
