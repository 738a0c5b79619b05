#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "idset.h"
#include "strmap.h"

static void test_put_get_remove(void **state) {
        struct strmap *m = NULL;
        int a = 1, b = 2;

        (void) state;
        assert_int_equal(strmap_new(&m), 0);
        assert_null(strmap_get(m, "x"));
        assert_int_equal(strmap_put(m, "x", &a), 0);
        assert_int_equal(strmap_put(m, "x", &b), -EEXIST);
        assert_ptr_equal(strmap_get(m, "x"), &a); /* unchanged */
        assert_int_equal(strmap_put(m, "", &b), 0);
        assert_int_equal(strmap_size(m), 2);
        assert_ptr_equal(strmap_remove(m, "x"), &a);
        assert_null(strmap_remove(m, "x"));
        assert_int_equal(strmap_size(m), 1);
        strmap_free(m, NULL);
}

/* The map keeps its own copy of a key. */
static void test_keys_are_copied(void **state) {
        struct strmap *m = NULL;
        char key[] = "session-1";
        int v = 0;

        (void) state;
        assert_int_equal(strmap_new(&m), 0);
        assert_int_equal(strmap_put(m, key, &v), 0);
        key[0] = 'X';
        assert_ptr_equal(strmap_get(m, "session-1"), &v);
        assert_null(strmap_get(m, key));
        strmap_free(m, NULL);
}

static void collect(const char *key, void *value, void *userdata) {
        char *out = userdata;

        (void) value;
        strcat(out, key);
        strcat(out, ",");
}

static void test_move_swap_foreach(void **state) {
        struct strmap *a = NULL, *b = NULL;
        char seen[64] = "";
        int v = 0;

        (void) state;
        assert_int_equal(strmap_new(&a), 0);
        assert_int_equal(strmap_new(&b), 0);
        assert_int_equal(strmap_put(a, "c", &v), 0);
        assert_int_equal(strmap_put(a, "a", &v), 0);
        assert_int_equal(strmap_put(a, "b", &v), 0);
        strmap_foreach(a, collect, seen);
        assert_string_equal(seen, "a,b,c,"); /* in key order */
        assert_int_equal(strmap_move(b, a, "b"), 1);
        assert_int_equal(strmap_move(b, a, "b"), 0);
        assert_int_equal(strmap_put(a, "b", &v), 0);
        assert_int_equal(strmap_move(b, a, "b"), -EEXIST);
        assert_int_equal(strmap_size(a), 3);
        assert_int_equal(strmap_size(b), 1);
        strmap_swap(a, b);
        assert_int_equal(strmap_size(a), 1);
        assert_non_null(strmap_get(b, "c"));
        strmap_free(a, NULL);
        strmap_free(b, NULL);
}

/* clear and free hand each value to the free function, once. */
static void test_values_freed(void **state) {
        struct strmap *m = NULL;
        char key[32];

        (void) state;
        assert_int_equal(strmap_new(&m), 0);
        for (int i = 0; i < 10000; i++) {
                snprintf(key, sizeof key, "id-%d", i);
                assert_int_equal(strmap_put(m, key, malloc(8)), 0);
        }
        assert_int_equal(strmap_size(m), 10000);
        strmap_clear(m, free);
        assert_int_equal(strmap_size(m), 0);
        assert_int_equal(strmap_put(m, "again", malloc(8)), 0);
        strmap_free(m, free); /* a leak shows under ASan or valgrind */
}

/* Every duplicate is named, in order: the first number, then the chain. */
static void test_strindex(void **state) {
        static const char *const words[] = { "a", "b", "a", "c", "a", "b" };
        struct strindex x;

        (void) state;
        assert_int_equal(strindex_init(&x, 6), 0);
        assert_int_equal(strindex_add(&x, 0, words[0]), 0);
        assert_int_equal(strindex_add(&x, 1, words[1]), 1);
        assert_int_equal(strindex_add(&x, 2, words[2]), 0);
        assert_int_equal(strindex_add(&x, 3, words[3]), 3);
        assert_int_equal(strindex_add(&x, 4, words[4]), 0);
        assert_int_equal(x.next[0], 2);
        assert_int_equal(x.next[2], 4);
        assert_int_equal(strindex_add(&x, 5, words[5]), 1);
        assert_int_equal(x.next[1], 5);
        assert_false(x.oom);
        strindex_free(&x);
}

/* An id said once per id: new, known, then forgotten after a round without it. */
static void test_idset_rounds(void **state) {
        struct idset *s = NULL;

        (void) state;
        assert_int_equal(idset_new(&s), 0);
        assert_int_equal(idset_mark(s, "x"), 1);
        assert_int_equal(idset_mark(s, "x"), 0);
        assert_int_equal(idset_keep(s, "y"), 0);
        idset_round_end(s);
        assert_int_equal(idset_keep(s, "x"), 1); /* from the previous round */
        assert_int_equal(idset_mark(s, "x"), 0);
        idset_round_end(s);
        idset_round_end(s); /* a round without x */
        assert_int_equal(idset_mark(s, "x"), 1);
        idset_free(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_put_get_remove),    cmocka_unit_test(test_keys_are_copied),
                cmocka_unit_test(test_move_swap_foreach), cmocka_unit_test(test_values_freed),
                cmocka_unit_test(test_strindex),          cmocka_unit_test(test_idset_rounds),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
