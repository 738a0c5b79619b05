#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "retry.h"

static void test_delay(void **state) {
        (void) state;
        /* random = 0: the low end of the jitter (50 %); UINT32_MAX: 100 %. */
        assert_int_equal(retry_delay_ms(1, 1000, 64000, 0, 0), 500);
        assert_int_equal(retry_delay_ms(1, 1000, 64000, 0, UINT32_MAX), 1000);
        assert_int_equal(retry_delay_ms(2, 1000, 64000, 0, UINT32_MAX), 2000);
        assert_int_equal(retry_delay_ms(4, 1000, 64000, 0, UINT32_MAX), 8000);
        assert_int_equal(retry_delay_ms(7, 1000, 64000, 0, UINT32_MAX), 64000);
        assert_int_equal(retry_delay_ms(30, 1000, 64000, 0, UINT32_MAX), 64000); /* capped, no overflow */
        assert_int_equal(retry_delay_ms(1000000, 1000, 64000, 0, 0), 32000);
        /* Retry-After wins when longer. */
        assert_int_equal(retry_delay_ms(1, 1000, 64000, 5000, UINT32_MAX), 5000);
        assert_int_equal(retry_delay_ms(7, 1000, 64000, 5000, UINT32_MAX), 64000);
        /* A Retry-After never holds a session back beyond the cap (issue 10, item 7). */
        assert_int_equal(retry_delay_ms(1, 1000, 64000, 86400000, 0), 64000);
        assert_int_equal(retry_delay_ms(1, 30000, 3600000, 86400000, UINT32_MAX), 3600000);
        /* Jitter stays inside [50 %, 100 %]. */
        for (uint32_t r = 0; r < UINT32_MAX - 0x01000000u; r += 0x01000000u) {
                uint64_t d = retry_delay_ms(3, 1000, 64000, 0, r);
                assert_in_range(d, 2000, 4000);
        }
}

static void test_table(void **state) {
        struct retry_table *t = NULL;
        uint64_t wait = 0;

        (void) state;
        assert_int_equal(retry_table_new(&t), 0);
        assert_false(retry_blocked(t, "a", 0, &wait));
        assert_int_equal(retry_failed(t, "a", 1000, 100, 6400, 0, UINT32_MAX), 1);
        assert_true(retry_blocked(t, "a", 1050, &wait));
        assert_int_equal(wait, 50);
        assert_false(retry_blocked(t, "a", 1100, &wait));
        assert_int_equal(retry_failed(t, "a", 1100, 100, 6400, 0, UINT32_MAX), 2);
        assert_true(retry_blocked(t, "a", 1299, &wait));
        assert_false(retry_blocked(t, "b", 1299, &wait));
        assert_int_equal(retry_failed(t, "b", 0, 100, 6400, 0, 0), 1);
        assert_int_equal(retry_size(t), 2);

        retry_forget(t, "a");
        assert_false(retry_blocked(t, "a", 1100, &wait));
        assert_int_equal(retry_size(t), 1);
        retry_forget(t, "never-there");

        /* After a success the count starts again from one. */
        assert_int_equal(retry_failed(t, "a", 5000, 100, 6400, 0, 0), 1);
        retry_table_free(t);
        retry_table_free(NULL);
}

static void test_prune(void **state) {
        struct retry_table *t = NULL;
        struct session items[2] = { { .session_id = "keep-1", .user_id = "u" },
                                    { .session_id = "keep-2", .user_id = "u" } };
        struct session_list l = { .items = items, .n = 2 };

        (void) state;
        assert_int_equal(retry_table_new(&t), 0);
        assert_int_equal(retry_failed(t, "keep-1", 0, 100, 6400, 0, 0), 1);
        assert_int_equal(retry_failed(t, "gone", 0, 100, 6400, 0, 0), 1);
        assert_int_equal(retry_failed(t, "keep-2", 0, 100, 6400, 0, 0), 1);
        retry_prune(t, &l);
        assert_int_equal(retry_size(t), 2);
        assert_true(retry_blocked(t, "keep-1", 1, NULL));
        assert_false(retry_blocked(t, "gone", 1, NULL));
        retry_table_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_delay),
                cmocka_unit_test(test_table),
                cmocka_unit_test(test_prune),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
