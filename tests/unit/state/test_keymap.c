/*
 * Unit tests for src/state/keymap.c: the per-worker map of keys. Checked
 * against a plain array over many keys and forced collisions, through the
 * growth of the buckets and removals in any order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "store-int.h"
#include "../unit.h"

#define N 5000

struct item {
    struct keynode node; /* first: a found node is its item */
    char key[16];
    bool in;
};

static struct item items[N];

static void setup_items(uint64_t (*hash)(size_t))
{
    for (size_t i = 0; i < N; i++) {
        snprintf(items[i].key, sizeof(items[i].key), "k%zu", i);
        items[i].node.key = items[i].key;
        items[i].node.len = strlen(items[i].key);
        items[i].node.hash = hash(i);
        items[i].in = false;
    }
}

static uint64_t spread(size_t i)
{
    uint64_t z = i * 0x9e3779b97f4a7c15ULL;
    return z ^ (z >> 29);
}

static uint64_t collide(size_t i)
{
    return i % 7; /* long chains, and equal hashes for different keys */
}

static size_t check_all(struct keymap *m)
{
    size_t bad = 0, in = 0;
    for (size_t i = 0; i < N; i++) {
        struct keynode *n = keymap_find(m, items[i].key, items[i].node.len, items[i].node.hash);
        in += items[i].in;
        bad += items[i].in ? n != &items[i].node : n != NULL;
    }
    bad += in != m->n;
    return bad;
}

static void run(uint64_t (*hash)(size_t))
{
    struct keymap m = {0};
    setup_items(hash);
    ck_assert_ptr_null(keymap_find(&m, "k1", 2, hash(1)));
    for (size_t i = 0; i < N; i += 2) {
        ck_assert_int_eq(keymap_add(&m, &items[i].node), 0);
        items[i].in = true;
    }
    ck_assert_uint_eq(check_all(&m), 0);
    /* remove every third, add the odd ones */
    for (size_t i = 0; i < N; i += 3) {
        if (items[i].in) {
            keymap_del(&m, &items[i].node);
            items[i].in = false;
        }
    }
    for (size_t i = 1; i < N; i += 2) {
        ck_assert_int_eq(keymap_add(&m, &items[i].node), 0);
        items[i].in = true;
    }
    ck_assert_uint_eq(check_all(&m), 0);
    /* same hash, same length, other bytes: not a match */
    ck_assert_ptr_null(keymap_find(&m, "kX", 2, items[1].node.hash));
    for (size_t i = 0; i < N; i++) {
        if (items[i].in) {
            keymap_del(&m, &items[i].node);
            items[i].in = false;
        }
    }
    ck_assert_uint_eq(m.n, 0);
    ck_assert_uint_eq(check_all(&m), 0);
    keymap_deinit(&m);
    ck_assert_ptr_null(m.b);
}

START_TEST(test_spread)
{
    run(spread);
}
END_TEST

START_TEST(test_collisions)
{
    run(collide);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("state/keymap");
    TCase *tc = tcase_create("keymap");
    tcase_add_test(tc, test_spread);
    tcase_add_test(tc, test_collisions);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
